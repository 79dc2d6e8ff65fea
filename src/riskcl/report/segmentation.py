"""The report's segmentation section: for each loss, Dice against the missed share of the lesion, at the 0.5 rule
and at each run's calibrated pixel threshold (``calibration.json``), from the saved predictions only.

Per image the metrics come from :func:`riskcl.metrics.segmentation.per_image_metrics`; seeds are averaged image
by image (aligned by id), and the 95% intervals are two-level percentile bootstraps (training seeds, then lesions:
:func:`riskcl.metrics.two_level_ci`), so that they cover a new training run; fewer than 3 seeds are marked ``*``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..decision.segmentation import lesion_probability
from ..defaults import N_BOOT
from ..metrics.bootstrap import MIN_SEEDS, two_level_ci
from ..metrics.segmentation import per_image_metrics
from .collect import RunRecord, pool_key

KEYS = ("dice", "fnr", "missed_half", "over_rate")


def _per_image(record: RunRecord, threshold: float) -> dict[str, np.ndarray]:
    pred = record.predictions("test")
    probs = lesion_probability(pred["logits"])
    return per_image_metrics(probs >= threshold, pred["target"], with_hd95=False)


def _calibration(record: RunRecord) -> dict[str, Any] | None:
    path = record.folder.file("calibration")
    return record.folder.calibration() if path.is_file() else None


def _pooled(records: list[RunRecord], thresholds: list[float], n_boot: int) -> dict[str, Any]:
    per = [_per_image(r, t) for r, t in zip(records, thresholds)]
    groups = records[0].predictions("test")["groups"]
    out: dict[str, Any] = {}
    def seed_mean(v: np.ndarray, _t: np.ndarray) -> float:  # (images, seeds): each seed's mean, then their mean
        with np.errstate(invalid="ignore"):
            return float(np.nanmean(np.nanmean(v, axis=0)))

    for key in KEYS:
        stacked = np.stack([p[key] for p in per], 1)
        point, lo, hi = two_level_ci(seed_mean, stacked, np.zeros(len(stacked)), groups=groups, n_resamples=n_boot)
        out[key], out[f"{key}_ci"] = point, (lo, hi)
    out["few_seeds"] = len(records) < MIN_SEEDS
    return out


def segmentation_table(records: list[RunRecord], n_boot: int = N_BOOT) -> pd.DataFrame:
    """One row per (dataset, model, loss): at 0.5 and at the calibrated thresholds, Dice, missed lesion share,
    images missing more than half, over-segmentation (means over seeds with 95% CIs over lesions), the
    calibrations' alpha and method, and in how many seeds the test split's missed share stayed <= alpha."""
    rows = []
    keyed: dict[tuple, list[RunRecord]] = {}
    for r in records:
        keyed.setdefault(pool_key(r), []).append(r)
    for (ds, model, method, split_seed), recs in sorted(keyed.items()):
        recs = sorted(recs, key=lambda r: r.run["seed"])
        plain = _pooled(recs, [0.5] * len(recs), n_boot)
        cals = [_calibration(r) for r in recs]
        row: dict[str, Any] = {"dataset": ds, "model": model, "method": method, "split seed": split_seed,
                               "seeds": len(recs)}
        for key, label in (("dice", "Dice"), ("fnr", "missed"), ("missed_half", "missed > half"),
                           ("over_rate", "over-seg.")):
            row[f"{label} @0.5"] = _fmt(plain, key)
        if all(c is not None for c in cals):
            cal = _pooled(recs, [float(c["threshold"]) for c in cals], n_boot)
            alphas = sorted({c["alpha"] for c in cals})
            row["calibration"] = f"{cals[0]['method']}, alpha {', '.join(f'{a:g}' for a in alphas)}"
            row["thresholds"] = ", ".join(f"{c['threshold']:.3f}" for c in cals)
            for key, label in (("dice", "Dice"), ("fnr", "missed"), ("missed_half", "missed > half"),
                               ("over_rate", "over-seg.")):
                row[f"{label} @cal"] = _fmt(cal, key)
            row["seeds held alpha"] = f"{sum(c['test']['fnr'] <= c['alpha'] for c in cals)}/{len(cals)}"
            row["_missed_cal"], row["_dice_cal"] = cal["fnr"], cal["dice"]
        else:
            row["calibration"] = f"not calibrated ({sum(c is None for c in cals)} of {len(cals)} seeds)"
        row["_missed"], row["_dice"] = plain["fnr"], plain["dice"]
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt(pooled: dict[str, Any], key: str) -> str:
    lo, hi = pooled[f"{key}_ci"]
    scale, unit = (1, "") if key == "dice" else (100, "%")
    digits = 3 if key == "dice" else 1
    mark = "*" if pooled.get("few_seeds") else ""
    return f"{scale * pooled[key]:.{digits}f}{unit} [{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]{mark}"


def public(table: pd.DataFrame) -> pd.DataFrame:
    """The table without its plotting columns (those starting with ``_``)."""
    return table[[c for c in table.columns if not c.startswith("_")]]
