"""Post-hoc operating point of a finished run: fit on its validation predictions, apply to its test ones."""
from __future__ import annotations

from pathlib import Path
from typing import Any


from ..decision import control_risk, fit_temperature, softmax, threshold_decision
from ..metrics import safety_report
from ..predict import load_run_model
from .io import atomic_write_json
from .run import load_run_predictions


def calibrate_run(run_dir: str | Path, alpha: float, delta: float = 0.1, method: str = "ltt",
                  temperature: bool = False) -> dict[str, Any]:
    """Choose the p(malignant) threshold on ``val_predictions.npz`` (risk control of the CER), report the test
    metrics at that threshold and write ``calibration.json``."""
    run_dir = Path(run_dir)
    _, _, taxonomy = load_run_model(run_dir)
    val, test = load_run_predictions(run_dir, "val"), load_run_predictions(run_dir, "test")
    t_scale = fit_temperature(val["logits"], val["target"]) if temperature else 1.0
    result = control_risk(method, softmax(val["logits"], t_scale), val["target"], taxonomy, alpha, delta,
                          groups=val.get("groups"))
    test_probs = softmax(test["logits"], t_scale)
    labels = threshold_decision(test_probs, taxonomy, result.threshold)
    rep = safety_report(labels, test["target"], taxonomy)
    argmax = safety_report(test_probs, test["target"], taxonomy)
    out = {**result.to_dict(), "temperature": t_scale, "calibration_set": "validation split (val_predictions.npz)",
           "test": {k: rep[k] for k in ("cer", "sensitivity", "specificity", "f1_macro", "accuracy", "type_i",
                                        "type_ii", "n")},
           "test_argmax": {k: argmax[k] for k in ("cer", "sensitivity", "specificity", "f1_macro", "accuracy")}}
    atomic_write_json(run_dir / "calibration.json", out)
    return out
