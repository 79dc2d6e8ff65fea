"""The common dataset contract: an adapter indexes a folder into a :class:`DataIndex` table; the split logic
and the image cache turn it into one :class:`ImageDataset` per split."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ..taxonomy import Taxonomy

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "val", "test")


@dataclass
class DataIndex:
    """What an adapter finds in a data folder.

    ``table`` columns: ``path`` (absolute file path, or a stand-in name for in-memory data), ``label`` (int),
    ``group`` (patient / lesion / slide id; ``None`` when unknown), ``id`` (sample id, the file stem),
    ``split`` (``"train"``, ``"val"``, ``"test"`` when the data set fixes it, else ``""``).
    ``images``: an in-memory ``(N, H, W, 3)`` ``uint8`` array aligned with the table (generated or ``.npz``
    data); ``None`` means files on disk. ``problems``: what the adapter found wrong but could go on with.
    """

    table: pd.DataFrame
    taxonomy: Taxonomy
    images: np.ndarray | None = None
    problems: list[str] = field(default_factory=list)


def make_table(rows: Iterable[dict]) -> pd.DataFrame:
    table = pd.DataFrame(list(rows), columns=None)
    for col, default in (("group", None), ("split", "")):
        if col not in table.columns:
            table[col] = default
    return table.reset_index(drop=True)


def list_images(folder: Path) -> tuple[list[Path], list[str]]:
    """Image files directly in ``folder`` (sorted) and a problem line for each other file."""
    images, problems = [], []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(p)
        elif p.is_file():
            problems.append(f"{p}: not an image file (expected one of {IMAGE_EXTENSIONS}); ignored")
    return images, problems


def scan_class_folders(split_dir: Path, taxonomy: Taxonomy, split: str) -> tuple[list[dict], list[str]]:
    """Rows for ``split_dir/<class>/*`` with the taxonomy's class names; errors name missing, unknown or empty
    class folders."""
    if not split_dir.is_dir():
        raise FileNotFoundError(f"Expected the folder {split_dir} (one sub-folder per class: "
                                f"{list(taxonomy.classes)})")
    present = {p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
    unknown = sorted(present - set(taxonomy.classes))
    if unknown:
        raise ValueError(f"{split_dir}: unknown class folder(s) {unknown}; expected {list(taxonomy.classes)}")
    rows, problems = [], []
    for label, cls in enumerate(taxonomy.classes):
        folder = split_dir / cls
        if not folder.is_dir():
            raise FileNotFoundError(f"{split_dir}: missing class folder '{cls}'")
        files, probs = list_images(folder)
        problems += probs
        if not files:
            raise ValueError(f"{folder}: empty class '{cls}' (no image files)")
        rows += [{"path": str(f), "label": label, "group": None, "id": f.stem, "split": split} for f in files]
    return rows, problems


class ImageDataset(Dataset):
    """One split: images from the cache (or memory) and their labels.

    Attributes: ``ids``, ``targets`` (np.int64), ``groups``, ``paths``, ``taxonomy``, ``classes``,
    ``class_counts``. Items are ``(image, label)`` with ``image`` a transformed ``(3, H, W)`` tensor.
    """

    def __init__(self, images: np.ndarray, rows: np.ndarray, table: pd.DataFrame, taxonomy: Taxonomy,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None, split: str = "") -> None:
        self.images = images
        self.rows = np.asarray(rows, dtype=np.int64)
        self.table = table.reset_index(drop=True)
        self.taxonomy = taxonomy
        self.transform = transform
        self.split = split
        self.ids: list[str] = self.table["id"].astype(str).tolist()
        self.targets = self.table["label"].to_numpy(dtype=np.int64)
        self.groups = self.table["group"].astype(str).to_numpy()
        self.paths: list[str] = self.table["path"].astype(str).tolist()

    @property
    def classes(self) -> tuple[str, ...]:
        return self.taxonomy.classes

    @property
    def class_counts(self) -> list[int]:
        return np.bincount(self.targets, minlength=self.taxonomy.num_classes).tolist()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(np.array(self.images[self.rows[i]])).permute(2, 0, 1)
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.targets[i])
