"""Segmentation data: images with a binary lesion mask each (the ``mask`` column of the index, or in-memory
``masks``), in the layouts people download them in.

* ``isic2018_seg``: the ISIC 2018 Task 1 layout (``ISIC2018_Task1-2_<Part>_Input/<id>.jpg`` with
  ``ISIC2018_Task1_<Part>_GroundTruth/<id>_segmentation.png``, parts Training / Validation / Test, the latter two
  used as those splits), or the HAM10000 lesion masks beside the Task 3 layout
  (``HAM10000_segmentations_lesion_tschandl/<id>_segmentation.png`` next to ``ISIC2018_Task3_Training_Input``).
  With ``HAM10000_metadata.csv`` images of one lesion form one group (splits never cut a lesion) and its columns
  (age bin, sex, body site, how the diagnosis was confirmed, and the diagnosis ``dx``) are metadata for subgroup
  reports.
* ``seg_folder``: a generic folder pair, ``root/images/<stem>.<ext>`` and ``root/masks/<stem><suffix>.png``.
* ``seg_demo``: generated lesions with their masks (no files, seconds to make).

Every image's label is ``lesion`` (the ``lesion`` taxonomy: background / lesion); a missing mask is indexed with
the path where it was expected, so the mask cache reports it (an error, or skipped under
``data.on_bad_image: skip``) like an unreadable one.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import read_csv
from ..taxonomy import get_taxonomy
from .base import CONTENT_GROUPS, DataIndex, check_member, list_images, make_table
from .demo import CLASS_SHARES, SPLIT_SIZES, generate_lesions
from .isic import METADATA as ISIC_METADATA
from .isic import _metadata

TASK1 = "ISIC2018_Task1"
TASK1_PARTS = {"Training": "train", "Validation": "val", "Test": "test"}
HAM_MASKS = "HAM10000_segmentations_lesion_tschandl"
MASK_SUFFIX = "_segmentation"
LESION = 1  # the label of every segmentation image (the `lesion` class)


def _rows(images: list[Path], mask_dir: Path, suffix: str, split: str, root: Path,
          allow_outside_root: bool) -> tuple[list[dict], list[str]]:
    """One row per image with its mask's path, and a problem for each image left out because its mask may not be
    used (the rule images follow: a symlink that leaves the data root, a dangling link, a name that is not UTF-8)."""
    rows, problems = [], []
    for p in images:
        mask = mask_dir / f"{p.stem}{suffix}.png"
        why = check_member(mask, root, allow_outside_root) if mask.is_symlink() or mask.exists() else None
        if why:
            problems.append(f"mask {why} (its image {p.name} is left out too)")
            continue
        rows.append({"path": str(p), "mask": str(mask), "label": LESION, "id": p.stem, "split": split,
                     "group": None})
    return rows, problems


def index_isic2018_seg(root: str | Path, allow_outside_root: bool = False) -> DataIndex:
    root = Path(root)
    rows, problems = [], []
    task1 = [part for part in TASK1_PARTS if (root / f"{TASK1}-2_{part}_Input").is_dir()]
    if task1:
        for part in task1:
            inputs, truth = root / f"{TASK1}-2_{part}_Input", root / f"{TASK1}_{part}_GroundTruth"
            if not truth.is_dir():
                raise FileNotFoundError(f"Expected the mask folder {truth} beside {inputs} (ISIC 2018 Task 1)")
            files, probs = list_images(inputs, root, allow_outside_root)
            problems += [p for p in probs if "superpixels" not in p]
            part_rows, part_problems = _rows([f for f in files if "superpixels" not in f.stem], truth, MASK_SUFFIX,
                                             TASK1_PARTS[part], root, allow_outside_root)
            rows, problems = rows + part_rows, problems + part_problems
    else:
        inputs, masks = root / "ISIC2018_Task3_Training_Input", root / HAM_MASKS
        if not inputs.is_dir() or not masks.is_dir():
            raise FileNotFoundError(f"{root}: expected the ISIC 2018 Task 1 layout ({TASK1}-2_Training_Input/ and "
                                    f"{TASK1}_Training_GroundTruth/) or the HAM10000 masks ({HAM_MASKS}/ beside "
                                    f"ISIC2018_Task3_Training_Input/)")
        files, problems = list_images(inputs, root, allow_outside_root)
        rows, more = _rows(files, masks, MASK_SUFFIX, "train", root, allow_outside_root)
        problems += more
    meta = _metadata(root)
    columns = [*ISIC_METADATA, "dx"]
    dx: dict[str, str] = {}
    if meta is not None:
        table = read_csv(root / "HAM10000_metadata.csv")
        if "dx" in table.columns:
            dx = dict(zip(table["image_id"].astype(str), table["dx"].astype(str)))
    info = {} if meta is None else meta.to_dict("index")
    for row in rows:
        m = info.get(row["id"])
        row["group"] = None if m is None else m["lesion_id"]
        row.update({c: "unknown" if m is None else m[c] for c in ISIC_METADATA})
        row["dx"] = dx.get(row["id"], "unknown")
    if meta is None:
        problems.append("HAM10000_metadata.csv not found: no lesion ids, so images of one lesion may fall on both "
                        "sides of a carved split")
    unit = "lesion (lesion_id of HAM10000_metadata.csv)" if meta is not None else CONTENT_GROUPS
    return DataIndex(make_table(rows), get_taxonomy("lesion"), problems=problems, metadata=columns,
                     group_unit=unit)


def index_seg_folder(root: str | Path, images: str = "images", masks: str = "masks", mask_suffix: str = "",
                     allow_outside_root: bool = False) -> DataIndex:
    """``root/<images>/<stem>.*`` with ``root/<masks>/<stem><mask_suffix>.png``."""
    root = Path(root)
    image_dir, mask_dir = root / images, root / masks
    for folder, what in ((image_dir, "images"), (mask_dir, "masks")):
        if not folder.is_dir():
            raise FileNotFoundError(f"Expected the {what} folder {folder} (data.options.{what})")
    files, problems = list_images(image_dir, root, allow_outside_root)
    if not files:
        raise ValueError(f"{image_dir}: no image files")
    rows, more = _rows(files, mask_dir, mask_suffix, "", root, allow_outside_root)
    return DataIndex(make_table(rows), get_taxonomy("lesion"), problems=problems + more)


def index_seg_demo(root: object = None, size: int = 64, seed: int = 0, scale: float = 1.0) -> DataIndex:
    """Generated lesions (the demo's four kinds) with their masks, fixed train / val / test splits."""
    if not 0 < scale <= 10:
        raise ValueError(f"Expected demo `scale` in (0, 10], but got {scale}")
    rng = np.random.default_rng(seed)
    shares = np.array(list(CLASS_SHARES.values()))
    rows, kinds = [], []
    for split, n in SPLIT_SIZES.items():
        n = max(int(n * scale), 8)
        kinds.append(rng.choice(len(shares), size=n, p=shares))
        rows += [{"path": f"seg_demo/{split}/{split}_{i:05d}", "label": LESION, "group": f"{split}_{i:05d}",
                  "id": f"{split}_{i:05d}", "split": split, "kind": list(CLASS_SHARES)[k]}
                 for i, k in enumerate(kinds[-1])]
    images, masks = generate_lesions(np.concatenate(kinds), size, rng, return_masks=True)
    return DataIndex(make_table(rows), get_taxonomy("lesion"), images=images, masks=masks, metadata=["kind"],
                     group_unit="generated image")
