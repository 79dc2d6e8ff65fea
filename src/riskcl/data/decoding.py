"""Decoding image files and uploads with errors that name the file (numpy and Pillow only: no PyTorch, so the
ONNX Runtime service and ``riskcl predict`` on an export use it too). The pixel limits are the decoder's
(:mod:`riskcl.data.rgb`)."""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from .rgb import ImageTooLargeError, ImageTooSmallError, decode_image

# The file types riskcl takes from folders (training data and predict alike); any other file is listed as skipped,
# except a file without an extension that carries the DICOM preamble (as PACS exports name them).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".dcm", ".dicom")


def is_image_file(path: str | os.PathLike) -> bool:
    """An image riskcl reads: one of :data:`IMAGE_EXTENSIONS`, or no extension and a DICOM preamble."""
    from .dicom import is_dicom_file

    suffix = os.path.splitext(os.fspath(path))[1].lower()
    return suffix in IMAGE_EXTENSIONS or (not suffix and is_dicom_file(path))


class BadImageError(ValueError):
    """An image file that cannot be decoded; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def _decode(source, name: str, dicom=None) -> np.ndarray:
    from .dicom import DEFAULT, DicomError, decode_dicom, has_preamble, is_dicom_file

    try:
        if isinstance(source, io.BytesIO) and has_preamble(source.getvalue()[:132]):
            return decode_dicom(source.getvalue(), dicom or DEFAULT)
        if isinstance(source, str) and is_dicom_file(source):
            return decode_dicom(source, dicom or DEFAULT)
        return decode_image(source)
    except DicomError as exc:
        raise BadImageError(name, f"DICOM: {exc}") from None
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


def decode_rgb(path: str | os.PathLike, dicom=None) -> np.ndarray:
    """Decode ``path`` at its own size to a writable RGB ``uint8`` array ``(H, W, 3)``; ``BadImageError`` naming
    the file when it is missing, empty, unreadable, truncated or a decompression bomb. A DICOM file is read by
    :mod:`riskcl.data.dicom` under ``dicom`` (a :class:`riskcl.data.dicom.DicomPolicy`; None: the default)."""
    p = os.fsdecode(path)
    try:
        empty = os.path.getsize(p) == 0
    except OSError:
        raise BadImageError(p, "file not found") from None
    if empty:
        raise BadImageError(p, "empty (zero-byte) file; expected an image")
    return _decode(p, p, dicom)


def decode_bytes(data: bytes, name: str = "upload", dicom=None) -> np.ndarray:
    """:func:`decode_rgb` for an image held in memory (an upload, a DICOM instance received); errors name
    ``name``."""
    if not data:
        raise BadImageError(name, "empty; expected an image")
    return _decode(io.BytesIO(data), name, dicom)
