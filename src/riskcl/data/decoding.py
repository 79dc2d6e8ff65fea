"""Decoding image files and uploads with errors that name the file (numpy and Pillow only: no PyTorch, so the
ONNX Runtime service and ``riskcl predict`` on an export use it too). The pixel limits are the decoder's
(:mod:`riskcl.data.rgb`)."""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from .rgb import ImageTooLargeError, ImageTooSmallError, decode_image

# The file types riskcl takes from folders (training data and predict alike); any other file is listed as skipped.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")


class BadImageError(ValueError):
    """An image file that cannot be decoded; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def _decode(source, name: str) -> np.ndarray:
    try:
        return decode_image(source)
    except FileNotFoundError:
        raise BadImageError(name, "file not found") from None
    except ImageTooLargeError as exc:
        raise BadImageError(name, f"refused: {exc}") from None
    except ImageTooSmallError as exc:
        raise BadImageError(name, str(exc)) from None
    except Image.DecompressionBombError as exc:
        raise BadImageError(name, f"refused as a decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise BadImageError(name, "cannot decode image: not an image in a format Pillow reads") from None
    except IsADirectoryError:
        raise BadImageError(name, "is a folder, not an image file") from None
    except (OSError, SyntaxError, ValueError, MemoryError) as exc:
        raise BadImageError(name, f"cannot decode image ({type(exc).__name__}: {exc})") from None


def decode_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode ``path`` at its own size to a writable RGB ``uint8`` array ``(H, W, 3)``; ``BadImageError`` naming
    the file when it is missing, empty, unreadable, truncated or a decompression bomb."""
    p = os.fsdecode(path)
    try:
        empty = os.path.getsize(p) == 0
    except OSError:
        raise BadImageError(p, "file not found") from None
    if empty:
        raise BadImageError(p, "empty (zero-byte) file; expected an image")
    return _decode(p, p)


def decode_bytes(data: bytes, name: str = "upload") -> np.ndarray:
    """:func:`decode_rgb` for an image held in memory (an upload); errors name ``name``."""
    if not data:
        raise BadImageError(name, "empty; expected an image")
    return _decode(io.BytesIO(data), name)
