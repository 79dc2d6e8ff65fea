"""The data-set registry and the split pipeline: ``create_datasets(name, root, ...)``.

Adding a data set means one adapter file (``index_<name>(root, **options) -> DataIndex``) and one line here.

Splits. An adapter marks the splits its data fixes (official train / val / test); every split the data lacks is
carved from the training pool by whole groups, stratified by class (:func:`carve_groups`): test
(``test_fraction``), validation (``val_fraction``, or fold ``fold`` of ``num_folds`` group folds) and the
calibration split (``calib_fraction``) that only risk control reads. Fractions are shares of the pool they
are carved from (all images without an official evaluation split).
"""
from __future__ import annotations

import hashlib
import inspect
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from .._names import unknown_name
from .base import SPLITS, DataIndex, ImageDataset
from .brain_mri import index_brain_mri
from .breakhis import index_breakhis
from .demo import index_demo
from .duplicates import DUPLICATE_POLICIES, duplicate_groups, summarize_duplicates
from .images import cached_images, resize_array
from .isic import index_isic2018
from .medmnist import index_medmnist
from .paths import cache_root
from .sicapv2 import index_sicapv2
from .splits import carve_groups, check_no_group_leak, group_kfold_assignments
from .tabular import index_csv, index_folder

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
RESERVED_COLUMNS = ("path", "label", "group", "id", "split", "row", "hash")


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
        raise unknown_name("dataset", name, DATASETS)
    return DATASETS[name]


@dataclass
class SplitData:
    """The datasets of every split plus what was found on the way (``info``: counts, duplicates, skipped)."""

    datasets: dict[str, ImageDataset]
    info: dict[str, Any] = field(default_factory=dict)


def assign_splits(labels: np.ndarray, groups: np.ndarray, official: np.ndarray, val_fraction: float = 0.15,
                  test_fraction: float = 0.2, calib_fraction: float = 0.1, seed: int = 0, fold: int | None = None,
                  num_folds: int | None = None) -> np.ndarray:
    """The split of every sample: official splits kept, missing ones carved by group from the training pool.

    Args:
        labels, groups: ``(N,)`` per sample. official: ``(N,)`` split names fixed by the data (``""``: free).
        val_fraction / test_fraction / calib_fraction: shares of the pool carved for the missing splits
            (``calib_fraction`` 0: no calibration split).
        seed: carving seed. fold / num_folds: validation = fold ``fold`` of ``num_folds`` group folds of
            the training part instead of a carved share.
    """
    split = np.asarray(official, dtype=object).copy()
    present = set(split) - {"", "train"}
    if fold is not None and "val" in present:
        raise ValueError("`fold` / `num_folds` do not apply: this data set has an official validation split")
    if fold is not None and not 0 <= fold < (num_folds or 5):
        raise ValueError(f"Expected `fold` in [0, {num_folds or 5}), but got {fold}")
    wanted = {"test": test_fraction, "val": None if fold is not None else val_fraction, "calib": calib_fraction}
    carve = {s: f for s, f in wanted.items() if s not in present and f}
    pool = np.flatnonzero((split == "") | (split == "train"))
    parts = carve_groups(labels[pool], groups[pool], carve, seed)
    split[pool] = np.where(parts == "", "train", parts)
    if fold is not None:
        train = np.flatnonzero(split == "train")
        held = group_kfold_assignments(labels[train], groups[train], num_folds or 5, seed) == fold
        split[train[held]] = "val"
    return split.astype(str)


def _apply_duplicate_policy(table: pd.DataFrame, policy: str, info: dict[str, Any]) -> pd.DataFrame:
    """Byte-identical images on two sides (only official splits can separate them): warn, error, or drop the
    copies in the later split (order train, val, calib, test)."""
    groups = duplicate_groups(table)
    info["duplicates"] = summarize_duplicates(groups)
    info["duplicate_groups"] = groups
    crossing = [g for g in groups if len(g["splits"]) > 1]
    if not crossing:
        return table
    msg = (f"{len(crossing)} group(s) of byte-identical images appear in two splits (e.g. "
           f"{crossing[0]['files'][:2]} in {crossing[0]['splits']})")
    if policy == "error":
        raise ValueError(msg + " (duplicates: error); set `data.duplicates: drop` to remove the later copies")
    if policy == "warn":
        warnings.warn(msg + " (duplicates: warn, kept)", UserWarning, stacklevel=3)
        return table
    rank = table["split"].map({s: i for i, s in enumerate(SPLITS)})
    first = rank.groupby(table["hash"]).transform("min")
    drop = rank > first
    info["dropped_duplicates"] = table.loc[drop, "path"].tolist()
    return table.loc[~drop]


def _images_and_hashes(name: str, index: DataIndex, table: pd.DataFrame, image_size: int, on_bad_image: str,
                       cache_dir: str | Path | None, progress: bool, info: dict[str, Any]):
    """The image array (cached memory map, or resized in-memory images) and the table with a content hash per
    row; unreadable files raise (``error``) or are dropped and recorded in ``info["skipped"]`` (``skip``)."""
    if index.images is not None:
        images = resize_array(index.images, image_size)
        table["hash"] = [hashlib.md5(index.images[r].tobytes()).hexdigest() for r in table["row"]]
        return images, table
    paths = table["path"].tolist()
    images, bad, hashes = cached_images(name, paths, image_size, cache_root(cache_dir), progress=progress)
    if bad and on_bad_image == "error":
        lines = "\n".join(f"  {p}: {r}" for p, r in sorted(bad.items()))
        raise ValueError(f"{len(bad)} unreadable image(s) (on_bad_image: error; set data.on_bad_image: skip to "
                         f"leave them out):\n{lines}")
    info["skipped"] = bad
    table["hash"] = hashes  # computed once, when the cache was built
    table = table.loc[~table["path"].isin(bad)].copy()
    return images, table


def check_root(name: str, root: str | Path | None) -> None:
    """``FileNotFoundError`` naming ``data.root`` when the data folder of ``name`` does not exist (the generated
    demo data needs none)."""
    if root is not None and name != "demo" and not Path(root).exists():
        raise FileNotFoundError(f"Data folder {root} (data.root) does not exist")


def _index(name: str, root: str | Path | None, options: dict[str, Any]) -> DataIndex:
    adapter = _lookup(name)
    allowed = dataset_options(name)
    for key in options:
        if key not in allowed:
            raise ValueError(f"Dataset '{name}' has no option '{key}'; expected some of {sorted(allowed)}")
    if root is None and inspect.signature(adapter).parameters["root"].default is inspect.Parameter.empty:
        raise ValueError(f"Dataset '{name}' needs `root` (the data folder)")
    check_root(name, root)
    index = adapter(root, **options)
    clash = [c for c in index.metadata if c in RESERVED_COLUMNS]
    if clash:
        raise ValueError(f"Dataset '{name}': metadata column(s) {clash} clash with riskcl's own columns "
                         f"{list(RESERVED_COLUMNS)}; rename them")
    return index


def _prepare(name: str, root: str | Path | None, image_size: int, on_bad_image: str, cache_dir: Any,
             progress: bool, options: dict[str, Any]):
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise ValueError(f"Expected `on_bad_image` in {BAD_IMAGE_POLICIES}, but got {on_bad_image!r}")
    index = _index(name, root, options)
    table = index.table.copy()
    table["row"] = np.arange(len(table))
    info: dict[str, Any] = {"dataset": name, "root": None if root is None else str(root),
                            "problems": list(index.problems), "skipped": {}, "metadata": list(index.metadata),
                            "group_unit": index.group_unit}
    images, table = _images_and_hashes(name, index, table, image_size, on_bad_image, cache_dir, progress, info)
    # Without a patient / lesion id, the content hash is the group: copies of one image stay together.
    table["real_group"] = table["group"].notna()
    table["group"] = table["group"].where(table["real_group"], table["hash"])
    return index, table, images, info


def _fixed(table: pd.DataFrame, fixed_splits: Mapping[str, str]) -> pd.Series:
    split = table["path"].astype(str).map(fixed_splits)
    missing = set(fixed_splits) - set(table["path"].astype(str))
    if missing:
        raise ValueError(f"{len(missing)} image(s) of the run's splits.csv are no longer in the data folder, e.g. "
                         f"{sorted(missing)[0]}; the data changed since the run was trained")
    return split.fillna("")


def create_datasets(name: str, root: str | Path | None = None, image_size: int = 224, val_fraction: float = 0.15,
                    test_fraction: float = 0.2, calib_fraction: float = 0.1, seed: int = 0,
                    fold: int | None = None, num_folds: int | None = None, on_bad_image: str = "error",
                    duplicates: str = "warn", cache_dir: str | Path | None = None, progress: bool = True,
                    fixed_splits: Mapping[str, str] | None = None, **options: Any) -> SplitData:
    """Index, decode (cached), split and wrap a data set.

    Args:
        name: registry name (``list_datasets()``). root: the data folder, in its public layout.
        image_size: side of the square images fed to the model.
        val_fraction / test_fraction / calib_fraction / seed / fold / num_folds: see :func:`assign_splits`.
        on_bad_image: ``error`` (default: a ``ValueError`` naming each unreadable file) or ``skip`` (listed in
            ``info["skipped"]``). duplicates: ``warn``, ``drop`` (the later copies) or ``error`` for
            byte-identical images in two splits.
        cache_dir: where the decoded-image cache lives (default ``~/.cache/riskcl`` or ``$RISKCL_CACHE_DIR``).
        fixed_splits: ``{path: split}`` to reproduce a run's ``splits.csv`` instead of assigning splits.
        **options: the adapter's own options (``dataset_options(name)``).
    """
    if duplicates not in DUPLICATE_POLICIES:
        raise ValueError(f"Expected `duplicates` in {DUPLICATE_POLICIES}, but got {duplicates!r}")
    index, table, images, info = _prepare(name, root, image_size, on_bad_image, cache_dir, progress, options)
    if fixed_splits is not None:
        table["split"] = _fixed(table, fixed_splits).to_numpy()
        table = table.loc[table["split"] != ""]
    else:
        table["split"] = assign_splits(table["label"].to_numpy(), table["group"].astype(str).to_numpy(),
                                       table["split"].fillna("").astype(str).to_numpy(), val_fraction,
                                       test_fraction, calib_fraction, seed, fold, num_folds)
    table = _apply_duplicate_policy(table, duplicates, info)
    # Real groups must never cross splits; hash groups across official splits are the duplicate report's job.
    real = table.loc[table["real_group"]]
    check_no_group_leak({s: real.loc[real["split"] == s, "group"].astype(str).unique() for s in SPLITS})
    datasets = {}
    for split in SPLITS:
        part = table.loc[table["split"] == split]
        if split == "calib" and part.empty and not calib_fraction and fixed_splits is None:
            continue  # no calibration split asked for
        datasets[split] = ImageDataset(images, part["row"].to_numpy(), part, index.taxonomy, split, index.metadata)
    info["counts"] = {s: dict(zip(index.taxonomy.classes, d.class_counts)) for s, d in datasets.items()}
    info["groups"] = {s: int(len(set(d.groups))) for s, d in datasets.items()}
    return SplitData(datasets, info)


def create_eval_dataset(name: str, root: str | Path, split: str = "test", image_size: int = 224,
                        on_bad_image: str = "error", cache_dir: str | Path | None = None, progress: bool = True,
                        **options: Any) -> tuple[ImageDataset, str]:
    """Another copy of a data set as one evaluation set: its official ``split`` when it has one, else all of it.

    Returns the dataset and a sentence saying which was used.
    """
    index, table, images, info = _prepare(name, root, image_size, on_bad_image, cache_dir, progress, options)
    official = table["split"].fillna("").astype(str)
    if (official == split).any():
        part, note = table.loc[official == split], f"the official '{split}' split of {root}"
    else:
        part, note = table, f"all {len(table)} images of {root} as one evaluation set (it has no official " \
                            f"'{split}' split)"
    if info["skipped"]:
        note += f"; {len(info['skipped'])} unreadable image(s) skipped"
    return ImageDataset(images, part["row"].to_numpy(), part, index.taxonomy, split, index.metadata), note


def load_source_images(name: str, root: str | Path | None, paths: list[str], **options: Any) -> list[np.ndarray]:
    """The images behind ``paths`` (a split's ``paths``) as the data holds them: decoded files at their own
    size, or the in-memory arrays of generated / ``.npz`` data; ``uint8`` ``(H, W, 3)`` each."""
    from .images import decode_rgb

    index = _index(name, root, options)
    if index.images is None:
        return [decode_rgb(p) for p in paths]
    row_of = {str(p): k for k, p in enumerate(index.table["path"].astype(str))}
    missing = [p for p in paths if p not in row_of]
    if missing:
        raise ValueError(f"{len(missing)} image(s) are no longer in the '{name}' data, e.g. {missing[0]}")
    return [np.ascontiguousarray(index.images[row_of[p]]) for p in paths]


def create_dataset(name: str, root: str | Path | None = None, split: str = "train", **kwargs: Any) -> ImageDataset:
    """One split of a data set (see :func:`create_datasets` for the arguments).

    Example:
        >>> ds = create_dataset("demo", split="test", image_size=16, scale=0.01, progress=False)
        >>> ds.classes
        ('nevus', 'keratosis', 'melanoma', 'carcinoma')
    """
    if split not in SPLITS:
        raise ValueError(f"Expected `split` in {SPLITS}, but got {split!r}")
    datasets = create_datasets(name, root, **kwargs).datasets
    if split not in datasets:
        raise ValueError(f"No '{split}' split (calib_fraction is 0)")
    return datasets[split]
