"""The fair safety frontier: operating points chosen on held-out predictions, scored on test.

For every run and every target sensitivity, the p(malignant) threshold is chosen on predictions that did not
select the model (the calibration split; the validation split only where a run has none, and labelled so): the
largest threshold whose held-out sensitivity reaches the target. It is then applied unchanged to the test split,
and the table reports what it reached there (it may miss the target: that is the point), the specificity, F1-macro
and accuracy, with two-level bootstrap CIs (training seeds, then test images: :func:`riskcl.metrics.two_level_ci`,
so that an interval covers a new training run as well as new cases; fewer than 3 seeds are marked "for these
seeds only"), and the standardised partial AUROC of p(malignant) over the high-sensitivity end. Runs of another
``data.split_seed`` are a replication: each split seed has its own rows.

With a reference method (``riskcl report --reference``), every other method's test specificity is also given
minus the reference's at the same target and on the same split, with a two-level CI (seeds of each method drawn
independently, the same resampled test images for both) and its verdict in words: ``beats`` only when the
interval excludes zero, else ``not distinguishable at this scale`` (:func:`riskcl.metrics.bootstrap.verdict`).
:func:`replication_table` then says, per method and target, on how many split seeds of each data set it beat the
reference: the evidence a recommendation needs. The table of fusion models scored without their metadata
compares them with the reference as it is (its own test predictions).

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
from ..metrics import (accuracy, auroc_malignant, f1_macro, malignant_probability, partial_auroc_high_sensitivity,
                       sensitivity_specificity)
from ..metrics.bootstrap import MIN_SEEDS, two_level_ci, verdict
from .collect import RunRecord, pool_key

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
    """The reference method's group for ``key = (dataset, model, method, split seed)``: the same model's on the same
    split when it has one, else the one model of the data set that has it on that split (None: no reference, or
    several to choose from)."""
    if reference is None or key[2] == reference:
        return None
    if (key[0], key[1], reference, key[3]) in stash:
        return key[0], key[1], reference, key[3]
    found = [k for k in stash if k[0] == key[0] and k[2] == reference and k[3] == key[3]]
    return found[0] if len(found) == 1 else None


def _specificity(tax):
    return _seed_mean(lambda a, b: sensitivity_specificity(a, b, tax)[1])


def fair_frontier_table(records: Sequence[RunRecord], targets: Sequence[float] = DEFAULT_TARGETS,
                        n_boot: int = N_BOOT, seed: int = 0, test_split: str = "test",
                        reference: str | None = None) -> pd.DataFrame:
    """Per (dataset, model, method, split seed, target): mean test sensitivity reached, specificity, F1, accuracy
    with 95% two-level bootstrap CIs, partial AUROC, how many seeds missed the target, and the rank (held target
    first, then test specificity; see the module docstring). With ``reference`` (a method), each other method's
    test specificity minus the reference's at the same target on the same split, its two-level CI and verdict."""
    groups: dict[tuple, list[RunRecord]] = {}
    stash: dict[tuple, tuple[np.ndarray, np.ndarray, list[np.ndarray]]] = {}  # key -> ids, target, labels/target
    for r in records:
        groups.setdefault(pool_key(r), []).append(r)
    rows = []
    for key, recs in groups.items():
        ds, model, method, split_seed = key
        tax = recs[0].taxonomy
        target_y = recs[0].predictions("test")["target"]
        if any(not np.array_equal(r.predictions("test")["target"], target_y) for r in recs):
            raise ValueError(f"{ds}/{model}/{method}: runs disagree on the test split; seeds must share it")
        own = test_split == "test" or all(r.folder.has_predictions(test_split) for r in recs)
        if not own and method != reference:
            continue  # a run without metadata inputs has nothing to mask (the reference is compared as it is)
        per_run = [run_operating_points(r, targets, test_split if own else "test") for r in recs]
        stash[key] = (recs[0].predictions("test")["ids"].astype(str), target_y,
                      [np.stack([pr[k]["labels"] for pr in per_run], 1) for k in range(len(targets))])
        if not own:
            continue
        for k, target in enumerate(targets):
            labels = stash[key][2][k]
            ci = {}
            for name, fn in (("sensitivity", lambda lab, y: sensitivity_specificity(lab, y, tax)[0]),
                             ("specificity", lambda lab, y: sensitivity_specificity(lab, y, tax)[1]),
                             ("F1", f1_macro), ("accuracy", accuracy)):
                ci[name] = two_level_ci(_seed_mean(fn), labels, target_y, n_resamples=n_boot, seed=seed)
            split = {pr[k]["held_out"] for pr in per_run}
            rows.append({"dataset": ds, "model": model, "method": method, "split seed": split_seed,
                         "target sensitivity": target,
                         "thresholds from": "/".join(sorted(split)) + (" (selection split!)" if "val" in split
                                                                         else ""),
                         "seeds": len(recs), "missed target (seeds)": sum(pr[k]["missed_target"] for pr in per_run),
                         **{f"test {n}": v[0] for n, v in ci.items()},
                         **{f"test {n} CI": f"[{v[1]:.3f}, {v[2]:.3f}]" + ("*" if len(recs) < MIN_SEEDS else "")
                            for n, v in ci.items()},
                         "balanced accuracy": float(np.mean([pr[k]["balanced_accuracy"] for pr in per_run])),
                         "AUROC p(malignant)": float(np.mean([pr[k]["auroc"] for pr in per_run])),
                         "pAUROC sens>=0.9": float(np.mean([pr[k]["pauc_sens90"] for pr in per_run])),
                         "training min (mean)": float(np.mean([r.training_seconds for r in recs])) / 60})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    if reference is not None:
        _add_reference(df, rows, groups, stash, targets, reference, n_boot, seed)
    df["held target"] = df["missed target (seeds)"] * 2 < df["seeds"]
    df = df.sort_values(["dataset", "model", "split seed", "target sensitivity", "held target", "test specificity"],
                        ascending=[True, True, True, True, False, False]).reset_index(drop=True)
    order = df.groupby(["dataset", "model", "split seed", "target sensitivity"]).cumcount() + 1
    df["rank"] = [f"{k}" if held else f"{k} (missed target)" for k, held in zip(order, df["held target"])]
    return df


def _add_reference(df: pd.DataFrame, rows: list[dict], groups: dict, stash: dict, targets: Sequence[float],
                   reference: str, n_boot: int, seed: int) -> None:
    """The columns of each row's test specificity minus the reference's: difference, two-level CI, verdict."""
    name = f"specificity minus {reference}'s"
    diffs, cis, words = [], [], []
    for row in rows:
        key = (row["dataset"], row["model"], row["method"], row["split seed"])
        ref = _reference_key(key, stash, reference)
        ids, target_y, labels = stash[key]
        if ref is None or not (np.array_equal(stash[ref][0], ids) and np.array_equal(stash[ref][1], target_y)):
            diffs.append(float("nan"))
            cis.append("")
            words.append("")
            continue
        k = list(targets).index(row["target sensitivity"])
        spec = _specificity(groups[key][0].taxonomy)
        d, lo, hi = two_level_ci(spec, labels[k], target_y, reference=stash[ref][2][k], n_resamples=n_boot,
                                 seed=seed)
        seeds = min(labels[k].shape[1], stash[ref][2][k].shape[1])
        diffs.append(d)
        cis.append(f"[{lo:+.3f}, {hi:+.3f}]" + ("*" if seeds < MIN_SEEDS else ""))
        words.append(verdict(lo, hi, seeds))
    df[name], df[f"{name} CI (two-level)"], df[f"vs {reference}"] = diffs, cis, words


def replication_table(fair: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Per (dataset, model, method, target): on how many split seeds the method beat ``reference`` (two-level
    interval of the specificity difference above zero), was worse, or was not distinguishable, and whether it held
    the target on each. A recommendation needs ``beats`` on at least two split seeds of each of two real data
    sets; this table is where that is read."""
    column = f"vs {reference}"
    if fair.empty or column not in fair:
        return pd.DataFrame()
    rows = []
    part = fair[(fair["method"] != reference) & (fair[column] != "")]
    for (ds, model, method, target), g in part.groupby(["dataset", "model", "method", "target sensitivity"]):
        words = list(g[column])
        rows.append({"dataset": ds, "model": model, "method": method, "target sensitivity": target,
                     "split seeds": len(g), "beats": sum(w.startswith("beats") for w in words),
                     "not distinguishable": sum(w.startswith("not distinguishable") for w in words),
                     "worse": sum(w.startswith("worse") for w in words),
                     "held target (splits)": int(g["held target"].sum()),
                     f"specificity minus {reference}'s, per split": ", ".join(
                         f"{d:+.3f} {c}" for d, c in zip(g[f"specificity minus {reference}'s"],
                                                         g[f"specificity minus {reference}'s CI (two-level)"])),
                     "replicates": bool(len(g) >= 2 and all(w.startswith("beats") for w in words)
                                        and g["held target"].all())})
    return pd.DataFrame(rows)


def recall_table(records: Sequence[RunRecord], target: float) -> pd.DataFrame:
    """Per (dataset, model, method): each class's test recall at the fair threshold for ``target`` (means over
    seeds), and the balanced accuracy."""
    groups: dict[tuple, list[RunRecord]] = {}
    for r in records:
        groups.setdefault(pool_key(r), []).append(r)
    rows = []
    for (ds, model, method, split_seed), recs in groups.items():
        points = [run_operating_points(r, [target])[0] for r in recs]
        classes = list(recs[0].taxonomy.classes)
        rows.append({"dataset": ds, "model": model, "method": method, "split seed": split_seed,
                     "target sensitivity": target,
                     **{f"recall {c}": float(np.mean([p["recall"].get(c, np.nan) for p in points])) for c in classes},
                     "balanced accuracy": float(np.mean([p["balanced_accuracy"] for p in points]))})
    return pd.DataFrame(rows).sort_values(["dataset", "model", "method", "split seed"]).reset_index(drop=True) \
        if rows else pd.DataFrame()
