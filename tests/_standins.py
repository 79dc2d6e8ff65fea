"""Generators of small stand-in data sets in the official layouts (for adapters whose real data is absent)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

ISIC_CLASSES = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]


def seed_of(*parts) -> int:
    """A seed for a made-up image from its name's parts, the same in every process (Python's ``hash`` of a string
    changes from run to run, so two images could coincide in one run and not the next)."""
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:8], 16)


def write_image(path: Path, seed: int, size: int = 24, mode: str = "RGB", fmt: str | None = None) -> Path:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).convert(mode).save(path, format=fmt or ("PNG" if path.suffix == ".png" else "JPEG"))
    return path


def make_isic(root: Path, n_lesions: int = 28, per_lesion: int = 2, metadata: bool = True,
              official_val: bool = False, clinical: bool = False) -> Path:
    """Training input + one-hot ground truth (+ HAM10000_metadata.csv, + official validation split); ``clinical``:
    the metadata also hold age, sex and body site (some missing)."""
    rows, meta = [], []
    k = 0
    for lesion in range(n_lesions):
        cls = ISIC_CLASSES[lesion % 7]
        for _ in range(per_lesion):
            name = f"ISIC_{24306 + k:07d}"
            write_image(root / "ISIC2018_Task3_Training_Input" / f"{name}.jpg", k)
            rows.append({"image": name, **{c: float(c == cls) for c in ISIC_CLASSES}})
            meta.append({"lesion_id": f"HAM_{lesion:07d}", "image_id": name, "dx": cls.lower(),
                         **({"age": "" if lesion % 9 == 0 else 20 + 5 * (lesion % 12),
                             "sex": ("male", "female", "")[lesion % 3],
                             "localization": ("back", "face", "lower extremity")[lesion % 3]} if clinical else {})})
            k += 1
    gt = root / "ISIC2018_Task3_Training_GroundTruth"
    gt.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(gt / "ISIC2018_Task3_Training_GroundTruth.csv", index=False)
    (root / "ISIC2018_Task3_Training_Input" / "LICENSE.txt").write_text("stand-in")
    if metadata:
        pd.DataFrame(meta).to_csv(root / "HAM10000_metadata.csv", index=False)
    if official_val:
        vrows = []
        for j in range(7):
            name = f"ISIC_{34321 + j:07d}"
            write_image(root / "ISIC2018_Task3_Validation_Input" / f"{name}.jpg", 1000 + j)
            vrows.append({"image": name, **{c: float(c == ISIC_CLASSES[j]) for c in ISIC_CLASSES}})
        vgt = root / "ISIC2018_Task3_Validation_GroundTruth"
        vgt.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(vrows).to_csv(vgt / "ISIC2018_Task3_Validation_GroundTruth.csv", index=False)
    return root


def make_sicapv2_images(partition_root: Path, images_root: Path, limit: int | None = None) -> list[str]:
    """Stand-in patches under images_root/images for the names listed in the official Test partition."""
    names = []
    for f in ("Train.xlsx", "Test.xlsx"):
        names += pd.read_excel(partition_root / "partition" / "Test" / f)["image_name"].astype(str).tolist()
    if limit:
        names = names[:limit]
    for i, n in enumerate(names):
        write_image(images_root / "images" / n, i, size=8)
    return names


def make_sicapv2_small(root: Path, n_slides: int = 12, patches: int = 3) -> Path:
    """A complete small SICAPv2 tree (partition files + images), 4 classes, slides split train/test."""
    cls_cols = ["NC", "G3", "G4", "G5"]
    def rows(slides):
        out = []
        for s in slides:
            for p in range(patches):
                c = cls_cols[(s + p) % 4]
                name = f"17B00{s:05d}_Block_Region_{p}_0_0_xini_{p}_yini_{s}.jpg"
                write_image(root / "images" / name, s * 10 + p, size=8)
                out.append({"image_name": name, **{k: int(k == c) for k in cls_cols}, "G4C": 0})
        return pd.DataFrame(out)
    part = root / "partition" / "Test"
    part.mkdir(parents=True, exist_ok=True)
    rows(range(0, n_slides - 3)).to_excel(part / "Train.xlsx", index=False)
    rows(range(n_slides - 3, n_slides)).to_excel(part / "Test.xlsx", index=False)
    return root


def make_medmnist(root: Path, flag: str = "dermamnist", k: int = 7, n: int = 40, rgb: bool = True) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, m in (("train", n), ("val", n // 4), ("test", n // 2)):
        shape = (m, 28, 28, 3) if rgb else (m, 28, 28)
        arrays[f"{split}_images"] = rng.integers(0, 255, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(m) % k).reshape(-1, 1).astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / f"{flag}.npz", **arrays)
    return root


def write_mask(path: Path, seed: int, size: tuple[int, int] = (24, 24), values: tuple[int, int] = (0, 255)) -> Path:
    """A binary mask PNG (a random rectangle of lesion) of ``size`` = (width, height)."""
    rng = np.random.default_rng(seed)
    w, h = size
    arr = np.full((h, w), values[0], np.uint8)
    y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
    arr[y0:y0 + h // 3 + 1, x0:x0 + w // 3 + 1] = values[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def make_isic_seg(root: Path, layout: str = "task1", n: int = 40, official_val: bool = False,
                  mask_scale: int = 1) -> Path:
    """ISIC 2018 segmentation stand-ins: ``task1`` (Task 1 input + ground-truth folders) or ``ham`` (Task 3 input
    + HAM10000 masks + metadata, two images per lesion); masks ``mask_scale`` times the image size."""
    parts = [("Training", n)] + ([("Validation", n // 4)] if official_val else [])
    for part, count in parts:
        for i in range(count):
            name = f"ISIC_{(0 if part == 'Training' else 50000) + i:07d}"
            if layout == "task1":
                write_image(root / f"ISIC2018_Task1-2_{part}_Input" / f"{name}.jpg", i)
                write_mask(root / f"ISIC2018_Task1_{part}_GroundTruth" / f"{name}_segmentation.png", i,
                           (24 * mask_scale, 24 * mask_scale))
            else:
                write_image(root / "ISIC2018_Task3_Training_Input" / f"{name}.jpg", i)
                write_mask(root / "HAM10000_segmentations_lesion_tschandl" / f"{name}_segmentation.png", i,
                           (24 * mask_scale, 24 * mask_scale))
    if layout == "ham":
        pd.DataFrame([{"lesion_id": f"HAM_{i // 2:07d}", "image_id": f"ISIC_{i:07d}", "dx": "nv", "dx_type": "histo",
                       "age": 40.0, "sex": "male", "localization": "back"} for i in range(n)]
                     ).to_csv(root / "HAM10000_metadata.csv", index=False)
    return root


def make_seg_folder(root: Path, n: int = 40, suffix: str = "") -> Path:
    """The generic pair ``images/<stem>.png`` and ``masks/<stem><suffix>.png``."""
    for i in range(n):
        write_image(root / "images" / f"case{i:03d}.png", i)
        write_mask(root / "masks" / f"case{i:03d}{suffix}.png", i)
    return root


PHI = {"PatientName": "Doe^Janet^Q", "PatientID": "PID-7731-XQ", "PatientBirthDate": "19611203",
       "AccessionNumber": "ACC-99812", "InstitutionName": "St Elsewhere Hospital",
       "ReferringPhysicianName": "Strangelove^Merkwurdig", "OtherPatientIDs": "ALT-5512",
       "PatientAddress": "12 Nowhere Lane", "StudyID": "STUDY-4471"}


VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"  # VL Photographic Image Storage (dermoscopy, modality XC)


def write_dicom(path: Path, pixels: np.ndarray, modality: str = "MR", frames: int = 1, photometric: str | None = None,
                sop_class: str | None = None, **elements) -> Path:
    """A DICOM file of ``pixels`` (``(H, W)`` greyscale or ``(H, W, 3)`` RGB; ``frames`` copies), explicit VR little
    endian, carrying the made-up identifying values of :data:`PHI` (and any other ``elements``); ``sop_class``:
    e.g. :data:`VL_PHOTOGRAPHIC` (default: MR Image Storage, Secondary Capture for colour)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, SecondaryCaptureImageStorage, generate_uid

    pixels = np.asarray(pixels)
    colour = pixels.ndim == 3
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class or (SecondaryCaptureImageStorage if colour else MRImageStorage)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "XC" if sop_class == VL_PHOTOGRAPHIC else "OT" if colour else modality
    ds.StudyDate, ds.SeriesNumber, ds.InstanceNumber = "20261201", 1, 1
    for k, v in {**PHI, **elements}.items():
        setattr(ds, k, v)
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric or ("RGB" if colour else "MONOCHROME2")
    if colour:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsStored = ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    data = np.stack([pixels] * frames) if frames > 1 else pixels
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = np.ascontiguousarray(data).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
