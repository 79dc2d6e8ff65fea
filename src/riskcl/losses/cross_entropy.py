"""Cross-entropy baselines of the paper (Sec. IV-B): CE, weighted CE (WCE) and label smoothing (LS).

WCE weights are inversely proportional to the training-set class frequency, ``w_c = N / (K * n_c)``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._common import as_float32, check_inputs


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy ``-log softmax(logits)[y]``, optionally class-weighted or label-smoothed.

    Args:
        logits: ``(N, K)`` unnormalised scores.
        target: ``(N,)`` integer labels in ``[0, K)``.
        weight: optional ``(K,)`` class weights (weighted mean, as ``torch.nn.functional.cross_entropy``).
        label_smoothing: epsilon in ``[0, 1)``; the target becomes ``(1 - eps) * onehot + eps / K``.

    Example:
        >>> cross_entropy(torch.zeros(2, 4), torch.tensor([0, 3])).item() == torch.log(torch.tensor(4.)).item()
        True
    """
    check_inputs(logits, target)
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"Expected `label_smoothing` in [0, 1), but got {label_smoothing}")
    x = as_float32(logits)
    w = None if weight is None else weight.to(device=x.device, dtype=x.dtype)
    # Per-sample losses reduced here, the same way as every other riskcl loss, so that RCL with unit
    # penalties equals this CE bit for bit.
    per_sample = F.cross_entropy(x, target, weight=w, label_smoothing=label_smoothing, reduction="none")
    return per_sample.mean() if w is None else per_sample.sum() / w[target].sum()


def class_weights_from_counts(class_counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Inverse-frequency weights ``w_c = N / (K * n_c)`` (paper Sec. IV-B).

    Raises ``ValueError`` for a class with no training sample (its weight would be infinite).

    Example:
        >>> class_weights_from_counts([30, 10]).tolist()
        [0.6666666666666666, 2.0]
    """
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    if counts.ndim != 1 or counts.numel() < 2:
        raise ValueError(f"Expected `class_counts` to be a list of K >= 2 counts, but got {class_counts!r}")
    if torch.any(counts <= 0):
        empty = torch.nonzero(counts <= 0).flatten().tolist()
        raise ValueError(f"Expected every class to have training samples for WCE, but classes {empty} have none")
    return counts.sum() / (counts.numel() * counts)


class CrossEntropyLoss(nn.Module):
    """Module twin of :func:`cross_entropy`; class weights live in a buffer."""

    def __init__(self, weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"Expected `label_smoothing` in [0, 1), but got {label_smoothing}")
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, target, self.weight, self.label_smoothing)
