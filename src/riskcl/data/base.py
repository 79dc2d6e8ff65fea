"""The common dataset contract: an adapter indexes a folder into a :class:`DataIndex` table; the split logic
and the image cache turn it into one :class:`ImageDataset` per split."""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ..taxonomy import Taxonomy
from .decoding import IMAGE_EXTENSIONS, is_image_file

# train: fitting; val: model selection (best epoch); calib: risk control only; test: the final report.
SPLITS = ("train", "val", "calib", "test")
CONTENT_GROUPS = "image content (no patient ids: byte-identical copies are kept together)"
EVAL_SPLITS = SPLITS[1:]


@dataclass
class DataIndex:
    """What an adapter finds in a data folder.

    ``table`` columns: ``path`` (absolute file path, or a stand-in name for in-memory data), ``label`` (int),
    ``group`` (patient / lesion / slide id; ``None`` when unknown), ``id`` (sample id, the file stem),
    ``split`` (``"train"``, ``"val"``, ``"calib"``, ``"test"`` when the data set fixes it, else ``""``), plus the
    per-image metadata columns named in ``metadata`` (age, sex, body site, magnification, ...).
    ``images``: an in-memory ``(N, H, W, 3)`` ``uint8`` array aligned with the table (generated or ``.npz``
    data); ``None`` means files on disk. A segmentation index also has lesion masks: a ``mask`` column of file
    paths, or in-memory ``masks`` aligned with ``images``. ``problems``: what the adapter found wrong but could go on
    with (each names the file and what happened to it).
    """

    table: pd.DataFrame
    taxonomy: Taxonomy
    images: np.ndarray | None = None
    masks: np.ndarray | None = None    # in-memory ``(N, H, W)`` lesion masks (segmentation; files: ``mask`` column)
    problems: list[str] = field(default_factory=list)
    metadata: list[str] = field(default_factory=list)
    label_derived: list[str] = field(default_factory=list)  # metadata columns that reveal the label: never inputs
    group_unit: str = CONTENT_GROUPS  # what one group is (patient, lesion, slide, ...), for reports and cards


def make_table(rows: Iterable[dict]) -> pd.DataFrame:
    table = pd.DataFrame(list(rows), columns=None)
    for col, default in (("group", None), ("split", "")):
        if col not in table.columns:
            table[col] = default
    return table.reset_index(drop=True)


def _utf8_name(p: Path) -> bool:
    try:
        str(p).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def check_member(path: Path, root: Path | None, allow_outside_root: bool = False) -> str | None:
    """Why ``path`` (found under ``root``) may not be used, or None: a dangling symlink, a link that leaves the
    data root (unless allowed), a file name that is not UTF-8."""
    shown = repr(os.fsencode(path))[2:-1] if not _utf8_name(path) else str(path)
    if not _utf8_name(path):
        return f"{shown}: file name is not valid UTF-8 (rename it); skipped"
    if path.is_symlink() and not path.exists():
        try:
            path.resolve(strict=True)
        except RuntimeError:  # Python < 3.13 raises this for a loop
            return f"{shown}: symlink loop (it leads back to itself); skipped"
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return f"{shown}: symlink loop (it leads back to itself); skipped"
        return f"{shown}: dangling symlink (its target {os.readlink(path)} does not exist); skipped"
    if root is not None and not allow_outside_root:
        resolved, base = path.resolve(), root.resolve()
        if resolved != base and base not in resolved.parents:
            return (f"{shown}: resolves to {resolved}, outside the data root {base} (a symlink?); skipped "
                    f"(set data.options.allow_outside_root: true to use it)")
    return None


def list_images(folder: Path, root: Path | None = None,
                allow_outside_root: bool = False) -> tuple[list[Path], list[str]]:
    """Image files directly in ``folder`` (sorted) and a problem line for each file left out (not an image,
    a dangling or out-of-root symlink, a non-UTF-8 name)."""
    images, problems = [], []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        why = check_member(p, root, allow_outside_root)
        if why:
            problems.append(why)
        elif p.is_file() and is_image_file(p):
            images.append(p)
        elif p.is_file():
            problems.append(f"{p}: not an image file (expected one of {IMAGE_EXTENSIONS}); ignored")
        elif p.is_dir():
            problems.append(f"{p}: a folder inside a class folder (images are read one level deep); ignored")
    return images, problems


def scan_class_folders(split_dir: Path, taxonomy: Taxonomy, split: str, root: Path | None = None,
                       allow_outside_root: bool = False) -> tuple[list[dict], list[str]]:
    """Rows for ``split_dir/<class>/*`` with the taxonomy's class names; errors name missing, unknown or empty
    class folders. Files outside ``root`` (through symlinks) are left out unless allowed."""
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
        files, probs = list_images(folder, root or split_dir, allow_outside_root)
        problems += probs
        if not files:
            raise ValueError(f"{folder}: empty class '{cls}' (no usable image files)")
        rows += [{"path": str(f), "label": label, "group": None, "id": f.stem, "split": split} for f in files]
    return rows, problems


class ImageDataset(Dataset):
    """One split: images from the cache (or memory) and their labels.

    Attributes: ``ids``, ``targets`` (np.int64), ``groups``, ``paths``, ``meta`` (a DataFrame of the metadata
    columns), ``taxonomy``, ``classes``, ``class_counts``; ``masks`` (segmentation: ``(N, H, W)`` ``uint8`` 0 / 1
    aligned with ``images``, else None). :meth:`gather` returns a ``uint8`` batch ``(B, H, W, 3)`` in one indexing
    operation (:meth:`gather_masks` the masks ``(B, H, W)``); items are ``(uint8 image (3, H, W), label)``, or
    ``(image, mask (H, W))`` for segmentation.
    """

    def __init__(self, images: np.ndarray, rows: np.ndarray, table: pd.DataFrame, taxonomy: Taxonomy,
                 split: str = "", metadata: list[str] | None = None, masks: np.ndarray | None = None) -> None:
        self.images = images
        self.masks = masks
        self.features: np.ndarray | None = None  # (N, D) float32 encoded metadata when the model reads them
        self.rows = np.asarray(rows, dtype=np.int64)
        self.table = table.reset_index(drop=True)
        self.taxonomy = taxonomy
        self.split = split
        self.metadata = list(metadata or [])
        self.ids: list[str] = self.table["id"].astype(str).tolist()
        self.targets = self.table["label"].to_numpy(dtype=np.int64)
        self.groups = self.table["group"].astype(str).to_numpy()
        self.paths: list[str] = self.table["path"].astype(str).tolist()

    @property
    def meta(self) -> pd.DataFrame:
        return self.table[self.metadata].astype(str) if self.metadata else pd.DataFrame(index=self.table.index)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.taxonomy.classes

    @property
    def class_counts(self) -> list[int]:
        return np.bincount(self.targets, minlength=self.taxonomy.num_classes).tolist()

    def gather(self, index: np.ndarray) -> np.ndarray:
        """``(B, H, W, 3)`` ``uint8`` images of positions ``index`` (one batched read of the cache)."""
        rows = self.rows[np.asarray(index, dtype=np.int64)]
        order = np.argsort(rows, kind="stable")  # read the memory map in file order
        out = np.empty((len(rows), *self.images.shape[1:]), dtype=np.uint8)
        out[order] = self.images[rows[order]]
        return out

    def gather_masks(self, index: np.ndarray) -> np.ndarray:
        """``(B, H, W)`` ``uint8`` masks of positions ``index`` (segmentation data only)."""
        if self.masks is None:
            raise ValueError(f"The '{self.split}' split has no lesion masks (not a segmentation data set)")
        return np.ascontiguousarray(self.masks[self.rows[np.asarray(index, dtype=np.int64)]])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any]:
        image = torch.from_numpy(np.array(self.images[self.rows[i]])).permute(2, 0, 1)
        if self.masks is not None:
            return image, torch.from_numpy(np.array(self.masks[self.rows[i]]))
        return image, int(self.targets[i])
