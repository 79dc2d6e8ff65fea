"""Group-aware, stratified, seeded splits: no group (patient, lesion, slide, duplicate image) on two sides.

:func:`carve_groups` holds out several named parts of a pool at once. Groups are shuffled with the seed and
each group is placed in the stratum of its most common label. Each part's target ``fraction * N`` (rounded) is
shared out over the strata by largest remainder, and within a stratum the part takes groups in shuffled order
while a group's midpoint still fits its stratum's target: every part gets its fraction of every class to within
one group, and in total to within one group per class (exactly, for single-image groups). A part that would stay
empty takes one group from the remainder (as long as the remainder keeps one), so no carved split is ever empty.
"""
from __future__ import annotations

import warnings
from typing import Mapping

import numpy as np


def _group_table(labels: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(inverse index per sample, size per group, stratum label per group)``."""
    uniq, inv = np.unique(groups, return_inverse=True)
    sizes = np.bincount(inv, minlength=len(uniq))
    k = int(labels.max()) + 1 if labels.size else 1
    counts = np.zeros((len(uniq), k), dtype=np.int64)
    np.add.at(counts, (inv, labels), 1)
    return inv, sizes, counts.argmax(axis=1)


def _apportion(shares: np.ndarray, total: int, tie_break: np.ndarray) -> np.ndarray:
    """Integers summing to ``total`` (when possible) close to ``shares``: floors plus the largest remainders."""
    base = np.floor(shares).astype(np.int64)
    extra = max(0, min(total - int(base.sum()), len(shares)))
    rank = np.lexsort((tie_break, -(shares - base)))  # largest remainder first, seeded ties
    base[rank[:extra]] += 1
    return base


def carve_groups(labels: np.ndarray, groups: np.ndarray, fractions: Mapping[str, float], seed: int) -> np.ndarray:
    """Assign each sample to one of ``fractions``' parts (whole groups, stratified) or to ``""`` (the rest).

    Args:
        labels: ``(N,)`` integer labels. groups: ``(N,)`` group ids.
        fractions: ``{part: share of the samples}``, carved in this order; the shares sum to < 1.
        seed: shuffle seed.

    Example:
        >>> lab = np.array([0] * 10 + [1] * 10)
        >>> parts = carve_groups(lab, np.arange(20), {"test": 0.2, "val": 0.1}, seed=0)
        >>> [int(((parts == "test") & (lab == c)).sum()) for c in (0, 1)], int((parts == "val").sum())
        ([2, 2], 2)
    """
    labels, groups = np.asarray(labels, dtype=np.int64), np.asarray(groups).astype(str)
    for name, f in fractions.items():
        if not 0 < f < 1:
            raise ValueError(f"Expected the `{name}` fraction in (0, 1), but got {f}")
    if sum(fractions.values()) >= 1:
        raise ValueError(f"Expected the carved fractions {dict(fractions)} to sum to < 1")
    out = np.full(labels.shape[0], "", dtype=object)
    if labels.size == 0 or not fractions:
        return out
    inv, sizes, stratum = _group_table(labels, groups)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(sizes))
    strata = np.unique(stratum)
    n_per = np.array([sizes[stratum == s].sum() for s in strata])
    tie_break = rng.permutation(len(strata))
    part_of = np.full(len(sizes), "", dtype=object)
    for name, f in fractions.items():
        targets = _apportion(f * n_per, int(round(f * n_per.sum())), tie_break)
        for s, target in zip(strata, targets):
            count = 0
            for g in order:
                if stratum[g] == s and part_of[g] == "" and count + sizes[g] / 2 <= target:
                    part_of[g] = name
                    count += sizes[g]
    for name in fractions:  # no carved part may stay empty while the remainder can spare a group
        if not (part_of == name).any():
            spare = [g for g in order if part_of[g] == ""]
            if len(spare) < 2:
                raise ValueError(f"Too few groups ({len(sizes)}) to carve a non-empty '{name}' split and keep "
                                 f"training data; lower the split fractions or add data")
            part_of[spare[0]] = name
    if not (part_of == "").any():
        raise ValueError(f"Too few groups ({len(sizes)}) to carve {list(fractions)} and keep training data")
    return part_of[inv]


def group_kfold_assignments(labels: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> np.ndarray:
    """Fold index ``(N,)`` in ``[0, n_splits)`` per sample; every group in one fold, class balance kept."""
    from sklearn.model_selection import StratifiedGroupKFold

    labels, groups = np.asarray(labels), np.asarray(groups)
    n_groups = len(np.unique(groups))
    if n_splits < 2 or n_groups < n_splits:
        raise ValueError(f"Cannot make {n_splits} group folds from {n_groups} groups; expected at least "
                         f"{max(n_splits, 2)} groups")
    folds = np.empty(len(labels), dtype=np.int64)
    try:
        with warnings.catch_warnings():  # it warns when a class has fewer members than folds, and still works
            warnings.simplefilter("ignore", UserWarning)
            cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
            for k, (_, held) in enumerate(cv.split(np.zeros(len(labels)), labels, groups)):
                folds[held] = k
    except ValueError:
        # Too few samples per class to stratify (tiny data): seeded folds of whole groups, unstratified.
        uniq = np.random.default_rng(seed).permutation(np.unique(groups))
        fold_of = {g: k % n_splits for k, g in enumerate(uniq)}
        folds = np.array([fold_of[g] for g in groups], dtype=np.int64)
    return folds


def group_holdout(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of a held-out part of ``fraction`` of the samples (whole groups, stratified)."""
    return carve_groups(labels, groups, {"held": fraction}, seed) == "held"


def check_no_group_leak(groups_by_split: dict[str, np.ndarray]) -> None:
    """Raise ``ValueError`` naming a group found in two splits."""
    names = list(groups_by_split)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = np.intersect1d(groups_by_split[a], groups_by_split[b])
            if shared.size:
                raise ValueError(f"Group leak: {shared.size} group(s) in both '{a}' and '{b}', e.g. '{shared[0]}'")
