"""``riskcl card``: a model card computed from a run folder (Markdown, and HTML with its figures inline).

Sections follow "Model Cards for Model Reporting" (Mitchell et al., FAT* 2019) and the items of the CLAIM
checklist (Mongan et al., Radiology: AI 2020) that a classifier needs. Every number is read from the run's files
(``metrics.json``, ``calibration.json``, ``data.json``, the prediction files, an export's ``riskcl_export.json``)
or computed from them here (bootstrap confidence intervals, the Type II list); none is typed in.
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import __version__
from ..decision import decide, softmax
from ..experiment.calibrate import operating_point
from ..experiment.folder import RunFolder
from ..io import read_json
from ..metrics import (accuracy, auroc_malignant, bootstrap_ci, critical_error_rate, expected_calibration_error,
                       f1_macro, malignant_probability, predictive_values, sensitivity_specificity)
from ..report import plots
from ..report.render import Document
from .predict import group_thresholds, missed_malignant

CARD_FILE, CARD_HTML, FIGURES = "MODEL_CARD.md", "model_card.html", "card_figures"
TYPE_II_ROWS = 50
SMALL_CLASS = 10


def _label_metrics(tax):
    return {"sensitivity": lambda lab, y: sensitivity_specificity(lab, y, tax)[0],
            "specificity": lambda lab, y: sensitivity_specificity(lab, y, tax)[1],
            "PPV": lambda lab, y: predictive_values(lab, y, tax)[0],
            "NPV": lambda lab, y: predictive_values(lab, y, tax)[1],
            "CER": lambda lab, y: critical_error_rate(lab, y, tax),
            "F1-macro": f1_macro, "accuracy": accuracy}


METRICS_JSON_KEY = {"sensitivity": "sensitivity", "specificity": "specificity", "CER": "cer", "F1-macro": "f1_macro",
                    "accuracy": "accuracy", "AUROC": "auroc", "ECE": "ece"}


def results_table(probs: np.ndarray, target: np.ndarray, groups: np.ndarray, tax, threshold: float, rule: str,
                  n_boot: int) -> pd.DataFrame:
    """Test metrics at the operating point with 95% bootstrap CIs (resampling groups), and under the run's own
    decision rule at 0.5 (the numbers of ``metrics.json``)."""
    op_labels = decide(probs, tax, "superclass", threshold)
    default_labels = decide(probs, tax, rule)
    rows = []
    for name, fn in _label_metrics(tax).items():
        point, lo, hi = bootstrap_ci(fn, op_labels, target, groups=groups, n_resamples=n_boot)
        rows.append({"metric": name, "at the operating point": point, "95% CI": f"[{lo:.4f}, {hi:.4f}]",
                     "at the default rule": fn(default_labels, target)})
    for name, fn in (("AUROC", lambda p, y: auroc_malignant(p, y, tax)), ("ECE", expected_calibration_error)):
        point, lo, hi = bootstrap_ci(fn, probs, target, groups=groups, n_resamples=n_boot)
        rows.append({"metric": name, "at the operating point": point, "95% CI": f"[{lo:.4f}, {hi:.4f}]",
                     "at the default rule": point})
    return pd.DataFrame(rows)


def _counts_table(info: dict[str, Any]) -> pd.DataFrame:
    counts = info.get("counts", {})
    classes = list(next(iter(counts.values()), {}))
    return pd.DataFrame([{"split": s, **{c: int(counts[s][c]) for c in classes}, "images": sum(counts[s].values()),
                          "groups": info.get("groups", {}).get(s, "-")} for s in counts])


def _type_ii(test: dict[str, np.ndarray], probs: np.ndarray, tax, threshold: float | np.ndarray) -> pd.DataFrame:
    p_mal = malignant_probability(probs, tax)
    t = np.broadcast_to(np.asarray(threshold, dtype=np.float64), p_mal.shape)
    missed = missed_malignant(p_mal, test["target"], tax, t)
    return pd.DataFrame([{"id": str(test["ids"][i]), "true class": tax.classes[int(test["target"][i])],
                          "p(malignant)": float(p_mal[i]), "threshold": float(t[i])} for i in missed])


def _find_export(folder: RunFolder, export_dir: str | Path | None) -> dict[str, Any] | None:
    candidates = [Path(export_dir)] if export_dir else [folder.path / "export"]
    for c in candidates:
        if (c / "riskcl_export.json").is_file():
            return read_json(c / "riskcl_export.json")
    return None


def _limitations(folder: RunFolder, metrics: dict, info: dict, cal: dict | None, tax, cfg) -> list[str]:
    out = []
    val = metrics.get("val", {})
    if "cer" in val:
        out.append(f"Validation CER {100 * val['cer']:.2f}% vs test CER {100 * metrics['cer']:.2f}% at the default "
                   f"rule: the validation split chose the best epoch, so its numbers are optimistic.")
    if cal is not None:
        out.append(f"Calibration-split miss rate at the threshold {100 * cal['calibration_cer']:.2f}% vs test CER "
                   f"{100 * cal['test']['cer']:.2f}%. Shift check: {cal.get('shift_check', {}).get('note', 'n/a')}.")
    weights = metrics["run"].get("weights", "")
    if str(weights).startswith("random"):
        out.append(f"Trained from random initialisation ({weights}); ImageNet-pretrained weights would be the "
                   f"paper's protocol.")
    small = [f"{c} ({n})" for c, n in info.get("counts", {}).get("test", {}).items() if n < SMALL_CLASS]
    if small:
        out.append(f"Classes with fewer than {SMALL_CLASS} test images, whose per-class numbers say little: "
                   + ", ".join(small) + ".")
    dup = info.get("duplicates", {})
    if dup.get("across_splits"):
        out.append(f"{dup['across_splits']} group(s) of byte-identical images lie in two splits (policy "
                   f"`{cfg.data.duplicates}`); kept copies make the test numbers optimistic.")
    if info.get("skipped"):
        out.append(f"{len(info['skipped'])} unreadable image(s) were skipped (listed in skipped_images.txt).")
    if info.get("group_unit", "").startswith("image content"):
        out.append("The data has no patient ids: images of one patient may lie on both sides of a split.")
    return out


def build_card(run_dir: str | Path, out: str | Path | None = None, n_boot: int = 1000,
               export_dir: str | Path | None = None, gallery_cap: int = 12) -> Path:
    """Write ``MODEL_CARD.md`` (default: in the run folder) and ``model_card.html`` beside it; returns the path.

    The Type II errors are shown with their saliency: from ``RUN/gallery`` (``riskcl explain --type-ii``), made
    here (up to ``gallery_cap``, 0 for none) when it is absent."""
    folder = RunFolder(run_dir)
    folder.require_finished()
    md_path = Path(out) if out else folder.path / CARD_FILE
    if md_path.is_dir():
        md_path = md_path / CARD_FILE
    if not md_path.parent.is_dir():
        raise FileNotFoundError(f"Cannot write {md_path}: the folder {md_path.parent} does not exist")
    fig_dir = md_path.parent / FIGURES
    fig_dir.mkdir(exist_ok=True)
    cfg, tax, metrics, info = folder.read_config(), folder.taxonomy(), folder.metrics(), folder.data_info()
    op = operating_point(folder)
    cal = None if op["method"] == "default" else op  # calibration.json, when the run has one
    test = folder.predictions("test")
    threshold = float(op["threshold"])
    if op.get("groups"):  # each test case at its group's threshold, as calibration.json's test numbers
        threshold = group_thresholds(op, test[f"meta__{op['by']}"])
    probs = softmax(test["logits"])
    run = metrics["run"]
    export = _find_export(folder, export_dir)
    doc = Document(f"Model card: {run['name']} ({run['model']} on {run['dataset']})")
    doc.para(f"Generated by riskcl {__version__} on {_dt.date.today().isoformat()} from the run folder "
             f"`{folder.path}`. Every number below is read from that folder's files or computed from them.")

    doc.heading("Model details")
    details = {"architecture": f"{run['model']} (timm), {len(tax.classes)} classes",
               "weights origin": str(run.get("weights")),
               "training objective": f"{run['loss']} {run.get('loss_params') or ''}".strip(),
               "training": f"{run['epochs']} epochs, best epoch {run['best_epoch']} by validation "
                           f"{run['select_metric']}; AdamW lr {cfg.optim.lr:g}, weight decay "
                           f"{cfg.optim.weight_decay:g}, batch {cfg.optim.batch_size}, {cfg.data.image_size} px",
               "seeds": f"training {run['seed']}, splits {cfg.data.split_seed}",
               "decision": "refer when p(malignant) >= the threshold, then the most probable class within the "
                           "decided superclass",
               "versions": f"riskcl {__version__}, torch {run.get('torch')}, python {run.get('python')}",
               "weights SHA-256": folder.weights_sha256(),
               "device": f"{run.get('device')} x {run.get('world_size', 1)}"}
    if export is not None:
        details["exported model"] = (f"{export['file']} ({export['format']}), parity on {export['parity']['images']} "
                                     f"images: max |p(malignant) difference| "
                                     f"{export['parity']['max_abs_diff_p_malignant']:.1e}, "
                                     f"{export['parity']['decision_flips']} decision flips")
    doc.table(pd.DataFrame([{"item": k, "value": v} for k, v in details.items()]))

    doc.heading("Intended use")
    doc.bullets([
        f"Primary use: triage support for {run['dataset']} images: the model flags cases whose p(malignant) "
        f"reaches the operating threshold for review by a specialist. It does not diagnose, and a *clear* result "
        f"does not rule disease out.",
        "Users: clinicians and reviewers who route cases, and engineers who validate the model on their own data "
        "before use.",
        "Out of scope: use without specialist review; images of another modality, device, site, population or "
        "preprocessing than the training data; any population whose data is not exchangeable with the "
        "calibration set (the guarantee below then does not hold); paediatric or rare presentations absent "
        "from the data.",
    ])

    doc.heading("Data")
    doc.para(f"Dataset `{run['dataset']}` read in place from `{info.get('root')}` (its public layout). Grouping "
             f"unit of every split: {info.get('group_unit', 'unknown')}; no group lies on two sides. Test, "
             f"validation and calibration splits are official where the data fixes them, else carved by group "
             f"(fractions {cfg.data.test_fraction}, {cfg.data.val_fraction}, {cfg.data.calib_fraction}; split "
             f"seed {cfg.data.split_seed}). Labels are the dataset's own ground truth (the reference standard).")
    doc.table(_counts_table(info))
    dup = info.get("duplicates", {})
    doc.para(f"Byte-identical duplicates: {dup.get('groups', 0)} group(s) ({dup.get('redundant_files', 0)} redundant "
             f"files), {dup.get('across_splits', 0)} across splits, handled by policy `{cfg.data.duplicates}`"
             + (f" ({len(info.get('dropped_duplicates', []))} copies dropped)" if info.get("dropped_duplicates")
                else "") + f". Unreadable images skipped: {len(info.get('skipped', {}))}.")

    doc.heading("Cost model")
    cost = np.asarray(run.get("cost_matrix", folder.cost_matrix().tolist()))
    doc.para("Clinical cost of an error (row = true class, column = predicted): "
             + (f"lambda1 = {cfg.cost.lambda1:g} (Type I, benign called malignant), lambda2 = {cfg.cost.lambda2:g} "
                f"(Type II, malignant called benign)" if cfg.cost.matrix is None else "a user-given matrix")
             + ". It chose the best epoch (mean cost on validation) and scores `mean_cost`.")
    doc.table(pd.DataFrame([{"true": c, **{p: f"{v:g}" for p, v in zip(tax.classes, row)}}
                            for c, row in zip(tax.classes, cost)]))

    doc.heading("Operating point")
    if cal is None:
        doc.para(f"Threshold {threshold:g} on p(malignant): the default rule, **not calibrated**, so no guarantee. "
                 f"Run `riskcl calibrate {folder.path} --alpha A` for a threshold with one.")
    else:
        n = cal["n_calibration"]
        doc.table(pd.DataFrame([{"item": k, "value": v} for k, v in {
            "threshold": repr(float(cal["threshold"])) + (" (pooled)" if cal.get("groups") else ""),
            "method": cal["method"], "alpha": cal["alpha"],
            "delta": cal.get("delta"), "calibration set": f"the {cal['calibration_split']} split: {n} malignant "
                                                          f"{cal.get('unit', 'sample')}s",
            "guarantee": cal.get("guarantee")}.items()]))
        if cal.get("groups"):
            doc.para(f"One threshold per `{cal['by']}` group ({cal.get('correction', '')}); uncertified and unseen "
                     f"groups use the {cal.get('fallback')} fallback {cal.get('unseen_group_threshold')}. The test "
                     f"results below decide each case at its group's threshold.")
            doc.table(pd.DataFrame([{"group": g, "threshold": v["threshold"], "certified": v["certified"],
                                     "malignant calibration units": v["n_calibration"], "test CER": v.get("test_cer")}
                                    for g, v in sorted(cal["groups"].items())]))
        promise = (f"with probability at least {1 - cal['delta']:g}" if cal["method"] == "ltt" else "on average")
        doc.para(f"In plain words: on new cases like the calibration set, the model misses at most "
                 f"{100 * cal['alpha']:g}% of malignant cases, {promise} over the draw of the calibration set. "
                 f"This stops holding when new data is not exchangeable with the calibration set (another site, "
                 f"device, population or prevalence of hard cases), when the preprocessing differs, or when "
                 f"the model is retrained without recalibration.")

    doc.heading("Test results")
    y = test["target"]
    prevalence = float(np.mean(tax.superclass[y] == 1))
    doc.para(f"Test split: {len(y)} images, malignant prevalence {100 * prevalence:.2f}% (PPV and NPV hold at this "
             f"prevalence only). 95% percentile bootstrap CIs resampling whole groups "
             f"({info.get('group_unit', 'unknown unit')}), {n_boot} resamples. The default-rule column equals "
             f"`metrics.json` (decision rule `{metrics.get('decision_rule', cfg.decision)}`).")
    doc.table(results_table(probs, y, test["groups"], tax, threshold, metrics.get("decision_rule", cfg.decision),
                            n_boot))
    labels = decide(probs, tax, "superclass", threshold)
    cm = np.zeros((tax.num_classes,) * 2, dtype=np.int64)
    np.add.at(cm, (y, labels), 1)
    doc.figure("Reliability diagram (test split)", plots.plot_reliability(probs, y, fig_dir / "reliability.png"))
    doc.figure("Confusion matrix at the operating point, shaded by severity",
               plots.plot_severity_confusions({"test": cm}, tax.classes, tax.superclass, fig_dir / "confusion.png"))

    doc.heading("Fatal errors (Type II) at the operating point")
    missed = _type_ii(test, probs, tax, threshold)
    doc.para(f"{len(missed)} malignant test case(s) called benign"
             + (f"; the {TYPE_II_ROWS} lowest p(malignant) first:" if len(missed) > TYPE_II_ROWS else ":"))
    doc.table(missed.head(TYPE_II_ROWS))
    gallery = folder.gallery()
    if gallery is None and len(missed) and gallery_cap:
        from .explain import explain_type_ii

        gallery = explain_type_ii(folder.path, cap=gallery_cap)
    if gallery is not None:
        for item in gallery.get("items", [])[:max(gallery_cap, 12)]:
            png = folder.gallery_dir / item["file"]
            if png.is_file():
                doc.figure(f"{item['id']}: true {item['true_class']}, p(malignant) {item['p_malignant']:.3f} < "
                           f"threshold {item['threshold']:.3f} (saliency: {item['method']})", png)

    doc.heading("Limitations measured in this run")
    doc.bullets(_limitations(folder, metrics, info, cal, tax, cfg) or ["None measured."])

    doc.heading("Checklist (CLAIM items for a classifier)")
    doc.table(pd.DataFrame([
        {"item": "data sources, inclusion, partitions", "where": "Data (counts per split, grouping unit)"},
        {"item": "reference standard", "where": "Data (the dataset's ground truth)"},
        {"item": "preprocessing", "where": f"{cfg.data.image_size} px antialiased resize, ImageNet normalisation"},
        {"item": "model, training, selection", "where": "Model details"},
        {"item": "metrics and statistical measures", "where": "Test results (bootstrap CIs)"},
        {"item": "operating point", "where": "Operating point"},
        {"item": "failure analysis", "where": "Fatal errors (Type II)"},
        {"item": "limitations, intended use", "where": "Limitations, Intended use"},
    ]))
    doc.write(md_path, md_path.parent / CARD_HTML, inline_figures=True)
    return md_path
