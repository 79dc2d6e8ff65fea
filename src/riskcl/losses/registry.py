"""The loss registry: ``create_loss(name, taxonomy=..., class_counts=..., cost=..., **params)``.

Each entry is a builder plus what it needs from the run (``taxonomy``, ``class_counts``); the builder's keyword
parameters are the list a config may set under ``loss.params`` (checked before training starts). Cost-based
losses (``rcl``, ``expected-cost``) use the run's clinical cost matrix (``cost``) unless their own parameters
(``lambda1``, ``lambda2``, ``cost_matrix``) say otherwise; missing penalties then take the package defaults.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .._names import did_you_mean, unknown_name
from ..taxonomy import DEFAULT_LAMBDA1, DEFAULT_LAMBDA2, Taxonomy, loss_weight_matrix, resolve_cost_matrix
from .cross_entropy import CrossEntropyLoss, LogitAdjustedLoss, class_weights_from_counts
from .distill import DistillationLoss
from .focal import FocalLoss
from .hierarchical import ExpectedCostLoss, HierarchicalCrossEntropyLoss, SoftLabelLoss
from .risk_calibrated import RiskCalibratedLoss
from .segmentation import BCEDiceLoss, BCELoss, DiceLoss, FocalTverskyLoss, PixelRiskLoss, TverskyLoss
from .superclass import MarginalBCELoss, PartialAUCLoss

# The seven (lambda1, lambda2) settings of the paper's ablation (Table IV).
RCL_PRESETS: dict[str, tuple[float, float]] = {
    "light": (5.0, 5.0),
    "balanced": (2.0, 10.0),
    "structsafe": (5.0, 10.0),
    "uniform": (10.0, 10.0),
    "sparse": (1.0, 20.0),
    "proposed": (DEFAULT_LAMBDA1, DEFAULT_LAMBDA2),
    "highstruct": (10.0, 20.0),
}


@dataclass(frozen=True)
class LossContext:
    """What a builder may use from the run: the taxonomy, the training class counts, the run's cost matrix."""

    taxonomy: Taxonomy | None
    class_counts: list[int] | None
    cost: np.ndarray | None
    costs: Any = None      # the run's plausible costs (riskcl.decision.costs.CostDistribution), for sampled_costs
    within: float = 1.0    # the cost of a confusion inside a superclass, kept by every draw
    seed: int = 0          # the run's seed: the draws of sampled_costs repeat with it

    @property
    def superclass(self) -> torch.Tensor:
        return torch.as_tensor(self.taxonomy.superclass, dtype=torch.long)


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: its builder and what it needs (checked by :func:`create_loss`)."""

    builder: Callable[..., nn.Module]
    needs_taxonomy: bool = False
    needs_counts: bool = False
    task: str = "classification"   # the task whose outputs it scores: "classification" or "segmentation"


def _cost(ctx: LossContext, lambda1: float | None, lambda2: float | None, cost_matrix: Any) -> torch.Tensor:
    """The loss weights: the run's clinical cost (``ctx.cost``) or the loss's own lambdas / matrix, with the
    paper's weight 1 for a correct prediction (:func:`~riskcl.taxonomy.loss_weight_matrix`)."""
    if lambda1 is None and lambda2 is None and cost_matrix is None and ctx.cost is not None:
        matrix = resolve_cost_matrix(ctx.taxonomy, matrix=ctx.cost)
    else:
        matrix = resolve_cost_matrix(ctx.taxonomy, DEFAULT_LAMBDA1 if lambda1 is None else lambda1,
                                     DEFAULT_LAMBDA2 if lambda2 is None else lambda2, cost_matrix)
    return torch.as_tensor(loss_weight_matrix(matrix), dtype=torch.float32)


def _ce(ctx: LossContext) -> nn.Module:
    return CrossEntropyLoss()


def _wce(ctx: LossContext) -> nn.Module:
    return CrossEntropyLoss(weight=class_weights_from_counts(ctx.class_counts).float())


def _focal(ctx: LossContext, gamma: float = 2.0, alpha: float = 0.25) -> nn.Module:
    return FocalLoss(gamma, alpha)


def _ls(ctx: LossContext, epsilon: float = 0.1) -> nn.Module:
    return CrossEntropyLoss(label_smoothing=epsilon)


def _logit_adjust(ctx: LossContext, tau: float = 1.0) -> nn.Module:
    return LogitAdjustedLoss(ctx.class_counts, tau)


class SampledCostLoss(nn.Module):
    """A cost-based loss whose severity matrix is drawn per batch from the run's plausible costs (the paper's
    probabilistic severity matrices): before each batch ``(lambda1, lambda2)`` is drawn from ``costs`` with a
    generator seeded by ``(seed, epoch)`` and the inner loss's ``matrix`` becomes its loss weights. A rerun, or a run
    resumed at an epoch boundary, draws the same sequence. ``last_draw`` holds the latest ``(lambda1, lambda2)``."""

    def __init__(self, inner: nn.Module, taxonomy: Taxonomy, costs: Any, within: float, seed: int) -> None:
        super().__init__()
        self.inner, self.taxonomy, self.costs, self.within, self.seed = inner, taxonomy, costs, within, int(seed)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.rng = np.random.default_rng([self.seed, int(epoch)])
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        l1, l2 = (float(v[0]) for v in self.costs.sample(1, self.rng))
        self.last_draw = (l1, l2)
        weights = loss_weight_matrix(resolve_cost_matrix(self.taxonomy, l1, l2, within=self.within))
        self.inner.matrix.copy_(torch.as_tensor(weights, dtype=self.inner.matrix.dtype))
        return self.inner(logits, target)


def _maybe_sampled(ctx: LossContext, loss: nn.Module, sampled_costs: bool, own: bool) -> nn.Module:
    if not sampled_costs:
        return loss
    if own:
        raise ValueError("loss.params.sampled_costs draws lambda1 / lambda2 from cost.uncertain; it does not combine "
                         "with the loss's own lambda1 / lambda2 / cost_matrix")
    if ctx.costs is None or not ctx.costs.uncertain:
        raise ValueError("loss.params.sampled_costs needs plausible costs to draw from: set cost.uncertain (ranges "
                         "of lambda1 / lambda2, or of pt), and no cost.matrix")
    return SampledCostLoss(loss, ctx.taxonomy, ctx.costs, ctx.within, ctx.seed)


def _distill(ctx: LossContext, teacher: str | None = None, temperature: float = 2.0,
             alpha: float = 0.5) -> nn.Module:
    return DistillationLoss(teacher, temperature, alpha)  # type: ignore[arg-type]  (None is refused there)


def _rcl(ctx: LossContext, lambda1: float | None = None, lambda2: float | None = None, cost_matrix: Any = None,
         warmup_epochs: int = 0, sampled_costs: bool = False) -> nn.Module:
    loss = RiskCalibratedLoss(_cost(ctx, lambda1, lambda2, cost_matrix), warmup_epochs)
    return _maybe_sampled(ctx, loss, sampled_costs, not (lambda1 is None and lambda2 is None and cost_matrix is None))


def _hxe(ctx: LossContext, alpha: float = 0.1, levels: int = 2) -> nn.Module:
    return HierarchicalCrossEntropyLoss(ctx.superclass, alpha, levels)


def _soft_labels(ctx: LossContext, beta: float = 10.0) -> nn.Module:
    return SoftLabelLoss(ctx.superclass, beta)


def _expected_cost(ctx: LossContext, weight: float = 1.0, lambda1: float | None = None,
                   lambda2: float | None = None, cost_matrix: Any = None, sampled_costs: bool = False) -> nn.Module:
    loss = ExpectedCostLoss(_cost(ctx, lambda1, lambda2, cost_matrix), weight)
    return _maybe_sampled(ctx, loss, sampled_costs, not (lambda1 is None and lambda2 is None and cost_matrix is None))


def _marginal_bce(ctx: LossContext, weight: float = 1.0, pos_weight: float | str = 1.0) -> nn.Module:
    if pos_weight == "auto":  # benign / malignant training counts
        if ctx.class_counts is None:
            raise ValueError("Loss 'marginal-bce' with pos_weight 'auto' needs `class_counts`")
        counts, sup = np.asarray(ctx.class_counts, dtype=np.float64), ctx.taxonomy.superclass
        if counts[sup == 1].sum() <= 0:
            raise ValueError("Loss 'marginal-bce' with pos_weight 'auto': no malignant training sample")
        pos_weight = float(counts[sup == 0].sum() / counts[sup == 1].sum())
    return MarginalBCELoss(ctx.superclass, weight, pos_weight)


def _pauc(ctx: LossContext, weight: float = 1.0, beta: float = 0.1, margin: float = 1.0) -> nn.Module:
    return PartialAUCLoss(ctx.superclass, weight, beta, margin)


def _bce(ctx: LossContext, pos_weight: float = 1.0) -> nn.Module:
    return BCELoss(pos_weight=pos_weight)


def _dice(ctx: LossContext, smooth: float = 1e-5) -> nn.Module:
    return DiceLoss(smooth=smooth)


def _bce_dice(ctx: LossContext, dice_weight: float = 1.0, smooth: float = 1e-5) -> nn.Module:
    return BCEDiceLoss(dice_weight=dice_weight, smooth=smooth)


def _tversky(ctx: LossContext, alpha: float = 0.3, beta: float = 0.7, smooth: float = 1e-5) -> nn.Module:
    return TverskyLoss(alpha=alpha, beta=beta, smooth=smooth)


def _focal_tversky(ctx: LossContext, alpha: float = 0.3, beta: float = 0.7, gamma: float = 0.75,
                   smooth: float = 1e-5) -> nn.Module:
    return FocalTverskyLoss(alpha=alpha, beta=beta, gamma=gamma, smooth=smooth)


def _rcl_pixel(ctx: LossContext, lambda1: float | None = None, lambda2: float | None = None) -> nn.Module:
    """The run's cost section (``cost.lambda1`` / ``lambda2``: background called lesion / lesion called background)
    unless the loss's own ``lambda1`` / ``lambda2`` are given."""
    cost = None if ctx.cost is None else np.asarray(ctx.cost, dtype=np.float64)
    l1 = lambda1 if lambda1 is not None else (float(cost[0, 1]) if cost is not None else DEFAULT_LAMBDA1)
    l2 = lambda2 if lambda2 is not None else (float(cost[1, 0]) if cost is not None else DEFAULT_LAMBDA2)
    return PixelRiskLoss(lambda1=l1, lambda2=l2)


LOSSES: dict[str, LossSpec] = {
    "ce": LossSpec(_ce),
    "wce": LossSpec(_wce, needs_counts=True),
    "focal": LossSpec(_focal),
    "ls": LossSpec(_ls),
    "logit-adjust": LossSpec(_logit_adjust, needs_counts=True),
    "rcl": LossSpec(_rcl, needs_taxonomy=True),
    "hxe": LossSpec(_hxe, needs_taxonomy=True),
    "soft-labels": LossSpec(_soft_labels, needs_taxonomy=True),
    "expected-cost": LossSpec(_expected_cost, needs_taxonomy=True),
    "marginal-bce": LossSpec(_marginal_bce, needs_taxonomy=True),
    "pauc": LossSpec(_pauc, needs_taxonomy=True),
    "distill": LossSpec(_distill),
}
SEGMENTATION_LOSSES = {"bce": _bce, "dice": _dice, "bce-dice": _bce_dice, "tversky": _tversky,
                       "focal-tversky": _focal_tversky, "rcl-pixel": _rcl_pixel}
for _name, _builder in SEGMENTATION_LOSSES.items():
    LOSSES[_name] = LossSpec(_builder, task="segmentation")
for _preset, (_l1, _l2) in RCL_PRESETS.items():
    LOSSES[f"rcl-{_preset}"] = LossSpec(partial(_rcl, lambda1=_l1, lambda2=_l2), needs_taxonomy=True)


def register_loss(name: str, builder: Callable[..., nn.Module], needs_taxonomy: bool = False,
                  needs_counts: bool = False, task: str = "classification") -> None:
    """Add a loss: ``builder(ctx: LossContext, **params) -> nn.Module`` (its keyword parameters are the ones a
    config may set); ``needs_*`` say what :func:`create_loss` must be given; ``task`` which outputs it scores."""
    LOSSES[name] = LossSpec(builder, needs_taxonomy, needs_counts, task)


def list_losses(task: str | None = None) -> list[str]:
    """Names accepted by :func:`create_loss` (those of one ``task`` when given)."""
    return sorted(k for k, spec in LOSSES.items() if task is None or spec.task == task)


def loss_task(name: str) -> str:
    """The task whose outputs loss ``name`` scores (``classification`` or ``segmentation``)."""
    return _lookup(name).task


def _lookup(name: str) -> LossSpec:
    if name not in LOSSES:
        raise unknown_name("loss", name, LOSSES)
    return LOSSES[name]


def loss_params(name: str) -> dict[str, Any]:
    """The tunable parameters of loss ``name`` with their defaults (preset values included)."""
    sig = inspect.signature(_lookup(name).builder)
    return {k: p.default for k, p in list(sig.parameters.items())[1:]}


def loss_needs(name: str) -> dict[str, bool]:
    """``{"taxonomy": ..., "class_counts": ...}``: what loss ``name`` needs from the run."""
    spec = _lookup(name)
    return {"taxonomy": spec.needs_taxonomy, "class_counts": spec.needs_counts}


def check_loss_params(name: str, params: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming any parameter that loss ``name`` does not take."""
    allowed = loss_params(name)
    for key in params:
        if key not in allowed:
            raise ValueError(f"Loss '{name}' has no parameter '{key}'{did_you_mean(key, allowed)}; expected some of "
                             f"{sorted(allowed)}")


def create_loss(name: str, taxonomy: Taxonomy | None = None, class_counts: Sequence[int] | np.ndarray | None = None,
                cost: Any = None, costs: Any = None, within: float = 1.0, seed: int = 0, **params: Any) -> nn.Module:
    """Build a loss module by registry name.

    Args:
        name: one of :func:`list_losses` (``ce``, ``wce``, ``focal``, ``ls``, ``logit-adjust``, ``rcl``,
            ``rcl-<preset>``, ``hxe``, ``soft-labels``, ``expected-cost``, ``marginal-bce``, ``pauc``).
        taxonomy: the class hierarchy (needed by every loss that uses severity or superclasses).
        class_counts: training-set count per class (``wce``, ``logit-adjust``, ``marginal-bce`` with
            ``pos_weight: auto``).
        cost: the run's ``(K, K)`` clinical cost matrix: the default of ``rcl`` and ``expected-cost``.
        costs, within, seed: the run's plausible costs (``cost.uncertain``), in-superclass cost and seed, from which
            ``rcl`` / ``expected-cost`` with ``sampled_costs: true`` draw their matrix per batch.
        **params: the loss's own parameters (``lambda1``, ``lambda2``, ``cost_matrix``, ``gamma``, ...).

    Example:
        >>> from riskcl.taxonomy import get_taxonomy
        >>> loss = create_loss("rcl-proposed", taxonomy=get_taxonomy("brain_mri"))
        >>> loss.matrix[0, 2].item()      # glioma predicted as notumor: Type II
        20.0
    """
    spec = _lookup(name)
    check_loss_params(name, params)
    if spec.needs_taxonomy and taxonomy is None:
        raise ValueError(f"Loss '{name}' needs a `taxonomy`")
    counts = None if class_counts is None else [int(c) for c in class_counts]
    if spec.needs_counts:
        if counts is None:
            raise ValueError(f"Loss '{name}' needs `class_counts` (the training-set count of each class)")
        if taxonomy is not None and len(counts) != taxonomy.num_classes:
            raise ValueError(f"Loss '{name}': expected {taxonomy.num_classes} class counts, but got {len(counts)}")
    return spec.builder(LossContext(taxonomy, counts, None if cost is None else np.asarray(cost), costs,
                                    float(within), int(seed)), **params)
