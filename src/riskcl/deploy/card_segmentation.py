"""The model card's sections for a segmentation run (:func:`riskcl.deploy.card.build_card` picks them): what the
model outlines, the guarantee on the missed share of the lesion in one sentence, Dice and under-segmentation with
CIs over lesions, and the worst under-segmented test images with their outlines. Every number is read from the
run's files or computed from them here. Each section takes the card's context (``riskcl.deploy.card.CardContext``)."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..config import dicom_policy
from ..data.registry import load_source_images
from ..metrics.segmentation import per_image_metrics, summarize
from ..report.render import Document
from .segmentation import overlay, to_image_grid

WORST_ROWS, WORST_FIGURES = 20, 6
KEYS = (("dice", "Dice"), ("jaccard", "Jaccard"),
        ("thresholded_jaccard", "ISIC thresholded Jaccard (J < 0.65 -> 0)"),
        ("fnr", "missed share of the lesion (under-segmentation)"),
        ("missed_half", "images missing > half the lesion"),
        ("over_rate", "over-segmentation (share of the predicted lesion that is background)"),
        ("hd95", "HD95 (model pixels)"))


def _intended_use(doc: Document, c: Any) -> None:
    doc.heading("Intended use")
    unfit = c.fitness()
    if unfit:
        doc.para("**NOT FIT FOR USE at this operating point**: " + "; ".join(unfit) + " (floors set with "
                 "`riskcl card --min-sensitivity / --min-specificity`, here applied to lesion and background "
                 "pixels).")
    doc.bullets([
        "Research use only; not a medical device.",
        f"Primary use: outlining the lesion in {c.run['dataset']} images for a specialist, who checks and corrects "
        f"the outline before any measurement, excision margin or treatment plan relies on it.",
        "The fatal error is a missed part of the lesion (under-segmentation): the operating threshold is chosen to "
        "bound it, at the price of outlines that include more background.",
        "Out of scope: use without specialist review; images of another modality, device, site or preprocessing "
        "than the training data; images with several lesions (masks hold one lesion region per image).",
    ])


def _cost(doc: Document, c: Any) -> None:
    cfg = c.cfg
    doc.heading("Cost model")
    doc.para(f"Clinical cost of a pixel decision: lambda2 = {cfg.cost.lambda2:g} for a lesion pixel called background "
             f"(missed lesion), lambda1 = {cfg.cost.lambda1:g} for a background pixel called lesion, 0 when right. "
             f"`mean_cost` is the mean over images of (lambda1 FP + lambda2 FN) / pixels; the best epoch was chosen "
             f"by validation {c.run['select_metric']}.")


def _operating_point(doc: Document, c: Any) -> None:
    op, cal = c.op, c.cal
    doc.heading("Operating point")
    if cal is None:
        doc.para(f"{op.describe()}. Run `riskcl calibrate {c.folder.path} --alpha A` for a pixel threshold with a "
                 f"guarantee on the missed share of the lesion.")
        return
    doc.table(pd.DataFrame([{"item": k, "value": v} for k, v in {
        "pixel threshold": repr(float(cal["threshold"])),
        "probabilities": "sigmoid(lesion logit)" + (", mean over 4 flips" if op.tta == "flip" else ""),
        "method": cal["method"], "alpha": cal["alpha"], "delta": cal.get("delta"),
        "certified": "yes" if op.certified else "NO (used with --allow-uncertified)",
        "calibration set": f"the {cal['calibration_split']} split: {cal['n_calibration']} {cal['unit']}s with a "
                           f"lesion",
        "guarantee": cal.get("guarantee")}.items()]))
    if op.certified:
        promise = (f"with probability at least {1 - cal['delta']:g} over the draw of the calibration set"
                   if cal["method"] == "ltt" else "on average over new images and calibration sets")
        doc.para(f"In one sentence: on new images like the calibration set, the outline misses at most "
                 f"{100 * cal['alpha']:g}% of the lesion per {cal['unit']}, {promise}; images without a lesion are "
                 f"outside the guarantee, and it stops holding for data unlike the calibration set.")
    else:
        doc.para("**No guarantee**: calibration could not certify this alpha on the calibration set.")


def _results(doc: Document, c: Any) -> None:
    y, groups = c.test["target"], c.test["groups"]
    cost = c.folder.cost_matrix()
    at_op = per_image_metrics(c.labels, y, float(cost[0, 1]), float(cost[1, 0]))
    at_half = per_image_metrics(c.probs >= 0.5, y, float(cost[0, 1]), float(cost[1, 0]))
    s_op, s_half = summarize(at_op, groups, c.n_boot), summarize(at_half, groups, c.n_boot)
    doc.heading("Test results")
    doc.para(f"Test split: {len(y)} images ({s_op['n_with_lesion']} with a lesion). Means over images (the missed "
             f"share and HD95 over the images where they are defined) with 95% percentile bootstrap CIs resampling "
             f"whole groups ({c.info.get('group_unit', 'unknown unit')}), {c.n_boot} resamples.")

    def cell(s: dict[str, Any], key: str) -> str:
        lo, hi = s.get(f"{key}_ci", (np.nan, np.nan))
        scale = 1 if key in ("dice", "jaccard", "thresholded_jaccard", "hd95") else 100
        unit = "" if scale == 1 else "%"
        return f"{scale * s[key]:.3f}{unit} [{scale * lo:.3f}, {scale * hi:.3f}]"

    doc.table(pd.DataFrame([{"metric": label, "operating point": cell(s_op, key),
                             "p(lesion) >= 0.5": cell(s_half, key)} for key, label in KEYS]))


def _worst(doc: Document, c: Any) -> None:
    from PIL import Image

    per = per_image_metrics(c.labels, c.test["target"], with_hd95=False)
    doc.heading("Worst under-segmented test images")
    fnr = np.where(np.isfinite(per["fnr"]), per["fnr"], -1.0)
    order = np.argsort(-fnr, kind="stable")[:WORST_ROWS]
    order = order[fnr[order] > 0]
    if not len(order):
        doc.para("No test image misses any lesion pixel at the operating point.")
        return
    doc.para(f"The {len(order)} test images that miss the largest share of their lesion at the operating point:")
    doc.table(pd.DataFrame([{"id": str(c.test["ids"][i]), "missed share": f"{100 * per['fnr'][i]:.1f}%",
                             "lesion px (model grid)": int(per["lesion_px"][i]),
                             "Dice": round(float(per["dice"][i]), 3)}
                            for i in order]))
    try:  # the source images, for the outlines (the data folder may have moved: the card says so)
        paths = [str(c.test["paths"][i]) for i in order[:WORST_FIGURES]]
        images = load_source_images(c.cfg.data.name, c.cfg.data.root, paths, dicom_policy(c.cfg.data),
                                    **c.cfg.data.options)
    except (OSError, ValueError) as exc:
        doc.para(f"Outlines unavailable: {exc}.")
        return
    for k, (i, image) in enumerate(zip(order, images)):
        h, w = image.shape[:2]
        found = to_image_grid(c.labels[i].astype(bool), h, w)
        truth = to_image_grid(np.asarray(c.test["target"][i], bool), h, w)
        picture = overlay(image, found)
        picture[truth & ~found] //= 2  # missed lesion pixels darkened
        path = c.fig_dir / f"worst_{k:02d}.png"
        Image.fromarray(np.concatenate([picture, overlay(image, truth)], axis=1)).save(path)
        doc.figure(f"{c.test['ids'][i]}: missed {100 * per['fnr'][i]:.1f}% of the lesion (left: the outline found, "
                   f"missed lesion pixels darkened; right: the reference outline)", path)


def _checklist(doc: Document, c: Any) -> None:
    doc.heading("Checklist (CLAIM items for a segmentation model)")
    doc.table(pd.DataFrame([
        {"item": "data sources, partitions, licence", "where": "Data (counts per split, grouping unit)"},
        {"item": "reference standard", "where": "the data set's lesion masks (resized with nearest neighbour)"},
        {"item": "preprocessing", "where": f"{c.cfg.data.image_size} px antialiased resize, ImageNet normalisation"},
        {"item": "model, training, selection", "where": "Model details"},
        {"item": "metrics and statistical measures", "where": "Test results (bootstrap CIs over lesions)"},
        {"item": "operating point", "where": "Operating point"},
        {"item": "failure analysis", "where": "Worst under-segmented test images"},
        {"item": "limitations, intended use", "where": "Limitations, Intended use"},
    ]))
