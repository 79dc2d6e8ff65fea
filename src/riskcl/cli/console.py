"""Console output shared by the commands: tables and number formats."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

SUMMARY_COLUMNS = ["method", "CER", "F1-macro", "accuracy", "vis.amb.", "type I", "type II"]
SEGMENTATION_COLUMNS = ["method", "Dice", "Jaccard", "ISIC J>=0.65", "missed lesion", "missed > half", "over-seg.",
                        "HD95 px"]
SEGMENTATION_LEGEND = ("missed lesion: mean share of each image's lesion called background (under-segmentation); "
                       "missed > half: images missing more than half of their lesion; over-seg.: share of the "
                       "predicted lesion that is background; HD95: 95th-percentile border distance in model pixels")


def fmt(v: Any, pct: bool = False) -> str:
    """``0.1234`` -> ``"0.1234"`` (or ``"12.34%"``); NaN and None -> ``"nan"``."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "nan"
    return f"{100 * v:.2f}%" if pct else f"{v:.4f}"


SUMMARY_LEGEND = ("CER: share of malignant cases called benign; type I: benign called malignant (false alarms); "
                  "type II: malignant called benign (missed cancers); vis.amb.: confusions between classes of the "
                  "same superclass that the taxonomy marks visually ambiguous")


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """Left-aligned columns, one header line; the summary table is followed by its legend."""
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))
    if list(columns) == SUMMARY_COLUMNS:
        print(f"({SUMMARY_LEGEND})")
    if list(columns) == SEGMENTATION_COLUMNS:
        print(f"({SEGMENTATION_LEGEND})")


def degenerate_warning(m: Mapping[str, Any]) -> str | None:
    """A warning when the model calls every case one superclass (sensitivity or specificity 0 on test)."""
    if m.get("sensitivity") == 0.0:
        return ("WARNING: the model called every malignant test case benign (sensitivity 0 at this rule): it is "
                "not usable as it is; train longer, or calibrate a threshold (`riskcl calibrate`)")
    if m.get("specificity") == 0.0:
        return "WARNING: the model called every benign test case malignant (specificity 0 at this rule)"
    return None


def summary_columns(task: str = "classification") -> list[str]:
    """The headline table's columns for ``task``."""
    return SEGMENTATION_COLUMNS if task == "segmentation" else SUMMARY_COLUMNS


def summary_row(name: str, m: Mapping[str, Any], task: str = "classification") -> dict[str, Any]:
    """The headline metrics of a report as printable strings."""
    if task == "segmentation":
        return {"method": name, "Dice": fmt(m["dice"]), "Jaccard": fmt(m["jaccard"]),
                "ISIC J>=0.65": fmt(m["thresholded_jaccard"]), "missed lesion": fmt(m["fnr"], True),
                "missed > half": fmt(m["missed_half"], True), "over-seg.": fmt(m["over_rate"], True),
                "HD95 px": "nan" if m.get("hd95") is None else f"{m['hd95']:.2f}"}
    return {"method": name, "CER": fmt(m["cer"], True), "F1-macro": fmt(m["f1_macro"]),
            "accuracy": fmt(m["accuracy"], True), "vis.amb.": m["visual_ambiguity"], "type I": m["type_i"],
            "type II": m["type_ii"]}
