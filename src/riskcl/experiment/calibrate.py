"""The operating point of a finished run, chosen on data that chose nothing else.

Risk control (Learn-then-Test, conformal risk control) is valid only on calibration data untouched by any
choice. The validation split picked the best epoch, so its predictions are optimistic; by default the
threshold is fitted on the run's calibration split (``calib_predictions.npz``, carved by group and never used
for selection), and applied unchanged to the test split. Calibrating on the validation split needs an explicit
``allow_selection_split`` and says why it is unsafe. Only prediction files are read: no weights, no model.

:func:`operating_point` is the one answer to "which threshold does this run decide at": ``calibration.json`` when
it exists, else the 0.5 default rule; predict, export, the card, the web service and the subgroup report all ask it.

A shift check compares the p(malignant) of malignant cases in the calibration and test splits (two-sample
Kolmogorov-Smirnov test): the guarantee holds for data exchangeable with the calibration set, and a small p-value
says the test data is not.
"""
from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..config import run_cost_distribution
from ..decision import control_risk, fit_temperature, robust_threshold, smallest_certifiable_alpha, threshold_decision
from ..decision.operating_point import OperatingPoint
from ..defaults import DELTA, OBJECTIVES
from ..metrics import malignant_probability, safety_report
from .folder import NO_METADATA, NO_METADATA_SPLITS, RunFolder
from .tracking import track_after_training

CALIBRATION_SPLITS = ("calib", "val")
SELECTION_WARNING = ("the validation split chose the best epoch, so its predictions are optimistic: the "
                     "threshold may not carry the guarantee to new data (measured on ISIC: validation CER below "
                     "test CER in every run). Prefer the calibration split (data.calib_fraction > 0)")
SHIFT_P_VALUE = 0.01
TEST_KEYS = ("cer", "sensitivity", "specificity", "f1_macro", "accuracy", "type_i", "type_ii", "n")


def shift_check(cal_scores: np.ndarray, eval_scores: np.ndarray) -> dict[str, Any]:
    """Two-sample KS test of malignant p(malignant) between calibration and evaluation data."""
    from scipy.stats import ks_2samp

    if len(cal_scores) < 2 or len(eval_scores) < 2:
        return {"test": "ks_2samp", "p_value": float("nan"), "shift": False, "note": "too few malignant cases"}
    res = ks_2samp(cal_scores, eval_scores)
    shifted = bool(res.pvalue < SHIFT_P_VALUE)
    note = (f"p(malignant) of malignant cases differs between the calibration and test splits (KS p = "
            f"{res.pvalue:.2g} < {SHIFT_P_VALUE}): the test data is not exchangeable with the calibration data, so "
            f"the guarantee need not hold on it") if shifted else "no shift detected"
    return {"test": "ks_2samp", "statistic": float(res.statistic), "p_value": float(res.pvalue), "shift": shifted,
            "note": note}


class UncertifiedError(ValueError):
    """The run's calibration certified no threshold; shipping it needs ``allow_uncertified``."""


def operating_point(folder: RunFolder, calibrated: bool | None = None, threshold: float | None = None,
                    rule: str = "superclass", allow_uncertified: bool = False) -> OperatingPoint:
    """The run's operating point: ``calibration.json`` when it exists, else the 0.5 default rule.

    ``calibrated``: True requires ``calibration.json``, False ignores it (the default rule); ``threshold``: a
    manual threshold instead (probabilities still computed as the run computes them); ``rule="argmax"``: the
    paper's rule. An uncertified calibration raises :class:`UncertifiedError` unless ``allow_uncertified``.
    """
    cfg = folder.read_config()
    reads_metadata = folder.metadata_encoding() is not None
    base = OperatingPoint(rule=rule, tta=cfg.tta, image_size=cfg.data.image_size, task=cfg.task,
                          inputs={} if reads_metadata else None)
    if threshold is not None:
        return base.with_threshold(threshold)
    if calibrated is None:
        calibrated = folder.file("calibration").is_file()
    if not calibrated:
        return base
    cal = folder.calibration()
    op = replace(base, threshold=float(cal["threshold"]), method=cal["method"],
                 temperature=float(cal.get("temperature", 1.0)), alpha=cal.get("alpha"), delta=cal.get("delta"),
                 certified=bool(cal.get("certified", True)), split=cal["calibration_split"], by=cal.get("by"),
                 groups=cal.get("groups"), fallback=cal.get("unseen_group_threshold"),
                 guarantee=cal.get("guarantee", ""),
                 inputs=(cal.get("inputs") or {"complete": {k: cal.get(k, True) for k in ("threshold", "certified",
                                                                                          "guarantee")}})
                 if reads_metadata else None)
    if not op.certified:
        if not allow_uncertified:
            raise UncertifiedError(f"{folder.file('calibration')}: no threshold was certified at alpha = "
                                   f"{op.alpha} ({op.guarantee}); recalibrate with a larger --alpha (or more "
                                   f"calibration data), or pass --allow-uncertified to use it without a guarantee")
        op = replace(op, allowed_uncertified=True)
    return op


def raise_uncertified(folder: RunFolder, result, method: str, delta: float, split: str, cal_probs: np.ndarray,
                      cal: dict[str, np.ndarray]) -> None:
    """Raise :class:`UncertifiedError` naming the smallest alpha this calibration set can certify (for a
    segmentation run: on the missed share of the lesion)."""
    if folder.read_config().task == "segmentation":
        from ..decision.segmentation import smallest_certifiable_fnr_alpha

        smallest = smallest_certifiable_fnr_alpha(method, cal_probs, cal["target"], delta, cal.get("groups"))
        what = f"{result.unit}s with a lesion in"
    else:
        smallest = smallest_certifiable_alpha(method, cal_probs, cal["target"], folder.taxonomy(), delta,
                                              cal.get("groups"))
        what = f"malignant {result.unit}s of"
    raise UncertifiedError(
        f"{folder.path}: no threshold could be certified at alpha = {result.alpha} ({method}"
        + (f", delta = {delta}" if method == "ltt" else "") + f") on {result.n_calibration} {what} the {split} "
        f"split; the smallest alpha this calibration set can certify is {smallest:.4g}. Nothing written: use "
        f"--alpha >= {smallest:.4g}, a larger calibration split (data.calib_fraction), or --allow-uncertified to "
        f"write it without a guarantee")


def _check_split(folder: RunFolder, split: str, allow_selection_split: bool) -> None:
    if split not in CALIBRATION_SPLITS:
        raise ValueError(f"Expected the calibration split in {CALIBRATION_SPLITS}, but got {split!r} (the test "
                         f"split reports the result; it cannot also choose the threshold)")
    if split == "val" and not allow_selection_split:
        raise ValueError(f"Refusing to calibrate {folder.path} on the validation split: {SELECTION_WARNING}. "
                         f"Pass --allow-selection-split to do it anyway")
    if split == "calib" and not folder.has_predictions("calib"):
        raise FileNotFoundError(f"{folder.prediction_file('calib')} not found: this run has no calibration split "
                                f"(data.calib_fraction was 0, or the run predates it). Retrain with a calibration "
                                f"split, or pass --split val --allow-selection-split (unsafe: {SELECTION_WARNING})")


SEGMENTATION_TEST_KEYS = ("dice", "jaccard", "fnr", "missed_half", "over_rate", "hd95", "n", "n_with_lesion")


def _calibrate_pixels(folder: RunFolder, alpha: float, delta: float, method: str, split: str,
                      allow_uncertified: bool) -> dict[str, Any]:
    """:func:`calibrate_run` for a segmentation run: the pixel threshold whose missed share of the lesion is
    controlled (:func:`riskcl.decision.segmentation.control_fnr`), the test split's report there and at 0.5."""
    from ..decision.segmentation import control_fnr
    from ..metrics.segmentation import segmentation_report

    cal, test = folder.predictions(split), folder.predictions("test")
    op = operating_point(folder, calibrated=False)
    cal_probs, test_probs = op.probabilities(cal["logits"]), op.probabilities(test["logits"])
    result = control_fnr(method, cal_probs, cal["target"], alpha, delta, groups=cal.get("groups"))
    if not result.certified and not allow_uncertified:
        raise_uncertified(folder, result, method, delta, split, cal_probs, cal)
    cost = folder.cost_matrix()
    reports = {t: segmentation_report(test_probs, test["target"], t, test.get("groups"), float(cost[0, 1]),
                                      float(cost[1, 0])) for t in (result.threshold, 0.5)}

    def mean_lesion_probability(probs: np.ndarray, masks: np.ndarray) -> np.ndarray:
        m = masks.astype(bool)
        return np.array([probs[i][m[i]].mean() for i in range(len(m)) if m[i].any()])

    shift = shift_check(mean_lesion_probability(cal_probs, cal["target"]),
                        mean_lesion_probability(test_probs, test["target"]))
    shift["note"] = shift["note"].replace("p(malignant) of malignant cases", "the mean p(lesion) of lesion pixels")
    out = {**result.to_dict(), "task": "segmentation", "temperature": 1.0, "tta": op.tta,
           "calibration_split": split, "calibration_file": folder.prediction_file(split).name,
           "selection_split_warning": SELECTION_WARNING if split == "val" else None,
           "test": {k: reports[result.threshold][k] for k in SEGMENTATION_TEST_KEYS},
           "test_default_rule": {k: reports[0.5][k] for k in SEGMENTATION_TEST_KEYS}, "shift_check": shift,
           "objective": {"objective": "guarantee", "threshold": result.threshold}}
    if shift["shift"]:
        warnings.warn(shift["note"], UserWarning, stacklevel=3)
    folder.write_calibration(out)
    track_after_training(folder, {"calibrated_threshold": result.threshold, "calibrated_alpha": alpha,
                                  **{f"calibrated_test_{k}": out["test"][k] for k in ("dice", "fnr", "missed_half")}})
    return out


def _input_points(folder: RunFolder, split: str, result, op: OperatingPoint, how: tuple) -> dict[str, Any]:
    """A fusion model's operating point per input pattern: ``complete`` (the calibration as it is) and ``none``
    (the same calibration cases with every metadata column masked, their own threshold chosen the same way), each
    with its test figures. A guarantee holds for the inputs it was certified on: a model whose metadata go missing
    sees other probabilities (on unseen ISIC lesions the miss rate tripled at the with-metadata threshold)."""
    method, alpha, delta, costs, objective = how
    taxonomy = folder.taxonomy()
    points = {"complete": {"threshold": result.threshold, "certified": result.certified,
                           "guarantee": result.guarantee, "split": split}}
    twin = NO_METADATA_SPLITS.get(split)
    if twin is None or not folder.has_predictions(twin):
        warnings.warn(f"{folder.path}: no {split} predictions with the metadata masked, so no point can be certified "
                      f"for requests without metadata: they will be answered NOT CERTIFIED (a fusion run trained by "
                      f"riskcl >= 0.4 writes them on the calibration split)", UserWarning, stacklevel=3)
        return points
    cal = folder.predictions(twin)
    probs = op.probabilities(cal["logits"])
    res = control_risk(method, probs, cal["target"], taxonomy, alpha, delta, groups=cal.get("groups"))
    if res.certified:
        res, _ = robust_threshold(res, probs, cal["target"], taxonomy, costs, objective, groups=cal.get("groups"))
    else:
        warnings.warn(f"{folder.path}: requests without metadata cannot be certified at alpha = {alpha} on the {split} "
                      f"split with the metadata masked ({res.guarantee}); they will be answered NOT CERTIFIED",
                      UserWarning, stacklevel=3)
    point = {"threshold": res.threshold, "certified": res.certified, "guarantee": res.guarantee, "split": twin,
             "calibration_cer": res.calibration_cer}
    if folder.has_predictions(NO_METADATA):
        test = folder.predictions(NO_METADATA)
        test_probs = op.probabilities(test["logits"])
        rep = safety_report(test_probs, test["target"], taxonomy,
                            labels=threshold_decision(test_probs, taxonomy, res.threshold))
        point["test"] = {k: rep[k] for k in TEST_KEYS}
    points["none"] = point
    return points


def calibrate_run(run_dir: str | Path, alpha: float, delta: float = DELTA, method: str = "ltt",
                  temperature: bool = False, split: str = "calib", allow_selection_split: bool = False,
                  allow_uncertified: bool = False, objective: str = "guarantee") -> dict[str, Any]:
    """Choose the p(malignant) threshold on ``split``'s predictions (risk control of the CER), report the test
    metrics at that threshold and write ``calibration.json``.

    ``objective``: ``"guarantee"`` keeps the risk control's own threshold (the largest certified: the most
    specific); ``"expected-cost"`` / ``"minimax"`` choose, among the certified thresholds, the one with the lowest
    expected cost / worst-case regret under the run's plausible costs (``cost.uncertain``), on the same split
    (:func:`riskcl.decision.robust_threshold`); both thresholds are recorded.

    A calibration that certifies no threshold raises :class:`UncertifiedError` naming the smallest alpha this
    calibration set can certify, and writes nothing, unless ``allow_uncertified``."""
    if objective not in OBJECTIVES:
        raise ValueError(f"Expected --objective in {list(OBJECTIVES)}, but got {objective!r}")
    folder = RunFolder(run_dir)
    folder.require()
    _check_split(folder, split, allow_selection_split)
    if folder.read_config().task == "segmentation":
        if temperature or objective != "guarantee":
            raise ValueError("A segmentation run's pixel threshold is calibrated on the missed share of the lesion "
                             "alone: --temperature and --objective do not apply to it")
        return _calibrate_pixels(folder, alpha, delta, method, split, allow_uncertified)
    taxonomy = folder.taxonomy()
    cal, test = folder.predictions(split), folder.predictions("test")
    t_scale = 1.0
    if temperature:  # fitted on validation, so the calibration split stays untouched by any fit
        val = folder.predictions("val")
        t_scale = fit_temperature(val["logits"], val["target"])
    op = replace(operating_point(folder, calibrated=False), temperature=t_scale)
    cal_probs, test_probs = op.probabilities(cal["logits"]), op.probabilities(test["logits"])
    result = control_risk(method, cal_probs, cal["target"], taxonomy, alpha, delta, groups=cal.get("groups"))
    if not result.certified and not allow_uncertified:
        raise_uncertified(folder, result, method, delta, split, cal_probs, cal)
    costs = run_cost_distribution(folder.read_config())
    result, choice = robust_threshold(result, cal_probs, cal["target"], taxonomy, costs, objective,
                                      groups=cal.get("groups"))
    inputs = _input_points(folder, split, result, op, (method, alpha, delta, costs, objective)) \
        if folder.metadata_encoding() is not None else None
    labels = threshold_decision(test_probs, taxonomy, result.threshold)
    rep = safety_report(test_probs, test["target"], taxonomy, labels=labels)
    default = safety_report(test_probs, test["target"], taxonomy, labels=threshold_decision(test_probs, taxonomy, 0.5))
    shift = shift_check(*(malignant_probability(p, taxonomy)[taxonomy.superclass[y] == 1]
                          for p, y in ((cal_probs, cal["target"]), (test_probs, test["target"]))))
    out = {**result.to_dict(), "temperature": t_scale, "tta": op.tta, "calibration_split": split,
           "calibration_file": folder.prediction_file(split).name,
           "selection_split_warning": SELECTION_WARNING if split == "val" else None,
           "test": {k: rep[k] for k in TEST_KEYS}, "test_default_rule": {k: default[k] for k in TEST_KEYS},
           "shift_check": shift, "objective": choice, "costs": costs.to_dict(),
           **({"inputs": inputs} if inputs is not None else {})}
    if shift["shift"]:
        warnings.warn(shift["note"], UserWarning, stacklevel=2)
    folder.write_calibration(out)
    track_after_training(folder, {"calibrated_threshold": result.threshold, "calibrated_alpha": alpha,
                                  **{f"calibrated_test_{k}": rep[k] for k in ("cer", "sensitivity", "specificity")}})
    return out
