"""A user's own data: an image folder (``root/<class>/*`` or ``root/{train,val,calib,test}/<class>/*``) or a CSV
(``path, label`` and optional ``group`` and ``split`` columns), each with a taxonomy (YAML file, mapping or
built-in name). Paths in a CSV, and symlinks in a folder, may not leave ``root`` unless ``allow_outside_root``.

Metadata for subgroup analysis: the CSV's own columns named in ``metadata``; for a folder, an optional CSV
(``metadata_csv``, relative to ``root``) with a ``file`` column (the image file name) and any other columns.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from ..io import read_csv
from ..taxonomy import load_taxonomy
from .base import SPLITS, DataIndex, make_table, scan_class_folders
from .paths import safe_join


def _taxonomy(taxonomy: Any, name: str):
    if taxonomy is None:
        raise ValueError(f"Dataset '{name}' needs the option `taxonomy` (a YAML file, a mapping or a built-in name)")
    return load_taxonomy(taxonomy)


def _folder_metadata(root: Path, metadata_csv: str, rows: list[dict], allow_outside_root: bool) -> list[str]:
    path = safe_join(root, metadata_csv, allow_outside_root, source="data.options.metadata_csv")
    if not path.is_file():
        raise FileNotFoundError(f"Expected the metadata file {path} (data.options.metadata_csv)")
    df = read_csv(path)
    if "file" not in df.columns:
        raise ValueError(f"{path}: expected a column 'file' (the image file name) and metadata columns, but got "
                         f"{list(df.columns)}")
    if df["file"].duplicated().any():
        raise ValueError(f"{path}: file '{df.loc[df['file'].duplicated(), 'file'].iloc[0]}' is listed twice")
    columns = [c for c in df.columns if c != "file"]
    by_file = df.set_index("file")[columns].to_dict("index")
    missing = []
    for row in rows:
        values = by_file.get(Path(row["path"]).name)
        if values is None:
            missing.append(Path(row["path"]).name)
        row.update({c: (values or {}).get(c, "unknown") or "unknown" for c in columns})
    if missing:
        warnings.warn(f"{path}: {len(missing)} image(s) have no row (e.g. {missing[:3]}); their metadata is "
                      f"'unknown'", UserWarning, stacklevel=2)
    return columns


def index_folder(root: str | Path, taxonomy: Any = None, metadata_csv: str | None = None,
                 allow_outside_root: bool = False) -> DataIndex:
    root = Path(root)
    tax = _taxonomy(taxonomy, "folder")
    if not root.is_dir():
        raise FileNotFoundError(f"Expected the image folder {root}")
    split_dirs = [s for s in SPLITS if (root / s).is_dir()]
    rows, problems = [], []
    if split_dirs:
        for split in split_dirs:
            r, p = scan_class_folders(root / split, tax, split, root, allow_outside_root)
            rows += r
            problems += p
    else:
        rows, problems = scan_class_folders(root, tax, "", root, allow_outside_root)
    columns = _folder_metadata(root, metadata_csv, rows, allow_outside_root) if metadata_csv else []
    return DataIndex(make_table(rows), tax, problems=problems, metadata=columns)


def index_csv(root: str | Path, csv: str = "labels.csv", taxonomy: Any = None, metadata: list | None = None,
              allow_outside_root: bool = False) -> DataIndex:
    root = Path(root)
    tax = _taxonomy(taxonomy, "csv")
    path = safe_join(root, csv, allow_outside_root, source="data.options.csv")
    if not path.is_file():
        raise FileNotFoundError(f"Expected the label file {path}")
    df = read_csv(path)
    for col in ("path", "label"):
        if col not in df.columns:
            raise ValueError(f"{path}: missing column '{col}'; expected path,label[,group][,split] "
                             f"(found {list(df.columns)})")
    columns = [str(c) for c in (metadata or [])]
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: metadata column(s) {missing} (data.options.metadata) not found; columns are "
                         f"{list(df.columns)}")
    rows, seen = [], {}
    for i, rec in enumerate(df.to_dict("records")):
        where = f"{path}, line {i + 2}"
        if rec["label"] not in tax.classes:
            raise ValueError(f"{where}: unknown class '{rec['label']}'; expected one of {list(tax.classes)}")
        split = rec.get("split", "") or ""
        if split not in ("", *SPLITS):
            raise ValueError(f"{where}: unknown split '{split}'; expected one of {SPLITS} or empty")
        file = safe_join(root, rec["path"], allow_outside_root, source=where)
        if not file.is_file():
            raise FileNotFoundError(f"{where}: names a missing image {file}")
        key = str(file.resolve())
        if key in seen:  # one file listed twice: the same label is a harmless repeat, another label a conflict
            line, label = seen[key]
            if label != rec["label"]:
                raise ValueError(f"{path}: lines {line} and {i + 2} list the same image {rec['path']} with "
                                 f"conflicting labels '{label}' and '{rec['label']}'; keep one")
            warnings.warn(f"{path}: line {i + 2} repeats {rec['path']} (line {line}, same label); it is used once",
                          UserWarning, stacklevel=2)
            continue
        seen[key] = (i + 2, rec["label"])
        rows.append({"path": str(file), "label": tax.index(rec["label"]), "group": rec.get("group") or None,
                     "id": Path(rec["path"]).stem, "split": split,
                     **{c: rec[c] or "unknown" for c in columns}})
    if not rows:
        raise ValueError(f"{path}: no rows")
    labels = {r["label"] for r in rows}
    empty = [c for k, c in enumerate(tax.classes) if k not in labels]
    if empty:
        raise ValueError(f"{path}: empty class(es) {empty}: no row has that label")
    unit = "the `group` column of the CSV (image content where empty)" if "group" in df.columns else None
    return DataIndex(make_table(rows), tax, metadata=columns, **({"group_unit": unit} if unit else {}))
