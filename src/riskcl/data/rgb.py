"""Decoding an image file to the 8-bit RGB array riskcl's models take, with a pixel limit checked before decoding.

This module imports nothing but numpy and Pillow: ``riskcl export`` copies it verbatim into every export folder as
``decode.py``, so that a deployment decodes exactly as riskcl does (16-bit and float greyscale images scaled by
their own range, not clipped by Pillow's ``convert('RGB')``) without installing riskcl.

    >>> import numpy as np
    >>> from PIL import Image
    >>> im = Image.fromarray(np.array([[1000, 3000]], dtype=np.uint16))     # a 16-bit greyscale image
    >>> to_rgb(im)[0, :, 0].tolist()                                        # its own range mapped to 0..255
    [0, 255]
"""
from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image

# The largest image decoded (width x height). Checked from the file's header before any pixel is decoded, so a
# small file that would decode to gigabytes (a decompression bomb) is refused cheaply. Pillow's own limit
# (about 179 megapixels) comes too late: an 11000 x 11000 PNG of 117 KB took 6.9 GB.
DEFAULT_MAX_PIXELS = 50_000_000
MAX_PIXELS_ENV = "RISKCL_MAX_PIXELS"
MIN_SIDE = 8  # smaller images carry nothing a model can read; refused wherever riskcl decodes
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class ImageTooLargeError(ValueError):
    """An image whose header declares more pixels than the limit."""


class ImageTooSmallError(ValueError):
    """An image with a side under :data:`MIN_SIDE` pixels."""


def max_pixels() -> int:
    """The pixel limit: ``$RISKCL_MAX_PIXELS`` when set (a positive integer), else ``DEFAULT_MAX_PIXELS``."""
    raw = os.environ.get(MAX_PIXELS_ENV)
    if raw is None:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"Expected ${MAX_PIXELS_ENV} to be a positive integer, but got {raw!r}")
    return value


def scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Values scaled by their own finite range to ``uint8`` 0..255 (NaN to the minimum, infinities to the ends; a
    constant image is 0); ValueError when no value is finite. The one rule for 16-bit, float and DICOM images."""
    a = np.asarray(values, dtype=np.float64)
    finite = a[np.isfinite(a)]
    if not finite.size:
        raise ValueError("the image holds no finite pixel value (all NaN or infinite)")
    lo, hi = float(finite.min()), float(finite.max())
    a = np.clip(np.nan_to_num(a, nan=lo, posinf=hi, neginf=lo), lo, hi)
    scaled = np.zeros(a.shape) if hi <= lo else (a - lo) / (hi - lo) * 255.0
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def to_rgb(im: Image.Image) -> np.ndarray:
    """``uint8`` ``(H, W, 3)``: 16-bit / 32-bit / float greyscale scaled by the image's own finite range (NaN to
    its minimum; an image with no finite value is refused), every other mode converted by Pillow."""
    if im.mode in WIDE_MODES:
        grey = scale_to_uint8(np.asarray(im, dtype=np.float64))
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode == "RGB":  # already RGB: one copy out of Pillow, not two (a decoded JPEG's usual case)
        return np.array(im, dtype=np.uint8)
    return np.array(im.convert("RGB"), dtype=np.uint8)


def decode_image(source, limit: int | None = None) -> np.ndarray:
    """Decode ``source`` (a path or a binary file object) to ``uint8`` RGB ``(H, W, 3)``; raises
    :class:`ImageTooLargeError` when its header declares more than ``limit`` pixels (default :func:`max_pixels`),
    :class:`ImageTooSmallError` when a side is under :data:`MIN_SIDE` pixels."""
    limit = max_pixels() if limit is None else int(limit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(source) as im:
            w, h = im.size
            if min(w, h) < MIN_SIDE:
                raise ImageTooSmallError(f"image of {w} x {h} pixels is too small; expected at least {MIN_SIDE} x "
                                         f"{MIN_SIDE}")
            if w * h > limit:
                raise ImageTooLargeError(f"image of {w} x {h} pixels ({w * h / 1e6:.1f} megapixels) exceeds the limit "
                                         f"of {limit / 1e6:g} megapixels (${MAX_PIXELS_ENV}); refused before "
                                         f"decoding as a possible decompression bomb")
            im.load()
            return to_rgb(im)
