"""Aggregations behind the report's tables: Table III / V style summaries, error taxonomy, post-hoc thresholds."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..decision import decide, softmax, threshold_decision
from ..defaults import N_BOOT
from ..metrics import bootstrap_ci, critical_error_rate, f1_macro, sensitivity_specificity
from ..metrics.bootstrap import MIN_SEEDS, two_level_ci
from .collect import RunRecord, pool_key

GROUP = ["dataset", "model", "method", "split seed"]  # one method on one split (a split seed is a replication)


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of every headline metric, per (dataset, model, method, split seed)."""
    agg = runs.groupby(GROUP).agg(
        seeds=("seed", "count"),
        cer_mean=("cer", "mean"), cer_std=("cer", "std"),
        f1_mean=("f1_macro", "mean"), f1_std=("f1_macro", "std"),
        acc_mean=("accuracy", "mean"), acc_std=("accuracy", "std"),
        visual_ambiguity=("visual_ambiguity", "mean"), type_i=("type_i", "mean"), type_ii=("type_ii", "mean"),
        specificity=("specificity", "mean"), auroc=("auroc", "mean"),
        wall_time_s=("wall_time_s", "sum"),
    )
    return agg.reset_index()


def run_labels(record: RunRecord, split: str = "test") -> np.ndarray:
    """The run's test decisions under its own decision rule (superclass-first at 0.5, or argmax)."""
    probs = softmax(record.predictions(split)["logits"])
    return decide(probs, record.taxonomy, record.run.get("decision_rule", "argmax"))


def operating_point_labels(record: RunRecord, split: str = "test") -> np.ndarray:
    """The run's decisions at its operating point: the one ``riskcl evaluate --by`` and the model card use
    (calibration.json when it exists, per group when calibrated per group; else the 0.5 default rule)."""
    from ..experiment.calibrate import operating_point

    op = operating_point(record.folder, allow_uncertified=True)
    arrays = record.predictions(split)
    strata = arrays.get(f"meta__{op.by}") if op.per_group else None
    return op.decide(op.probabilities(arrays["logits"]), record.taxonomy, strata)


def pooled_cer_ci(records: list[RunRecord], n_resamples: int = N_BOOT, seed: int = 0) -> dict[tuple, tuple]:
    """Bootstrap 95% CI of the seed-averaged CER per (dataset, model, method).

    The test images are resampled (each image keeps its predictions from every seed), so the interval covers
    the sampling of the test set; the seed spread is the table's std.
    """
    by_key: dict[tuple, list[RunRecord]] = {}
    for r in records:
        by_key.setdefault(pool_key(r), []).append(r)
    out = {}
    for key, group in by_key.items():
        tax = group[0].taxonomy
        preds = [r.predictions() for r in group]
        labels = np.stack([run_labels(r) for r in group], 1)  # (N, seeds)
        target = preds[0]["target"]

        def mean_cer(lab: np.ndarray, tgt: np.ndarray) -> float:
            return float(np.mean([critical_error_rate(lab[:, s], tgt, tax) for s in range(lab.shape[1])]))

        out[key] = bootstrap_ci(mean_cer, labels, target, n_resamples=n_resamples, seed=seed)
    return out


def paired_table(summary: pd.DataFrame, baseline: str, method: str) -> pd.DataFrame:
    """Table III style: baseline vs method CER / F1 / accuracy with absolute and relative CER change."""
    rows = []
    for (ds, model, split_seed), part in summary.groupby(["dataset", "model", "split seed"]):
        b, m = part[part["method"] == baseline], part[part["method"] == method]
        if b.empty or m.empty:
            continue
        b, m = b.iloc[0], m.iloc[0]
        rel = (b.cer_mean - m.cer_mean) / b.cer_mean if b.cer_mean > 0 else float("nan")
        rows.append({"dataset": ds, "model": model, "split seed": split_seed, f"{baseline} CER": b.cer_mean,
                     f"{baseline} F1": b.f1_mean,
                     f"{baseline} acc": b.acc_mean, f"{method} CER": m.cer_mean, f"{method} F1": m.f1_mean,
                     f"{method} acc": m.acc_mean, "abs. CER change": m.cer_mean - b.cer_mean,
                     "rel. CER improvement": rel})
    return pd.DataFrame(rows)


def pareto_front(points: pd.DataFrame, x: str = "cer_mean", y: str = "f1_mean") -> pd.DataFrame:
    """Rows not dominated by another (lower-or-equal CER and higher-or-equal F1, one strictly), sorted by CER."""
    keep = []
    for i, p in points.iterrows():
        dominated = ((points[x] <= p[x]) & (points[y] >= p[y]) & ((points[x] < p[x]) | (points[y] > p[y]))).any()
        if not dominated:
            keep.append(i)
    return points.loc[keep].sort_values(x)


def threshold_curve(record: RunRecord, thresholds: np.ndarray | None = None) -> pd.DataFrame:
    """Test CER, F1-macro, sensitivity and specificity of one run as the p(malignant) threshold varies."""
    tax = record.taxonomy
    p = record.predictions()
    probs = softmax(p["logits"])
    ts = np.linspace(0.02, 0.98, 49) if thresholds is None else thresholds
    rows = []
    for t in ts:
        lab = threshold_decision(probs, tax, float(t))
        sens, spec = sensitivity_specificity(lab, p["target"], tax)
        rows.append({"threshold": float(t), "cer": critical_error_rate(lab, p["target"], tax),
                     "f1_macro": f1_macro(lab, p["target"]), "sensitivity": sens, "specificity": spec})
    return pd.DataFrame(rows)


def matched_sensitivity_table(records: list[RunRecord], reference: str = "ce") -> pd.DataFrame:
    """Each non-reference method against ``reference`` + a threshold moved to reach at least the same test
    sensitivity (per seed, same dataset and model). The threshold is matched on the test split itself, so this is
    an upper bound on what a threshold can do; :mod:`riskcl.report.frontier` makes the fair comparison."""
    by = {}
    for r in records:
        by.setdefault((r.run["dataset"], r.run["model"], r.split_seed, r.run["seed"]), {})[r.method] = r
    rows = []
    for (ds, model, split_seed, seed), methods in by.items():
        ref = methods.get(reference)
        if ref is None:
            continue
        ref_p = ref.predictions()
        ref_probs = softmax(ref_p["logits"])
        tax = ref.taxonomy
        for name, rec in methods.items():
            if name == reference:
                continue
            target_sens = rec.metrics["sensitivity"]
            best = None
            for t in np.linspace(0.99, 0.0, 199):  # the highest threshold reaching the sensitivity
                lab = threshold_decision(ref_probs, tax, float(t))
                sens, spec = sensitivity_specificity(lab, ref_p["target"], tax)
                if sens >= target_sens - 1e-12:
                    best = (float(t), {"sensitivity": sens, "specificity": spec,
                                       "f1_macro": f1_macro(lab, ref_p["target"])})
                    break
            if best is None:
                continue
            t, rep = best
            rows.append({"dataset": ds, "model": model, "seed": seed, "method": name, "split seed": split_seed,
                         "sensitivity": target_sens, "method F1": rec.metrics["f1_macro"],
                         "method specificity": rec.metrics["specificity"], f"{reference}+t threshold": t,
                         f"{reference}+t sensitivity": rep["sensitivity"], f"{reference}+t F1": rep["f1_macro"],
                         f"{reference}+t specificity": rep["specificity"]})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    return df.groupby(GROUP).mean(numeric_only=True).drop(columns="seed").reset_index()


def subgroup_tables(records: list[RunRecord], column: str, n_boot: int = N_BOOT) -> dict[tuple, list[dict]]:
    """Per (dataset, model, method): subgroup rows of ``column`` on the test split, seeds stacked (each unit keeps
    its decisions from every seed when resampled, so the CI covers the test sample and the point is the
    seed-averaged rate). Decisions: each run's operating point, as ``riskcl evaluate --by`` takes them. Runs
    without that metadata column are left out."""
    from ..metrics.subgroups import subgroup_metrics

    by: dict[tuple, list[RunRecord]] = {}
    for r in records:
        if f"meta__{column}" in r.predictions("test"):
            by.setdefault(pool_key(r), []).append(r)
    out = {}
    for key, recs in by.items():
        preds = [r.predictions("test") for r in recs]
        out[key] = subgroup_metrics(np.concatenate([operating_point_labels(r) for r in recs]),
                                    np.concatenate([p["target"] for p in preds]), recs[0].taxonomy,
                                    np.concatenate([p[f"meta__{column}"] for p in preds]),
                                    np.concatenate([p["groups"] for p in preds]), n_boot)
    return out


def subgroup_frame(rows: list[dict]) -> pd.DataFrame:
    """Subgroup rows as a printable table (rates with their 95% intervals)."""
    from ..metrics.subgroups import PRINTABLE_COLUMNS, printable_rows

    return pd.DataFrame(printable_rows(rows), columns=list(PRINTABLE_COLUMNS))


def _p_malignant_at_operating_point(record: RunRecord) -> tuple[np.ndarray, np.ndarray, float]:
    from ..experiment.calibrate import operating_point
    from ..metrics import malignant_probability

    op = operating_point(record.folder, allow_uncertified=True)
    arrays = record.predictions("test")
    p_mal = malignant_probability(op.probabilities(arrays["logits"]), record.taxonomy)
    return p_mal, record.taxonomy.superclass[arrays["target"]] == 1, op.threshold


def cost_robust_table(records: list[RunRecord],
                      n_boot: int = N_BOOT) -> tuple[pd.DataFrame, dict[str, dict[str, dict]]]:
    """Per (dataset, model, method), means over seeds on the test split at each run's operating point: the cost
    per case at the fixed costs, the expected cost and its 90% range over the plausible costs (``cost.uncertain``),
    the H-measure, and the ranks by the fixed and by the expected cost (a method that wins only at one cost point
    ranks differently). Also each data set's decision curves (mean net benefit over seeds per method) over the
    pt range of its first run's costs."""
    from ..config import run_cost_distribution
    from ..decision.costs import cost_table, decision_curve
    from ..experiment.decision_curves import cost_figures, curve_range

    rows, curves, per_case = [], {}, {}
    ranges: dict[str, tuple[float, float]] = {}
    for r in records:
        costs = run_cost_distribution(r.folder.read_config())
        p_mal, is_mal, threshold = _p_malignant_at_operating_point(r)
        figs = cost_figures(p_mal, is_mal, threshold, costs)
        point = float(cost_table(p_mal, is_mal, [threshold], [costs.point[0]], [costs.point[1]])[0, 0])
        refer = p_mal >= threshold
        per_case[id(r)] = np.where(refer & ~is_mal, costs.point[0], 0.0) + np.where(~refer & is_mal, costs.point[1], 0)
        rows.append({"dataset": r.run["dataset"], "model": r.run["model"], "method": r.method,
                     "split seed": r.split_seed, "cost (fixed)": point, "expected cost": figs["expected_cost"],
                     "cost p05": figs["cost_p05"], "cost p95": figs["cost_p95"], "H-measure": figs["h_measure"],
                     "costs": figs["costs"]})
        ds = r.run["dataset"]
        ranges.setdefault(ds, curve_range(costs))
        curve = decision_curve(p_mal, is_mal, ranges[ds])
        curves.setdefault(ds, {}).setdefault(f"{r.run['model']} / {r.method}", []).append(curve)
    if not rows:
        return pd.DataFrame(), {}
    df = pd.DataFrame(rows)
    table = df.groupby(GROUP + ["costs"], as_index=False).mean(numeric_only=True)
    table.insert(4, "seeds", df.groupby(GROUP + ["costs"]).size().to_numpy())
    pools: dict[tuple, list[RunRecord]] = {}
    for r in records:
        pools.setdefault(pool_key(r), []).append(r)
    intervals = {}
    for key, recs in pools.items():  # the fixed cost per case over seeds and test images (two-level)
        _, lo, hi = two_level_ci(lambda c, _t: float(c.mean()), np.stack([per_case[id(r)] for r in recs], 1),
                                 recs[0].predictions("test")["target"], n_resamples=n_boot)
        intervals[key] = f"[{lo:.4g}, {hi:.4g}]" + ("*" if len(recs) < MIN_SEEDS else "")
    table.insert(6, "cost (fixed) CI (two-level)", [intervals.get(tuple(k)) for k in table[GROUP].to_numpy()])
    for col, rank in (("cost (fixed)", "rank (fixed)"), ("expected cost", "rank (expected)")):
        table[rank] = table.groupby(["dataset", "model", "split seed"])[col].rank(method="min").astype(int)
    mean_curves = {}
    for ds, by_method in curves.items():
        mean_curves[ds] = {}
        for label, cs in by_method.items():
            mean_curves[ds][label] = {**cs[0], "model": np.mean([c["model"] for c in cs], axis=0).tolist()}
    return table, mean_curves
