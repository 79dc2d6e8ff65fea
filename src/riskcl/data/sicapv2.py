"""SICAPv2 (Silva-Rodriguez et al. 2020): ``images/*.jpg`` with the official partition spreadsheets.

``partition/Test/{Train,Test}.xlsx`` is the official train / test split; ``partition/Validation/Val1..4`` are
the official cross-validation folds of its training part. Labels come from the one-hot NC / G3 / G4 / G5 columns
(G4C, cribriform, is a G4 sub-flag and does not change the class). The slide id is the image name before
``_Block_Region_``; the official partitions keep every slide on one side. Metadata column: ``slide``.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..taxonomy import get_taxonomy
from .base import DataIndex, make_table
from .paths import safe_join

CLASSES = ("NC", "G3", "G4", "G5")
PARTITIONS = ("test", "val1", "val2", "val3", "val4")


def slide_id(image_name: str) -> str:
    """``16B0001851_Block_Region_1_0_0_xini_6803_yini_59786.jpg`` -> ``16B0001851``."""
    return str(image_name).split("_Block_Region_")[0]


def read_partition(path: Path) -> pd.DataFrame:
    """``(image_name, label)`` from an official partition spreadsheet, one row per patch."""
    if not path.is_file():
        raise FileNotFoundError(f"Expected the SICAPv2 partition file {path}")
    try:
        df = pd.read_excel(path)
    except Exception as exc:
        raise ValueError(f"{path}: unreadable spreadsheet ({type(exc).__name__}: {exc})") from None
    missing = [c for c in ("image_name", *CLASSES) if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected image_name, NC, G3, G4, G5 (, G4C)")
    onehot = df[list(CLASSES)].to_numpy()
    labels = []
    for i, (name, row) in enumerate(zip(df["image_name"], onehot)):
        if (row == 1).sum() != 1 or not set(row.tolist()) <= {0, 1}:
            raise ValueError(f"{path}, row {i + 2} ({name}): expected exactly one 1 among {list(CLASSES)}, "
                             f"but got {dict(zip(CLASSES, row.tolist()))}")
        labels.append(int(row.argmax()))
    return pd.DataFrame({"image_name": df["image_name"].astype(str), "label": labels})


def index_sicapv2(root: str | Path, partition: str = "test", check_files: bool = True,
                  allow_outside_root: bool = False) -> DataIndex:
    """``partition``: ``test`` (official train / test; validation carved by slide from train) or ``valN``
    (train = ValN/Train, val = ValN/Test, test = the official Test/Test)."""
    root = Path(root)
    if partition not in PARTITIONS:
        raise ValueError(f"Unknown SICAPv2 partition '{partition}'; expected one of {PARTITIONS}")
    part = root / "partition"
    if partition == "test":
        sources = {"train": part / "Test" / "Train.xlsx", "test": part / "Test" / "Test.xlsx"}
    else:
        fold = part / "Validation" / f"Val{partition[-1]}"
        sources = {"train": fold / "Train.xlsx", "val": fold / "Test.xlsx", "test": part / "Test" / "Test.xlsx"}
    images = root / "images"
    if check_files and not images.is_dir():
        raise FileNotFoundError(f"Expected the SICAPv2 patch folder {images} (images/*.jpg)")
    rows, missing = [], []
    for split, path in sources.items():
        for name, label in zip(*read_partition(path).to_dict("list").values()):
            file = safe_join(images, name, allow_outside_root, source=str(path))
            if check_files and not file.is_file():
                missing.append(f"{path.name}: {name}")
            rows.append({"path": str(file), "label": label, "group": slide_id(name), "id": Path(name).stem,
                         "split": split, "slide": slide_id(name)})
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) named in the partition files are missing from {images}, "
                                f"e.g. {missing[:3]}")
    return DataIndex(make_table(rows), get_taxonomy("sicapv2"), metadata=["slide"],
                     group_unit="slide (the image name before _Block_Region_)")
