"""``riskcl report``: REPORT.md, report.html, runs.csv and figures from run folders only."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..defaults import N_BOOT
from ..io import atomic_write_text, spreadsheet_safe
from ..metrics.subgroups import intervals_note
from . import plots
from .collect import find_runs, runs_table
from .frontier import DEFAULT_TARGETS, fair_frontier_table, recall_table, replication_table
from .render import Document
from .tables import (cost_robust_table, matched_sensitivity_table, paired_table, pareto_front, pooled_cer_ci,
                     run_labels, subgroup_frame, subgroup_tables, summary_table, threshold_curve)


def _methods_table(summary: pd.DataFrame, ci: dict) -> pd.DataFrame:
    rows = []
    for _, r in summary.iterrows():
        lo, hi = ci.get((r.dataset, r.model, r.method, r["split seed"]), (np.nan, np.nan, np.nan))[1:]
        rows.append({"dataset": r.dataset, "model": r.model, "method": r.method, "split seed": r["split seed"],
                     "seeds": r.seeds,
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


def _subgroups(doc: Document, records: list, column: str, n_boot: int, out: Path) -> None:
    tables = subgroup_tables(records, column, n_boot)
    doc.heading(f"Subgroups by `{column}`")
    if not tables:
        doc.para(f"No run carries the metadata column `{column}`.")
        return
    doc.para(f"Test split, each run's operating point (its calibrated threshold when `calibration.json` exists, "
             f"as `riskcl evaluate --by` decides), seeds stacked. {intervals_note()}.")
    for (ds, model, method, split_seed), rows in tables.items():
        doc.heading(f"{ds} / {model} / {method}" + (f" / split seed {split_seed}" if split_seed else ""),
                    3).table(subgroup_frame(rows))
    for ds, model in sorted({(k[0], k[1]) for k in tables}):
        part = {k[2] + (f" (split {k[3]})" if k[3] else ""): v for k, v in tables.items() if k[:2] == (ds, model)}
        path = plots.plot_subgroup_cer(part, out / "figures" / f"subgroups_{column}_{ds}_{model}.png",
                                       f"CER by {column}, {ds} / {model}")
        doc.figure(f"CER per `{column}` group with 95% CIs, {ds} / {model}", path)


def _gallery(doc: Document, records: list, runs_dir: Path, out: Path) -> None:
    """The Type II galleries that `riskcl explain --type-ii` wrote into run folders (copied beside the report)."""
    import shutil

    shown = False
    for r in records:
        g = r.folder.gallery()
        if g is None:
            continue
        if not shown:
            doc.heading("Fatal errors (Type II) with saliency").para(
                "Every Type II error of the test split at each run's operating point, lowest p(malignant) first, "
                "up to the cap of `riskcl explain --type-ii`: the image and where the model looked for p(malignant).")
            shown = True
        rel = r.path.relative_to(runs_dir)
        doc.heading(f"{rel}: {g['shown']} of {g['type_ii_total']} Type II errors at threshold {g['threshold']:.4f}", 3)
        if g.get("blank_maps"):
            doc.para(f"{g['blank_maps']} of these maps are blank: {g.get('note', '')}.")
        target = out / "figures" / "gallery" / str(rel).replace("/", "__")
        target.mkdir(parents=True, exist_ok=True)
        for item in g["items"]:
            shutil.copy(r.folder.gallery_dir / item["file"], target / item["file"])
            doc.figure(f"{item['id']}: true {item['true_class']}, p(malignant) {item['p_malignant']:.3f}"
                       + (" (blank map: nothing to show)" if item.get("blank") else ""), target / item["file"])


def _segmentation_report(records: list, notes: list[str], runs_dir: Path, out: Path, n_boot: int) -> Path:
    """REPORT.md / report.html / runs.csv / report.json of a folder of segmentation runs."""
    from .segmentation import public, segmentation_table

    table = segmentation_table(records, n_boot)
    runs = pd.DataFrame([{"dataset": r.run["dataset"], "model": r.run["model"], "method": r.method,
                          "seed": r.run["seed"], **{k: r.metrics[k] for k in ("dice", "jaccard", "thresholded_jaccard",
                                                                            "fnr", "missed_half", "over_rate", "hd95")},
                          "wall_time_s": r.metrics.get("wall_time_s", float("nan")),
                          "folder": str(r.path.relative_to(runs_dir))} for r in records]
                        ).sort_values(["dataset", "model", "method", "seed"]).reset_index(drop=True)
    figures = []
    for (ds, model), part in table.groupby(["dataset", "model"]):
        path = plots.plot_dice_vs_missed(part, out / "figures" / f"dice_vs_missed_{ds}_{model}.png",
                                         f"{ds} / {model}: Dice vs missed lesion")
        figures.append((f"Dice against the missed share of the lesion, {ds} / {model}: each loss at the 0.5 rule "
                        f"(hollow) and at its calibrated pixel threshold (filled)", path.name))
    atomic_write_text(out / "runs.csv", runs.map(spreadsheet_safe).to_csv(index=False))
    atomic_write_text(out / "report.json", json.dumps({
        "runs_dir": str(runs_dir), "task": "segmentation", "runs": runs.to_dict("records"),
        "segmentation": public(table).to_dict("records"), "not_included": notes}, indent=1, default=str))
    doc = Document("riskcl report: segmentation")
    doc.para(f"Runs folder: `{runs_dir}` ({len(records)} finished segmentation runs; total training wall time "
             f"{runs['wall_time_s'].sum() / 60:.1f} min).")
    if notes:
        doc.para("Not included: " + "; ".join(notes))
    doc.heading("Dice and under-segmentation, at 0.5 and at the calibrated thresholds").para(
        "Test split. `missed`: the mean share of each image's lesion called background (under-segmentation, the "
        "fatal error); `missed > half`: images missing more than half of their lesion; `over-seg.`: the share of the "
        "predicted lesion that is background. `@0.5`: a pixel is lesion when p(lesion) >= 0.5; `@cal`: at each "
        "run's pixel threshold from `riskcl calibrate` (its calibration split; the guarantee bounds `missed`). Seeds "
        f"averaged image by image; [95% CI]: percentile bootstrap over lesions ({n_boot} resamples). `seeds held "
        "alpha`: seeds whose test split's missed share stayed <= alpha.").table(public(table))
    doc.heading("Runs").para("Every number above comes from these run folders.").table(runs)
    doc.heading("Figures")
    for caption, name in figures:
        doc.figure(caption, out / "figures" / name)
    doc.write(out / "REPORT.md", out / "report.html", inline_figures=True)
    return out / "REPORT.md"


def build_report(runs_dir: str | Path, out_dir: str | Path, baseline: str = "focal", method: str = "rcl-proposed",
                 reference: str = "ce", n_boot: int = N_BOOT, targets: Sequence[float] = DEFAULT_TARGETS,
                 by: Sequence[str] = ()) -> Path:
    """Write the report; returns the path of ``REPORT.md``."""
    runs_dir, out = Path(runs_dir), Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    records, notes = find_runs(runs_dir)
    segmentation = [r for r in records if r.run.get("task") == "segmentation"]
    if segmentation:
        records = [r for r in records if r.run.get("task") != "segmentation"]
        if not records:
            return _segmentation_report(segmentation, notes, runs_dir, out, n_boot)
        notes.append(f"{len(segmentation)} segmentation run(s) left out: report them on their own "
                     f"(`riskcl report` on a folder of segmentation runs)")
    runs = runs_table(records, runs_dir)
    summary = summary_table(runs)
    ci = pooled_cer_ci(records, n_resamples=n_boot)
    methods = _methods_table(summary, ci)
    taxonomy_tbl = summary[["dataset", "model", "method", "split seed", "visual_ambiguity", "type_i",
                            "type_ii"]].rename(
        columns={"visual_ambiguity": "visual ambiguity (mean)", "type_i": "Type I (mean)",
                 "type_ii": "Type II (mean)"})
    paired = paired_table(summary, baseline, method)
    matched = matched_sensitivity_table(records, reference)
    fair = fair_frontier_table(records, targets, n_boot, reference=reference)
    replication = replication_table(fair, reference)
    recalls = recall_table(records, targets[0])
    from ..experiment.folder import NO_METADATA

    masked = fair_frontier_table(records, targets, n_boot, test_split=NO_METADATA, reference=reference)
    figures: list[tuple[str, str]] = []
    for (ds, model), part in summary.groupby(["dataset", "model"]):
        recs = [r for r in records if r.run["dataset"] == ds and r.run["model"] == model]
        figures += _figures(recs, part.reset_index(drop=True), out / "figures", f"{ds}_{model}", f"{ds} / {model}")
    robust, dcurves = cost_robust_table(records, n_boot)
    if not fair.empty:  # what training time buys, at the middle target
        middle = sorted(set(fair["target sensitivity"]))[len(set(fair["target sensitivity"])) // 2]
        for (ds, model), part in fair[fair["target sensitivity"] == middle].groupby(["dataset", "model"]):
            path = plots.plot_budget_frontier(part, out / "figures" / f"budget_{ds}_{model}.png", f"{ds} / {model}")
            figures.append((f"Budget frontier, {ds} / {model}: test specificity at a calibrated {100 * middle:g}% "
                            f"sensitivity (two-level 95% CI) and AUROC against training CPU minutes per model",
                            path.name))
    for ds, by_method in dcurves.items():
        path = plots.plot_decision_curves(by_method, out / "figures" / f"decision_curve_{ds}.png",
                                          f"{ds}: decision curves (test, mean over seeds)")
        figures.append((f"Decision curves, {ds}: net benefit of each method at its operating point's "
                        f"probabilities against refer-all and refer-none", path.name))
    atomic_write_text(out / "runs.csv", runs.map(spreadsheet_safe).to_csv(index=False))
    atomic_write_text(out / "report.json", json.dumps({
        "runs_dir": str(runs_dir), "baseline": baseline, "method": method, "reference": reference,
        "runs": runs.to_dict("records"), "methods": methods.to_dict("records"), "paired": paired.to_dict("records"),
        "matched_sensitivity": matched.to_dict("records"), "fair_frontier": fair.to_dict("records"),
        "replication": replication.to_dict("records"),
        "recall": recalls.to_dict("records"), "fair_frontier_no_metadata": masked.to_dict("records"),
        "cost_robust": robust.to_dict("records"),
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
         "actually reached (means over seeds, 95% two-level bootstrap CIs: training seeds, then test images, so "
         "that an interval covers a new training run as well as new cases; `*`: fewer than 3 seeds, an interval "
         "for these seeds only), how many seeds missed the target, the standardised partial AUROC of p(malignant) "
         "for sensitivity >= 0.9, and the rank at each target: the methods that held the target on test in most "
         "seeds first, by test specificity, then the others (marked `missed target`), so that missing the target "
         "is never rewarded. Each `split seed` (data.split_seed) is its own replication. Where runs of the "
         f"reference `{reference}` share the test split: each method's test specificity minus the reference's at "
         "the same target, with its two-level CI (each method's seeds drawn independently, the same test images "
         "for both), and the verdict: `beats` only when that interval excludes zero, else `not distinguishable at "
         "this scale`.", fair),
        (f"Replication: does it beat `{reference}` on every split seed?", "Per method and target, over the split "
         f"seeds of each data set: how often the two-level interval of the specificity difference to `{reference}` "
         "lay above zero (`beats`), below it (`worse`) or around it; `replicates` only when it beat the reference "
         "and held the target on every split seed (at least two). riskcl recommends a recipe only when it "
         "replicates on two real data sets.", replication),
        (f"Per-class recall at the fair threshold for {targets[0]:g} sensitivity", "Test split, means over seeds; "
         "balanced accuracy is the mean recall over the classes.", recalls),
        ("Fusion models when a clinic sends no metadata", "Every run that reads clinical metadata, scored again on "
         "its test split with every image's metadata missing, at the same thresholds (chosen on the held-out split "
         "with metadata). Compare with the fair frontier above; the difference to the reference is to its test "
         "predictions as they are (an image-only reference has no metadata to miss).", masked),
        (f"Retraining vs a post-hoc threshold on `{reference}` (test-matched: an upper bound)",
         f"For each method and seed, `{reference}` with its p(malignant) threshold lowered until its test sensitivity "
         "reaches the method's; columns are means over seeds. The threshold is matched on the test split itself, so "
         "this is an upper bound for the threshold; the fair frontier above chooses it on held-out data.", matched),
        ("Cost-robust comparison", "Test split, each run's operating point, means over seeds: the cost per case "
         "at the fixed costs of the config (with its two-level 95% CI over training seeds and test images), the "
         "expected cost and its 90% range over the plausible costs "
         "(`cost.uncertain`; the fixed costs when it is absent), the H-measure (Hand 2009, Beta(2, 2) prior over "
         "the normalised cost; threshold-free), and the rank of each method by the fixed and by the expected cost: "
         "a method that wins only at one cost point ranks differently.", robust),
        ("Runs", "Every number above comes from these run folders (paths relative to the runs folder).",
         runs[["dataset", "model", "method", "split seed", "seed", "cer", "f1_macro", "accuracy", "type_ii",
               "wall_time_s",
               "folder"]]),
    ]
    rules = sorted({r.run.get("decision_rule", "argmax") for r in records})
    doc = Document("riskcl report")
    doc.para(f"Runs folder: `{runs_dir}` ({len(records)} finished runs; total training wall time "
             f"{runs['wall_time_s'].sum() / 60:.1f} min). Decision rule of the per-run metrics: {', '.join(rules)} "
             f"(superclass: malignant when p(malignant) >= 0.5, then the best class within; argmax: the paper's).")
    if notes:
        doc.para("Not included or kept apart (unfinished, failed, damaged, duplicated, or not poolable as seeds): "
                 + "; ".join(notes))
    missing = {0: f"needs runs of both `{baseline}` and `{method}` (choose them with --baseline / --method)",
               4: f"needs runs of `{reference}` and of other methods on the same test split (--reference)",
               7: f"needs runs of `{reference}` and of another method with the same seeds (--reference)"}
    optional = {6}  # the no-metadata section: only when some run reads metadata
    for k, (title, text, df) in enumerate(sections):
        if df.empty and k in optional:
            continue
        if df.empty and k in missing:  # a section that cannot be made from these runs says why, once
            doc.heading(title).para(f"Not made: this section {missing[k]}.")
            continue
        doc.heading(title).para(text).table(df)
    doc.heading("Figures")
    for caption, name in figures:
        doc.figure(caption, out / "figures" / name)
    for column in by:
        _subgroups(doc, records, column, n_boot, out)
    _gallery(doc, records, runs_dir, out)
    doc.write(out / "REPORT.md", out / "report.html", inline_figures=True)  # the HTML survives being moved
    from ..experiment.tracking import track_after_training

    for r in records:  # tracked runs get the report's figures of their data set
        track_after_training(r.folder, artifacts=[out / "figures" / name for _, name in figures
                                                  if r.run["dataset"] in name])
    return out / "REPORT.md"
