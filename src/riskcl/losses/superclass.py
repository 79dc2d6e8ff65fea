"""Losses on the superclass score ``p(malignant)``, next to the fine-class CE (beyond the paper).

With fine-class logits ``x`` the marginal log-odds of malignancy are
``z = logsumexp(x[malignant]) - logsumexp(x[benign])``, so ``sigmoid(z) = p(malignant)`` exactly (the sum of
the malignant class probabilities); the decision a triage model is judged by depends on ``z`` alone.

* Marginal BCE: ``CE(x, y) + weight * BCE(sigmoid(z), s(y))`` with ``pos_weight`` on the malignant term
  (``"auto"``: benign / malignant training counts). It trains the superclass decision directly while the CE
  keeps the fine classes.
* Partial-AUC surrogate for the high-sensitivity end of the ROC curve (TPR >= 1 - ``beta``): the malignant cases
  ranked lowest by ``z`` are the ones a sensitive threshold has to catch, so the term penalises every pair of
  such a case and a benign case with the squared hinge ``max(0, margin - (z_pos - z_neg))^2``. The lowest
  ``ceil(beta * n_pos)`` malignant scores of the batch enter (at least one); it is the one-way pAUC pairwise
  surrogate of Zhu et al. (ICML 2022) with the roles of positives and negatives swapped, written from the
  formula because LibAUC's implementations need per-sample index bookkeeping across the epoch. A batch with no
  malignant or no benign case adds nothing.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._common import as_float32, check_inputs, check_number, superclass_log_odds


def _check_bce(weight: float, pos_weight: float) -> tuple[float, float]:
    return check_number("weight", weight, 0.0), check_number("pos_weight", pos_weight, 0.0, min_inclusive=False)


def _check_pauc(weight: float, beta: float, margin: float) -> tuple[float, float, float]:
    return (check_number("weight", weight, 0.0), check_number("beta", beta, 0.0, 1.0, min_inclusive=False),
            check_number("margin", margin, 0.0))


def _marginal_bce(x: torch.Tensor, target: torch.Tensor, superclass: torch.Tensor, weight: float,
                  pos_weight: float) -> torch.Tensor:
    sup = superclass.to(x.device)
    z = superclass_log_odds(x, sup)
    s = sup[target].to(x.dtype)
    bce = F.binary_cross_entropy_with_logits(z, s, pos_weight=torch.tensor(pos_weight, dtype=x.dtype,
                                                                          device=x.device), reduction="none")
    return (F.cross_entropy(x, target, reduction="none") + weight * bce).mean()


def marginal_bce_loss(logits: torch.Tensor, target: torch.Tensor, superclass: torch.Tensor, weight: float = 1.0,
                      pos_weight: float = 1.0) -> torch.Tensor:
    """``mean(CE + weight * BCE(p(malignant), is_malignant))`` with ``pos_weight`` on malignant cases.

    Example:
        >>> sup = torch.tensor([0, 1])                       # two classes: the BCE is then CE again
        >>> x, y = torch.tensor([[1.0, -1.0]]), torch.tensor([1])
        >>> torch.allclose(marginal_bce_loss(x, y, sup), 2 * F.cross_entropy(x, y))
        True
    """
    sup = torch.as_tensor(superclass, dtype=torch.long)
    check_inputs(logits, target, sup.shape[0])
    return _marginal_bce(as_float32(logits), target, sup, *_check_bce(weight, pos_weight))


def _pauc_term(z: torch.Tensor, is_mal: torch.Tensor, beta: float, margin: float) -> torch.Tensor:
    pos, neg = z[is_mal], z[~is_mal]
    if pos.numel() == 0 or neg.numel() == 0:
        return z.sum() * 0.0  # keeps the graph and the dtype
    k = max(1, math.ceil(beta * pos.numel()))
    hardest = torch.topk(pos, k, largest=False).values
    return F.relu(margin - (hardest[:, None] - neg[None, :])).pow(2).mean()


def _pauc(x: torch.Tensor, target: torch.Tensor, superclass: torch.Tensor, weight: float, beta: float,
          margin: float) -> torch.Tensor:
    sup = superclass.to(x.device)
    z = superclass_log_odds(x, sup)
    ce = F.cross_entropy(x, target, reduction="none").mean()
    return ce + weight * _pauc_term(z, sup[target].bool(), beta, margin)


def partial_auc_loss(logits: torch.Tensor, target: torch.Tensor, superclass: torch.Tensor, weight: float = 1.0,
                     beta: float = 0.1, margin: float = 1.0) -> torch.Tensor:
    """``CE + weight * mean over (lowest-scored malignant, benign) pairs of max(0, margin - (z+ - z-))^2``."""
    sup = torch.as_tensor(superclass, dtype=torch.long)
    check_inputs(logits, target, sup.shape[0])
    return _pauc(as_float32(logits), target, sup, *_check_pauc(weight, beta, margin))


class MarginalBCELoss(nn.Module):
    """Module twin of :func:`marginal_bce_loss`."""

    def __init__(self, superclass: torch.Tensor, weight: float = 1.0, pos_weight: float = 1.0) -> None:
        super().__init__()
        self.weight, self.pos_weight = _check_bce(weight, pos_weight)
        self.register_buffer("superclass", torch.as_tensor(superclass, dtype=torch.long))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_inputs(logits, target, self.superclass.shape[0])
        return _marginal_bce(as_float32(logits), target, self.superclass, self.weight, self.pos_weight)


class PartialAUCLoss(nn.Module):
    """Module twin of :func:`partial_auc_loss`."""

    def __init__(self, superclass: torch.Tensor, weight: float = 1.0, beta: float = 0.1, margin: float = 1.0) -> None:
        super().__init__()
        self.weight, self.beta, self.margin = _check_pauc(weight, beta, margin)
        self.register_buffer("superclass", torch.as_tensor(superclass, dtype=torch.long))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_inputs(logits, target, self.superclass.shape[0])
        return _pauc(as_float32(logits), target, self.superclass, self.weight, self.beta, self.margin)
