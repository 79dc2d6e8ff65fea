"""Shared input checks for the losses: logits ``(N, K)`` and integer targets ``(N,)``."""
from __future__ import annotations

import torch


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


def as_float32(logits: torch.Tensor) -> torch.Tensor:
    """Losses are computed in float32 (or float64 when given) so that bf16/fp16 autocast cannot overflow."""
    return logits if logits.dtype == torch.float64 else logits.float()
