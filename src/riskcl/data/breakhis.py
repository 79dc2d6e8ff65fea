"""BreaKHis (Spanhol et al. 2016) in the official ``BreaKHis_v1/histology_slides/breast/...`` tree.

Class, patient id and magnification come from the file name, e.g. ``SOB_B_A-14-22549AB-40-001.png``:
``B``/``M`` (benign / malignant), tumour type code (``A`` adenosis, ``F`` fibroadenoma, ``PT`` phyllodes tumour,
``TA`` tubular adenoma, ``DC`` ductal, ``LC`` lobular, ``MC`` mucinous, ``PC`` papillary carcinoma), patient
(``14-22549AB``), magnification (40, 100, 200, 400) and image number. Splits group by patient.
Metadata columns: ``magnification`` and ``subtype`` (the tumour type).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from ..taxonomy import get_taxonomy
from .base import DataIndex, check_member, make_table

NAME = re.compile(r"^SOB_([BM])_([A-Z]+)-(\d+-[0-9A-Z]+)-(\d+)-(\d+)\.png$", re.IGNORECASE)
TYPE_CODES = {"A": "adenosis", "F": "fibroadenoma", "PT": "phyllodes_tumor", "TA": "tubular_adenoma",
              "DC": "ductal_carcinoma", "LC": "lobular_carcinoma", "MC": "mucinous_carcinoma",
              "PC": "papillary_carcinoma"}
MAGNIFICATIONS = (40, 100, 200, 400)


def parse_breakhis_name(name: str) -> dict:
    """``{"class", "malignant", "patient", "magnification", "number"}`` from a BreaKHis file name."""
    m = NAME.match(name)
    if not m:
        raise ValueError(f"{name}: not a BreaKHis file name (expected SOB_<B|M>_<type>-<patient>-<mag>-<n>.png)")
    bm, code, patient, mag, number = m.groups()
    code = code.upper()
    if code not in TYPE_CODES:
        raise ValueError(f"{name}: unknown tumour type code '{code}' (expected one of {sorted(TYPE_CODES)})")
    cls = TYPE_CODES[code]
    malignant = bm.upper() == "M"
    if malignant != cls.endswith("carcinoma"):
        raise ValueError(f"{name}: '{bm}' contradicts the tumour type '{cls}'")
    return {"class": cls, "malignant": malignant, "patient": patient, "magnification": int(mag),
            "number": int(number)}


def _breast_dir(root: Path) -> Path:
    for cand in (root / "BreaKHis_v1" / "histology_slides" / "breast", root / "histology_slides" / "breast", root):
        if (cand / "benign").is_dir() or (cand / "malignant").is_dir():
            return cand
    raise FileNotFoundError(f"{root}: expected BreaKHis_v1/histology_slides/breast/{{benign,malignant}}/SOB/...")


def index_breakhis(root: str | Path, magnifications: Sequence[int] | str = "all",
                   allow_outside_root: bool = False) -> DataIndex:
    root = Path(root)
    mags = MAGNIFICATIONS if magnifications == "all" else tuple(int(m) for m in magnifications)
    bad = [m for m in mags if m not in MAGNIFICATIONS]
    if bad:
        raise ValueError(f"Unknown BreaKHis magnification(s) {bad}; expected some of {MAGNIFICATIONS} or 'all'")
    taxonomy = get_taxonomy("breakhis")
    breast = _breast_dir(root)
    rows, problems = [], []
    for path in sorted(breast.rglob("*")):
        if path.name.startswith(".") or path.is_dir():
            continue
        why = check_member(path, root, allow_outside_root)
        if why:
            problems.append(why)
            continue
        if path.suffix.lower() != ".png":
            problems.append(f"{path}: not a BreaKHis image (ignored)")
            continue
        info = parse_breakhis_name(path.name)
        folder_class = path.parts[-4] if len(path.parts) >= 4 else ""
        if folder_class in taxonomy.classes and folder_class != info["class"]:
            raise ValueError(f"{path}: the file name says '{info['class']}' but the folder says '{folder_class}'")
        if info["magnification"] not in mags:
            continue
        rows.append({"path": str(path), "label": taxonomy.index(info["class"]), "group": info["patient"],
                     "id": path.stem, "split": "", "magnification": str(info["magnification"]),
                     "subtype": info["class"]})
    if not rows:
        raise ValueError(f"{breast}: no BreaKHis images at magnification(s) {list(mags)}")
    return DataIndex(make_table(rows), taxonomy, problems=problems, metadata=["magnification", "subtype"],
                     group_unit="patient (from the file name)")
