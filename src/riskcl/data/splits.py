"""Group-aware, stratified, seeded splits: no group (patient, lesion, slide, duplicate image) on two sides."""
from __future__ import annotations

import numpy as np


def group_kfold_assignments(labels: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> np.ndarray:
    """Fold index ``(N,)`` in ``[0, n_splits)`` per sample; every group in one fold, class balance kept."""
    from sklearn.model_selection import StratifiedGroupKFold

    labels, groups = np.asarray(labels), np.asarray(groups)
    n_groups = len(np.unique(groups))
    if n_splits < 2 or n_groups < n_splits:
        raise ValueError(f"Cannot make {n_splits} group folds from {n_groups} groups; expected at least "
                         f"{max(n_splits, 2)} groups")
    folds = np.empty(len(labels), dtype=np.int64)
    # StratifiedGroupKFold warns when a class has fewer members than folds; it still assigns every group.
    import warnings

    try:
        with warnings.catch_warnings():
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
    """Boolean mask of a held-out part of about ``fraction`` of the samples (whole groups, stratified)."""
    if not 0 < fraction < 1:
        raise ValueError(f"Expected a split fraction in (0, 1), but got {fraction}")
    n_splits = max(2, int(round(1 / fraction)))
    return group_kfold_assignments(labels, groups, n_splits, seed) == 0


def check_no_group_leak(groups_by_split: dict[str, np.ndarray]) -> None:
    """Raise ``ValueError`` naming a group found in two splits."""
    names = list(groups_by_split)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = np.intersect1d(groups_by_split[a], groups_by_split[b])
            if shared.size:
                raise ValueError(f"Group leak: {shared.size} group(s) in both '{a}' and '{b}', e.g. '{shared[0]}'")
