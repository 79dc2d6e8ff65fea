"""Brain Tumor MRI (Nickparvar, Kaggle): ``Training/<class>/*.jpg`` and ``Testing/<class>/*.jpg``.

Classes glioma, meningioma, notumor, pituitary; notumor is benign. There are no patient ids, so each image's
content hash serves as its group: byte-identical copies always land on the same side of the train/val split.
"""
from __future__ import annotations

from pathlib import Path

from ..taxonomy import get_taxonomy
from .base import DataIndex, make_table, scan_class_folders


def index_brain_mri(root: str | Path, allow_outside_root: bool = False) -> DataIndex:
    root = Path(root)
    taxonomy = get_taxonomy("brain_mri")
    rows, problems = [], []
    for folder, split in (("Training", "train"), ("Testing", "test")):
        r, p = scan_class_folders(root / folder, taxonomy, split, root, allow_outside_root)
        rows += r
        problems += p
    return DataIndex(make_table(rows), taxonomy, problems=problems)  # no patient ids: content groups
