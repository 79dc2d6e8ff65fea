"""Scoring a split under the run's decision rule and cost, and choosing the best epoch (the selection metric on
validation, ties broken by F1-macro)."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from ..config import SELECT_METRICS
from ..decision import DECISION_RULES, decide, softmax
from ..metrics import safety_report
from ..taxonomy import Taxonomy

HISTORY_KEYS = ("cer", "f1_macro", "accuracy", "visual_ambiguity", "type_i", "type_ii", "mean_cost")


def score(report: Mapping[str, Any], metric: str) -> tuple[float, float]:
    """Sort key, smaller is better: the selection metric (NaN last), then -F1 to break ties."""
    v = report[metric]
    v = math.inf if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
    primary = v if SELECT_METRICS[metric] == "min" else -v
    return primary, -float(report["f1_macro"])


def best_epoch(history: Sequence[Mapping[str, Any]], metric: str) -> int:
    """The 1-based epoch of ``history`` rows (``val_<key>`` columns) that ``metric`` selects."""
    if not history:
        raise ValueError("Expected at least one finished epoch in the history")
    best = min(range(len(history)), key=lambda i: score({k: history[i][f"val_{k}"] for k in HISTORY_KEYS}, metric))
    return int(history[best].get("epoch", best + 1))


def split_report(logits: Any, target: Any, taxonomy: Taxonomy, cost: np.ndarray, rule: str) -> dict[str, Any]:
    """The safety report of one split under ``rule`` (top level) plus ``by_rule``: the report under every rule."""
    probs = softmax(logits)
    by_rule = {r: safety_report(probs, target, taxonomy, cost, labels=decide(probs, taxonomy, r))
               for r in DECISION_RULES}
    return {**by_rule[rule], "decision_rule": rule, "by_rule": by_rule}
