"""``riskcl card``: a model card computed from a run folder (Markdown, and HTML with its figures inline).

Sections follow "Model Cards for Model Reporting" (Mitchell et al., FAT* 2019) and the items of the CLAIM
checklist (Mongan et al., Radiology: AI 2020) that a classifier needs. Every number is read from the run's files
(``metrics.json``, ``calibration.json``, ``data.json``, the prediction files, an export's ``riskcl_export.json``)
or computed from them here (bootstrap confidence intervals, the Type II list); none is typed in.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import __version__
from .._checks import check_int, check_number
from ..config import run_cost_distribution
from ..data.encoding import METADATA_ONLY
from ..data.registry import dataset_license
from ..decision import OperatingPoint, decide
from ..defaults import MIN_SENSITIVITY, MIN_SPECIFICITY, N_BOOT
from ..experiment.calibrate import operating_point
from ..experiment.folder import RunFolder
from ..io import file_sha256, read_json
from ..metrics import (accuracy, auroc_malignant, bootstrap_ci, critical_error_rate, expected_calibration_error,
                       f1_macro, malignant_probability, predictive_values, sensitivity_specificity)
from ..metrics.subgroups import MIN_MALIGNANT, PRINTABLE_COLUMNS, intervals_note, printable_rows, subgroup_metrics
from ..report import plots
from ..report.render import Document
from .explain import BLANK_NOTE, type_ii_cases
from .export import METADATA_FILE

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


def results_table(probs: np.ndarray, target: np.ndarray, groups: np.ndarray, tax, op_labels: np.ndarray, rule: str,
                  n_boot: int) -> pd.DataFrame:
    """Test metrics at the operating point (``op_labels``) with 95% bootstrap CIs (resampling groups), and under the
    run's own decision rule at 0.5 (the numbers of ``metrics.json``)."""
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


def export_status(folder: RunFolder, op: OperatingPoint, export_dir: str | Path | None) -> dict[str, Any] | None:
    """The export the card cites (``export_dir``, else ``RUN/export``) and whether it is current: its recorded
    weights hash and operating point (threshold, temperature, TTA) against the run's current ones."""
    path = Path(export_dir) if export_dir else folder.export_dir
    meta_path = path / METADATA_FILE
    if not meta_path.is_file():
        return None
    meta = read_json(meta_path)
    stale = []
    if meta.get("weights_sha256") != folder.weights_sha256():
        stale.append("its weights differ from the run's model.safetensors")
    recorded = meta.get("operating_point", {})
    for key in ("threshold", "temperature", "tta", "method"):
        if key in recorded and recorded[key] != getattr(op, key):
            stale.append(f"its {key} {recorded[key]} differs from the run's current {getattr(op, key)}")
    files = meta.get("files_sha256", {})
    for name, digest in files.items():
        f = path / name
        if not f.is_file() or file_sha256(f) != digest:
            stale.append(f"{name} is missing or changed since export")
    return {"path": str(path), "meta": meta, "stale": stale}


def _limitations(folder: RunFolder, metrics: dict, info: dict, cal: dict | None, tax, cfg) -> list[str]:
    out = []
    val = metrics.get("val", {})
    if "cer" in val and val["cer"] < metrics["cer"]:
        out.append(f"Validation CER {100 * val['cer']:.2f}% is below the test CER {100 * metrics['cer']:.2f}% (share "
                   f"of malignant images called benign at the default rule): the validation split chose the best "
                   f"epoch, so its numbers are optimistic.")
    if cal is not None and cal.get("task") == "segmentation":
        out.append(f"Calibration-split missed share of the lesion at the threshold {100 * cal['calibration_cer']:.2f}% "
                   f"per {cal.get('unit', 'image')} vs {100 * cal['test']['fnr']:.2f}% on the test split. Shift check: "
                   f"{cal.get('shift_check', {}).get('note', 'n/a')}.")
    elif cal is not None:
        out.append(f"Calibration-split miss rate at the threshold {100 * cal['calibration_cer']:.2f}% of malignant "
                   f"{cal.get('unit', 'sample')}s vs test CER {100 * cal['test']['cer']:.2f}% of malignant images. "
                   f"Shift check: {cal.get('shift_check', {}).get('note', 'n/a')}.")
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


@dataclass
class CardContext:
    """What every section reads: the run's files, its operating point, and the test decisions taken at it."""

    folder: RunFolder
    op: OperatingPoint
    n_boot: int
    fig_dir: Path
    export: dict[str, Any] | None
    gallery_cap: int
    floors: dict[str, float]
    cfg: Any = None
    tax: Any = None
    metrics: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    cal: dict | None = None
    test: dict = field(default_factory=dict)
    probs: np.ndarray | None = None
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        f = self.folder
        self.cfg, self.tax, self.metrics, self.info = f.read_config(), f.taxonomy(), f.metrics(), f.data_info()
        self.cal = f.calibration() if self.op.calibrated else None
        self.test = f.predictions("test")
        self.probs = self.op.probabilities(self.test["logits"])
        strata = self.test.get(f"meta__{self.op.by}") if self.op.per_group else None
        self.labels = self.op.decide(self.probs, self.tax, strata)

    @property
    def run(self) -> dict[str, Any]:
        return self.metrics["run"]

    def fitness(self) -> list[str]:
        """Reasons the model is not fit for use at its operating point (sensitivity / specificity under the
        floors; for segmentation the lesion pixels found, 1 - the mean missed share, and the background pixels kept);
        empty when it is."""
        if self.op.segmentation:
            from ..metrics.segmentation import per_image_metrics

            m = per_image_metrics(self.labels, self.test["target"], with_hd95=False)
            sens = 1 - float(np.nanmean(m["fnr"]))
            spec = float(m["tn"].sum() / max(1, (m["tn"] + m["fp"]).sum()))
        else:
            sens, spec = sensitivity_specificity(self.labels, self.test["target"], self.tax)
        out = []
        for name, value in (("sensitivity", sens), ("specificity", spec)):
            if not np.isnan(value) and value < self.floors[name]:
                out.append(f"test {name} {100 * value:.1f}% is under the floor of {100 * self.floors[name]:g}%")
        if self.op.calibrated and not self.op.certified:
            out.append("its operating point is not certified (no guarantee on missed "
                       + ("lesion" if self.op.segmentation else "malignant cases") + ")")
        return out


def _details(doc: Document, c: CardContext) -> None:
    run, cfg, tax = c.run, c.cfg, c.tax
    doc.heading("Model details")
    seg = c.op.segmentation
    details = {"architecture": (f"{run.get('arch', 'unet')} (segmentation-models-pytorch) on the timm encoder "
                                f"{run['model']}, one lesion logit per pixel" if seg else
                                f"logistic regression on the clinical inputs {run['metadata_inputs']} alone "
                                f"(no image), {len(tax.classes)} classes" if run["model"] == METADATA_ONLY else
                                f"{run['model']} (timm), {len(tax.classes)} classes"
                                + (f", fused with the clinical inputs {run['metadata_inputs']} "
                                   f"({run['fusion']['head']} head)" if run.get("fusion") else "")),
               "weights origin": str(run.get("weights")),
               "training objective": f"{run['loss']} {run.get('loss_params') or ''}".strip(),
               "training": f"{run['epochs']} epochs, best epoch {run['best_epoch']} by validation "
                           f"{run['select_metric']}; AdamW lr {cfg.optim.lr:g}, weight decay "
                           f"{cfg.optim.weight_decay:g}, batch {cfg.optim.batch_size}, {cfg.data.image_size} px",
               "seeds": f"training {run['seed']}, splits {cfg.data.split_seed}",
               "decision": ("a pixel is lesion when p(lesion) >= the threshold" if seg else
                            "refer when p(malignant) >= the threshold, then the most probable class within the "
                            "decided superclass"),
               "versions": f"riskcl {__version__} (card), riskcl {run.get('riskcl', '?')} (training), torch "
                           f"{run.get('torch')}, timm {run.get('timm', '?')}, numpy {run.get('numpy', '?')}, python "
                           f"{run.get('python')}",
               "threads": f"{run.get('threads', '?')} CPU thread(s) in training (results move slightly with the "
                          f"thread count and the CPU's kernels)",
               "weights SHA-256": c.folder.weights_sha256(),
               "device": f"{run.get('device')} x {run.get('world_size', 1)}"}
    adopted = c.folder.adopted()
    if adopted is not None:  # a model trained elsewhere: what riskcl knows of it, and what it cannot know
        details.update({
            "architecture": f"trained elsewhere: the {adopted['kind']} file {adopted['source']} ({len(tax.classes)} "
                            f"classes, outputs declared as {adopted['output']})",
            "weights origin": f"adopted by riskcl {adopted.get('riskcl', '?')} on {adopted.get('adopted', '?')}; the "
                              f"file is kept in the run folder as {adopted['file']}",
            "training objective": "unknown (trained elsewhere)",
            "training": "trained elsewhere: riskcl cannot know its training data, recipe or selection, nor whether it "
                        "saw any image of this run's validation, calibration or test splits (such a leak would make "
                        "every figure below optimistic); the guarantee still holds for data exchangeable with the "
                        "calibration split",
            "declared preprocessing": adopted.get("preprocessing") or "a table of predictions: none (no model file)",
            "weights SHA-256": adopted["sha256"], "device": "cpu (riskcl ran it for its predictions)",
            "versions": f"riskcl {__version__} (card), riskcl {run.get('riskcl', '?')} (adoption)",
            "threads": "-", "seeds": f"splits {cfg.data.split_seed}"})
    if c.export is not None:
        e, p = c.export["meta"], c.export["meta"]["parity"]
        state = ("STALE: " + "; ".join(c.export["stale"]) + "; export again") if c.export["stale"] else "current"
        details["exported model"] = (f"{c.export['path']}/{e['file']} ({e['format']}), {state}; parity on "
                                     f"{p['images']} images: " + (
                                         f"max |p(lesion) difference| {p['max_abs_diff_p_lesion']:.1e} per pixel, "
                                         f"{p['mask_pixel_flips']} mask pixel flips beyond ties" if seg else
                                         f"max |p(malignant) difference| {p['max_abs_diff_p_malignant']:.1e}, "
                                         f"{p['decision_flips']} decision flips"))
    doc.table(pd.DataFrame([{"item": k, "value": v} for k, v in details.items()]))


def _intended_use(doc: Document, c: CardContext) -> None:
    doc.heading("Intended use")
    unfit = c.fitness()
    if unfit:
        doc.para("**NOT FIT FOR USE at this operating point**: " + "; ".join(unfit) + " (floors set with "
                 "`riskcl card --min-sensitivity / --min-specificity`).")
    doc.bullets([
        "Research use only; not a medical device.",
        f"Primary use: triage support for {c.run['dataset']} images: the model flags cases whose p(malignant) "
        f"reaches the operating threshold for review by a specialist. It does not diagnose, and a clear result "
        f"does not rule out disease.",
        "Users: clinicians and reviewers who route cases, and engineers who validate the model on their own data "
        "before use.",
        "Out of scope: use without specialist review; images of another modality, device, site, population or "
        "preprocessing than the training data; any population whose data is not exchangeable with the "
        "calibration set (the guarantee below then does not hold); paediatric or rare presentations absent "
        "from the data.",
    ])


def _data(doc: Document, c: CardContext) -> None:
    cfg, info = c.cfg, c.info
    doc.heading("Data")
    where = (f"read in place from `{info['root']}` (its public layout)" if info.get("root") else
             "generated in memory by riskcl (no files)")
    doc.para(f"Dataset `{c.run['dataset']}` {where}. Licence: "
             f"{dataset_license(cfg.data.name)}. Grouping unit of every split: {info.get('group_unit', 'unknown')}; "
             f"no group lies on two sides. Test, validation and calibration splits are official where the data "
             f"fixes them, else carved by group (fractions {cfg.data.test_fraction}, {cfg.data.val_fraction}, "
             f"{cfg.data.calib_fraction}; split seed {cfg.data.split_seed}). Labels are the dataset's own ground "
             f"truth (the reference standard).")
    doc.table(_counts_table(info))
    dup = info.get("duplicates", {})
    doc.para(f"Byte-identical duplicates: {dup.get('groups', 0)} group(s) ({dup.get('redundant_files', 0)} redundant "
             f"files), {dup.get('across_splits', 0)} across splits, handled by policy `{cfg.data.duplicates}`"
             + (f" ({len(info.get('dropped_duplicates', []))} copies dropped)" if info.get("dropped_duplicates")
                else "") + f". Unreadable images skipped: {len(info.get('skipped', {}))}.")


def _cost(doc: Document, c: CardContext) -> None:
    cfg, tax = c.cfg, c.tax
    doc.heading("Cost model")
    cost = c.folder.cost_matrix()
    doc.para("Clinical cost of a decision (row = true class, column = predicted; 0 for a correct decision): "
             + (f"lambda1 = {cfg.cost.lambda1:g} (Type I, benign called malignant), lambda2 = {cfg.cost.lambda2:g} "
                f"(Type II, malignant called benign), {cfg.cost.within:g} for a confusion within a superclass"
                if cfg.cost.matrix is None else "a user-given matrix")
             + f". It chose the best epoch (validation {c.run['select_metric']}) and scores `mean_cost`. The "
               f"risk-calibrated loss weights use the paper's matrix instead (1 on the diagonal).")
    doc.table(pd.DataFrame([{"true": n, **{p: f"{v:g}" for p, v in zip(tax.classes, row)}}
                            for n, row in zip(tax.classes, cost)]))
    costs = run_cost_distribution(cfg)
    if costs.uncertain:
        lo, hi = costs.pt_range()
        doc.para(f"Plausible costs (`cost.uncertain`): {costs.describe()}: a referral is worth it when "
                 f"p(malignant) is above a threshold probability between {lo:.3g} and {hi:.3g}. The decision curve "
                 f"below covers that range.")


def _decision_curve(doc: Document, c: CardContext) -> None:
    from ..decision.costs import benefit_sentence, decision_curve
    from ..experiment.decision_curves import cost_figures, curve_range

    doc.heading("Decision curve")
    costs = run_cost_distribution(c.cfg)
    p_mal, is_mal = malignant_probability(c.probs, c.tax), c.tax.superclass[c.test["target"]] == 1
    curve = decision_curve(p_mal, is_mal, curve_range(costs),
                           c.test.get("groups"), c.n_boot)
    figs = cost_figures(p_mal, is_mal, c.op.threshold, costs)
    doc.para(f"{benefit_sentence(curve)} (Test split, the probabilities of the operating point; net benefit = "
             f"true referrals per case minus false referrals weighted by pt / (1 - pt), Vickers and Elkin 2006; "
             f"the band is a 95% bootstrap interval over {c.info.get('group_unit', 'the grouping unit')}.) At the "
             f"operating threshold {c.op.threshold:.4f} the expected cost per case under the plausible costs is "
             f"{figs['expected_cost']:.4g} (90% of cost draws {figs['cost_p05']:.4g}-{figs['cost_p95']:.4g}); "
             f"H-measure {figs['h_measure']:.3f}.")
    doc.figure("Decision curve (test split)", plots.plot_decision_curves({"model": curve},
                                                                         c.fig_dir / "decision_curve.png"))


def _operating_point(doc: Document, c: CardContext) -> None:
    op, cal = c.op, c.cal
    doc.heading("Operating point")
    if cal is None:
        doc.para(f"{op.describe()}. Run `riskcl calibrate {c.folder.path} --alpha A` for a threshold with a "
                 f"guarantee.")
        return
    unit = cal.get("unit", "sample")
    doc.table(pd.DataFrame([{"item": k, "value": v} for k, v in {
        "threshold": repr(float(cal["threshold"])) + (" (pooled)" if op.per_group else ""),
        "probabilities": f"softmax(logits / {op.temperature:.4g})" + (", mean over 4 flips" if op.tta == "flip"
                                                                      else ""),
        "method": cal["method"], "alpha": cal["alpha"], "delta": cal.get("delta"),
        "certified": "yes" if op.certified else "NO (used with --allow-uncertified)",
        "calibration set": f"the {cal['calibration_split']} split: {cal['n_calibration']} malignant {unit}s",
        "guarantee": cal.get("guarantee")}.items()]))
    if op.per_group:
        doc.para(f"One threshold per `{cal['by']}` group ({cal.get('correction', '')}); uncertified and unseen "
                 f"groups use the {cal.get('fallback')} fallback {cal.get('unseen_group_threshold')}. Every test "
                 f"number below, the Type II list and its gallery decide each case at its group's threshold.")
        doc.table(pd.DataFrame([{"group": g, "threshold": v["threshold"], "certified": v["certified"],
                                 f"malignant calibration {unit}s": v["n_calibration"], "test CER": v.get("test_cer")}
                                for g, v in sorted(cal["groups"].items())]))
    if op.certified:
        promise = (f"with probability at least {1 - cal['delta']:g}" if cal["method"] == "ltt" else "on average")
        counted = "patients or lesions, each missed when any of its malignant images is" if unit == "group" else \
            "images"
        doc.para(f"In plain words: on new cases like the calibration set, the model misses at most "
                 f"{100 * cal['alpha']:g}% of malignant {unit}s ({counted}), {promise} over the draw of the "
                 f"calibration set. This stops holding when new data is not exchangeable with the calibration "
                 f"set (another site, device, population or prevalence of hard cases), when the preprocessing "
                 f"differs, or when the model is retrained without recalibration.")
    else:
        doc.para("**No guarantee**: calibration could not certify this alpha on the calibration set; the threshold "
                 "is used because the card was asked to allow an uncertified point.")


def _results(doc: Document, c: CardContext) -> None:
    tax, y = c.tax, c.test["target"]
    doc.heading("Test results")
    prevalence = float(np.mean(tax.superclass[y] == 1))
    rule = c.metrics.get("decision_rule", c.cfg.decision)
    doc.para(f"Test split: {len(y)} images, malignant prevalence {100 * prevalence:.2f}% (PPV and NPV hold at this "
             f"prevalence only). Every rate counts images (CER: share of malignant images called benign). 95% "
             f"percentile bootstrap CIs resampling whole groups ({c.info.get('group_unit', 'unknown unit')}), "
             f"{c.n_boot} resamples. The default-rule column equals `metrics.json` (decision rule `{rule}`).")
    doc.table(results_table(c.probs, y, c.test["groups"], tax, c.labels, rule, c.n_boot))
    cm = np.zeros((tax.num_classes,) * 2, dtype=np.int64)
    np.add.at(cm, (y, c.labels), 1)
    doc.figure("Reliability diagram (test split)", plots.plot_reliability(c.probs, y, c.fig_dir / "reliability.png"))
    doc.figure("Confusion matrix at the operating point, shaded by severity",
               plots.plot_severity_confusions({"test": cm}, tax.classes, tax.superclass, c.fig_dir / "confusion.png"))


def _metadata_inputs(doc: Document, c: CardContext) -> None:
    """A fusion model: the clinical inputs it reads, and what its test numbers become when none are sent."""
    from ..experiment.folder import NO_METADATA

    encoding = c.folder.metadata_encoding()
    if encoding is None:
        return
    doc.heading("Clinical inputs")
    fusion = c.run.get("fusion")
    if fusion is None:  # the metadata-only reference
        doc.para(f"The model reads no image: only {encoding.column_names} ({encoding.dim} encoded features; fitted on "
                 f"the training split only), by logistic regression. It is a reference for what the clinical data "
                 f"alone carry; when a clinic sends none it gives every case the same answer.")
        return
    doc.para(f"Besides the image the model reads {encoding.column_names} ({encoding.dim} encoded features; fitted on "
             f"the training split only: numeric columns standardised, categorical one-hot with an explicit unknown; "
             f"a missing value encodes as unknown), through the `{fusion.get('head', '?')}` fusion head with metadata "
             f"dropout {fusion.get('metadata_dropout', 0)}. A guarantee holds for the inputs it was certified on, so "
             f"each request is decided at the operating point calibrated for what it carries: every column, or none "
             f"(the calibration split with every column masked); a request with some columns missing has no "
             f"certified point and its answer says so. Test split, with its metadata and with every image's metadata "
             f"missing:")
    if not c.folder.has_predictions(NO_METADATA):
        doc.para("Not measured: the run predates the no-metadata predictions.")
        return
    rows = []
    for name, pattern, arrays in (("with metadata", "complete", c.test),
                                  ("no metadata sent", "none", c.folder.predictions(NO_METADATA))):
        point = c.op.for_inputs(pattern) if c.op.inputs is not None else c.op
        probs = point.probabilities(arrays["logits"])
        labels = point.decide(probs, c.tax)
        sens, spec = sensitivity_specificity(labels, arrays["target"], c.tax)
        rows.append({"inputs": name, "threshold": f"{point.threshold:.4f}",
                     "certified": ("yes" if point.certified else "NO") if point.calibrated else "not calibrated",
                     "CER": f"{100 * critical_error_rate(labels, arrays['target'], c.tax):.2f}%",
                     "sensitivity": f"{100 * sens:.2f}%", "specificity": f"{100 * spec:.2f}%",
                     "F1-macro": round(f1_macro(labels, arrays["target"]), 4)})
    doc.table(pd.DataFrame(rows))


def _subgroups(doc: Document, c: CardContext) -> None:
    columns = c.folder.subgroup_columns()
    if not columns:
        return
    doc.heading("Subgroups at the operating point")
    doc.para(f"Every column `riskcl evaluate --by` was run for, recomputed here at the card's operating point "
             f"(test split, rates count images). {intervals_note(MIN_MALIGNANT)}.")
    for column in columns:
        strata = c.test.get(f"meta__{column}")
        if strata is None:
            continue
        rows = subgroup_metrics(c.labels, c.test["target"], c.tax, strata, c.test["groups"], c.n_boot)
        doc.para(f"By `{column}`:")
        doc.table(pd.DataFrame(printable_rows(rows), columns=list(PRINTABLE_COLUMNS)))


def _type_ii_section(doc: Document, c: CardContext) -> None:
    tax, test = c.tax, c.test
    doc.heading("Fatal errors (Type II) at the operating point")
    missed, p_mal, thresholds = type_ii_cases(c.folder, c.op, test)
    rows = pd.DataFrame([{"id": str(test["ids"][i]), "true class": tax.classes[int(test["target"][i])],
                          "p(malignant)": float(p_mal[i]), "threshold": float(thresholds[i])} for i in missed])
    shown = min(len(rows), TYPE_II_ROWS)
    doc.para(f"{len(missed)} malignant test image(s) called benign"
             + (f"; the {shown} with the lowest p(malignant) are listed:" if len(missed) > shown else
                (":" if len(missed) else ".")))
    if len(missed):
        doc.table(rows.head(TYPE_II_ROWS))
    gallery = c.folder.gallery()
    current = gallery is not None and gallery.get("operating_point", {}).get("threshold") == c.op.threshold and \
        gallery.get("operating_point", {}).get("temperature") == c.op.temperature
    if (gallery is None or not current) and len(missed) and c.gallery_cap:
        from .explain import explain_type_ii

        try:
            gallery = explain_type_ii(c.folder.path, cap=c.gallery_cap)
        except (OSError, ValueError) as exc:  # e.g. the data folder moved: the card is still written, and says so
            gallery = None
            doc.para(f"Saliency of the missed images is unavailable: {exc}.")
    if gallery is not None and gallery.get("items"):
        items = gallery["items"][:c.gallery_cap or len(gallery["items"])]
        doc.para(f"Saliency of {len(items)} of the {gallery['type_ii_total']} missed image(s), lowest p(malignant) "
                 f"first." + (f" {gallery['blank_maps']} map(s) are blank: {BLANK_NOTE}." if gallery.get("blank_maps")
                             else ""))
        for item in items:
            png = c.folder.gallery_dir / item["file"]
            if png.is_file():
                blank = " (blank map: nothing to show)" if item.get("blank") else ""
                doc.figure(f"{item['id']}: true {item['true_class']}, p(malignant) {item['p_malignant']:.3f} < "
                           f"threshold {item['threshold']:.3f} (saliency: {item['method']}{blank})", png)


def _input_check(doc: Document, c: CardContext) -> None:
    from ..experiment.input_check import load_input_check, not_applicable, split_distances

    doc.heading("Input check")
    reason = not_applicable(c.folder)
    if reason:
        doc.para(f"The service flags no unusual images for this model ({reason}).")
        return
    try:  # needs the run's cached images (the data folder); the card is still written without them
        check = load_input_check(c.folder.path)
        flagged = float(np.mean(split_distances(c.folder, "test", check) > check.threshold))
    except (OSError, ValueError) as exc:
        doc.para(f"Not available: the check is fitted from the run's validation and calibration images, which "
                 f"could not be read ({exc}).")
        return
    doc.para(f"`riskcl serve` flags images unlike the data the model was calibrated on: {check.describe()}. On the "
             f"test split {100 * flagged:.1f}% of images are flagged. A flagged image's decision may not be reliable "
             f"and the guarantee does not cover it; the check cannot catch every unsuitable image.")


def _limitations_section(doc: Document, c: CardContext) -> None:
    doc.heading("Limitations measured in this run")
    doc.bullets(_limitations(c.folder, c.metrics, c.info, c.cal, c.tax, c.cfg) or ["None measured."])


def _checklist(doc: Document, c: CardContext) -> None:
    doc.heading("Checklist (CLAIM items for a classifier)")
    doc.table(pd.DataFrame([
        {"item": "data sources, inclusion, partitions, licence", "where": "Data (counts per split, grouping unit)"},
        {"item": "reference standard", "where": "Data (the dataset's ground truth)"},
        {"item": "preprocessing", "where": f"{c.cfg.data.image_size} px antialiased resize, ImageNet normalisation"},
        {"item": "model, training, selection", "where": "Model details"},
        {"item": "metrics and statistical measures", "where": "Test results (bootstrap CIs)"},
        {"item": "operating point", "where": "Operating point"},
        {"item": "subgroups", "where": "Subgroups (when `riskcl evaluate --by` ran)"},
        {"item": "failure analysis", "where": "Fatal errors (Type II)"},
        {"item": "limitations, intended use", "where": "Limitations, Intended use"},
    ]))


SECTIONS = (_details, _intended_use, _data, _cost, _operating_point, _results, _metadata_inputs, _decision_curve,
            _subgroups,
            _type_ii_section,
            _input_check, _limitations_section, _checklist)


def build_card(run_dir: str | Path, out: str | Path | None = None, n_boot: int = N_BOOT,
               export_dir: str | Path | None = None, gallery_cap: int = 12, allow_uncertified: bool = False,
               min_sensitivity: float = MIN_SENSITIVITY, min_specificity: float = MIN_SPECIFICITY) -> Path:
    """Write ``MODEL_CARD.md`` (default: in the run folder) and ``model_card.html`` beside it; returns the path.

    Sections are the functions of ``SECTIONS``, in order. The Type II errors are shown with their saliency: from
    ``RUN/gallery`` (``riskcl explain --type-ii``) when it was made at the current operating point, made here (up
    to ``gallery_cap``, 0 for none) otherwise. An uncertified calibration is refused unless ``allow_uncertified``
    (then the card says so)."""
    check_int("--bootstrap", n_boot, minimum=1)
    for name, v in (("--min-sensitivity", min_sensitivity), ("--min-specificity", min_specificity)):
        check_number(name, v, 0.0, 1.0)
    folder = RunFolder(run_dir)
    folder.require_finished(None)
    md_path = Path(out) if out else folder.path / CARD_FILE
    if md_path.is_dir():
        md_path = md_path / CARD_FILE
    if not md_path.parent.is_dir():
        raise FileNotFoundError(f"Cannot write {md_path}: the folder {md_path.parent} does not exist")
    op = operating_point(folder, allow_uncertified=allow_uncertified)
    sections = SECTIONS
    if op.segmentation:
        from . import card_segmentation as seg

        sections = (_details, seg._intended_use, _data, seg._cost, seg._operating_point, seg._results, seg._worst,
                    _limitations_section, seg._checklist)
    fig_dir = md_path.parent / FIGURES
    fig_dir.mkdir(exist_ok=True)
    ctx = CardContext(folder, op, n_boot, fig_dir, export_status(folder, op, export_dir), gallery_cap,
                      {"sensitivity": min_sensitivity, "specificity": min_specificity})
    run = ctx.run
    doc = Document(f"Model card: {run['name']} ({run['model']} on {run['dataset']})")
    if op.calibrated and not op.certified:
        doc.para("**WARNING: the operating point is NOT CERTIFIED**: no guarantee on "
                 + ("the missed share of the lesion." if op.segmentation else "missed malignant cases."))
    doc.para(f"Generated by riskcl {__version__} on {_dt.date.today().isoformat()} from the run folder "
             f"`{folder.path}`. Every number below is read from that folder's files or computed from them.")
    for section in sections:
        section(doc, ctx)
    doc.write(md_path, md_path.parent / CARD_HTML, inline_figures=True)
    from ..experiment.tracking import track_after_training

    track_after_training(folder, artifacts=[md_path])
    return md_path
