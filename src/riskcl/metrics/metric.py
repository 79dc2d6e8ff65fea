"""A ``torchmetrics.Metric`` that accumulates probabilities over batches and computes :func:`safety_report`."""
from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from ..taxonomy import Taxonomy
from .report import safety_report


class SafetyReport(Metric):
    """Batch-wise accumulation of ``(preds, target)``; ``compute()`` equals ``safety_report`` on the whole set.

    Args:
        taxonomy: the class hierarchy. cost_matrix: optional costs for ``mean_cost``.

    Example:
        >>> from riskcl.taxonomy import get_taxonomy
        >>> m = SafetyReport(get_taxonomy("brain_mri"))
        >>> m.update(torch.tensor([[.1, .1, .7, .1]]), torch.tensor([0]))
        >>> m.compute()["type_ii"]
        1
    """

    full_state_update = False
    higher_is_better = None

    def __init__(self, taxonomy: Taxonomy, cost_matrix: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.taxonomy = taxonomy
        self.cost_matrix = cost_matrix
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """``preds``: ``(N, K)`` probabilities or ``(N,)`` labels; ``target``: ``(N,)``."""
        self.preds.append(preds.detach())
        self.target.append(target.detach())

    def compute(self) -> dict[str, float]:
        if not self.target:
            raise ValueError("SafetyReport.compute() called before any update()")
        return safety_report(dim_zero_cat(self.preds), dim_zero_cat(self.target), self.taxonomy, self.cost_matrix)
