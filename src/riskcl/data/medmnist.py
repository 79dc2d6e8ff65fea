"""MedMNIST v2/v3 (Yang et al.): the official ``<flag>.npz`` / ``<flag>_<size>.npz`` files from a local folder.

Each archive holds ``{train,val,test}_images`` (``uint8``, ``(N, H, W)`` or ``(N, H, W, 3)``) and
``{train,val,test}_labels`` (``(N, 1)``). Supported flags, with a benign / malignant taxonomy each:
``dermamnist`` (HAM10000 / ISIC 2018: mel, bcc, akiec malignant), ``breastmnist`` (malignant vs benign/normal),
``pathmnist`` (colon tissue: tumour epithelium critical). With ``download: true`` and the ``medmnist`` package
installed, a missing file is fetched (online users only). MedMNIST carries no patient / lesion ids.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..taxonomy import get_taxonomy
from .base import DataIndex, make_table

MEDMNIST_SPLITS = ("train", "val", "test")

FLAGS = ("dermamnist", "breastmnist", "pathmnist")


def _download(flag: str, root: Path, size: int | None) -> None:
    try:
        import medmnist
    except ImportError:
        raise FileNotFoundError(f"{flag} not found in {root}, and the `medmnist` package (pip install "
                                f"'riskcl[medmnist]') is not installed to download it") from None
    info = medmnist.INFO[flag]
    cls = getattr(medmnist, info["python_class"])
    kwargs = {"size": size} if size else {}
    try:
        cls(split="train", root=str(root), download=True, **kwargs)
    except Exception as exc:
        raise FileNotFoundError(f"Could not download {flag} into {root} ({type(exc).__name__}: {exc}); "
                                f"download the .npz by hand and point data.root at its folder") from None


def index_medmnist(root: str | Path, flag: str = "dermamnist", size: int | None = None,
                   download: bool = False) -> DataIndex:
    root = Path(root)
    if flag not in FLAGS:
        raise ValueError(f"Unsupported MedMNIST flag '{flag}'; expected one of {FLAGS}")
    path = root / (f"{flag}.npz" if size in (None, 28) else f"{flag}_{size}.npz")
    if not path.is_file() and download:
        root.mkdir(parents=True, exist_ok=True)
        _download(flag, root, size)
    if not path.is_file():
        raise FileNotFoundError(f"Expected the MedMNIST file {path} (or set data.options.download: true online)")
    taxonomy = get_taxonomy(flag)
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable .npz archive ({type(exc).__name__}: {exc})") from None
    images, rows = [], []
    with archive:
        for split in MEDMNIST_SPLITS:
            for key in (f"{split}_images", f"{split}_labels"):
                if key not in archive.files:
                    raise ValueError(f"{path}: missing array '{key}' (found {sorted(archive.files)})")
            imgs, labels = archive[f"{split}_images"], archive[f"{split}_labels"].reshape(-1)
            if imgs.dtype != np.uint8 or imgs.ndim not in (3, 4) or len(imgs) != len(labels):
                raise ValueError(f"{path}: '{split}_images' must be uint8 (N, H, W[, 3]) aligned with the labels, "
                                 f"but got {imgs.dtype} {imgs.shape} and {labels.shape[0]} labels")
            if labels.size and (labels.min() < 0 or labels.max() >= taxonomy.num_classes):
                raise ValueError(f"{path}: '{split}_labels' outside [0, {taxonomy.num_classes})")
            images.append(np.repeat(imgs[..., None], 3, axis=-1) if imgs.ndim == 3 else imgs)
            rows += [{"path": f"{path.name}:{split}:{i}", "label": int(c), "group": None, "id": f"{split}_{i}",
                      "split": split} for i, c in enumerate(labels)]
    return DataIndex(make_table(rows), taxonomy, images=np.concatenate(images),
                     problems=["MedMNIST has no patient / lesion ids: groups are exact-duplicate images only"])
