"""Focal loss (Lin et al., ICCV 2017), multi-class softmax form, as the paper's baseline (gamma 2, alpha 0.25).

    FL(x, y) = -alpha * (1 - p_y)^gamma * log p_y,     p = softmax(x)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import as_float32, check_inputs, check_number


def _check_focal(gamma: float, alpha: float) -> tuple[float, float]:
    return check_number("gamma", gamma, 0.0), check_number("alpha", alpha, 0.0, min_inclusive=False)


def _focal(x: torch.Tensor, target: torch.Tensor, gamma: float, alpha: float) -> torch.Tensor:
    logp_t = F.log_softmax(x, dim=1).gather(1, target[:, None]).squeeze(1)
    p_t = logp_t.exp()
    return (-alpha * (1.0 - p_t).clamp_min(0).pow(gamma) * logp_t).mean()


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: float = 0.25) -> torch.Tensor:
    """Mean focal loss.

    Args:
        logits: ``(N, K)``; target: ``(N,)`` integer labels.
        gamma: focusing parameter (>= 0); 0 gives ``alpha * CE``.
        alpha: scalar balance factor (> 0).

    Example:
        >>> round(focal_loss(torch.zeros(1, 2), torch.tensor([0])).item(), 6)   # 0.25 * 0.25 * log 2
        0.043322
    """
    check_inputs(logits, target)
    return _focal(as_float32(logits), target, *_check_focal(gamma, alpha))


class FocalLoss(nn.Module):
    """Module twin of :func:`focal_loss`."""

    def __init__(self, gamma: float = 2.0, alpha: float = 0.25) -> None:
        super().__init__()
        self.gamma, self.alpha = _check_focal(gamma, alpha)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_inputs(logits, target)
        return _focal(as_float32(logits), target, self.gamma, self.alpha)
