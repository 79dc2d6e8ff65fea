"""Decision curves and cost-robust figures of a run, from its saved predictions at its operating point.

``riskcl evaluate RUN --decision-curve`` writes ``decision_curve_<split>.json``: the net benefit of referring when
p(malignant) >= pt (the probabilities at the run's operating point: its temperature and TTA) against refer-all and
refer-none over the pt range of the run's plausible costs (``cost.uncertain``; with fixed costs
:data:`DEFAULT_PT_RANGE`), with bootstrap bands over the grouping unit, the range where the model adds net
benefit in one sentence, the expected cost at the operating threshold under the plausible costs, and the
H-measure. The report, the model card and the service read that file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..config import run_cost_distribution
from ..decision.costs import benefit_sentence, cost_table, decision_curve, h_measure
from ..defaults import N_BOOT
from ..metrics.functional import malignant_probability
from .calibrate import operating_point
from .folder import RunFolder

DEFAULT_PT_RANGE = (0.01, 0.5)  # with fixed costs: from a 1:99 to a 1:1 trade of a referral against a miss
COST_DRAWS = 2000


def curve_range(costs) -> tuple[float, float]:
    """The pt range a decision curve covers: the plausible costs' (``cost.uncertain``), else the default."""
    return costs.pt_range() if costs.uncertain else DEFAULT_PT_RANGE


def cost_figures(p_mal, is_mal, threshold: float, costs, seed: int = 0) -> dict[str, Any]:
    """Expected cost per case at ``threshold`` under the plausible ``costs``, its spread over the draws, and the
    H-measure (Beta(2, 2) prior over the normalised cost)."""
    l1, l2 = costs.sample(COST_DRAWS, seed)
    per_draw = cost_table(p_mal, is_mal, [threshold], l1, l2)[0]
    low, high = np.quantile(per_draw, [0.05, 0.95])
    return {"threshold": float(threshold), "expected_cost": float(per_draw.mean()), "cost_p05": float(low),
            "cost_p95": float(high), "h_measure": h_measure(p_mal, is_mal), "costs": costs.describe()}


def run_decision_curve(run_dir: str | Path, split: str = "test", pt_range: tuple[float, float] | None = None,
                       n_boot: int = N_BOOT, seed: int = 0, write: bool = True) -> dict[str, Any]:
    """The run's decision curve on ``split`` (see the module docstring); written to the run folder."""
    folder = RunFolder(run_dir)
    folder.require()
    taxonomy, preds = folder.taxonomy(), folder.predictions(split)
    op = operating_point(folder, allow_uncertified=True)
    if op.segmentation:
        raise ValueError(f"{folder.path} is a segmentation run: decision curves weigh referrals of whole cases and "
                         f"apply to classification runs; its pixel threshold is chosen by `riskcl calibrate` on the "
                         f"missed share of the lesion")
    costs = run_cost_distribution(folder.read_config())
    if pt_range is None:
        pt_range = curve_range(costs)
    p_mal = malignant_probability(op.probabilities(preds["logits"]), taxonomy)
    is_mal = taxonomy.superclass[preds["target"]] == 1
    curve = decision_curve(p_mal, is_mal, pt_range, preds.get("groups"), n_boot, seed)
    curve.update({"split": split, "run": folder.path.name, "operating_point": op.describe(),
                  "sentence": benefit_sentence(curve), "cost_figures": cost_figures(p_mal, is_mal, op.threshold,
                                                                                    costs, seed),
                  "pt_source": "cost.uncertain" if costs.uncertain else "default range (fixed costs)"})
    if write:
        folder.write_decision_curve(split, curve)
    return curve
