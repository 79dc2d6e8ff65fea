"""Shared input and argument checks for the losses: logits ``(N, K)``, integer targets ``(N,)``, and one check
per parameter kind, used by each loss function and its ``nn.Module`` twin alike."""
from __future__ import annotations

import math
from numbers import Real
from typing import Any

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


def check_number(name: str, value: Any, minimum: float | None = None, maximum: float | None = None,
                 min_inclusive: bool = True, max_inclusive: bool = True) -> float:
    """``float(value)`` when it is a finite real number in range; ``ValueError`` naming ``name`` otherwise."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok and minimum is not None:
        ok = value >= minimum if min_inclusive else value > minimum
    if ok and maximum is not None:
        ok = value <= maximum if max_inclusive else value < maximum
    if not ok:
        lo = "" if minimum is None else f"{'>=' if min_inclusive else '>'} {minimum:g}"
        hi = "" if maximum is None else f"{'<=' if max_inclusive else '<'} {maximum:g}"
        bounds = " and ".join(b for b in (lo, hi) if b)
        raise ValueError(f"Expected `{name}` to be a finite number{' ' + bounds if bounds else ''}, "
                         f"but got {value!r}")
    return float(value)


def check_int(name: str, value: Any, choices: tuple[int, ...] | None = None, minimum: int | None = None) -> int:
    """``int(value)`` for an integer (among ``choices`` / ``>= minimum``); ``ValueError`` naming ``name``."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    ok = ok and (choices is None or value in choices) and (minimum is None or value >= minimum)
    if not ok:
        want = f"one of {choices}" if choices else f"an integer >= {minimum}" if minimum is not None else "an integer"
        raise ValueError(f"Expected `{name}` to be {want}, but got {value!r}")
    return int(value)


def check_cost_matrix(matrix: Any, num_classes: int | None = None, name: str = "matrix") -> torch.Tensor:
    """A ``(K, K)`` float32 tensor of finite costs >= 0; ``ValueError`` naming what is wrong otherwise."""
    try:
        m = torch.as_tensor(matrix, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"Expected `{name}` to be a numeric (K, K) matrix, but got {matrix!r}") from None
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"Expected `{name}` of shape (K, K), but got {tuple(m.shape)}")
    if num_classes is not None and m.shape[0] != num_classes:
        raise ValueError(f"Expected `{name}` of shape ({num_classes}, {num_classes}), but got {tuple(m.shape)}")
    if not bool(torch.isfinite(m).all()) or bool((m < 0).any()):
        raise ValueError(f"Expected `{name}` to hold finite values >= 0")
    return m


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
