"""Lesion masks: decoding with checks that name the file, the nearest-neighbour resize, and the mask cache.

A mask is a PNG (or any format Pillow reads) holding two values: 0 for background and 255 (or 1) for lesion.
It may have another resolution than its image (HAM10000's are 600 x 450 for 200 x 150 images) but not another
aspect ratio. It is resized to the model's square input with nearest-neighbour sampling (output pixel ``i``
takes input pixel ``floor((i + 0.5) * n_in / n_out)``: no new values, no blur), on the same square grid the
image is resized to. Masks are cached like images, as a memory-mapped ``uint8`` array ``(N, size, size)`` of 0 / 1
under the user cache folder, keyed by the mask files' fingerprint.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .decoding import BadImageError

ASPECT_TOLERANCE = 0.02  # relative difference of height / width allowed between a mask and its image


def decode_mask(path: str | os.PathLike, image_hw: tuple[int, int] | None = None) -> np.ndarray:
    """``(H, W)`` bool lesion mask of ``path``; :class:`BadImageError` naming the file when it is missing,
    unreadable, not binary, or of another aspect ratio than its image (``image_hw``)."""
    from PIL import Image, UnidentifiedImageError

    p = os.fsdecode(path)
    if not os.path.isfile(p):
        raise BadImageError(p, "mask file not found")
    try:
        with Image.open(p) as im:
            im.load()
            # A palette image is read through its palette (an index means nothing by itself: index 0 may be
            # white), then checked like any mask: only black and white pass.
            arr = np.asarray(im.convert("L") if im.mode not in ("1", "L", "I", "I;16") else im)
            palette = im.mode in ("P", "PA")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(p, f"cannot decode mask ({type(exc).__name__}: {exc})") from None
    if arr.ndim != 2:
        raise BadImageError(p, f"expected a one-channel mask, but got shape {arr.shape}")
    values = np.unique(arr)
    if arr.dtype == bool:
        mask = arr
    elif set(values.tolist()) <= {0, 255}:
        mask = arr == 255
    elif set(values.tolist()) <= {0, 1}:
        mask = arr == 1
    else:
        shown = values[:6].tolist()
        what = "a palette mask whose colours are not black and white (grey levels " if palette else "not a binary " \
            "mask: values "
        raise BadImageError(p, f"{what}{shown}{' ...' if len(values) > 6 else ''}{')' if palette else ''}; expected "
                               f"only 0 (background) and 255 or 1 (lesion)")
    if image_hw is not None:
        ih, iw = image_hw
        mh, mw = mask.shape
        if abs((mh / mw) / (ih / iw) - 1) > ASPECT_TOLERANCE:
            raise BadImageError(p, f"mask of {mw} x {mh} pixels has another aspect ratio than its image "
                                   f"({iw} x {ih}); expected the same shape or a uniform rescale of it")
    return mask


def regrid(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(H, W)`` values on another ``(height, width)`` grid by nearest neighbour (output pixel ``i`` takes input
    pixel ``floor((i + 0.5) * n_in / n_out)``): masks to the model's square, and model maps back onto an image."""
    h, w = values.shape
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
    return np.ascontiguousarray(values[rows][:, cols])


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """``(H, W)`` mask -> ``(size, size)`` ``uint8`` 0 / 1 by nearest-neighbour sampling (see module docstring)."""
    return regrid(mask, size, size).astype(np.uint8)


def image_shape(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(height, width)`` of an image file from its header, or None when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except Exception:  # the image's own decoding reports what is wrong with it
        return None


def _load(args: tuple[str, str, int]) -> np.ndarray | str:
    mask_path, image_path, size = args
    try:
        return resize_mask(decode_mask(mask_path, image_shape(image_path) if image_path else None), size)
    except BadImageError as exc:
        return exc.reason


def cached_masks(name: str, mask_paths: Sequence[str], image_paths: Sequence[str], size: int, cache_dir: Path,
                 progress: bool = True) -> tuple[np.ndarray, dict[str, str]]:
    """The memory-mapped ``(N, size, size)`` ``uint8`` masks and the ``{mask path: reason}`` of bad ones; built on
    a miss (:func:`riskcl.data.images.cached_array`)."""
    from tqdm.auto import tqdm

    from .images import cached_array, fingerprint

    def build(arr: np.ndarray) -> dict:
        bad: dict[str, str] = {}
        jobs = list(zip(mask_paths, image_paths, [size] * len(mask_paths)))
        for i, job in enumerate(tqdm(jobs, desc=f"decoding {len(jobs)} masks @{size}px", disable=not progress,
                                     leave=False, mininterval=2.0)):
            res = _load(job)
            if isinstance(res, str):
                bad[mask_paths[i]] = res
            else:
                arr[i] = res
        return {"name": name, "size": size, "n": len(mask_paths), "bad": bad}

    present = [p for p in mask_paths if os.path.isfile(p)]
    key = fingerprint(present, f"masks|{name}|{size}|{len(mask_paths)}|" + "|".join(mask_paths[:1]))
    arr, meta = cached_array(cache_dir, f"{name}-masks-{size}px-{key}", (len(mask_paths), size, size), build)
    return arr, meta["bad"]


def resize_mask_array(masks: np.ndarray, size: int) -> np.ndarray:
    """In-memory ``(N, H, W)`` masks resized to ``(N, size, size)`` ``uint8`` 0 / 1."""
    if masks.shape[1:] == (size, size):
        return masks.astype(np.uint8)
    return np.stack([resize_mask(m.astype(bool), size) for m in masks]) if len(masks) else \
        np.zeros((0, size, size), np.uint8)
