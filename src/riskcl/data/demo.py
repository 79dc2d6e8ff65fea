"""The embedded demo data set: generated, seeded "dermoscopy-like" lesions, no download needed.

Four classes on a skin-toned background with sensor noise:

* ``nevus`` (benign, 40% of samples): a round brown blob with a smooth border;
* ``keratosis`` (benign, 20%): a lighter, tan blob with a striped (waxy) texture;
* ``melanoma`` (malignant, 20%): a brown blob like a nevus, plus an irregular border and dark spots whose
  strength is ``u**2`` with ``u`` uniform per image: many are weak and look almost exactly like a nevus. This
  is the visual ambiguity across the superclass boundary that makes CE trade melanomas for nevi (Type II);
* ``carcinoma`` (malignant, 20%): a pinkish blob with a bright (pearly) rim and a dark centre.

Everything is generated with ``numpy.random.default_rng(seed)``; the same seed gives the same pixels.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..taxonomy import get_taxonomy
from .base import DataIndex, make_table

CLASS_SHARES = {"nevus": 0.4, "keratosis": 0.2, "melanoma": 0.2, "carcinoma": 0.2}
SPLIT_SIZES = {"train": 2000, "val": 500, "test": 1000}


def generate_lesions(labels: np.ndarray, size: int, rng: np.random.Generator,
                     return_masks: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """``(N, size, size, 3)`` ``uint8`` images for demo labels (0 nevus, 1 keratosis, 2 melanoma, 3 carcinoma);
    with ``return_masks`` also their ``(N, size, size)`` ``uint8`` lesion masks (where the lesion outweighs the
    skin in the blend)."""
    n = labels.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    cx, cy = rng.uniform(-0.08, 0.08, (2, n, 1, 1)).astype(np.float32)
    dx, dy = xx[None] - cx, yy[None] - cy
    rho, theta = np.sqrt(dx**2 + dy**2), np.arctan2(dy, dx)
    radius = rng.uniform(0.22, 0.32, (n, 1, 1)).astype(np.float32)
    is_mel = (labels == 2)[:, None, None]
    strength = np.where(is_mel, rng.uniform(0.0, 1.0, (n, 1, 1)) ** 2, 0.0).astype(np.float32)
    # Border irregularity: small for all, larger for melanoma in proportion to its strength.
    irregular = rng.uniform(0.0, 0.06, (n, 1, 1)) + 0.22 * strength
    phase = rng.uniform(0, 2 * np.pi, (n, 3, 1, 1))
    wobble = sum(np.sin((k + 3) * theta + phase[:, k]) for k in range(3)) / 3
    border = radius * (1 + irregular * wobble)
    mask = 1 / (1 + np.exp(-(border - rho) / 0.012))

    skin = np.array([0.85, 0.68, 0.58], np.float32) + rng.normal(0, 0.03, (n, 1, 1, 3)).astype(np.float32)
    colours = np.array([[0.42, 0.27, 0.18], [0.62, 0.48, 0.33], [0.40, 0.25, 0.17], [0.80, 0.50, 0.52]],
                       np.float32)
    lesion = colours[labels][:, None, None, :] + rng.normal(0, 0.04, (n, 1, 1, 3)).astype(np.float32)
    # Keratosis: waxy stripes. Carcinoma: pearly rim and dark centre. Melanoma: dark spots.
    freq = rng.uniform(18, 30, (n, 1, 1)).astype(np.float32)
    stripes = 0.10 * np.sin(freq * (dx * np.cos(phase[:, 0]) + dy * np.sin(phase[:, 0])) * 2 * np.pi)
    shade = np.where((labels == 1)[:, None, None], stripes, 0.0)
    rim = np.exp(-((rho - border * 0.85) ** 2) / 0.002)
    shade = shade + np.where((labels == 3)[:, None, None], 0.25 * rim - 0.3 * (rho < radius * 0.35), 0.0)
    spots = np.zeros_like(rho)
    for _ in range(3):
        sx, sy = rng.uniform(-0.12, 0.12, (2, n, 1, 1)).astype(np.float32)
        spots += np.exp(-((dx - sx) ** 2 + (dy - sy) ** 2) / 0.003)
    shade = shade - np.where(is_mel, 0.25 * strength * np.minimum(spots, 1.0), 0.0)
    lesion_px = lesion + shade[..., None]
    img = skin * (1 - mask[..., None]) + lesion_px * mask[..., None]
    img = img + rng.normal(0, 0.05, img.shape).astype(np.float32)
    out = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    return (out, (mask >= 0.5).astype(np.uint8)) if return_masks else out


def index_demo(root: object = None, size: int = 32, seed: int = 0, scale: float = 1.0) -> DataIndex:
    """The demo data set with fixed train / val / test splits, generated at ``size`` px (resized to the
    model's ``image_size`` when that differs); ``scale`` multiplies the split sizes."""
    if not 0 < scale <= 10:
        raise ValueError(f"Expected demo `scale` in (0, 10], but got {scale}")
    taxonomy = get_taxonomy("demo")
    rng = np.random.default_rng(seed)
    shares = np.array([CLASS_SHARES[c] for c in taxonomy.classes])
    rows, labels = [], []
    for split, n in SPLIT_SIZES.items():
        n = max(int(n * scale), 8)
        lab = rng.choice(len(shares), size=n, p=shares)
        labels.append(lab)
        rows += [{"path": f"demo/{split}/{split}_{i:05d}", "label": int(c), "group": f"{split}_{i:05d}",
                  "id": f"{split}_{i:05d}", "split": split} for i, c in enumerate(lab)]
    images = generate_lesions(np.concatenate(labels), size, rng)
    return DataIndex(make_table(rows), taxonomy, images=images, group_unit="generated image")


def write_demo_files(out: str | os.PathLike, n: int = 400, seed: int = 0, size: int = 32,
                     fmt: str = "png") -> list[Path]:
    """``n`` demo lesions (the class shares above) as image files ``out/<class>/demo_<i>.<png|dcm>``: a folder the
    ``folder`` adapter reads with ``taxonomy: demo``, for tutorials and trials. ``fmt="dcm"``: DICOM Secondary
    Capture objects (RGB, one study per image; no patient data, as riskcl writes none) made with pydicom."""
    if fmt not in ("png", "dcm"):
        raise ValueError(f"Expected the format png or dcm, but got {fmt!r}")
    if not 8 <= n <= 100_000 or not 16 <= size <= 512:
        raise ValueError(f"Expected 8 <= n <= 100000 and 16 <= size <= 512, but got n={n}, size={size}")
    from PIL import Image

    from ..io import make_folder

    root = make_folder(out, "--out")
    taxonomy = get_taxonomy("demo")
    rng = np.random.default_rng(seed)
    shares = np.array([CLASS_SHARES[c] for c in taxonomy.classes])
    labels = rng.choice(len(shares), size=n, p=shares)
    images = generate_lesions(labels, size, rng)
    written = []
    for i, (label, image) in enumerate(zip(labels, images)):
        path = root / taxonomy.classes[label] / f"demo_{i:05d}.{fmt}"
        path.parent.mkdir(exist_ok=True)
        if fmt == "png":
            Image.fromarray(image).save(path)
        else:
            _save_secondary_capture(path, image)
        written.append(path)
    return written


def _save_secondary_capture(path: Path, rgb: np.ndarray) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.ConversionType = "OT", "SYN"  # synthetic images
    ds.PatientName = ds.PatientID = ds.PatientBirthDate = ds.PatientSex = ""
    ds.StudyDate = ds.StudyTime = ds.ReferringPhysicianName = ds.StudyID = ds.AccessionNumber = ""
    ds.SeriesNumber = ds.InstanceNumber = 1
    ds.Laterality = ds.PatientOrientation = ""  # type 2C, unknown
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = np.ascontiguousarray(rgb).tobytes()
    ds.save_as(path, enforce_file_format=True)
