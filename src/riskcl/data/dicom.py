"""DICOM images as riskcl reads every image: to 8-bit RGB, with the pixel values the modality stores (pydicom).

A file is DICOM when its name ends in ``.dcm`` / ``.dicom`` or its bytes carry the ``DICM`` preamble (files
without an extension, as PACS exports write them). Its pixels go through the modality LUT (rescale slope and
intercept), then the VOI transform of the policy's ``window`` (``auto``: the file's VOI LUT or window centre /
width when it has one, else its full range; ``none``: its full range; ``[centre, width]``: that linear window),
MONOCHROME1 is inverted (so that bright is dense everywhere), and the result is scaled to 0..255 by its own range,
as riskcl scales 16-bit PNGs. Colour (RGB, YBR, either planar configuration) comes out as RGB. Compressed transfer
syntaxes (JPEG baseline and lossless, JPEG 2000, RLE) are decoded by pydicom's handlers (the ``pylibjpeg`` plugins
of the ``dicom`` extra). A multi-frame image follows the policy's ``frames``: ``middle`` (the middle frame, said in
the run's data facts) or ``refuse``; never a silent first frame. The pixel limit is checked from the header (rows x
columns) before any pixel is decoded. Nothing of the header but its pixel description is read into riskcl's
outputs: no patient, study or institution value ever reaches a run folder, a CSV, a log or a card.
"""
from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

DICOM_SUFFIXES = (".dcm", ".dicom")
FRAME_POLICIES = ("middle", "refuse")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")


@dataclass(frozen=True)
class DicomPolicy:
    """How riskcl turns a DICOM image into pixels (``data.dicom`` of the config; recorded in the run)."""

    window: Any = "auto"      # "auto", "none" or [centre, width]
    frames: str = "middle"    # a multi-frame image: its "middle" frame, or "refuse"

    @classmethod
    def from_config(cls, data: Mapping[str, Any] | None) -> "DicomPolicy":
        data = dict(data or {})
        unknown = set(data) - {"window", "frames"}
        if unknown:
            raise ValueError(f"`data.dicom`: unknown key(s) {sorted(unknown)}; expected window, frames")
        policy = cls(**data)
        w = policy.window
        ok = w in ("auto", "none") or (isinstance(w, (list, tuple)) and len(w) == 2
                                       and all(isinstance(v, (int, float)) and np.isfinite(v) for v in w) and w[1] > 0)
        if not ok:
            raise ValueError(f"`data.dicom.window` = {w!r}: expected auto, none or [centre, width] with width > 0")
        if policy.frames not in FRAME_POLICIES:
            raise ValueError(f"`data.dicom.frames` = {policy.frames!r}: expected one of {list(FRAME_POLICIES)}")
        return policy

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


DEFAULT = DicomPolicy()


def has_preamble(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


def is_dicom_file(path: str | os.PathLike) -> bool:
    """A ``.dcm`` / ``.dicom`` name, or (any other name) the DICOM preamble in its first bytes."""
    p = os.fspath(path)
    if p.lower().endswith(DICOM_SUFFIXES):
        return True
    try:
        with open(p, "rb") as fh:
            return has_preamble(fh.read(132))
    except OSError:
        return False


class DicomError(ValueError):
    """A DICOM file riskcl cannot read; the message says why (no pixel data, a transfer syntax without a decoder,
    a truncated file, a refused multi-frame image)."""


def _read(source, stop_before_pixels: bool):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(source, stop_before_pixels=stop_before_pixels, force=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DicomError(f"not a readable DICOM file ({type(exc).__name__}: {str(exc)[:160]})") from None


def _scaled(a: np.ndarray) -> np.ndarray:
    """Greyscale values scaled by their own finite range to 0..255, as riskcl scales 16-bit images."""
    from .rgb import scale_to_uint8

    try:
        return scale_to_uint8(a)
    except ValueError as exc:
        raise DicomError(str(exc)) from None


def decode_dicom(source: str | os.PathLike | bytes, policy: DicomPolicy = DEFAULT,
                 limit: int | None = None) -> np.ndarray:
    """``uint8`` ``(H, W, 3)`` RGB of a DICOM file or its bytes (see the module docstring); :class:`DicomError` or
    :class:`riskcl.data.rgb.ImageTooLargeError` / ``ImageTooSmallError`` with the reason."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    from .rgb import MIN_SIDE, ImageTooLargeError, ImageTooSmallError, max_pixels

    def opened():
        return io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else os.fspath(source)

    head = _read(opened(), stop_before_pixels=True)
    rows, cols = int(getattr(head, "Rows", 0) or 0), int(getattr(head, "Columns", 0) or 0)
    frames = int(getattr(head, "NumberOfFrames", 1) or 1)
    if not rows or not cols:
        raise DicomError("no pixel data (the header declares no rows and columns: not an image object)")
    limit = max_pixels() if limit is None else int(limit)
    if rows * cols > limit:
        raise ImageTooLargeError(f"image of {cols} x {rows} pixels ({rows * cols / 1e6:.1f} megapixels) exceeds the "
                                 f"limit of {limit / 1e6:g} megapixels; refused before decoding")
    if min(rows, cols) < MIN_SIDE:
        raise ImageTooSmallError(f"image of {cols} x {rows} pixels is too small; expected at least {MIN_SIDE} x "
                                 f"{MIN_SIDE}")
    if frames > 1 and policy.frames == "refuse":
        raise DicomError(f"a multi-frame image ({frames} frames) refused (data.dicom.frames: refuse; 'middle' takes "
                         f"its middle frame)")
    ds = _read(opened(), stop_before_pixels=False)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DicomError(f"no pixel data: the header describes a {cols} x {rows} image but the file holds no pixels "
                         f"(truncated?)")
    syntax = ds.file_meta.get("TransferSyntaxUID", None) if hasattr(ds, "file_meta") else None
    try:
        arr = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        name = getattr(syntax, "name", str(syntax))
        why = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise DicomError(f"the transfer syntax {name} ({syntax}) cannot be decoded here ({why}); install riskcl's "
                         f"dicom extra (pylibjpeg plugins) or GDCM") from None
    except (ValueError, EOFError, OSError, AttributeError, TypeError) as exc:
        raise DicomError(f"its pixel data cannot be decoded (truncated or damaged: {str(exc)[:160]})") from None
    if frames > 1:
        arr = arr[frames // 2]
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric in COLOUR or (arr.ndim == 3 and arr.shape[-1] == 3):
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            arr = apply_color_lut(arr, ds)
        rgb = arr if arr.dtype == np.uint8 else np.stack([_scaled(arr[..., k]) for k in range(3)], -1)
        return np.ascontiguousarray(rgb[..., :3])
    values = apply_modality_lut(arr, ds).astype(np.float64)
    if policy.window == "auto":
        if "VOILUTSequence" in ds or "WindowCenter" in ds:
            values = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
    elif policy.window != "none":
        centre, width = (float(v) for v in policy.window)
        values = np.clip((values - (centre - 0.5)) / max(width - 1, 1e-9) + 0.5, 0.0, 1.0)
    grey = _scaled(values)
    if photometric == "MONOCHROME1":
        grey = 255 - grey
    return np.repeat(grey[..., None], 3, axis=2)
