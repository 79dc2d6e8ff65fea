"""A model trained elsewhere: its declared preprocessing (``adopt:`` of the config), and the predictions table of a
study read against a data set.

:class:`DeclaredPreprocess` turns riskcl's decoded images (``uint8`` RGB of any size) into the input the model was
trained on, exactly as declared: the crop (``resize: crop``: the centred window of the input's aspect ratio that
fills ``input_size``; ``stretch``: none), riskcl's own resize to ``input_size`` (antialiased bilinear, rounded to
whole pixel values, :func:`riskcl.data.images.resize_images`), the channel order (RGB, BGR, or grey as the mean of
R, G and B), the range (``scale`` 1: pixels / 255; 255: raw), ``(x - mean) / std`` per channel, and the layout
(NCHW or NHWC). One module does it everywhere: ``riskcl adopt`` computes the adopted predictions with it, a run
folder scores new images with it, and the export puts it, exported to ONNX, in front of the model's own graph.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .images import resize_images


def input_hw(input_size: Any) -> tuple[int, int]:
    """``(height, width)`` from ``adopt.input_size`` (a side, or ``[height, width]``)."""
    if input_size is None:
        raise ValueError("`adopt.input_size` is required for a model file: the side (or [height, width]) of the "
                         "images the model takes")
    if isinstance(input_size, int):
        return input_size, input_size
    return int(input_size[0]), int(input_size[1])


class DeclaredPreprocess(nn.Module):
    """``uint8`` ``(N, H, W, 3)`` images (any ``H`` and ``W``) -> the model's float32 input, as ``adopt:`` declares
    (see the module docstring). ``spec``: the ``adopt`` section as a mapping."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        super().__init__()
        self.height, self.width = input_hw(spec.get("input_size"))
        self.crop, self.layout = spec.get("resize", "stretch") == "crop", spec.get("layout", "nchw")
        self.channels, self.scale = spec.get("channels", "rgb"), float(spec.get("scale", 1.0))
        width = 1 if self.channels == "gray" else 3
        mean = spec.get("mean") if spec.get("mean") is not None else [0.0]
        std = spec.get("std") if spec.get("std") is not None else [1.0]
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).expand(width).reshape(1, width, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).expand(width).reshape(1, width, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2)  # (N, 3, H, W)
        if self.crop:  # the centred window with the input's aspect ratio, then the resize: shorter side fits
            h, w = x.shape[-2], x.shape[-1]  # symbolic when exported: torch.sym_min keeps them so
            keep_w = torch.sym_min(w, (h * self.width + self.height // 2) // self.height)
            keep_h = torch.sym_min(h, (w * self.height + self.width // 2) // self.width)
            top, left = (h - keep_h) // 2, (w - keep_w) // 2
            x = x[:, :, top:top + keep_h, left:left + keep_w]
        x = resize_images(x, self.height, self.width).to(torch.float32)
        if self.channels == "bgr":
            x = x.flip(1)
        elif self.channels == "gray":
            x = x.mean(dim=1, keepdim=True)
        x = (x * (self.scale / 255.0) - self.mean) / self.std
        return x.permute(0, 2, 3, 1).contiguous() if self.layout == "nhwc" else x.contiguous()

    def describe(self) -> str:
        """The declared preprocessing in one sentence (the model card, the export's README)."""
        return (f"{'centre crop to the aspect ratio, then ' if self.crop else ''}riskcl's antialiased bilinear "
                f"resize to {self.height} x {self.width}, {self.channels.upper()} channels, "
                f"{'pixels / 255' if self.scale == 1.0 else 'raw 0..255'}, minus mean "
                f"{self.mean.flatten().tolist()} divided by std {self.std.flatten().tolist()}, "
                f"{self.layout.upper()}")


def class_order(model_classes: Sequence[str], taxonomy_classes: Sequence[str], what: str) -> np.ndarray:
    """``perm`` with ``outputs[:, perm]`` in the taxonomy's class order; refuses a class the taxonomy does not know
    and a taxonomy class the model does not give (naming them)."""
    unknown = [c for c in model_classes if c not in taxonomy_classes]
    if unknown:
        raise ValueError(f"`adopt.classes`: {unknown} {'is' if len(unknown) == 1 else 'are'} not a class of the data "
                         f"set's taxonomy {list(taxonomy_classes)}; {what} must give the taxonomy's classes, named "
                         f"as it names them")
    missing = [c for c in taxonomy_classes if c not in model_classes]
    if missing:
        raise ValueError(f"`adopt.classes` = {list(model_classes)} lacks {missing} of the taxonomy "
                         f"{list(taxonomy_classes)}: every class must have one output")
    return np.array([list(model_classes).index(c) for c in taxonomy_classes])


PROBABILITY_TOLERANCE = 1e-3  # outputs declared as probabilities must sum to 1 within this, per row


def to_logits(outputs: np.ndarray, output: str, source: str) -> np.ndarray:
    """The outputs as the logits riskcl saves (probabilities: their logarithm), refusing non-finite values and
    probability rows that are negative or do not sum to 1 (naming the first row)."""
    out = np.asarray(outputs, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
    if bad.size:
        raise ValueError(f"{source}: {bad.size} row(s) hold NaN or infinite scores (first: row {int(bad[0])}); a "
                         f"non-finite score is never adopted")
    if output == "probs":
        sums = out.sum(axis=1)
        off = np.flatnonzero((np.abs(sums - 1) > PROBABILITY_TOLERANCE) | (out < 0).any(axis=1))
        if off.size:
            raise ValueError(f"{source}: declared as probabilities (adopt.output: probs), but {off.size} row(s) are "
                             f"negative or do not sum to 1 within {PROBABILITY_TOLERANCE:g} (row {int(off[0])} sums to "
                             f"{sums[off[0]]:.4g}); declare adopt.output: logits if they are scores")
        return np.log(np.clip(out, 1e-12, None))
    return out


def read_table(path: str | Path) -> "Any":
    """A predictions table (CSV or Parquet) as a pandas frame of text and numbers; errors name the file."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such predictions table")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(path, encoding="utf-8-sig")
    except Exception as exc:  # pandas and pyarrow raise many parser errors
        raise ValueError(f"{path}: cannot read it as a predictions table ({type(exc).__name__}: {exc})") from None
