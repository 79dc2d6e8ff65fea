"""What every output of a decision says about it: the research-use notices and the operating point in plain
sentences (the served page, the DICOM results)."""
from __future__ import annotations

from ..decision import OperatingPoint

NOTICE = ("Research use only; not a medical device. A CLEAR result does not rule out disease: the model misses "
          "some malignant lesions (see the operating point).")
SEGMENTATION_NOTICE = ("Research use only; not a medical device. The outline can miss part of the lesion (see the "
                       "operating point): OUTLINED does not mean that all of the lesion lies inside it, and REVIEW "
                       "means that no lesion was found or much of the outline is uncertain, so a person should look.")


def operating_point_text(op: OperatingPoint) -> str:
    """The operating point in plain sentences, for the page."""
    if op.segmentation:
        if not op.calibrated:
            return (f"Outlines the lesion where p(lesion) >= {op.threshold:g}. Not calibrated: no guarantee on the "
                    f"share of the lesion it misses.")
        return (f"Outlines the lesion where p(lesion) >= {op.threshold:.4f}: {op.guarantee}. REVIEW means no lesion "
                f"was found or much of the outline is uncertain.")
    if op.per_group:
        return (f"Refers a case when p(malignant) >= {op.threshold:.4f}, the pooled threshold of a per-'{op.by}' "
                f"calibration ({op.method}, alpha {op.alpha}); the page does not know the case's group, so the "
                f"groups' own thresholds are not applied here.")
    if not op.calibrated:
        return (f"Refers a case when p(malignant) >= {op.threshold:g}. Not calibrated: no guarantee on the share of "
                f"malignant cases it misses.")
    if not op.certified:
        return (f"NOT CERTIFIED: refers a case when p(malignant) >= {op.threshold:.4f}, but calibration could not "
                f"certify alpha = {op.alpha}; no guarantee on the share of malignant cases it misses.")
    how = f"with probability {1 - float(op.delta):g}" if op.method == "ltt" else "on average"
    text = (f"Flags a malignant lesion with at least {100 * (1 - float(op.alpha)):g}% sensitivity on data like the "
            f"calibration set ({how}; threshold p(malignant) >= {op.threshold:.4f}, {op.method} on the {op.split} "
            f"split)")
    if op.inputs is None:
        return text + "."
    none = op.for_inputs("none")
    return (text + " for requests with every clinical field. Requests without clinical data are decided at "
            + (f"their own certified threshold {none.threshold:.4f}" if none.certified else
               "the lowest calibrated threshold, NOT CERTIFIED (no point could be certified without them)")
            + "; requests with some fields missing carry no guarantee (each answer says which point decided it).")
