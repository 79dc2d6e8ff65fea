"""``riskcl report``: REPORT.md, report.html, runs.csv and figures from run folders only."""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..io import atomic_write_text
from . import plots
from .collect import find_runs, runs_table
from .frontier import DEFAULT_TARGETS, fair_frontier_table
from .tables import (matched_sensitivity_table, paired_table, pareto_front, pooled_cer_ci, run_labels, summary_table,
                     threshold_curve)

PCT = {"cer", "accuracy", "acc", "sensitivity", "specificity", "improvement", "change"}


def _fmt(col: str, v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        if np.isnan(v):
            return "-"
        if any(k in col.lower() for k in PCT):
            return f"{100 * v:.2f}%"
        if "(mean)" in col:  # mean error counts
            return f"{v:.1f}"
        return f"{v:.4f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(no rows)_\n"
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_fmt(c, r[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def html_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "<p><em>(no rows)</em></p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c, r[c]))}</td>" for c in df.columns) + "</tr>"
                   for _, r in df.iterrows())
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _methods_table(summary: pd.DataFrame, ci: dict) -> pd.DataFrame:
    rows = []
    for _, r in summary.iterrows():
        lo, hi = ci.get((r.dataset, r.model, r.method), (np.nan, np.nan, np.nan))[1:]
        rows.append({"dataset": r.dataset, "model": r.model, "method": r.method, "seeds": r.seeds,
                     "CER mean": r.cer_mean, "CER std": r.cer_std, "CER 95% CI low": lo, "CER 95% CI high": hi,
                     "F1 mean": r.f1_mean, "F1 std": r.f1_std, "acc mean": r.acc_mean, "acc std": r.acc_std,
                     "specificity": r.specificity, "AUROC": r.auroc})
    return pd.DataFrame(rows)


def _figures(recs: list, part: pd.DataFrame, folder: Path, tag: str, title: str) -> list[tuple[str, str]]:
    """Pareto plot with every method's post-hoc threshold curve, CER per epoch, severity-shaded confusions."""
    methods = sorted({r.method for r in recs})
    curves = {m: pd.concat([threshold_curve(r) for r in recs if r.method == m]).groupby("threshold").mean()
              for m in methods}
    pareto = plots.plot_pareto(part, pareto_front(part), curves, folder / f"pareto_{tag}.png", title)
    hist = {}
    for m in methods:
        frames = [r.history for r in recs if r.method == m and not r.history.empty]
        if frames:
            hist[m] = pd.concat(frames).groupby("epoch", as_index=False)["val_cer"].mean()
    cer = plots.plot_cer_curves(hist, folder / f"cer_curves_{tag}.png", title)
    tax = recs[0].taxonomy
    conf = {}
    for m in methods:
        cm = np.zeros((tax.num_classes,) * 2, dtype=np.int64)
        for r in (r for r in recs if r.method == m):
            np.add.at(cm, (r.predictions()["target"], run_labels(r)), 1)
        conf[m] = cm
    confusions = plots.plot_severity_confusions(conf, tax.classes, tax.superclass, folder / f"confusions_{tag}.png")
    return [(f"Safety-accuracy Pareto plot, {title}", pareto.name),
            (f"Validation CER per epoch, {title}", cer.name),
            (f"Confusion matrices shaded by severity (summed over seeds), {title}", confusions.name)]


def build_report(runs_dir: str | Path, out_dir: str | Path, baseline: str = "focal", method: str = "rcl-proposed",
                 reference: str = "ce", n_boot: int = 1000, targets: Sequence[float] = DEFAULT_TARGETS,
                 by: Sequence[str] = ()) -> Path:
    """Write the report; returns the path of ``REPORT.md``."""
    runs_dir, out = Path(runs_dir), Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    records, notes = find_runs(runs_dir)
    runs = runs_table(records, runs_dir)
    summary = summary_table(runs)
    ci = pooled_cer_ci(records, n_resamples=n_boot)
    methods = _methods_table(summary, ci)
    taxonomy_tbl = summary[["dataset", "model", "method", "visual_ambiguity", "type_i", "type_ii"]].rename(
        columns={"visual_ambiguity": "visual ambiguity (mean)", "type_i": "Type I (mean)",
                 "type_ii": "Type II (mean)"})
    paired = paired_table(summary, baseline, method)
    matched = matched_sensitivity_table(records, reference)
    fair = fair_frontier_table(records, targets, n_boot)
    figures: list[tuple[str, str]] = []
    for (ds, model), part in summary.groupby(["dataset", "model"]):
        recs = [r for r in records if r.run["dataset"] == ds and r.run["model"] == model]
        figures += _figures(recs, part.reset_index(drop=True), out / "figures", f"{ds}_{model}", f"{ds} / {model}")
    atomic_write_text(out / "runs.csv", runs.to_csv(index=False))
    atomic_write_text(out / "report.json", json.dumps({
        "runs_dir": str(runs_dir), "baseline": baseline, "method": method, "reference": reference,
        "runs": runs.to_dict("records"), "methods": methods.to_dict("records"), "paired": paired.to_dict("records"),
        "matched_sensitivity": matched.to_dict("records"), "fair_frontier": fair.to_dict("records"),
        "not_included": notes}, indent=1, default=str))
    sections = [
        ("Table III style: baseline vs method", f"Baseline `{baseline}` vs `{method}`, means over seeds. "
         "Relative CER improvement = (CER_baseline - CER_method) / CER_baseline.", paired),
        ("Table V style: every method", "Mean and std over seeds; CER 95% CI: percentile bootstrap over test "
         f"images ({n_boot} resamples) of the seed-averaged CER.", methods),
        ("Error taxonomy", "Mean counts over seeds on the test split.", taxonomy_tbl),
        ("The fair safety frontier", "For each run and target sensitivity, the p(malignant) threshold is chosen on "
         "held-out predictions that did not select the model (the calibration split; `val` only where a run has "
         "none, marked as the selection split) and applied unchanged to test. Columns: what the test split "
         "actually reached (means over seeds, 95% bootstrap CIs over test images), how many seeds missed the "
         "target, the standardised partial AUROC of p(malignant) for sensitivity >= 0.9, and the rank by test "
         "specificity at each target.", fair),
        (f"Retraining vs a post-hoc threshold on `{reference}` (test-matched: an upper bound)",
         f"For each method and seed, `{reference}` with its p(malignant) threshold lowered until its test sensitivity "
         "reaches the method's; columns are means over seeds. The threshold is matched on the test split itself, so "
         "this is an upper bound for the threshold; the fair frontier above chooses it on held-out data.", matched),
        ("Runs", "Every number above comes from these run folders (paths relative to the runs folder).",
         runs[["dataset", "model", "method", "seed", "cer", "f1_macro", "accuracy", "type_ii", "wall_time_s",
               "folder"]]),
    ]
    rules = sorted({r.run.get("decision_rule", "argmax") for r in records})
    md = [f"# riskcl report\n\nRuns folder: `{runs_dir}` ({len(records)} finished runs; total training wall time "
          f"{runs['wall_time_s'].sum() / 60:.1f} min). Decision rule of the per-run metrics: {', '.join(rules)} "
          f"(superclass: malignant when p(malignant) >= 0.5, then the best class within; argmax: the paper's).\n"]
    if notes:
        md.append("Not included (unfinished or failed): " + "; ".join(notes) + "\n")
    for title, text, df in sections:
        md += [f"\n## {title}\n\n{text}\n\n", md_table(df)]
    md.append("\n## Figures\n")
    for caption, name in figures:
        md.append(f"\n**{caption}**\n\n![{caption}](figures/{name})\n")
    atomic_write_text(out / "REPORT.md", "".join(md))
    body = [f"<h1>riskcl report</h1><p>Runs folder: <code>{html.escape(str(runs_dir))}</code>, "
            f"{len(records)} finished runs.</p>"]
    for title, text, df in sections:
        body.append(f"<h2>{html.escape(title)}</h2><p>{html.escape(text)}</p>{html_table(df)}")
    for caption, name in figures:
        body.append(f"<h3>{html.escape(caption)}</h3><img src='figures/{name}' style='max-width:100%'>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;"
             "font-size:12px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}")
    atomic_write_text(out / "report.html", f"<!doctype html><html><head><meta charset='utf-8'><title>riskcl "
                      f"report</title><style>{style}</style></head><body>{''.join(body)}</body></html>")
    return out / "REPORT.md"
