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
    rows = subgroup_metrics(labels, arrays["target"], tax, strata, arrays["groups"], n_boot, min_malignant)
    overall = safety_report(labels, arrays["target"], tax)
    result = {"column": column, "split": split, "operating_point": op.describe(), "threshold": op.threshold,
              "n": int(len(labels)), "overall_cer": overall["cer"], "groups": rows,
              "rule": f"{intervals_note(min_malignant)} ({n_boot} bootstrap resamples)"}
    folder.write_subgroups(column, split, result)
    return result


def format_subgroups(result: dict[str, Any]) -> str:
    from io import StringIO

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


def format_group_calibration(r: dict[str, Any]) -> str:
    lines = [f"one threshold per '{r['by']}' group ({r['method']}, alpha {r['alpha']}, {r['correction']}):"]
    for v, g in sorted(r["groups"].items()):
        tc = "-" if g["test_cer"] is None else f"{100 * g['test_cer']:.2f}%"
        lines.append(f"  {v:>16s}: threshold {g['threshold']:.4f}  {'certified' if g['certified'] else 'FALLBACK '}  "
                     f"calibration n={g['n_calibration']}  test CER {tc} ({g['test_malignant']} malignant)")
    lines.append(f"  pooled threshold {r['threshold']:.4f}; uncertified and unseen groups use the {r['fallback']} "
                 f"fallback {r['unseen_group_threshold']:.4f}")
    lines.append(f"wrote calibration.json; `riskcl predict ... --calibrated --metadata CSV` needs each image's "
                 f"'{r['by']}'")
    return "\n".join(lines)
