"""Subgroup safety of a finished run, from its prediction files only: ``riskcl evaluate RUN --by COLUMN`` and
``riskcl calibrate RUN --by COLUMN``.

The metadata columns (age, sex, body site, magnification, slide, a user's CSV columns) travel from the data
adapter into ``splits.csv`` and every prediction file (``meta__<column>`` arrays), so both commands read
nothing else. Decisions are taken at the run's operating point: its calibrated threshold when
``calibration.json`` exists (pooled), else the default rule at 0.5.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..decision import decide, group_risk_control, softmax, thresholds_per_sample
from ..defaults import DELTA, N_BOOT
from ..metrics import safety_report
from ..metrics.subgroups import MIN_MALIGNANT, PRINTABLE_COLUMNS, intervals_note, printable_rows, subgroup_metrics
from .calibrate import SELECTION_WARNING, TEST_KEYS, _check_split, operating_point, raise_uncertified
from .folder import RunFolder


def _column(folder: RunFolder, arrays: dict[str, np.ndarray], column: str, split: str) -> np.ndarray:
    meta = RunFolder.metadata_of(arrays)
    if column not in meta:
        raise ValueError(f"{folder.prediction_file(split)}: no metadata column '{column}'; this run's data carries "
                         f"{sorted(meta) or 'none'} (metadata come from the data adapter, e.g. HAM10000_metadata.csv, "
                         f"or the `metadata` option of csv / folder data)")
    return meta[column]


def evaluate_subgroups(run_dir: str | Path, column: str, split: str = "test", n_boot: int = N_BOOT,
                       min_malignant: int = MIN_MALIGNANT) -> dict[str, Any]:
    """Per-group n, malignant cases, CER, sensitivity, specificity with 95% CIs; writes
    ``RUN/subgroups_<column>.json`` (test split) or ``subgroups_<column>_<split>.json``."""
    folder = RunFolder(run_dir)
    folder.require_finished()
    arrays = folder.predictions(split)
    strata = _column(folder, arrays, column, split)
    tax = folder.taxonomy()
    op = operating_point(folder, allow_uncertified=True)
    by_strata = RunFolder.metadata_of(arrays).get(op.by) if op.per_group else None
    labels = op.decide(op.probabilities(arrays["logits"]), tax, by_strata)
    if op.segmentation:
        result = {"column": column, "split": split, "operating_point": op.describe(), "threshold": op.threshold,
                  "n": int(len(labels)), "task": "segmentation",
                  **segmentation_subgroups(labels, arrays["target"], strata, arrays["groups"], n_boot),
                  "rule": f"means over images (the missed share over images with a lesion), 95% bootstrap CIs over "
                          f"lesions ({n_boot} resamples)"}
        folder.write_subgroups(column, split, result)
        return result
    rows = subgroup_metrics(labels, arrays["target"], tax, strata, arrays["groups"], n_boot, min_malignant)
    overall = safety_report(labels, arrays["target"], tax)
    result = {"column": column, "split": split, "operating_point": op.describe(), "threshold": op.threshold,
              "n": int(len(labels)), "overall_cer": overall["cer"], "groups": rows,
              "rule": f"{intervals_note(min_malignant)} ({n_boot} bootstrap resamples)"}
    folder.write_subgroups(column, split, result)
    return result


SEGMENTATION_GROUP_KEYS = ("dice", "fnr", "missed_half", "over_rate")


def segmentation_subgroups(masks: np.ndarray, target: np.ndarray, strata: np.ndarray, groups: np.ndarray,
                           n_boot: int) -> dict[str, Any]:
    """Per value of ``strata``: images, images with a lesion, Dice, missed share, images missing > half and
    over-segmentation with 95% CIs over lesions; and the overall missed share."""
    from ..metrics.segmentation import per_image_metrics, summarize

    per = per_image_metrics(masks, target, with_hd95=False)
    s = np.asarray(strata).astype(str)
    rows = []
    for v in sorted(set(s.tolist())):
        m = s == v
        summary = summarize({k: np.asarray(a)[m] for k, a in per.items()}, np.asarray(groups)[m], n_boot)
        rows.append({"group": v, "n": summary["n"], "n_with_lesion": summary["n_with_lesion"],
                     **{k: summary[k] for k in SEGMENTATION_GROUP_KEYS},
                     **{f"{k}_ci": summary.get(f"{k}_ci") for k in SEGMENTATION_GROUP_KEYS}})
    return {"overall_fnr": float(np.nanmean(per["fnr"])), "groups": rows}


def _format_segmentation_subgroups(result: dict[str, Any]) -> str:
    def cell(g: dict[str, Any], key: str) -> str:
        lo, hi = g.get(f"{key}_ci") or (np.nan, np.nan)
        scale = 1 if key == "dice" else 100
        return f"{scale * g[key]:.3g} [{scale * lo:.3g}, {scale * hi:.3g}]"

    lines = [f"{result['split']} split by '{result['column']}' at {result['operating_point']} (overall missed share "
             f"of the lesion {100 * result['overall_fnr']:.2f}%):",
             f"{'group':>16s}  {'n':>5s}  {'Dice':>22s}  {'missed %':>22s}  {'missed > half %':>22s}"]
    for g in result["groups"]:
        lines.append(f"{g['group']:>16s}  {g['n']:>5d}  {cell(g, 'dice'):>22s}  {cell(g, 'fnr'):>22s}  "
                     f"{cell(g, 'missed_half'):>22s}")
    lines.append(result["rule"])
    return "\n".join(lines) + "\n"


def format_subgroups(result: dict[str, Any]) -> str:
    from io import StringIO

    if result.get("task") == "segmentation":
        return _format_segmentation_subgroups(result)

    buf = StringIO()
    buf.write(f"{result['split']} split by '{result['column']}' at {result['operating_point']} (overall CER "
              f"{100 * result['overall_cer']:.2f}%):\n")
    cols = PRINTABLE_COLUMNS
    rows = printable_rows(result["groups"])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    buf.write("  ".join(c.ljust(widths[c]) for c in cols) + "\n")
    for r in rows:
        buf.write("  ".join(str(r[c]).ljust(widths[c]) for c in cols) + "\n")
    buf.write(result["rule"] + "\n")
    return buf.getvalue()


def calibrate_by_group(run_dir: str | Path, column: str, alpha: float, delta: float = DELTA, method: str = "ltt",
                       split: str = "calib", allow_selection_split: bool = False,
                       fallback: str = "pooled", allow_uncertified: bool = False) -> dict[str, Any]:
    """One threshold per group of ``column`` on the calibration split; test CER per group at its threshold;
    writes ``calibration.json`` (the pooled threshold at the top, the groups under ``groups``). A pooled
    threshold that cannot be certified is refused as :func:`~riskcl.experiment.calibrate.calibrate_run` refuses
    it, unless ``allow_uncertified``."""
    folder = RunFolder(run_dir)
    folder.require()
    _check_split(folder, split, allow_selection_split)
    tax = folder.taxonomy()
    cal, test = folder.predictions(split), folder.predictions("test")
    cal_strata, test_strata = _column(folder, cal, column, split), _column(folder, test, column, "test")
    if folder.read_config().task == "segmentation":
        return _calibrate_pixels_by_group(folder, column, alpha, delta, method, split, fallback, allow_uncertified,
                                          cal, test, cal_strata, test_strata)
    res = group_risk_control(method, softmax(cal["logits"]), cal["target"], tax, cal_strata, alpha, delta,
                             cal["groups"], fallback)
    pooled = res["pooled"]
    if not pooled.certified and not allow_uncertified:
        raise_uncertified(folder, pooled, method, delta, split, softmax(cal["logits"]), cal)
    test_probs = softmax(test["logits"])
    per_image = thresholds_per_sample(res["groups"], res["fallback_threshold"], test_strata)
    labels = decide(test_probs, tax, "superclass", per_image)
    overall = safety_report(labels, test["target"], tax)
    for v, g in res["groups"].items():
        m = test_strata.astype(str) == v
        mal = m & (tax.superclass[test["target"]] == 1)
        g["test_n"], g["test_malignant"] = int(m.sum()), int(mal.sum())
        g["test_cer"] = float(np.mean(tax.superclass[labels[mal]] == 0)) if mal.any() else None
    out = {**pooled.to_dict(), "by": column, "groups": res["groups"], "fallback": fallback,
           "unseen_group_threshold": res["fallback_threshold"], "correction": res["correction"],
           "calibration_split": split, "calibration_file": folder.prediction_file(split).name,
           "selection_split_warning": SELECTION_WARNING if split == "val" else None,
           "certified_groups": sorted(v for v, g in res["groups"].items() if g["certified"]),
           "test": {k: overall[k] for k in TEST_KEYS}}
    folder.write_calibration(out)
    return out


def _calibrate_pixels_by_group(folder: RunFolder, column: str, alpha: float, delta: float, method: str, split: str,
                               fallback: str, allow_uncertified: bool, cal: dict, test: dict, cal_strata: np.ndarray,
                               test_strata: np.ndarray) -> dict[str, Any]:
    """:func:`calibrate_by_group` for a segmentation run: one pixel threshold per group, each controlling the
    group's missed share of the lesion."""
    from ..decision.segmentation import lesion_probability
    from ..metrics.segmentation import per_image_metrics

    cal_probs = lesion_probability(cal["logits"])
    res = group_risk_control(method, cal_probs, cal["target"], None, cal_strata, alpha, delta, cal["groups"],
                             fallback, segmentation=True)
    pooled = res["pooled"]
    if not pooled.certified and not allow_uncertified:
        raise_uncertified(folder, pooled, method, delta, split, cal_probs, cal)
    per_image = thresholds_per_sample(res["groups"], res["fallback_threshold"], test_strata)
    masks = lesion_probability(test["logits"]) >= per_image[:, None, None]
    per = per_image_metrics(masks, test["target"], with_hd95=False)
    for v, g in res["groups"].items():
        m = test_strata.astype(str) == v
        g["test_n"], g["test_malignant"] = int(m.sum()), int((per["lesion_px"][m] > 0).sum())
        g["test_cer"] = float(np.nanmean(per["fnr"][m])) if g["test_malignant"] else None
    out = {**pooled.to_dict(), "task": "segmentation", "by": column, "groups": res["groups"], "fallback": fallback,
           "unseen_group_threshold": res["fallback_threshold"], "correction": res["correction"],
           "calibration_split": split, "calibration_file": folder.prediction_file(split).name,
           "selection_split_warning": SELECTION_WARNING if split == "val" else None,
           "certified_groups": sorted(v for v, g in res["groups"].items() if g["certified"]),
           "test": {"fnr": float(np.nanmean(per["fnr"])), "dice": float(np.mean(per["dice"])),
                    "missed_half": float(np.nanmean(per["missed_half"])), "n": int(len(masks))}}
    folder.write_calibration(out)
    return out


def format_group_calibration(r: dict[str, Any]) -> str:
    lines = [f"one threshold per '{r['by']}' group ({r['method']}, alpha {r['alpha']}, {r['correction']}):"]
    for v, g in sorted(r["groups"].items()):
        tc = "-" if g["test_cer"] is None else f"{100 * g['test_cer']:.2f}%"
        what = ("missed lesion", "with a lesion") if r.get("task") == "segmentation" else ("CER", "malignant")
        lines.append(f"  {v:>16s}: threshold {g['threshold']:.4f}  {'certified' if g['certified'] else 'FALLBACK '}  "
                     f"calibration n={g['n_calibration']}  test {what[0]} {tc} ({g['test_malignant']} {what[1]})")
    lines.append(f"  pooled threshold {r['threshold']:.4f}; uncertified and unseen groups use the {r['fallback']} "
                 f"fallback {r['unseen_group_threshold']:.4f}")
    lines.append(f"wrote calibration.json; `riskcl predict ... --calibrated --metadata CSV` needs each image's "
                 f"'{r['by']}'")
    return "\n".join(lines)
