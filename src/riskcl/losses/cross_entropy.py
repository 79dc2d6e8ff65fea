"""Cross-entropy baselines of the paper (Sec. IV-B): CE, weighted CE (WCE) and label smoothing (LS), plus
logit adjustment (Menon et al., ICLR 2021) for imbalanced classes.

WCE weights are inversely proportional to the training-set class frequency, ``w_c = N / (K * n_c)``.
Logit-adjusted CE trains on ``logits + tau * log(prior)`` (``prior_c = n_c / N``) and predicts with the raw
logits, which moves decisions towards rare classes without reweighting samples.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._common import as_float32, check_inputs, check_number


def _check_smoothing(label_smoothing: float) -> float:
    return check_number("label_smoothing", label_smoothing, 0.0, 1.0, max_inclusive=False)


def _check_counts(class_counts: Sequence[int] | torch.Tensor, what: str) -> torch.Tensor:
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    if counts.ndim != 1 or counts.numel() < 2:
        raise ValueError(f"Expected `class_counts` to be a list of K >= 2 counts, but got {class_counts!r}")
    if torch.any(counts <= 0):
        empty = torch.nonzero(counts <= 0).flatten().tolist()
        raise ValueError(f"Expected every class to have training samples for {what}, but classes {empty} have none")
    return counts


def _ce(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, label_smoothing: float) -> torch.Tensor:
    w = None if weight is None else weight.to(device=x.device, dtype=x.dtype)
    # Per-sample losses reduced here, the same way as every other riskcl loss, so that RCL with unit
    # penalties equals this CE bit for bit.
    per_sample = F.cross_entropy(x, target, weight=w, label_smoothing=label_smoothing, reduction="none")
    return per_sample.mean() if w is None else per_sample.sum() / w[target].sum()


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
    return _ce(as_float32(logits), target, weight, _check_smoothing(label_smoothing))


def class_weights_from_counts(class_counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Inverse-frequency weights ``w_c = N / (K * n_c)`` (paper Sec. IV-B).

    Raises ``ValueError`` for a class with no training sample (its weight would be infinite).

    Example:
        >>> class_weights_from_counts([30, 10]).tolist()
        [0.6666666666666666, 2.0]
    """
    counts = _check_counts(class_counts, "WCE")
    return counts.sum() / (counts.numel() * counts)


def log_priors(class_counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """``log(n_c / N)`` per class (every class needs a training sample)."""
    counts = _check_counts(class_counts, "logit adjustment")
    return torch.log(counts / counts.sum())


def logit_adjusted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, log_prior: torch.Tensor,
                                 tau: float = 1.0) -> torch.Tensor:
    """Mean ``CE(logits + tau * log_prior, y)`` (Menon et al. 2021, logit-adjusted loss).

    Example:
        >>> lp = torch.log(torch.tensor([0.5, 0.5]))
        >>> torch.allclose(logit_adjusted_cross_entropy(torch.zeros(1, 2), torch.tensor([1]), lp),
        ...                torch.log(torch.tensor(2.)))
        True
    """
    check_inputs(logits, target, log_prior.shape[0])
    tau = check_number("tau", tau, 0.0)
    x = as_float32(logits)
    return _ce(x + tau * log_prior.to(device=x.device, dtype=x.dtype), target, None, 0.0)


class CrossEntropyLoss(nn.Module):
    """Module twin of :func:`cross_entropy`; class weights live in a buffer."""

    def __init__(self, weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))
        self.label_smoothing = _check_smoothing(label_smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_inputs(logits, target)
        return _ce(as_float32(logits), target, self.weight, self.label_smoothing)


class LogitAdjustedLoss(nn.Module):
    """Module twin of :func:`logit_adjusted_cross_entropy`; the log priors are a buffer."""

    def __init__(self, class_counts: Sequence[int], tau: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("log_prior", log_priors(class_counts).float())
        self.tau = check_number("tau", tau, 0.0)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return logit_adjusted_cross_entropy(logits, target, self.log_prior, self.tau)
