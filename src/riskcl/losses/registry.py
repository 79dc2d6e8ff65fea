"""The loss registry: ``create_loss(name, taxonomy=..., class_counts=..., **params)``.

Each entry is a builder taking the taxonomy, the training class counts and its own keyword parameters; its
signature is the list of parameters a config may set (checked before training starts).
"""
from __future__ import annotations

import difflib
import inspect
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..taxonomy import Taxonomy, severity_matrix, validate_cost_matrix
from .cross_entropy import CrossEntropyLoss, class_weights_from_counts
from .focal import FocalLoss
from .hierarchical import ExpectedCostLoss, HierarchicalCrossEntropyLoss, SoftLabelLoss
from .risk_calibrated import RiskCalibratedLoss

# The seven (lambda1, lambda2) settings of the paper's ablation (Table IV).
RCL_PRESETS: dict[str, tuple[float, float]] = {
    "light": (5.0, 5.0),
    "balanced": (2.0, 10.0),
    "structsafe": (5.0, 10.0),
    "uniform": (10.0, 10.0),
    "sparse": (1.0, 20.0),
    "proposed": (5.0, 20.0),
    "highstruct": (10.0, 20.0),
}


def _matrix(taxonomy: Taxonomy, lambda1: float, lambda2: float, cost_matrix: Any) -> torch.Tensor:
    if cost_matrix is not None:
        return torch.as_tensor(validate_cost_matrix(cost_matrix, taxonomy), dtype=torch.float32)
    return torch.as_tensor(severity_matrix(taxonomy, lambda1, lambda2), dtype=torch.float32)


def _superclass(taxonomy: Taxonomy) -> torch.Tensor:
    return torch.as_tensor(taxonomy.superclass, dtype=torch.long)


def _ce(taxonomy: Taxonomy, class_counts: Sequence[int] | None) -> nn.Module:
    return CrossEntropyLoss()


def _wce(taxonomy: Taxonomy, class_counts: Sequence[int] | None) -> nn.Module:
    if class_counts is None:
        raise ValueError("Loss 'wce' needs `class_counts` (the training-set count of each class)")
    if len(class_counts) != taxonomy.num_classes:
        raise ValueError(f"Loss 'wce': expected {taxonomy.num_classes} class counts, but got {len(class_counts)}")
    return CrossEntropyLoss(weight=class_weights_from_counts(class_counts).float())


def _focal(taxonomy: Taxonomy, class_counts: Sequence[int] | None, gamma: float = 2.0,
           alpha: float = 0.25) -> nn.Module:
    return FocalLoss(gamma, alpha)


def _ls(taxonomy: Taxonomy, class_counts: Sequence[int] | None, epsilon: float = 0.1) -> nn.Module:
    return CrossEntropyLoss(label_smoothing=epsilon)


def _rcl(taxonomy: Taxonomy, class_counts: Sequence[int] | None, lambda1: float = 5.0, lambda2: float = 20.0,
         cost_matrix: Any = None) -> nn.Module:
    return RiskCalibratedLoss(_matrix(taxonomy, lambda1, lambda2, cost_matrix))


def _hxe(taxonomy: Taxonomy, class_counts: Sequence[int] | None, alpha: float = 0.1,
         levels: int = 2) -> nn.Module:
    return HierarchicalCrossEntropyLoss(_superclass(taxonomy), alpha, levels)


def _soft_labels(taxonomy: Taxonomy, class_counts: Sequence[int] | None, beta: float = 10.0) -> nn.Module:
    return SoftLabelLoss(_superclass(taxonomy), beta)


def _expected_cost(taxonomy: Taxonomy, class_counts: Sequence[int] | None, weight: float = 1.0,
                   lambda1: float = 5.0, lambda2: float = 20.0, cost_matrix: Any = None) -> nn.Module:
    return ExpectedCostLoss(_matrix(taxonomy, lambda1, lambda2, cost_matrix), weight)


LOSSES: dict[str, Callable[..., nn.Module]] = {
    "ce": _ce,
    "wce": _wce,
    "focal": _focal,
    "ls": _ls,
    "rcl": _rcl,
    "hxe": _hxe,
    "soft-labels": _soft_labels,
    "expected-cost": _expected_cost,
}
for _preset, (_l1, _l2) in RCL_PRESETS.items():
    LOSSES[f"rcl-{_preset}"] = partial(_rcl, lambda1=_l1, lambda2=_l2)


def list_losses() -> list[str]:
    """Names accepted by :func:`create_loss`."""
    return sorted(LOSSES)


def loss_params(name: str) -> dict[str, Any]:
    """The tunable parameters of loss ``name`` with their defaults (preset values included)."""
    builder = _lookup(name)
    sig = inspect.signature(builder)
    return {k: p.default for k, p in list(sig.parameters.items())[2:]}


def _lookup(name: str) -> Callable[..., nn.Module]:
    if name not in LOSSES:
        close = difflib.get_close_matches(str(name), LOSSES, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"Unknown loss '{name}'{hint}; expected one of {list_losses()}")
    return LOSSES[name]


def check_loss_params(name: str, params: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming any parameter that loss ``name`` does not take."""
    allowed = loss_params(name)
    for key in params:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"Loss '{name}' has no parameter '{key}'{hint}; expected some of {sorted(allowed)}")


def create_loss(name: str, taxonomy: Taxonomy | None = None, class_counts: Sequence[int] | np.ndarray | None = None,
                **params: Any) -> nn.Module:
    """Build a loss module by registry name.

    Args:
        name: one of :func:`list_losses` (``ce``, ``wce``, ``focal``, ``ls``, ``rcl``, ``rcl-<preset>``,
            ``hxe``, ``soft-labels``, ``expected-cost``).
        taxonomy: the class hierarchy (needed by every loss that uses severity or superclasses).
        class_counts: training-set count per class (``wce``).
        **params: the loss's own parameters (``lambda1``, ``lambda2``, ``cost_matrix``, ``gamma``, ...).

    Example:
        >>> from riskcl.taxonomy import get_taxonomy
        >>> loss = create_loss("rcl-proposed", taxonomy=get_taxonomy("brain_mri"))
        >>> loss.matrix[0, 2].item()      # glioma predicted as notumor: Type II
        20.0
    """
    builder = _lookup(name)
    check_loss_params(name, params)
    if taxonomy is None:
        needs_tax = name not in ("ce", "focal", "ls")
        if needs_tax:
            raise ValueError(f"Loss '{name}' needs a `taxonomy`")
        taxonomy = Taxonomy("unused", ("a", "b"), (0, 1))
    counts = None if class_counts is None else [int(c) for c in class_counts]
    return builder(taxonomy, counts, **params)
