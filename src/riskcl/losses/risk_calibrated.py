"""The Risk-Calibrated Loss (paper Eq. 1).

    L_RCL(x, y) = M[y, yhat] * CE(y, p),     yhat = argmax_k p_k(x)

``M`` is the severity matrix (:func:`riskcl.taxonomy.severity_matrix`). The weight is a per-sample constant:
no gradient flows through the argmax, so the gradient is ``M[y, yhat]`` times the CE gradient, and a correctly
classified sample contributes plain CE. The batch loss is the mean of the weighted per-sample losses.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import as_float32, check_inputs


def risk_calibrated_loss(logits: torch.Tensor, target: torch.Tensor, matrix: torch.Tensor,
                         reduction: str = "mean") -> torch.Tensor:
    """Severity-weighted cross-entropy.

    Args:
        logits: ``(N, K)`` unnormalised scores.
        target: ``(N,)`` integer labels.
        matrix: ``(K, K)`` severity matrix, row = true class, column = predicted class.
        reduction: ``"mean"`` (paper), ``"sum"`` or ``"none"`` (per-sample ``(N,)``).

    Example:
        >>> m = torch.tensor([[1., 5.], [20., 1.]])
        >>> logits = torch.tensor([[2., 0.]])          # predicts class 0, true class 1: Type II
        >>> loss = risk_calibrated_loss(logits, torch.tensor([1]), m)
        >>> torch.allclose(loss, 20 * F.cross_entropy(logits, torch.tensor([1])))
        True
    """
    check_inputs(logits, target, matrix.shape[0])
    x = as_float32(logits)
    ce = F.cross_entropy(x, target, reduction="none")
    weight = matrix.to(device=x.device, dtype=x.dtype)[target, x.detach().argmax(dim=1)]
    loss = weight * ce
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"Expected `reduction` in ('mean', 'sum', 'none'), but got {reduction!r}")


class RiskCalibratedLoss(nn.Module):
    """Module twin of :func:`risk_calibrated_loss`; the severity matrix is a buffer (moves with ``.to``)."""

    def __init__(self, matrix: torch.Tensor) -> None:
        super().__init__()
        m = torch.as_tensor(matrix, dtype=torch.float32)
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise ValueError(f"Expected `matrix` of shape (K, K), but got {tuple(m.shape)}")
        if not torch.isfinite(m).all() or (m < 0).any():
            raise ValueError("Expected `matrix` to hold finite values >= 0")
        self.register_buffer("matrix", m)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return risk_calibrated_loss(logits, target, self.matrix)
