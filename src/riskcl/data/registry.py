"""The data-set registry and the split pipeline: ``create_dataset(name, root, split, ...)``.

Adding a data set means one adapter file (``index_<name>(root, **options) -> DataIndex``) and one line here.
"""
from __future__ import annotations

import difflib
import hashlib
import inspect
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from .base import SPLITS, DataIndex, ImageDataset
from .brain_mri import index_brain_mri
from .breakhis import index_breakhis
from .demo import index_demo
from .isic import index_isic2018
from .medmnist import index_medmnist
from .sicapv2 import index_sicapv2
from .tabular import index_csv, index_folder
from .duplicates import DUPLICATE_POLICIES, duplicate_groups, summarize_duplicates
from .images import cached_images, resize_images
from .paths import cache_root
from .splits import check_no_group_leak, group_holdout, group_kfold_assignments
from .transforms import build_transform

DATASETS: dict[str, Callable[..., DataIndex]] = {
    "demo": index_demo,
    "brain_mri": index_brain_mri,
    "isic2018": index_isic2018,
    "breakhis": index_breakhis,
    "sicapv2": index_sicapv2,
    "medmnist": index_medmnist,
    "folder": index_folder,
    "csv": index_csv,
}
BAD_IMAGE_POLICIES = ("error", "skip")


def register_dataset(name: str, adapter: Callable[..., DataIndex]) -> None:
    """Add an adapter (``adapter(root, **options) -> DataIndex``) under ``name``."""
    DATASETS[name] = adapter


def list_datasets() -> list[str]:
    return sorted(DATASETS)


def dataset_options(name: str) -> dict[str, Any]:
    """The adapter's own options (beyond ``root``) and their defaults."""
    sig = inspect.signature(_lookup(name))
    return {k: p.default for k, p in list(sig.parameters.items())[1:]}


def _lookup(name: str) -> Callable[..., DataIndex]:
    if name not in DATASETS:
        close = difflib.get_close_matches(str(name), DATASETS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"Unknown dataset '{name}'{hint}; expected one of {list_datasets()}")
    return DATASETS[name]


@dataclass
class SplitData:
    """The datasets of every split plus what was found on the way (``info``: counts, duplicates, skipped)."""

    datasets: dict[str, ImageDataset]
    info: dict[str, Any] = field(default_factory=dict)


def _assign_splits(table: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int,
                   fold: int | None, num_folds: int | None) -> pd.Series:
    split = table["split"].fillna("").astype(str).copy()
    labels, groups = table["label"].to_numpy(), table["group"].astype(str).to_numpy()
    free = (split == "").to_numpy()
    if free.any() and not (split == "test").any():
        held = group_holdout(labels[free], groups[free], test_fraction, seed + 1)
        split.iloc[np.flatnonzero(free)] = np.where(held, "test", "train")
    split = split.where(split != "", "train")
    if not (split == "val").any():
        train = np.flatnonzero((split == "train").to_numpy())
        if fold is not None:
            k = num_folds or 5
            if not 0 <= fold < k:
                raise ValueError(f"Expected `fold` in [0, {k}), but got {fold}")
            held = group_kfold_assignments(labels[train], groups[train], k, seed) == fold
        else:
            held = group_holdout(labels[train], groups[train], val_fraction, seed)
        split.iloc[train[held]] = "val"
    return split


def _apply_duplicate_policy(table: pd.DataFrame, policy: str, info: dict[str, Any]) -> pd.DataFrame:
    groups = duplicate_groups(table)
    info["duplicates"] = summarize_duplicates(groups)
    info["duplicate_groups"] = groups
    leaking = [g for g in groups if "train" in g["splits"] and len(g["splits"]) > 1]
    if not leaking:
        return table
    msg = (f"{len(leaking)} group(s) of byte-identical images appear in 'train' and in an evaluation split, "
           f"e.g. {leaking[0]['files'][:2]}")
    if policy == "error":
        raise ValueError(msg + " (duplicates: error); set `data.duplicates: drop` to remove them from evaluation")
    if policy == "warn":
        warnings.warn(msg + " (duplicates: warn, kept)", UserWarning, stacklevel=3)
        return table
    train_hashes = set(table.loc[table["split"] == "train", "hash"])
    drop = (table["split"] != "train") & table["hash"].isin(train_hashes)
    info["dropped_duplicates"] = table.loc[drop, "path"].tolist()
    return table.loc[~drop]


def _images_and_hashes(name: str, index: DataIndex, table: pd.DataFrame, image_size: int, on_bad_image: str,
                       cache_dir: str | Path | None, progress: bool, info: dict[str, Any]):
    """The image array (cached memory map, or resized in-memory images) and the table with a content hash per
    row; unreadable files raise (``error``) or are dropped and recorded in ``info["skipped"]`` (``skip``)."""
    if index.images is not None:
        images = resize_images(index.images, image_size)
        table["hash"] = [hashlib.md5(index.images[r].tobytes()).hexdigest() for r in table["row"]]
        return images, table
    paths = table["path"].tolist()
    images, bad, hashes = cached_images(name, paths, image_size, cache_root(cache_dir), progress=progress)
    if bad and on_bad_image == "error":
        lines = "\n".join(f"  {p}: {r}" for p, r in sorted(bad.items()))
        raise ValueError(f"{len(bad)} unreadable image(s) (on_bad_image: error):\n{lines}")
    info["skipped"] = bad
    table["hash"] = hashes  # computed once, when the cache was built
    table = table.loc[~table["path"].isin(bad)].copy()
    return images, table


def create_datasets(name: str, root: str | Path | None = None, image_size: int = 224, val_fraction: float = 0.15,
                    test_fraction: float = 0.2, seed: int = 0, fold: int | None = None,
                    num_folds: int | None = None, on_bad_image: str = "error", duplicates: str = "warn",
                    cache_dir: str | Path | None = None, augment: bool = True, progress: bool = True,
                    **options: Any) -> SplitData:
    """Index, decode (cached), split and wrap a data set.

    Args:
        name: registry name (``list_datasets()``). root: the data folder, in its public layout.
        image_size: side of the square images fed to the model.
        val_fraction / test_fraction: carved by whole groups, stratified, when the data set has no such split.
        seed: split seed. fold / num_folds: take validation fold ``fold`` of ``num_folds`` group folds instead.
        on_bad_image: ``error`` (default: a ``ValueError`` naming each unreadable file) or ``skip`` (listed in
            ``info["skipped"]``). duplicates: ``warn``, ``drop`` (from the evaluation splits) or ``error`` for
            byte-identical images in train and an evaluation split.
        cache_dir: where the decoded-image cache lives (default ``~/.cache/riskcl`` or ``$RISKCL_CACHE_DIR``).
        augment: random rotation and flips on the training split.
        **options: the adapter's own options (``dataset_options(name)``).
    """
    adapter = _lookup(name)
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise ValueError(f"Expected `on_bad_image` in {BAD_IMAGE_POLICIES}, but got {on_bad_image!r}")
    if duplicates not in DUPLICATE_POLICIES:
        raise ValueError(f"Expected `duplicates` in {DUPLICATE_POLICIES}, but got {duplicates!r}")
    allowed = dataset_options(name)
    for key in options:
        if key not in allowed:
            raise ValueError(f"Dataset '{name}' has no option '{key}'; expected some of {sorted(allowed)}")
    root_param = inspect.signature(adapter).parameters["root"]
    if root is None and root_param.default is inspect.Parameter.empty:
        raise ValueError(f"Dataset '{name}' needs `root` (the data folder)")
    index = adapter(root, **options)
    table = index.table.copy()
    table["row"] = np.arange(len(table))
    info: dict[str, Any] = {"dataset": name, "root": None if root is None else str(root),
                            "problems": list(index.problems), "skipped": {}}
    images, table = _images_and_hashes(name, index, table, image_size, on_bad_image, cache_dir, progress, info)
    # Without a patient / lesion id, the content hash is the group: copies of one image stay together.
    real_groups = table["group"].notna()
    table["group"] = table["group"].where(real_groups, table["hash"])
    table["split"] = _assign_splits(table, val_fraction, test_fraction, seed, fold, num_folds).to_numpy()
    table = _apply_duplicate_policy(table, duplicates, info)
    # Real groups must never cross splits; hash groups across official splits are the duplicate report's job.
    real = table.loc[real_groups.reindex(table.index, fill_value=False)]
    check_no_group_leak({s: real.loc[real["split"] == s, "group"].astype(str).unique() for s in SPLITS})
    datasets = {}
    for split in SPLITS:
        part = table.loc[table["split"] == split]
        transform = build_transform(train=augment and split == "train")
        datasets[split] = ImageDataset(images, part["row"].to_numpy(), part, index.taxonomy, transform, split)
    info["counts"] = {s: dict(zip(index.taxonomy.classes, d.class_counts)) for s, d in datasets.items()}
    info["groups"] = {s: int(len(set(d.groups))) for s, d in datasets.items()}
    return SplitData(datasets, info)


def create_dataset(name: str, root: str | Path | None = None, split: str = "train", **kwargs: Any) -> ImageDataset:
    """One split of a data set (see :func:`create_datasets` for the arguments).

    Example:
        >>> ds = create_dataset("demo", split="test", image_size=16, scale=0.01, progress=False)
        >>> ds.classes
        ('nevus', 'keratosis', 'melanoma', 'carcinoma')
    """
    if split not in SPLITS:
        raise ValueError(f"Expected `split` in {SPLITS}, but got {split!r}")
    return create_datasets(name, root, **kwargs).datasets[split]
