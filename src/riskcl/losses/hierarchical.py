"""Hierarchy-aware baselines from "Making Better Mistakes" (Bertinetto et al., CVPR 2020), written from the
formulas for riskcl's two-level trees (fine class -> superclass -> root), plus a differentiable expected cost.

Hierarchical cross-entropy (HXE). With ``p(s) = sum_{c in s} p(c)`` the probability of the superclass ``s`` of
the true class ``y``, the chain rule splits ``-log p(y)`` into ``-log p(y | s) - log p(s)``; HXE weights each
edge by ``exp(-alpha * h)`` where ``h`` is the height of the edge's child node (leaf: 0, superclass: 1)::

    HXE = -log p(y | s) - exp(-alpha) * log p(s)

``alpha = 0`` gives CE; a hierarchy collapsed to one level (``levels=1``, every class a child of the root)
gives CE for any alpha.

Soft labels. The target distribution is ``q_c ∝ exp(-beta * d(y, c))``, with ``d`` the height of the lowest
common ancestor (0 same class, 1 same superclass, 2 otherwise); the loss is ``-sum_c q_c log p_c``.
``beta -> infinity`` gives CE.

Expected cost. ``CE + weight * sum_j p_j M[y, j]``: unlike RCL it is differentiable in every probability.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._common import as_float32, check_cost_matrix, check_inputs, check_int, check_number


def _check_hxe(alpha: float, levels: int) -> tuple[float, int]:
    return check_number("alpha", alpha, 0.0), check_int("levels", levels, choices=(1, 2))


def _check_beta(beta: float) -> float:
    return check_number("beta", beta, 0.0, min_inclusive=False)


def _check_weight(weight: float) -> float:
    return check_number("weight", weight, 0.0)


def _superclass(superclass: torch.Tensor | list) -> torch.Tensor:
    return torch.as_tensor(superclass, dtype=torch.long)


def _hxe(x: torch.Tensor, target: torch.Tensor, superclass: torch.Tensor, alpha: float, levels: int) -> torch.Tensor:
    logp = F.log_softmax(x, dim=1)
    logp_y = logp.gather(1, target[:, None]).squeeze(1)
    if levels == 1:
        return (-logp_y).mean()
    sup = superclass.to(logp.device)
    same = (sup[None, :] == sup[target][:, None])  # (N, K): classes sharing the true superclass
    logp_s = torch.logsumexp(logp.masked_fill(~same, float("-inf")), dim=1)
    return (-(logp_y - logp_s) - math.exp(-alpha) * logp_s).mean()


def hierarchical_cross_entropy(logits: torch.Tensor, target: torch.Tensor, superclass: torch.Tensor,
                               alpha: float = 0.1, levels: int = 2) -> torch.Tensor:
    """Mean HXE over a two-level tree.

    Args:
        logits: ``(N, K)``; target: ``(N,)``.
        superclass: ``(K,)`` integer superclass id of each fine class.
        alpha: decay of the edge weights with height (>= 0).
        levels: 2 for fine -> superclass -> root, 1 to collapse the tree (then HXE equals CE).
    """
    superclass = _superclass(superclass)
    check_inputs(logits, target, superclass.shape[0])
    return _hxe(as_float32(logits), target, superclass, *_check_hxe(alpha, levels))


def soft_label_targets(target: torch.Tensor, superclass: torch.Tensor, beta: float) -> torch.Tensor:
    """``(N, K)`` soft targets ``q_c ∝ exp(-beta * d(y, c))`` (``d`` = LCA height: 0, 1 or 2)."""
    sup = _superclass(superclass).to(target.device)
    k = sup.shape[0]
    d = torch.where(sup[None, :] == sup[target][:, None], 1.0, 2.0)
    d = torch.where(torch.arange(k, device=target.device)[None, :] == target[:, None], 0.0, d)
    return torch.softmax(-beta * d, dim=1)


def _soft(x: torch.Tensor, target: torch.Tensor, superclass: torch.Tensor, beta: float) -> torch.Tensor:
    q = soft_label_targets(target, superclass, beta).to(x.dtype)
    return -(q * F.log_softmax(x, dim=1)).sum(dim=1).mean()


def soft_label_loss(logits: torch.Tensor, target: torch.Tensor, superclass: torch.Tensor,
                    beta: float = 10.0) -> torch.Tensor:
    """Mean cross-entropy against the soft targets of :func:`soft_label_targets` (``beta`` > 0)."""
    superclass = _superclass(superclass)
    check_inputs(logits, target, superclass.shape[0])
    return _soft(as_float32(logits), target, superclass, _check_beta(beta))


def _expected_cost(x: torch.Tensor, target: torch.Tensor, matrix: torch.Tensor, weight: float) -> torch.Tensor:
    m = matrix.to(device=x.device, dtype=x.dtype)
    expected = (torch.softmax(x, dim=1) * m[target]).sum(dim=1)
    return (F.cross_entropy(x, target, reduction="none") + weight * expected).mean()


def expected_cost_loss(logits: torch.Tensor, target: torch.Tensor, matrix: torch.Tensor,
                       weight: float = 1.0) -> torch.Tensor:
    """``mean(CE + weight * sum_j p_j M[y, j])``, a smooth surrogate of the severity cost (``weight`` >= 0)."""
    check_inputs(logits, target)
    m = check_cost_matrix(matrix.detach().cpu() if torch.is_tensor(matrix) else matrix, logits.shape[1])
    return _expected_cost(as_float32(logits), target, m, _check_weight(weight))


class HierarchicalCrossEntropyLoss(nn.Module):
    """Module twin of :func:`hierarchical_cross_entropy`."""

    def __init__(self, superclass: torch.Tensor, alpha: float = 0.1, levels: int = 2) -> None:
        super().__init__()
        self.alpha, self.levels = _check_hxe(alpha, levels)
        self.register_buffer("superclass", _superclass(superclass))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_inputs(logits, target, self.superclass.shape[0])
        return _hxe(as_float32(logits), target, self.superclass, self.alpha, self.levels)


class SoftLabelLoss(nn.Module):
    """Module twin of :func:`soft_label_loss`."""

    def __init__(self, superclass: torch.Tensor, beta: float = 10.0) -> None:
        super().__init__()
        self.beta = _check_beta(beta)
        self.register_buffer("superclass", _superclass(superclass))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_inputs(logits, target, self.superclass.shape[0])
        return _soft(as_float32(logits), target, self.superclass, self.beta)


class ExpectedCostLoss(nn.Module):
    """Module twin of :func:`expected_cost_loss`; the cost matrix is a buffer."""

    def __init__(self, matrix: torch.Tensor, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = _check_weight(weight)
        self.register_buffer("matrix", check_cost_matrix(matrix))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_inputs(logits, target, self.matrix.shape[0])
        return _expected_cost(as_float32(logits), target, self.matrix, self.weight)
