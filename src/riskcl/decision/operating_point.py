"""The operating point: everything that maps a model's raw output to the decision a threshold was certified on.

A guarantee of risk control holds for the probabilities the threshold was chosen on. Those are the model's
outputs after test-time augmentation (``tta``: the mean softmax over flips, saved as log-probabilities) and
temperature scaling (``softmax(logits / T)``), then compared with the threshold (one, or one per patient group).
:class:`OperatingPoint` holds all of it, frozen, so that every consumer (predict, evaluate, subgroups, report,
card, explain, export, serve) computes the same probabilities and takes the same decision.

Example:
    >>> from riskcl.taxonomy import Taxonomy
    >>> tax = Taxonomy("t", ("nevus", "mel"), (0, 1))
    >>> op = OperatingPoint(threshold=0.3, temperature=2.0, method="ltt", alpha=0.1, delta=0.1, certified=True)
    >>> p = op.probabilities([[1.0, 0.0]])          # softmax([0.5, 0]) at T = 2
    >>> round(float(p[0, 1]), 4), op.decide(p, tax).tolist()
    (0.3775, [1])
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Mapping, Sequence

import numpy as np

from ..taxonomy import Taxonomy
from .groups import thresholds_per_sample
from .rules import DECISION_RULES, decide, softmax

DEFAULT_THRESHOLD = 0.5
METHODS = ("default", "manual", "ltt", "crc")
TTA_CHOICES = ("none", "flip")
# What a fusion model's request carries: every metadata column, none of them, or some. A calibration certifies
# "complete" (the calibration split as it is) and "none" (the same cases with every column masked).
INPUT_PATTERNS = {"complete": "requests with every metadata column", "none": "requests without metadata",
                  "partial": "requests with some metadata columns missing"}


@dataclass(frozen=True)
class OperatingPoint:
    """One decision rule with its provenance. ``method``: ``default`` (0.5, no guarantee), ``manual`` (a threshold
    given on the command line, no guarantee), ``ltt`` / ``crc`` (chosen by ``riskcl calibrate``)."""

    threshold: float = DEFAULT_THRESHOLD
    method: str = "default"
    rule: str = "superclass"               # "superclass" (refer when p(malignant) >= threshold) or "argmax"
    temperature: float = 1.0               # probabilities are softmax(logits / temperature)
    tta: str = "none"                      # test-time augmentation the probabilities were computed with
    image_size: int | None = None          # the model's input size (images are resized to it first)
    alpha: float | None = None
    delta: float | None = None
    certified: bool = False                # a guarantee holds (ltt / crc certified alpha)
    split: str | None = None               # the split the threshold was chosen on
    by: str | None = None                  # metadata column of a per-group calibration
    groups: Mapping[str, Mapping[str, Any]] | None = field(default=None, compare=False)
    fallback: float | None = None          # threshold of a group unseen at calibration
    guarantee: str = ""
    allowed_uncertified: bool = False      # an uncertified calibration used anyway (--allow-uncertified)
    task: str = "classification"           # "segmentation": the threshold applies to each pixel's p(lesion)
    inputs: Mapping[str, Mapping[str, Any]] | None = field(default=None, compare=False)  # a fusion model's point
                                           # per input pattern (INPUT_PATTERNS): threshold, certified, guarantee
    pattern: str | None = None             # the input pattern this point decides (set by for_inputs)

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise ValueError(f"Expected `threshold` in [0, 1], but got {self.threshold}")
        if self.method not in METHODS:
            raise ValueError(f"Expected `method` in {METHODS}, but got {self.method!r}")
        if self.rule not in DECISION_RULES:
            raise ValueError(f"Expected `rule` in {DECISION_RULES}, but got {self.rule!r}")
        if not (np.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"Expected `temperature` > 0, but got {self.temperature}")
        if self.tta not in TTA_CHOICES:
            raise ValueError(f"Expected `tta` in {TTA_CHOICES}, but got {self.tta!r}")

    @property
    def calibrated(self) -> bool:
        return self.method in ("ltt", "crc")

    @property
    def per_group(self) -> bool:
        return bool(self.groups)

    @property
    def segmentation(self) -> bool:
        return self.task == "segmentation"

    def probabilities(self, logits: Any) -> np.ndarray:
        """``(N, K)`` float64 probabilities the threshold applies to: ``softmax(logits / temperature)``; for
        segmentation ``(N, H, W)`` float32 lesion probabilities ``sigmoid(logits / temperature)``."""
        if self.segmentation:
            from .segmentation import lesion_probability

            return lesion_probability(logits, self.temperature)
        return softmax(logits, self.temperature)

    def thresholds(self, strata: Sequence[str] | None = None) -> float | np.ndarray:
        """The threshold, or each sample's group threshold (``strata``: its value of ``by``; unseen -> fallback)."""
        if not self.per_group or strata is None:
            return float(self.threshold)
        fallback = self.threshold if self.fallback is None else self.fallback
        return thresholds_per_sample(self.groups, fallback, strata)

    def decide(self, probs: Any, taxonomy: Taxonomy | None = None,
               strata: Sequence[str] | None = None) -> np.ndarray:
        """``(N,)`` labels at this point (``probs`` from :meth:`probabilities`); for segmentation the ``(N, H, W)``
        ``uint8`` masks (1: lesion, ``p(lesion) >= threshold``)."""
        t = self.thresholds(strata)
        if self.segmentation:
            p = np.asarray(probs)
            t = np.asarray(t, dtype=np.float64).reshape(-1, *([1] * (p.ndim - 1))) if np.ndim(t) else t
            return (p >= t).astype(np.uint8)
        return decide(probs, taxonomy, self.rule, t)

    def for_inputs(self, pattern: str) -> "OperatingPoint":
        """The point that decides a fusion model's request carrying ``pattern`` (:data:`INPUT_PATTERNS`) of its
        metadata: the one certified for that pattern; where none was, the lowest calibrated threshold, marked
        uncertified (a guarantee holds only for the inputs it was certified on). A model without metadata inputs,
        or an uncalibrated point, is returned as it is (with the pattern noted)."""
        if pattern not in INPUT_PATTERNS:
            raise ValueError(f"Expected an input pattern in {list(INPUT_PATTERNS)}, but got {pattern!r}")
        if self.inputs is None:
            return self
        if not self.calibrated:
            return replace(self, pattern=pattern)
        entry = self.inputs.get(pattern)
        if entry is None:
            lowest = min([float(e["threshold"]) for e in self.inputs.values()] + [float(self.threshold)])
            return replace(self, threshold=lowest, certified=False, pattern=pattern, allowed_uncertified=True,
                           guarantee=f"no point was certified for {INPUT_PATTERNS[pattern]}: decided at the lowest "
                                     f"calibrated threshold, without a guarantee")
        return replace(self, threshold=float(entry["threshold"]), certified=bool(entry["certified"]), pattern=pattern,
                       guarantee=str(entry.get("guarantee", self.guarantee)),
                       allowed_uncertified=self.allowed_uncertified or not entry["certified"])

    def with_threshold(self, threshold: float) -> "OperatingPoint":
        """A manual point at ``threshold`` that keeps how probabilities are computed (T, TTA, size)."""
        return replace(self, threshold=float(threshold), method="manual", alpha=None, delta=None, certified=False,
                       split=None, by=None, groups=None, fallback=None, guarantee="", allowed_uncertified=False,
                       inputs=None if self.inputs is None else {}, pattern=None)

    def describe(self) -> str:
        """The point in one plain sentence (what the threshold is and what, if anything, it guarantees)."""
        if self.rule == "argmax" and not self.segmentation:
            return "the fine-class argmax (the paper's rule): no threshold, no guarantee"
        score, act, after, missing = (("p(lesion)", "a pixel is lesion when", "",
                                       "no guarantee on the missed share of the lesion") if self.segmentation else
                                      ("p(malignant)", "refer when", ", then the most probable class within the "
                                       "decided superclass", "no guarantee"))
        probs = score + (f" after temperature scaling (T = {self.temperature:.3g})" if self.temperature != 1.0
                         else "") + (" averaged over 4 flips (test-time augmentation)" if self.tta == "flip" else "")
        if self.method == "default":
            return (f"the default rule: {act} {probs} >= {self.threshold:g}{after} (not calibrated: {missing}; "
                    f"`riskcl calibrate` gives one)")
        if self.method == "manual":
            return f"a threshold given by hand: {act} {probs} >= {self.threshold:g} (no guarantee)"
        if self.pattern is not None and self.inputs is not None and self.pattern not in self.inputs:
            return f"NOT CERTIFIED for {INPUT_PATTERNS[self.pattern]}: {act} {probs} >= {self.threshold:.4f} " \
                   f"({self.guarantee})"
        cert = "" if self.certified else " NOT CERTIFIED (used with --allow-uncertified): no guarantee holds; "
        where = f" per '{self.by}' group ({self.threshold:.4f} pooled)" if self.per_group else ""
        scope = f" for {INPUT_PATTERNS[self.pattern]}" if self.pattern is not None and self.inputs else ""
        return (f"{cert}{act} {probs} >= {self.threshold:.4f}{where}{scope}, chosen by {self.method} on the "
                f"{self.split} split: {self.guarantee}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["groups"] = None if self.groups is None else {k: dict(v) for k, v in self.groups.items()}
        out["inputs"] = None if self.inputs is None else {k: dict(v) for k, v in self.inputs.items()}
        out["calibrated"], out["how"] = self.calibrated, self.describe()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "OperatingPoint":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
