"""Shared input and argument checks for the losses: logits ``(N, K)``, integer targets ``(N,)``, and one check
per parameter kind, used by each loss function and its ``nn.Module`` twin alike."""
from __future__ import annotations

from typing import Any

import torch

from .._checks import check_int, check_number  # noqa: F401  (the one number checker, re-exported for the losses)
from ..taxonomy import validate_cost_matrix


def check_inputs(logits: torch.Tensor, target: torch.Tensor, num_classes: int | None = None) -> None:
    """Raise ``ValueError`` unless ``logits`` is ``(N, K)`` floating and ``target`` is ``(N,)`` integer."""
    if not torch.is_tensor(logits) or logits.ndim != 2 or not logits.is_floating_point():
        raise ValueError(f"Expected argument `logits` to be a float tensor of shape (N, K), but got "
                         f"{tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__}")
    if not torch.is_tensor(target) or target.ndim != 1 or target.is_floating_point():
        raise ValueError(f"Expected argument `target` to be an integer tensor of shape (N,), but got "
                         f"{tuple(target.shape) if torch.is_tensor(target) else type(target).__name__}")
    if target.shape[0] != logits.shape[0]:
        raise ValueError(f"Expected `logits` and `target` to have the same N, but got {logits.shape[0]} "
                         f"and {target.shape[0]}")
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(f"Expected `logits` with K = {num_classes} columns, but got {logits.shape[1]}")


def check_cost_matrix(matrix: Any, num_classes: int | None = None, name: str = "matrix") -> torch.Tensor:
    """A ``(K, K)`` float32 tensor of finite costs >= 0, checked by the one cost-matrix validator
    (:func:`riskcl.taxonomy.validate_cost_matrix`); ``ValueError`` naming what is wrong otherwise."""
    if isinstance(matrix, torch.Tensor):
        matrix = matrix.detach().cpu().double().numpy()
    m = validate_cost_matrix(matrix, name=name)
    if num_classes is not None and m.shape[0] != num_classes:
        raise ValueError(f"Expected `{name}` of shape ({num_classes}, {num_classes}), but got {m.shape}")
    return torch.as_tensor(m, dtype=torch.float32)


def as_float32(logits: torch.Tensor) -> torch.Tensor:
    """Losses are computed in float32 (or float64 when given) so that bf16/fp16 autocast cannot overflow."""
    return logits if logits.dtype == torch.float64 else logits.float()


def superclass_log_odds(logits: torch.Tensor, superclass: torch.Tensor) -> torch.Tensor:
    """``log p(malignant) - log p(benign)`` per row, from fine-class logits (``superclass``: ``(K,)`` 0/1)."""
    mal = superclass.to(logits.device).bool()
    neg_inf = torch.finfo(logits.dtype).min
    lse_mal = torch.logsumexp(logits.masked_fill(~mal, neg_inf), dim=1)
    lse_ben = torch.logsumexp(logits.masked_fill(mal, neg_inf), dim=1)
    return lse_mal - lse_ben
