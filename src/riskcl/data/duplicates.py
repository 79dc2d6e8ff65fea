"""Exact-duplicate detection by content hash (MD5 of the file bytes), within and across splits."""
from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas only for the annotations: the config imports the defaults below
    import pandas as pd

DUPLICATE_POLICIES = ("warn", "drop", "error")
# The default keeps test clean: a copy of a training image in a later split is dropped from it (and counted). On
# Brain Tumor MRI 79 groups of byte-identical images sit in both the official Training and Testing folders; "warn"
# keeps them, to reproduce a paper's protocol, and makes every test figure include images the model trained on.
DEFAULT_DUPLICATES = "drop"


def file_md5(path: str) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def duplicate_groups(table: pd.DataFrame) -> list[dict]:
    """Groups of byte-identical files: ``[{"files": [...], "splits": [...], "labels": [...]}]``.

    ``table`` needs the columns ``path``, ``hash`` and ``split``.
    """
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i, h in enumerate(table["hash"]):
        by_hash[h].append(i)
    groups = []
    for idx in by_hash.values():
        if len(idx) > 1:
            rows = table.iloc[idx]
            groups.append({"files": rows["path"].tolist(), "splits": sorted(set(rows["split"])),
                           "labels": sorted(set(int(v) for v in rows["label"]))})
    return groups


def summarize_duplicates(groups: list[dict]) -> dict:
    """Counts of duplicate groups within one split and across splits, and of groups spanning two labels."""
    across = [g for g in groups if len(g["splits"]) > 1]
    return {
        "groups": len(groups),
        "redundant_files": sum(len(g["files"]) - 1 for g in groups),
        "across_splits": len(across),
        "within_split": len(groups) - len(across),
        "conflicting_labels": sum(1 for g in groups if len(g["labels"]) > 1),
    }
