"""ISIC 2018 Task 3 (HAM10000) in its official layout.

``ISIC2018_Task3_Training_Input/ISIC_xxxxxxx.jpg`` with the one-hot
``ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv`` (columns image, MEL, NV, BCC,
AKIEC, BKL, DF, VASC). When ``HAM10000_metadata.csv`` (lesion_id, image_id, dx, ...) is present, images of one
lesion form one group, so splits never put a lesion on both sides. Official ``Validation`` / ``Test`` inputs
and ground truth, when present, are used as those splits; otherwise validation, calibration and test are carved
by lesion (the HAM10000 download is exactly this: the Training layout plus the metadata file).

Metadata columns (from ``HAM10000_metadata.csv``): ``age`` in bins (``<30``, ``30-44``, ``45-59``, ``60-74``,
``75+``, ``unknown``), ``sex``, ``localization`` (body site) and ``dx_type`` (how the diagnosis was confirmed).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..io import read_csv
from ..taxonomy import get_taxonomy
from .base import CONTENT_GROUPS, DataIndex, check_member, make_table
from .decoding import IMAGE_EXTENSIONS
from .paths import safe_join

PREFIX = "ISIC2018_Task3"
OFFICIAL_SPLITS = {"Training": "train", "Validation": "val", "Test": "test"}


def read_one_hot_csv(path: Path, classes: tuple[str, ...], id_column: str = "image") -> pd.DataFrame:
    """``(image, label)`` rows from a one-hot CSV; errors name the file, row and what was expected."""
    df = read_csv(path, dtype={id_column: str}, keep_default_na=True)
    expected = [id_column, *classes]
    missing = [c for c in expected if c not in df.columns]
    extra = [c for c in df.columns if c not in expected]
    if missing or extra:
        raise ValueError(f"{path}: expected columns {expected}, but missing {missing} and unexpected {extra}")
    onehot = df[list(classes)].apply(pd.to_numeric, errors="coerce")
    rows = []
    for i, (name, vals) in enumerate(zip(df[id_column], onehot.to_numpy())):
        line = i + 2  # header is line 1
        if pd.isna(name) or not str(name).strip():
            raise ValueError(f"{path}, line {line}: empty `{id_column}`")
        ones = [c for c, v in zip(classes, vals) if v == 1]
        bad = [c for c, v in zip(classes, vals) if not (v == 0 or v == 1)]
        if bad or len(ones) != 1:
            raise ValueError(f"{path}, line {line} ({name}): expected exactly one 1 among {list(classes)} and 0 "
                             f"elsewhere, but got {dict(zip(classes, vals.tolist()))}")
        rows.append((str(name).strip(), classes.index(ones[0])))
    return pd.DataFrame(rows, columns=["image", "label"])


METADATA = ("age", "sex", "localization", "dx_type")
AGE_BINS = ((30, "<30"), (45, "30-44"), (60, "45-59"), (75, "60-74"))
AGE_RANGE = (0.0, 120.0)  # a possible age in years; anything else is a data error, read as unknown


def age_bin(value: object) -> str:
    """``"45-59"`` for 52.0; ``"unknown"`` when missing, not a number or impossible (outside :data:`AGE_RANGE`)."""
    try:
        age = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "unknown"
    if not AGE_RANGE[0] <= age <= AGE_RANGE[1]:  # NaN and infinities included
        return "unknown"
    return next((name for bound, name in AGE_BINS if age < bound), "75+")


def impossible_ages(values) -> list[str]:
    """The values of an age column that are given but impossible (not a number, or outside :data:`AGE_RANGE`)."""
    out = []
    for v in values:
        if v is None or (isinstance(v, float) and v != v) or not str(v).strip():
            continue
        if age_bin(v) == "unknown":
            out.append(str(v))
    return out


def _metadata(root: Path) -> pd.DataFrame | None:
    """``HAM10000_metadata.csv`` indexed by image id (lesion_id and the metadata columns), or None."""
    meta = root / "HAM10000_metadata.csv"
    if not meta.is_file():
        return None
    df = read_csv(meta)
    for col in ("lesion_id", "image_id"):
        if col not in df.columns:
            raise ValueError(f"{meta}: expected a column '{col}' (columns: {list(df.columns)})")
    lesion = df["lesion_id"].to_numpy(dtype=object)
    out = pd.DataFrame({"lesion_id": [v if v else None for v in lesion]}, index=df["image_id"].to_numpy())
    ages = df.get("age", pd.Series([""] * len(df)))
    out["age"] = [age_bin(v) for v in ages]
    for col in ("sex", "localization", "dx_type"):
        out[col] = (df[col] if col in df.columns else pd.Series([""] * len(df))).replace("", "unknown").to_numpy()
    dup = out.index.duplicated(keep=False)
    if dup.any():
        rows = out.loc[dup]
        conflicting = [i for i in rows.index.unique() if len(rows.loc[[i]].drop_duplicates()) > 1]
        if conflicting:
            lines = [int(k) + 2 for k in np.flatnonzero(df["image_id"].to_numpy() == conflicting[0])]
            raise ValueError(f"{meta}: image '{conflicting[0]}' has {len(lines)} rows that disagree (lines {lines}); "
                             f"keep one row per image")
    out = out[~out.index.duplicated()].copy()
    out.attrs["impossible_ages"] = impossible_ages(ages)
    return out


def index_isic2018(root: str | Path, allow_outside_root: bool = False) -> DataIndex:
    root = Path(root)
    taxonomy = get_taxonomy("isic2018")
    meta = _metadata(root)
    meta_rows = {} if meta is None else meta.to_dict("index")
    rows, problems = [], []
    bad_ages = [] if meta is None else meta.attrs.get("impossible_ages", [])
    if bad_ages:
        problems.append(f"HAM10000_metadata.csv: {len(bad_ages)} impossible age(s) (not a number in "
                        f"{AGE_RANGE[0]:g}-{AGE_RANGE[1]:g} years: {sorted(set(bad_ages))[:5]}) read as unknown")
    for part, split in OFFICIAL_SPLITS.items():
        inputs = root / f"{PREFIX}_{part}_Input"
        truth = root / f"{PREFIX}_{part}_GroundTruth" / f"{PREFIX}_{part}_GroundTruth.csv"
        if part != "Training" and not inputs.is_dir() and not truth.is_file():
            continue
        if not inputs.is_dir():
            raise FileNotFoundError(f"Expected the folder {inputs} (ISIC 2018 Task 3 images)")
        if not truth.is_file():
            raise FileNotFoundError(f"Expected the ground-truth file {truth}")
        labels = read_one_hot_csv(truth, taxonomy.classes)
        if labels["image"].duplicated().any():
            dup = labels.loc[labels["image"].duplicated(), "image"].iloc[0]
            raise ValueError(f"{truth}: image '{dup}' is listed twice")
        files = {}
        for p in sorted(inputs.iterdir()):
            why = check_member(p, root, allow_outside_root)
            if why:
                problems.append(why)
            elif p.suffix.lower() in IMAGE_EXTENSIONS:
                files[p.stem] = p
            elif not p.name.startswith("."):
                problems.append(f"{p}: not an image (ignored)")
        unlabeled = sorted(set(files) - set(labels["image"]))
        if unlabeled:
            raise ValueError(f"{inputs}: {len(unlabeled)} image(s) without a label in {truth.name}, e.g. "
                             f"{files[unlabeled[0]].name}")
        for name, label in zip(labels["image"], labels["label"]):
            path = files.get(name)
            if path is None:
                candidate = safe_join(inputs, f"{name}.jpg", allow_outside_root, source=str(truth))
                raise FileNotFoundError(f"{truth}: row '{name}' names a missing image (expected {candidate})")
            info = meta_rows.get(name)
            rows.append({"path": str(path), "label": int(label), "id": name, "split": split,
                         "group": None if info is None else info["lesion_id"],
                         **{c: "unknown" if info is None else info[c] for c in METADATA}})
    no_meta = sum(1 for r in rows if r["group"] is None) if meta is not None else 0
    if no_meta:
        problems.append(f"HAM10000_metadata.csv has no row for {no_meta} image(s): no lesion id (each is its own "
                        f"group) and metadata 'unknown'")
    if meta is None:
        problems.append("HAM10000_metadata.csv not found: no lesion ids, so images of one lesion may fall on "
                        "both sides of a carved split")
    unit = "lesion (lesion_id of HAM10000_metadata.csv)" if meta is not None else CONTENT_GROUPS
    return DataIndex(make_table(rows), taxonomy, problems=problems, metadata=list(METADATA), group_unit=unit,
                     label_derived=["dx_type"])
