"""Splits over every registered adapter (riskcl.data.splits / registry): with and without official splits, every
split is non-empty and no group (patient, lesion, slide, duplicate image) is on two sides."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from _standins import make_isic, make_isic_seg, make_medmnist, make_seg_folder, make_sicapv2_small, seed_of, write_image
from conftest import BRAIN_MRI, BREAKHIS, ISIC_SAMPLE
from riskcl.data import SPLITS, create_datasets, list_datasets
from riskcl.data.splits import carve_groups

TAX = {"name": "t", "benign": ["calm"], "malignant": ["angry"]}


def _brain_standin(root):
    for folder in ("Training", "Testing"):
        for c in ("glioma", "meningioma", "notumor", "pituitary"):
            for i in range(12 if folder == "Training" else 3):
                write_image(root / folder / c / f"{folder[:2]}-{c[:2]}_{i:04d}.jpg", seed_of(folder, c, i))
    return root


def _folder(root, official):
    for split in (("train", "test") if official else ("",)):
        for c in ("calm", "angry"):
            for i in range(15):
                write_image(root / split / c / f"{split}{c}{i}.png", seed_of(split, c, i), size=12)
    return root


def _csv(root, official):
    rows = []
    for c in ("calm", "angry"):
        for i in range(30):
            write_image(root / "img" / f"{c}{i}.png", seed_of(c, i), size=12)
            rows.append({"path": f"img/{c}{i}.png", "label": c, "group": f"patient{i // 2}-{c}",
                         **({"split": "test" if i >= 24 else ""} if official else {})})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


CASES = {  # adapter -> [(case name, builder(tmp_path) -> (root, options))]
    "demo": [("official train/val/test", lambda p: (None, {"scale": 0.05}))],
    "brain_mri": [("official train/test (stand-in)", lambda p: (_brain_standin(p / "bm"), {}))]
    + ([("official train/test (real)", lambda p: (BRAIN_MRI, {}))] if BRAIN_MRI.is_dir() else []),
    "isic2018": [("no official splits", lambda p: (make_isic(p / "i"), {})),
                 ("official validation", lambda p: (make_isic(p / "i", official_val=True), {}))]
    + ([("HAM10000 download (real sample)", lambda p: (ISIC_SAMPLE, {}))] if ISIC_SAMPLE.is_dir() else []),
    "breakhis": [("no official splits (real sample)", lambda p: (BREAKHIS, {}))] if BREAKHIS.is_dir() else [],
    "sicapv2": [("official train/test", lambda p: (make_sicapv2_small(p / "s", n_slides=16), {}))],
    "medmnist": [("official train/val/test", lambda p: (make_medmnist(p / "m"), {"flag": "dermamnist"}))],
    "folder": [("no official splits", lambda p: (_folder(p / "f", False), {"taxonomy": TAX})),
               ("official train/test", lambda p: (_folder(p / "f", True), {"taxonomy": TAX}))],
    "csv": [("no split column", lambda p: (_csv(p / "c", False), {"taxonomy": TAX})),
            ("split column", lambda p: (_csv(p / "c", True), {"taxonomy": TAX}))],
    "seg_demo": [("official train/val/test", lambda p: (None, {"scale": 0.05}))],
    "isic2018_seg": [("Task 1 layout", lambda p: (make_isic_seg(p / "t1"), {})),
                     ("Task 1 layout, official validation", lambda p: (make_isic_seg(p / "t1", official_val=True), {})),
                     ("HAM10000 masks", lambda p: (make_isic_seg(p / "h", "ham"), {}))]
    + ([("HAM10000 masks (real sample)", lambda p: (ISIC_SAMPLE, {}))] if ISIC_SAMPLE.is_dir() else []),
    "seg_folder": [("images / masks pair", lambda p: (make_seg_folder(p / "s"), {}))],
}


def test_every_registered_adapter_is_covered():
    assert set(CASES) == set(list_datasets())


@pytest.mark.parametrize("name,case", [(n, c) for n, cases in CASES.items() for c, _ in cases])
def test_every_split_non_empty_and_no_group_on_two_sides(tmp_path, name, case):
    build = dict(CASES[name])[case]
    root, options = build(tmp_path)
    # the real data at the size the other real-data tests train at: one decode, shared through the session cache
    size = 48 if root in (BRAIN_MRI, ISIC_SAMPLE) and name in ("brain_mri", "isic2018") else 8
    data = create_datasets(name, root, image_size=size, progress=False, duplicates="drop", **options)
    assert set(data.datasets) == set(SPLITS)
    for split, ds in data.datasets.items():
        assert len(ds) > 0, f"{name} ({case}): the '{split}' split is empty"
    groups = {s: set(d.groups) for s, d in data.datasets.items()}
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not groups[a] & groups[b], f"{name} ({case}): a group in '{a}' and '{b}'"


def test_carved_fractions_and_seeds():
    labels = np.repeat([0, 1, 2], [500, 300, 200])
    parts = carve_groups(labels, np.arange(1000), {"test": 0.2, "val": 0.15, "calib": 0.1}, seed=3)
    for name, f in (("test", 0.2), ("val", 0.15), ("calib", 0.1)):
        assert (parts == name).sum() == round(f * 1000)
        for c, n in ((0, 500), (1, 300), (2, 200)):
            assert abs(((parts == name) & (labels == c)).sum() - f * n) <= 1
    again = carve_groups(labels, np.arange(1000), {"test": 0.2, "val": 0.15, "calib": 0.1}, seed=3)
    other = carve_groups(labels, np.arange(1000), {"test": 0.2, "val": 0.15, "calib": 0.1}, seed=4)
    assert np.array_equal(parts, again) and not np.array_equal(parts, other)
    with pytest.raises(ValueError, match="Too few groups"):
        carve_groups(np.zeros(3, int), np.array(["a", "a", "b"]), {"test": 0.2, "val": 0.2}, seed=0)
