"""The fair safety frontier: operating points chosen on held-out predictions, scored on test.

For every run and every target sensitivity, the p(malignant) threshold is chosen on predictions that did not
select the model (the calibration split; the validation split only where a run has none, and labelled so): the
largest threshold whose held-out sensitivity reaches the target. It is then applied unchanged to the test split,
and the table reports what it reached there (it may miss the target: that is the point), the specificity, F1-macro
and accuracy, with bootstrap CIs over test images (seed-averaged), and the standardised partial AUROC of
p(malignant) over the high-sensitivity end.

With a reference method (``riskcl report --reference``), every other method's test specificity is also given
minus the reference's at the same target, with a paired bootstrap CI (the same resampled test images for both):
the direct answer to "does it beat the reference, and by how much". The table of fusion models scored without
their metadata compares them with the reference as it is (its own test predictions).

Ranking never rewards missing the target: at each target, the methods that held it on test in most seeds (more
seeds reached it than missed it) come first, ranked by test specificity; the others follow, ranked the same way
and marked ``(missed target)``. A method that buys specificity by falling short of the sensitivity asked for
cannot rank above one that delivered it.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..decision import softmax, threshold_decision
from ..defaults import FRONTIER_TARGETS, N_BOOT
from ..metrics import (accuracy, auroc_malignant, bootstrap_ci, f1_macro, malignant_probability,
                       partial_auroc_high_sensitivity, sensitivity_specificity)
from .collect import RunRecord

DEFAULT_TARGETS = FRONTIER_TARGETS


def threshold_for_sensitivity(p_mal: np.ndarray, is_malignant: np.ndarray, target: float) -> float:
    """The largest threshold ``t`` with ``mean(p_mal[malignant] >= t) >= target`` on these predictions.

    Example:
        >>> threshold_for_sensitivity(np.array([.1, .2, .3, .4, .9]), np.ones(5, bool), 0.8)
        0.2
    """
    scores = np.sort(np.asarray(p_mal, dtype=np.float64)[np.asarray(is_malignant, bool)])
    if scores.size == 0:
        raise ValueError("Choosing a threshold for a sensitivity needs malignant cases, but found none")
    k = int(math.floor((1.0 - target) * scores.size + 1e-9))  # at most k of n malignant scores may fall below t
    return float(scores[min(k, scores.size - 1)])


def held_out_split(record: RunRecord) -> str:
    """``calib`` when the run has a calibration split, else ``val`` (which chose the model: labelled so)."""
    return "calib" if record.has_predictions("calib") else "val"


def balanced_accuracy(labels: np.ndarray, target: np.ndarray, num_classes: int) -> float:
    """The mean recall over the classes present in ``target``."""
    recalls = [float(np.mean(labels[target == c] == c)) for c in range(num_classes) if (target == c).any()]
    return float(np.mean(recalls)) if recalls else float("nan")


def run_operating_points(record: RunRecord, targets: Sequence[float], test_split: str = "test") -> list[dict]:
    """One row per target: the held-out threshold, the test decisions at it (``labels``) and the test metrics
    they give (read from files only). ``test_split``: ``test``, or a fusion run's test predictions with every
    image's metadata missing (the threshold still comes from the held-out split, scored with metadata)."""
    tax = record.taxonomy
    split = held_out_split(record)
    held = record.predictions(split)
    held_pm = malignant_probability(softmax(held["logits"]), tax)
    test = record.predictions(test_split) if test_split == "test" else record.folder.predictions(test_split)
    test_probs = softmax(test["logits"])
    pauc = partial_auroc_high_sensitivity(test_probs, test["target"], tax)
    auroc = auroc_malignant(test_probs, test["target"], tax)
    rows = []
    for target in targets:
        t = threshold_for_sensitivity(held_pm, tax.superclass[held["target"]] == 1, target)
        labels = threshold_decision(test_probs, tax, t)
        sens, spec = sensitivity_specificity(labels, test["target"], tax)
        rows.append({"target": target, "held_out": split, "threshold": t, "labels": labels, "sensitivity": sens,
                     "specificity": spec, "f1_macro": f1_macro(labels, test["target"]),
                     "accuracy": accuracy(labels, test["target"]), "missed_target": sens < target,
                     "pauc_sens90": pauc, "auroc": auroc,
                     "balanced_accuracy": balanced_accuracy(labels, test["target"], tax.num_classes),
                     "recall": {c: float(np.mean(labels[test["target"] == k] == k))
                                for k, c in enumerate(tax.classes) if (test["target"] == k).any()}})
    return rows


def _seed_mean(metric):
    def f(labels: np.ndarray, target: np.ndarray) -> float:
        return float(np.mean([metric(labels[:, s], target) for s in range(labels.shape[1])]))
    return f


def _reference_key(key: tuple, stash: dict[tuple, Any], reference: str | None) -> tuple | None:
    """The reference method's group for ``key = (dataset, model, method)``: the same model's when it has one, else
    the one model of the data set that has it (None: no reference, or several to choose from)."""
    if reference is None or key[2] == reference:
        return None
    if (key[0], key[1], reference) in stash:
        return key[0], key[1], reference
    found = [k for k in stash if k[0] == key[0] and k[2] == reference]
    return found[0] if len(found) == 1 else None


def _specificity_difference(labels: np.ndarray, ref_labels: np.ndarray, target_y: np.ndarray, tax,
                            n_boot: int, seed: int) -> tuple[float, float, float]:
    """Paired bootstrap over test images of (seed-mean specificity of a method) - (that of the reference)."""
    split = labels.shape[1]
    spec = _seed_mean(lambda a, b: sensitivity_specificity(a, b, tax)[1])

    def diff(lab: np.ndarray, y: np.ndarray) -> float:
        return spec(lab[:, :split], y) - spec(lab[:, split:], y)

    return bootstrap_ci(diff, np.concatenate([labels, ref_labels], 1), target_y, n_resamples=n_boot, seed=seed)


def fair_frontier_table(records: Sequence[RunRecord], targets: Sequence[float] = DEFAULT_TARGETS,
                        n_boot: int = N_BOOT, seed: int = 0, test_split: str = "test",
                        reference: str | None = None) -> pd.DataFrame:
    """Per (dataset, model, method, target): mean test sensitivity reached, specificity, F1, accuracy with 95%
    bootstrap CIs, partial AUROC, how many seeds missed the target, and the rank (held target first, then test
    specificity; see the module docstring). With ``reference`` (a method), each other method's test specificity
    minus the reference's at the same target, with a paired bootstrap CI over the same test images."""
    groups: dict[tuple, list[RunRecord]] = {}
    stash: dict[tuple, tuple[np.ndarray, np.ndarray, list[np.ndarray]]] = {}  # key -> ids, target, labels/target
    for r in records:
        groups.setdefault((r.run["dataset"], r.run["model"], r.method), []).append(r)
    rows = []
    for (ds, model, method), recs in groups.items():
        tax = recs[0].taxonomy
        target_y = recs[0].predictions("test")["target"]
        if any(not np.array_equal(r.predictions("test")["target"], target_y) for r in recs):
            raise ValueError(f"{ds}/{model}/{method}: runs disagree on the test split; seeds must share it")
        own = test_split == "test" or all(r.folder.has_predictions(test_split) for r in recs)
        if not own and method != reference:
            continue  # a run without metadata inputs has nothing to mask (the reference is compared as it is)
        per_run = [run_operating_points(r, targets, test_split if own else "test") for r in recs]
        stash[(ds, model, method)] = (recs[0].predictions("test")["ids"].astype(str), target_y,
                                      [np.stack([pr[k]["labels"] for pr in per_run], 1) for k in range(len(targets))])
        if not own:
            continue
        for k, target in enumerate(targets):
            labels = stash[(ds, model, method)][2][k]
            ci = {}
            for name, fn in (("sensitivity", lambda lab, y: sensitivity_specificity(lab, y, tax)[0]),
                             ("specificity", lambda lab, y: sensitivity_specificity(lab, y, tax)[1]),
                             ("F1", f1_macro), ("accuracy", accuracy)):
                ci[name] = bootstrap_ci(_seed_mean(fn), labels, target_y, n_resamples=n_boot, seed=seed)
            split = {pr[k]["held_out"] for pr in per_run}
            rows.append({"dataset": ds, "model": model, "method": method, "target sensitivity": target,
                         "thresholds from": "/".join(sorted(split)) + (" (selection split!)" if "val" in split
                                                                         else ""),
                         "seeds": len(recs), "missed target (seeds)": sum(pr[k]["missed_target"] for pr in per_run),
                         **{f"test {n}": v[0] for n, v in ci.items()},
                         **{f"test {n} CI": f"[{v[1]:.3f}, {v[2]:.3f}]" for n, v in ci.items()},
                         "balanced accuracy": float(np.mean([pr[k]["balanced_accuracy"] for pr in per_run])),
                         "AUROC p(malignant)": float(np.mean([pr[k]["auroc"] for pr in per_run])),
                         "pAUROC sens>=0.9": float(np.mean([pr[k]["pauc_sens90"] for pr in per_run]))})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    if reference is not None:
        name = f"specificity minus {reference}'s"
        diffs, cis = [], []
        for row in rows:
            key = (row["dataset"], row["model"], row["method"])
            ref = _reference_key(key, stash, reference)
            ids, target_y, labels = stash[key]
            if ref is None or not (np.array_equal(stash[ref][0], ids) and np.array_equal(stash[ref][1], target_y)):
                diffs.append(float("nan"))
                cis.append("")
                continue
            k = list(targets).index(row["target sensitivity"])
            d, lo, hi = _specificity_difference(labels[k], stash[ref][2][k], target_y, groups[key][0].taxonomy,
                                                n_boot, seed)
            diffs.append(d)
            cis.append(f"[{lo:+.3f}, {hi:+.3f}]")
        df[name], df[f"{name} CI (paired)"] = diffs, cis
    df["held target"] = df["missed target (seeds)"] * 2 < df["seeds"]
    df = df.sort_values(["dataset", "model", "target sensitivity", "held target", "test specificity"],
                        ascending=[True, True, True, False, False]).reset_index(drop=True)
    order = df.groupby(["dataset", "model", "target sensitivity"]).cumcount() + 1
    df["rank"] = [f"{k}" if held else f"{k} (missed target)" for k, held in zip(order, df["held target"])]
    return df


def recall_table(records: Sequence[RunRecord], target: float) -> pd.DataFrame:
    """Per (dataset, model, method): each class's test recall at the fair threshold for ``target`` (means over
    seeds), and the balanced accuracy."""
    groups: dict[tuple, list[RunRecord]] = {}
    for r in records:
        groups.setdefault((r.run["dataset"], r.run["model"], r.method), []).append(r)
    rows = []
    for (ds, model, method), recs in groups.items():
        points = [run_operating_points(r, [target])[0] for r in recs]
        classes = list(recs[0].taxonomy.classes)
        rows.append({"dataset": ds, "model": model, "method": method, "target sensitivity": target,
                     **{f"recall {c}": float(np.mean([p["recall"].get(c, np.nan) for p in points])) for c in classes},
                     "balanced accuracy": float(np.mean([p["balanced_accuracy"] for p in points]))})
    return pd.DataFrame(rows).sort_values(["dataset", "model", "method"]).reset_index(drop=True) if rows else \
        pd.DataFrame()
