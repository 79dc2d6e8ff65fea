"""The paper's tuning recipe (Sec. V): fix lambda2 from the clinical severity, search lambda1 over a grid, keep
the setting with the lowest validation CER among those whose validation false-positive rate
(1 - specificity: benign cases flagged malignant) stays under a user bound."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from ..config import ExperimentConfig, config_from_dict
from ..io import atomic_write_json
from .run import run_experiment


def tune_lambda1(base: ExperimentConfig, lambda2: float, lambda1_grid: Sequence[float], max_fpr: float,
                 out: str | Path, progress: bool = True) -> dict[str, Any]:
    """Train one RCL run per lambda1 (resumable folders ``out/lambda1-<v>``) and pick the best admissible one."""
    if not 0 < max_fpr <= 1:
        raise ValueError(f"Expected `max_fpr` in (0, 1], but got {max_fpr}")
    if not lambda1_grid:
        raise ValueError("Expected a non-empty lambda1 grid")
    out = Path(out)
    rows = []
    for l1 in lambda1_grid:
        # lambda2 is the clinical severity of a missed malignancy: the loss's weight and the run's cost (which
        # selects the epoch and scores mean_cost) are one number; lambda1 is the loss's tuning knob only.
        cfg = config_from_dict(base.to_dict(), {"loss.name": "rcl", "loss.params": {"lambda1": float(l1),
                                                                                   "lambda2": float(lambda2)},
                                                "cost.lambda2": float(lambda2), "name": f"lambda1-{l1}"})
        metrics = run_experiment(cfg, out / f"lambda1-{l1}", progress=progress)
        val = metrics["val"]
        fpr = 1 - val["specificity"] if not math.isnan(val["specificity"]) else float("nan")
        rows.append({"lambda1": float(l1), "lambda2": float(lambda2), "val_cer": val["cer"], "val_fpr": fpr,
                     "val_f1_macro": val["f1_macro"], "test_cer": metrics["cer"],
                     "test_f1_macro": metrics["f1_macro"], "folder": f"lambda1-{l1}"})
    admissible = [r for r in rows if r["val_fpr"] <= max_fpr]
    best = min(admissible, key=lambda r: (r["val_cer"], r["val_fpr"])) if admissible else None
    result = {"lambda2": float(lambda2), "max_fpr": max_fpr, "grid": rows, "best": best,
              "note": None if best else f"no lambda1 keeps the validation FPR <= {max_fpr}; relax the bound "
                                        f"or lower lambda2"}
    atomic_write_json(out / "tuning.json", result)
    return result
