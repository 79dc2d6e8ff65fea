"""The Risk-Calibrated Loss (paper Eq. 1).

    L_RCL(x, y) = M[y, yhat] * CE(y, p),     yhat = argmax_k p_k(x)

``M`` is the severity matrix (:func:`riskcl.taxonomy.severity_matrix`). The weight is a per-sample constant:
no gradient flows through the argmax, so the gradient is ``M[y, yhat]`` times the CE gradient, and a correctly
classified sample contributes plain CE. The batch loss is the mean of the weighted per-sample losses.

Beyond the paper, ``warmup_epochs`` trains with plain CE for the first epochs: the argmax of an untrained model
is noise, so its severity weights are too.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import as_float32, check_cost_matrix, check_inputs, check_int

REDUCTIONS = ("mean", "sum", "none")


def _rcl(x: torch.Tensor, target: torch.Tensor, matrix: torch.Tensor, reduction: str) -> torch.Tensor:
    ce = F.cross_entropy(x, target, reduction="none")
    weight = matrix.to(device=x.device, dtype=x.dtype)[target, x.detach().argmax(dim=1)]
    loss = weight * ce
    return loss.mean() if reduction == "mean" else loss.sum() if reduction == "sum" else loss


def _check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"Expected `reduction` in {REDUCTIONS}, but got {reduction!r}")
    return reduction


def risk_calibrated_loss(logits: torch.Tensor, target: torch.Tensor, matrix: torch.Tensor,
                         reduction: str = "mean") -> torch.Tensor:
    """Severity-weighted cross-entropy.

    Args:
        logits: ``(N, K)`` unnormalised scores.
        target: ``(N,)`` integer labels.
        matrix: ``(K, K)`` severity matrix (finite, >= 0), row = true class, column = predicted class.
        reduction: ``"mean"`` (paper), ``"sum"`` or ``"none"`` (per-sample ``(N,)``).

    Example:
        >>> m = torch.tensor([[1., 5.], [20., 1.]])
        >>> logits = torch.tensor([[2., 0.]])          # predicts class 0, true class 1: Type II
        >>> loss = risk_calibrated_loss(logits, torch.tensor([1]), m)
        >>> torch.allclose(loss, 20 * F.cross_entropy(logits, torch.tensor([1])))
        True
    """
    check_inputs(logits, target)
    m = check_cost_matrix(matrix.detach().cpu() if torch.is_tensor(matrix) else matrix, logits.shape[1])
    return _rcl(as_float32(logits), target, m, _check_reduction(reduction))


class RiskCalibratedLoss(nn.Module):
    """Module twin of :func:`risk_calibrated_loss`; the severity matrix is a buffer (moves with ``.to``).

    ``warmup_epochs``: plain CE until :meth:`set_epoch` reaches it (the engine calls ``set_epoch``).
    """

    def __init__(self, matrix: torch.Tensor, warmup_epochs: int = 0) -> None:
        super().__init__()
        self.register_buffer("matrix", check_cost_matrix(matrix))
        self.warmup_epochs = check_int("warmup_epochs", warmup_epochs, minimum=0)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The 0-based epoch about to be trained (only the warm-up reads it)."""
        self.epoch = int(epoch)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_inputs(logits, target, self.matrix.shape[0])
        x = as_float32(logits)
        if self.epoch < self.warmup_epochs:
            return F.cross_entropy(x, target, reduction="none").mean()
        return _rcl(x, target, self.matrix, "mean")
