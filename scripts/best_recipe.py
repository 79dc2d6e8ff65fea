"""Pick the best of a sweep's recipes without looking at the test split: for every seed of every recipe, the
p(malignant) threshold that reaches the target sensitivity on the validation split (the split that already chose
each run's epoch), and the validation specificity it gives there; the recipe with the highest mean over seeds is
printed (its name alone on stdout, so that a Makefile can use it; the table goes to stderr). The calibration split
stays untouched for the thresholds the report sets, and the test split for the race.

    python scripts/best_recipe.py runs/fusion late late-dropout film film-dropout --target 0.95
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from riskcl.decision import softmax, threshold_decision
from riskcl.experiment.folder import RunFolder
from riskcl.metrics import malignant_probability, sensitivity_specificity
from riskcl.report.frontier import threshold_for_sensitivity


def validation_specificity(run: Path, target: float) -> float:
    folder = RunFolder(run)
    tax, val = folder.taxonomy(), folder.predictions("val")
    probs = softmax(val["logits"])
    t = threshold_for_sensitivity(malignant_probability(probs, tax), tax.superclass[val["target"]] == 1, target)
    return sensitivity_specificity(threshold_decision(probs, tax, t), val["target"], tax)[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep", type=Path, help="the sweep's output folder (recipe-NAME__seed-K runs inside)")
    p.add_argument("recipes", nargs="+")
    p.add_argument("--target", type=float, default=0.95)
    a = p.parse_args()
    scores = {}
    for name in a.recipes:
        runs = sorted(a.sweep.glob(f"recipe-{name}__seed-*"))
        if not runs:
            sys.exit(f"{a.sweep}: no runs of recipe {name!r} (expected folders recipe-{name}__seed-K)")
        scores[name] = float(np.mean([validation_specificity(r, a.target) for r in runs]))
        print(f"{name}: validation specificity at {a.target:.0%} sensitivity {scores[name]:.4f} "
              f"(mean of {len(runs)} seeds)", file=sys.stderr)
    print(max(scores, key=scores.get))


if __name__ == "__main__":
    main()
