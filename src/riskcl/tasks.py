"""What differs between tasks, in one place: classification (a label per image) and segmentation (a lesion mask
per image, where a missed part of the lesion is the fatal error).

Everything else (the config, the run folder, training, selection, calibration, the commands) is shared and asks
the run's :class:`Task` (``task_of(name)``) for:

* ``create_model``: a timm classifier, or a segmentation-models-pytorch decoder on a timm encoder;
* ``report``: a split's metrics (the safety report under the decision rule; Dice, under-segmentation and the
  rest of :mod:`riskcl.metrics.segmentation` at the pixel threshold 0.5) and ``history_keys``, the validation
  figures kept per epoch;
* ``select_metrics`` / ``score``: what may select the best epoch, and the sort key (ties broken by
  ``tie_break``);
* ``epoch_line``: the progress line of an epoch.

Data sets say which task they serve (:func:`riskcl.data.registry.dataset_task`), losses too
(:func:`riskcl.losses.loss_task`); the config checks that the three agree.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from .decision.segmentation import lesion_probability

TASK_NAMES = ("classification", "segmentation")


class Task:
    """The classification task (the paper's): the base every task overrides where it differs."""

    name = "classification"
    select_metrics: dict[str, str] = {"cer": "min", "mean_cost": "min", "f1_macro": "max", "accuracy": "max"}
    tie_break = "f1_macro"
    history_keys: tuple[str, ...] = ("cer", "f1_macro", "accuracy", "visual_ambiguity", "type_i", "type_ii",
                                     "mean_cost")
    taxonomy: str | None = None  # a fixed taxonomy (segmentation: background / lesion), else the data set's

    def create_model(self, model_cfg: Any, num_classes: int, encoding: Any = None) -> Any:
        """The run's network; with a metadata ``encoding`` (``model.metadata``), a fusion network."""
        from .models import create_fusion_model, create_model

        if encoding is not None:
            return create_fusion_model(model_cfg, num_classes, encoding)
        return create_model(model_cfg.name, num_classes, pretrained=model_cfg.pretrained,
                            weights_path=model_cfg.weights_path, drop_rate=model_cfg.drop_rate, **model_cfg.options)

    def report(self, logits: Any, target: Any, taxonomy: Any, cost: np.ndarray, rule: str, groups: Any = None,
               final: bool = True) -> dict[str, Any]:
        """The safety report of one split under ``rule`` (top level) plus ``by_rule``: under every rule."""
        from .decision import DECISION_RULES, decide, softmax
        from .metrics import safety_report

        probs = softmax(logits)
        by_rule = {r: safety_report(probs, target, taxonomy, cost, labels=decide(probs, taxonomy, r))
                   for r in DECISION_RULES}
        return {**by_rule[rule], "decision_rule": rule, "by_rule": by_rule}

    def report_at(self, op: Any, logits: Any, target: Any, taxonomy: Any, cost: np.ndarray, strata: Any = None,
                  groups: Any = None) -> dict[str, Any]:
        """The split's report at the operating point ``op`` (:class:`riskcl.decision.OperatingPoint`)."""
        from .metrics import safety_report

        probs = op.probabilities(logits)
        return safety_report(probs, target, taxonomy, cost, labels=op.decide(probs, taxonomy, strata))

    def score(self, report: Mapping[str, Any], metric: str) -> tuple[float, float]:
        """Sort key, smaller is better: the selection metric (NaN last), then the tie-break metric."""
        if metric not in self.select_metrics:
            raise ValueError(f"Expected a selection metric of {self.name} in {list(self.select_metrics)}, but got "
                             f"{metric!r}")
        v = report[metric]
        v = math.inf if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
        primary = v if self.select_metrics[metric] == "min" else -v
        tie = report.get(self.tie_break)
        return primary, -(float(tie) if tie is not None and not math.isnan(float(tie)) else -math.inf)

    def best_epoch(self, history: Sequence[Mapping[str, Any]], metric: str) -> int:
        """The 1-based epoch of ``history`` rows (``val_<key>`` columns) that ``metric`` selects."""
        if not history:
            raise ValueError("Expected at least one finished epoch in the history")
        best = min(range(len(history)),
                   key=lambda i: self.score({k: history[i].get(f"val_{k}") for k in self.history_keys}, metric))
        return int(history[best].get("epoch", best + 1))

    def epoch_line(self, row: Mapping[str, Any], epochs: int) -> str:
        return (f"  epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.4f}  val CER {100 * row['val_cer']:.2f}%  "
                f"F1 {row['val_f1_macro']:.4f}  acc {100 * row['val_accuracy']:.2f}%  type II {row['val_type_ii']}  "
                f"({row['epoch_time_s']:.1f}s)")


class SegmentationTask(Task):
    """Binary lesion segmentation: one lesion logit per pixel; a lesion pixel called background is the Type II
    error (``cost.lambda2``), background called lesion the Type I (``cost.lambda1``)."""

    name = "segmentation"
    select_metrics = {"mean_cost": "min", "dice": "max", "fnr": "min"}
    tie_break = "dice"
    history_keys = ("dice", "jaccard", "fnr", "missed_half", "over_rate", "mean_cost")
    taxonomy = "lesion"
    default_arch = "unet"

    def create_model(self, model_cfg: Any, num_classes: int, encoding: Any = None) -> Any:
        from .models import create_segmentation_model

        return create_segmentation_model(model_cfg.arch or self.default_arch, model_cfg.name,
                                         pretrained=model_cfg.pretrained, weights_path=model_cfg.weights_path,
                                         **model_cfg.options)

    def report(self, logits: Any, target: Any, taxonomy: Any, cost: np.ndarray, rule: str, groups: Any = None,
               final: bool = True, threshold: float = 0.5) -> dict[str, Any]:
        """Dice, under-segmentation and the rest at the pixel ``threshold`` (validation during training: no
        bootstrap and no HD95, which cost time at every epoch)."""
        from .defaults import N_BOOT
        from .metrics.segmentation import segmentation_report

        cost = np.asarray(cost, dtype=np.float64)
        return segmentation_report(lesion_probability(logits), target, threshold, groups if final else None,
                                   float(cost[0, 1]), float(cost[1, 0]), n_boot=N_BOOT if final else 0,
                                   with_hd95=final)

    def report_at(self, op: Any, logits: Any, target: Any, taxonomy: Any, cost: np.ndarray, strata: Any = None,
                  groups: Any = None) -> dict[str, Any]:
        from .metrics.segmentation import per_image_metrics, summarize

        cost = np.asarray(cost, dtype=np.float64)
        masks = op.decide(op.probabilities(logits), None, strata)
        per = per_image_metrics(masks, target, float(cost[0, 1]), float(cost[1, 0]))
        return {**summarize(per, groups), "threshold": op.threshold}

    def epoch_line(self, row: Mapping[str, Any], epochs: int) -> str:
        return (f"  epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.4f}  val Dice {row['val_dice']:.4f}  "
                f"missed lesion {100 * row['val_fnr']:.2f}%  missed > half {100 * row['val_missed_half']:.1f}%  "
                f"({row['epoch_time_s']:.1f}s)")


TASKS: dict[str, Task] = {"classification": Task(), "segmentation": SegmentationTask()}


def task_of(name: str) -> Task:
    """The :class:`Task` called ``name`` (``classification`` or ``segmentation``)."""
    if name not in TASKS:
        from ._names import unknown_name

        raise unknown_name("task", name, TASKS)
    return TASKS[name]
