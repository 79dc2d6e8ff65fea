"""What a segmentation model's prediction of one image is, as riskcl writes it (numpy and Pillow only: no PyTorch).

For each image: the mask at the operating point's pixel threshold, mapped back onto the image's own pixels
(nearest neighbour from the model's square grid), written as a PNG (0 background, 255 lesion) with an overlay of
its outline on the image; and a CSV row: the lesion's area in pixels and as a share of the image, the mean
p(lesion) inside it, and the *uncertain share*: the part of the predicted lesion whose p(lesion) lies between the
calibrated threshold and 0.5, i.e. the pixels that the guarantee added to (or, above 0.5, removed from) the plain
0.5 rule. The row says ``refer`` (a person should look at the outline) when that share exceeds
:data:`UNCERTAIN_SHARE` or when no lesion is found, else ``segmented``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..data.masks import regrid as to_image_grid  # a model-grid map onto an image's pixels (nearest neighbour)
from ..decision import OperatingPoint
from ..io import distinct_stems
from .prediction_csv import ERROR, ERROR_COLUMN, NONFINITE, SEGMENTATION_COLUMNS

UNCERTAIN_SHARE = 0.25
OUTLINE_RGB = (0, 255, 64)


def outline(mask: np.ndarray) -> np.ndarray:
    """The border pixels of a boolean mask (lesion pixels with a background 4-neighbour or on the image edge)."""
    m = np.asarray(mask, bool)
    padded = np.pad(m, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return m & ~inner


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The ``uint8`` RGB image with the mask's outline drawn on it (two pixels wide)."""
    border = outline(mask)
    border = border | np.roll(border, 1, 0) | np.roll(border, 1, 1)
    out = np.array(image, dtype=np.uint8, copy=True)
    out[border] = OUTLINE_RGB
    return out


def mask_files(mask_dir: Path, name: str) -> tuple[Path, Path]:
    """Where the mask PNG and the outline overlay of image ``name`` go: its stem and a short hash of its path, so
    that inputs with one stem (``a/x.jpg``, ``a/x.png``, ``b/x.jpg``) never overwrite each other, in one run or
    across resumed ones."""
    stem, = distinct_stems([name], always=True)
    return mask_dir / f"{stem}_mask.png", mask_dir / f"{stem}_outline.png"


def segmentation_rows(probs: np.ndarray, op: OperatingPoint, names: Sequence[str], images: Sequence[np.ndarray],
                      mask_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """One row per image (see the module docstring) from ``(N, s, s)`` lesion probabilities on the model's grid;
    with ``mask_dir`` the mask PNG and the outline overlay of each image are written there."""
    from PIL import Image

    t = float(op.threshold)
    rows = []
    if mask_dir is not None:
        Path(mask_dir).mkdir(parents=True, exist_ok=True)
    for name, p, image in zip(names, probs, images):
        if not np.isfinite(np.asarray(p, dtype=np.float32)).all():  # never outlined from a non-finite map
            rows.append({**{c: "" for c in SEGMENTATION_COLUMNS}, "image": str(name), "decision": ERROR,
                         ERROR_COLUMN: NONFINITE})
            continue
        h, w = image.shape[:2]
        p_full = to_image_grid(np.asarray(p, dtype=np.float32), h, w)
        mask = p_full >= t
        area = int(mask.sum())
        lo, hi = min(t, 0.5), max(t, 0.5)
        uncertain = int(((p_full >= lo) & (p_full < hi)).sum())
        share = uncertain / max(area, 1)
        row = {"image": str(name), "decision": "refer" if area == 0 or share > UNCERTAIN_SHARE else "segmented",
               "lesion_px": area, "lesion_share": area / float(h * w),
               "mean_p_lesion": float(p_full[mask].mean()) if area else 0.0, "uncertain_share": float(share),
               "threshold": t, "mask": "", ERROR_COLUMN: ""}
        if mask_dir is not None:
            mask_png, outline_png = mask_files(Path(mask_dir), str(name))
            Image.fromarray(mask.astype(np.uint8) * 255).save(mask_png)
            Image.fromarray(overlay(image, mask)).save(outline_png)
            row["mask"] = str(mask_png)
        rows.append(row)
    return rows
