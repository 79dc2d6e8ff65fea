"""Dataset adapters on the real shared samples and on generated stand-ins in the official formats."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _standins import (ISIC_CLASSES, make_isic, make_medmnist, make_sicapv2_images, make_sicapv2_small, seed_of,
                       write_image)
from conftest import (BRAIN_MRI, BREAKHIS, ISIC_SAMPLE, SICAPV2, needs_brain_mri, needs_breakhis, needs_isic,
                      needs_sicapv2)
from riskcl.data import create_dataset, create_datasets, list_datasets
from riskcl.data.breakhis import index_breakhis, parse_breakhis_name
from riskcl.data.check import check_dataset
from riskcl.data.sicapv2 import index_sicapv2, slide_id
from riskcl.data.splits import check_no_group_leak


def _assert_no_group_leak(data):
    groups = {s: np.unique(d.groups) for s, d in data.datasets.items()}
    check_no_group_leak(groups)
    for a in groups:
        for b in groups:
            if a < b:
                assert not set(groups[a]) & set(groups[b]), (a, b)


def test_registry_names():
    assert set(list_datasets()) >= {"brain_mri", "isic2018", "breakhis", "sicapv2", "medmnist", "folder", "csv",
                                    "demo"}
    with pytest.raises(ValueError, match="did you mean 'breakhis'"):
        create_dataset("breakhs", root=".")


# --- Brain Tumor MRI (real) ----------------------------------------------------------------------------------
@needs_brain_mri
def test_brain_mri_counts_duplicates_and_modes():
    with pytest.warns(UserWarning, match=r"duplicates: warn, kept"):  # the paper's protocol: every official image
        data = create_datasets("brain_mri", BRAIN_MRI, image_size=48, progress=False, duplicates="warn")
    c = data.info["counts"]
    merged = {k: c["train"][k] + c["val"][k] + c["calib"][k] for k in c["train"]}
    assert merged == {"glioma": 1321, "meningioma": 1339, "notumor": 1595, "pituitary": 1457}
    assert all(n > 0 for s in ("train", "val", "calib") for n in c[s].values())
    assert c["test"] == {"glioma": 300, "meningioma": 306, "notumor": 405, "pituitary": 300}
    d = data.info["duplicates"]
    assert d["groups"] == 194 and d["redundant_files"] == 297 and d["across_splits"] == 79
    assert d["conflicting_labels"] == 0
    files = [f for g in data.info["duplicate_groups"] for f in g["files"]]
    assert any(f.endswith("Tr-me_0071.jpg") for f in files) and any(f.endswith("Te-me_0135.jpg") for f in files)
    # The PNG named .jpg and grey / palette images decode to RGB like the rest.
    test = data.datasets["test"]
    assert test.ids[0].startswith("Te-") and len(test.ids) == 1311
    x, _ = data.datasets["train"][0]
    assert x.shape == (3, 48, 48)
    # Hash groups keep byte-identical copies on one side of the carved train / val / calib splits.
    tr, va, ca = (set(data.datasets[s].groups) for s in ("train", "val", "calib"))
    assert not tr & va and not tr & ca and not va & ca


@needs_brain_mri
def test_brain_mri_duplicate_policy_drop_and_error():
    """By default a test image that is a copy of a training image is dropped from test, and counted."""
    from riskcl.config import DataConfig
    from riskcl.data.duplicates import file_md5

    assert DataConfig().duplicates == "drop"
    with pytest.warns(UserWarning, match=r"79 group\(s\) of byte-identical images .*: dropped \d+ later copies "
                      r"\(.*from test"):
        data = create_datasets("brain_mri", BRAIN_MRI, image_size=48, progress=False)
    dropped = data.info["dropped_duplicates"]
    assert len(data.datasets["test"]) < 1311 and any("/Testing/" in p for p in dropped)
    assert dropped and sum(len(d) for d in data.datasets.values()) + len(dropped) == 7023
    hashes = {s: {file_md5(p) for p in d.paths} for s, d in data.datasets.items()}
    kept = set().union(*hashes.values())
    assert all(file_md5(p) in kept for p in dropped)  # a dropped file is a copy of a kept one
    for a in hashes:
        for b in hashes:
            assert a == b or not hashes[a] & hashes[b], (a, b)  # no image on two sides any more
    with pytest.raises(ValueError, match="byte-identical"):
        create_datasets("brain_mri", BRAIN_MRI, image_size=48, duplicates="error", progress=False)


# --- BreaKHis (real sample) ----------------------------------------------------------------------------------
def test_breakhis_name_parsing():
    info = parse_breakhis_name("SOB_B_A-14-22549AB-40-001.png")
    assert info == {"class": "adenosis", "malignant": False, "patient": "14-22549AB", "magnification": 40,
                    "number": 1}
    assert parse_breakhis_name("SOB_M_DC-14-2523-400-010.png")["class"] == "ductal_carcinoma"
    with pytest.raises(ValueError, match="contradicts"):
        parse_breakhis_name("SOB_B_DC-14-2523-40-010.png")
    with pytest.raises(ValueError, match="not a BreaKHis file name"):
        parse_breakhis_name("image.png")


@needs_breakhis
def test_breakhis_real_sample_classes_patients_magnifications():
    idx = index_breakhis(BREAKHIS)
    t = idx.table
    assert len(t) == 28 and t["group"].nunique() == 21
    counts = t["label"].map(lambda k: idx.taxonomy.classes[k]).value_counts().to_dict()
    assert counts == {"fibroadenoma": 6, "ductal_carcinoma": 4, "tubular_adenoma": 4, "papillary_carcinoma": 4,
                      "adenosis": 3, "phyllodes_tumor": 3, "lobular_carcinoma": 2, "mucinous_carcinoma": 2}
    assert t["magnification"].value_counts().to_dict() == {"40": 11, "400": 10, "200": 4, "100": 3}  # metadata: text
    row = t.loc[t["id"] == "SOB_B_A-14-22549AB-40-001"].iloc[0]
    assert idx.taxonomy.classes[row["label"]] == "adenosis" and row["group"] == "14-22549AB"
    assert len(index_breakhis(BREAKHIS, magnifications=[400]).table) == 10
    with pytest.raises(ValueError, match="magnification"):
        index_breakhis(BREAKHIS, magnifications=[50])


@needs_breakhis
def test_breakhis_patient_level_splits():
    data = create_datasets("breakhis", BREAKHIS, image_size=16, progress=False)
    _assert_no_group_leak(data)
    assert sum(len(d) for d in data.datasets.values()) == 28


# --- SICAPv2 (real partition files, stand-in images) ----------------------------------------------------------
@needs_sicapv2
def test_sicapv2_official_partition_counts_and_slides():
    idx = index_sicapv2(SICAPV2, check_files=False)
    t = idx.table
    assert (t["split"] == "train").sum() == 9959 and (t["split"] == "test").sum() == 2122
    train_slides = set(t.loc[t["split"] == "train", "group"])
    test_slides = set(t.loc[t["split"] == "test", "group"])
    assert len(train_slides) == 124 and len(test_slides) == 31 and not train_slides & test_slides
    counts = t.loc[t["split"] == "test", "label"].value_counts().sort_index().tolist()
    assert counts == [644, 393, 853, 232]  # NC, G3, G4, G5
    assert slide_id("16B0001851_Block_Region_1_0_0_xini_6803_yini_59786.jpg") == "16B0001851"
    for fold in (1, 2, 3, 4):
        v = index_sicapv2(SICAPV2, partition=f"val{fold}", check_files=False).table
        check_no_group_leak({s: v.loc[v["split"] == s, "group"].unique() for s in ("train", "val", "test")})


@needs_sicapv2
def test_sicapv2_missing_images_are_named():
    with pytest.raises(FileNotFoundError, match="images"):
        index_sicapv2(SICAPV2)


@needs_sicapv2
@pytest.mark.slow
def test_sicapv2_with_standin_images_end_to_end(tmp_path):
    root = tmp_path / "sicap"
    shutil.copytree(SICAPV2 / "partition", root / "partition")
    make_sicapv2_images(SICAPV2, root)
    data = create_datasets("sicapv2", root, image_size=8, progress=False)
    assert len(data.datasets["test"]) == 2122
    assert sum(len(data.datasets[s]) for s in ("train", "val", "calib")) == 9959
    _assert_no_group_leak(data)


def test_sicapv2_small_tree_and_bad_rows(tmp_path):
    root = make_sicapv2_small(tmp_path / "s")
    data = create_datasets("sicapv2", root, image_size=8, progress=False)
    _assert_no_group_leak(data)
    path = root / "partition" / "Test" / "Test.xlsx"
    df = pd.read_excel(path)
    df.loc[0, "G3"] = 1 - df.loc[0, "G3"]  # now zero or two ones
    df.to_excel(path, index=False)
    with pytest.raises(ValueError, match=r"Test.xlsx, row 2 .*exactly one 1"):
        index_sicapv2(root)
    df.rename(columns={"G5": "Grade5"}).to_excel(path, index=False)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['G5'\]"):
        index_sicapv2(root)


# --- ISIC 2018 (stand-ins) ----------------------------------------------------------------------------------
def test_isic_lesion_groups_and_ids(tmp_path):
    root = make_isic(tmp_path / "isic")
    data = create_datasets("isic2018", root, image_size=16, progress=False)
    _assert_no_group_leak(data)
    all_ids = sum((d.ids for d in data.datasets.values()), [])
    assert len(all_ids) == 56 and all(i.startswith("ISIC_") for i in all_ids)
    assert set(data.datasets) == {"train", "val", "calib", "test"}
    assert all(len(d) > 0 for d in data.datasets.values())  # carved by lesion: none of them empty
    groups = np.concatenate([d.groups for d in data.datasets.values()])
    assert all(g.startswith("HAM_") for g in groups) and len(set(groups)) == 28  # the lesion is the group
    assert any("LICENSE.txt" in p for p in data.info["problems"])
    ds = create_dataset("isic2018", root, split="test", image_size=16, progress=False)
    assert ds.ids == data.datasets["test"].ids


def test_isic_official_validation_split_is_used(tmp_path):
    root = make_isic(tmp_path / "isic", official_val=True)
    data = create_datasets("isic2018", root, image_size=16, progress=False)
    assert sorted(data.datasets["val"].ids) == [f"ISIC_{34321 + j:07d}" for j in range(7)]


def _isic_csv(root):
    return root / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv"


@pytest.mark.parametrize("damage,match", [
    ("two_ones", r"line 2 \(ISIC_0024306\): expected exactly one 1"),
    ("zero_ones", r"line 2 \(ISIC_0024306\): expected exactly one 1"),
    ("bad_column", r"missing \['MEL'\] and unexpected \['MELANOMA'\]"),
    ("missing_file", r"row 'ISIC_0024306' names a missing image"),
    ("unlabeled", r"without a label .*ISIC_9999999.jpg"),
])
def test_isic_bad_labels_are_named(tmp_path, damage, match):
    root = make_isic(tmp_path / "isic", n_lesions=7, per_lesion=1)
    df = pd.read_csv(_isic_csv(root))
    if damage == "two_ones":
        df.loc[0, "NV"] = 1.0
    elif damage == "zero_ones":
        df.loc[0, ISIC_CLASSES] = 0.0
    elif damage == "bad_column":
        df = df.rename(columns={"MEL": "MELANOMA"})
    elif damage == "missing_file":
        (root / "ISIC2018_Task3_Training_Input" / "ISIC_0024306.jpg").unlink()
    elif damage == "unlabeled":
        write_image(root / "ISIC2018_Task3_Training_Input" / "ISIC_9999999.jpg", 9)
    df.to_csv(_isic_csv(root), index=False)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        create_datasets("isic2018", root, image_size=16, progress=False)


@pytest.mark.parametrize("kind", ["zero_byte", "truncated", "garbage"])
def test_bad_images_error_or_skip(tmp_path, kind):
    root = make_isic(tmp_path / "isic")
    bad = root / "ISIC2018_Task3_Training_Input" / "ISIC_0024310.jpg"
    data = bad.read_bytes()
    bad.write_bytes({"zero_byte": b"", "truncated": data[: len(data) // 3], "garbage": b"not an image" * 9}[kind])
    with pytest.raises(ValueError, match="ISIC_0024310.jpg"):
        create_datasets("isic2018", root, image_size=16, progress=False)
    ok = create_datasets("isic2018", root, image_size=16, on_bad_image="skip", progress=False)
    assert list(ok.info["skipped"]) == [str(bad)]
    assert "ISIC_0024310" not in sum((d.ids for d in ok.datasets.values()), [])


def test_cache_hit_miss_and_invalidation(tmp_path):
    import os

    root = make_isic(tmp_path / "isic", n_lesions=7, per_lesion=1)
    kw = dict(image_size=16, progress=False, cache_dir=tmp_path / "cache")
    a = create_datasets("isic2018", root, **kw).datasets["train"]
    files1 = sorted((tmp_path / "cache" / "images").glob("*.npy"))
    b = create_datasets("isic2018", root, **kw).datasets["train"]
    files2 = sorted((tmp_path / "cache" / "images").glob("*.npy"))
    assert files1 == files2 and len(files1) == 1  # hit: nothing rebuilt
    assert np.array_equal(np.asarray(a.images), np.asarray(b.images))
    # Change one source image: a new cache is built and holds the new pixels.
    target = root / "ISIC2018_Task3_Training_Input" / "ISIC_0024306.jpg"
    write_image(target, 12345)
    os.utime(target, ns=(1, 1))
    c = create_datasets("isic2018", root, **kw)
    files3 = sorted((tmp_path / "cache" / "images").glob("*.npy"))
    assert len(files3) == 2
    from riskcl.data import load_image

    (ds,) = [d for d in c.datasets.values() if str(target) in d.paths]
    assert isinstance(ds.images, np.memmap)
    assert np.array_equal(ds.images[ds.rows[ds.paths.index(str(target))]], load_image(target, 16))


# --- MedMNIST, folder, CSV ----------------------------------------------------------------------------------
def test_medmnist_npz(tmp_path):
    root = make_medmnist(tmp_path / "mm")
    data = create_datasets("medmnist", root, image_size=16, flag="dermamnist", progress=False)
    assert [len(data.datasets[s]) for s in ("val", "test")] == [10, 20]  # official
    assert len(data.datasets["train"]) + len(data.datasets["calib"]) == 40 and len(data.datasets["calib"]) == 4
    assert data.info["problems"] and "no patient" in data.info["problems"][0]
    assert data.datasets["train"].taxonomy.name == "dermamnist"
    make_medmnist(tmp_path / "bm", flag="breastmnist", k=2, rgb=False)
    x, _ = create_dataset("medmnist", tmp_path / "bm", flag="breastmnist", image_size=16, progress=False)[0]
    assert x.shape == (3, 16, 16)
    with pytest.raises(FileNotFoundError, match="pathmnist.npz"):
        create_dataset("medmnist", tmp_path / "mm", flag="pathmnist", progress=False)
    with pytest.raises(ValueError, match="Unsupported MedMNIST flag"):
        create_dataset("medmnist", tmp_path / "mm", flag="chestmnist", progress=False)
    np.savez(tmp_path / "mm" / "dermamnist.npz", train_images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="missing array 'train_labels'"):
        create_dataset("medmnist", tmp_path / "mm", flag="dermamnist", progress=False)


def test_folder_and_csv_datasets(tmp_path):
    tax = tmp_path / "tax.yaml"
    tax.write_text("name: mine\nbenign: [calm]\nmalignant: [angry]\n")
    for split in ("train", "test"):
        for c in ("calm", "angry"):
            for i in range(6):
                write_image(tmp_path / "f" / split / c / f"{split}{c}{i}.png", seed_of(split, c, i))
    data = create_datasets("folder", tmp_path / "f", image_size=8, taxonomy=str(tax), progress=False)
    assert len(data.datasets["test"]) == 12 and data.datasets["train"].classes == ("calm", "angry")
    tr, va = set(data.datasets["train"].groups), set(data.datasets["val"].groups)
    assert not tr & va  # carved validation: no image (or byte-identical copy) on both sides
    rows = [{"path": f"train/{c}/train{c}{i}.png", "label": c, "group": f"p{i}"}
            for c in ("calm", "angry") for i in range(6)]
    pd.DataFrame(rows).to_csv(tmp_path / "f" / "labels.csv", index=False)
    data = create_datasets("csv", tmp_path / "f", image_size=8, taxonomy=str(tax), progress=False,
                           val_fraction=0.34, test_fraction=0.34)
    _assert_no_group_leak(data)
    bad = pd.DataFrame(rows + [{"path": "train/calm/x.png", "label": "furious", "group": "p9"}])
    bad.to_csv(tmp_path / "f" / "labels.csv", index=False)
    with pytest.raises(ValueError, match="line 14: unknown class 'furious'"):
        create_datasets("csv", tmp_path / "f", taxonomy=str(tax), progress=False)
    with pytest.raises(ValueError, match="needs the option `taxonomy`"):
        create_datasets("folder", tmp_path / "f", progress=False)
    (tmp_path / "f" / "train" / "calm2").mkdir()
    with pytest.raises(ValueError, match=r"unknown class folder\(s\) \['calm2'\]"):
        create_datasets("folder", tmp_path / "f", taxonomy=str(tax), progress=False)


@pytest.mark.parametrize("bad_path", ["../outside.png", "/etc/passwd", "sub/../../x.png"])
def test_label_paths_cannot_escape_root(tmp_path, bad_path):
    tax = {"name": "t", "benign": ["a"], "malignant": ["b"]}
    root = tmp_path / "root"
    write_image(root / "a.png", 1)
    write_image(tmp_path / "outside.png", 2)
    pd.DataFrame([{"path": "a.png", "label": "a"}, {"path": bad_path, "label": "b"}]).to_csv(root / "labels.csv",
                                                                                          index=False)
    with pytest.raises(ValueError, match=r"contains '\.\.'|is absolute"):
        create_datasets("csv", root, taxonomy=tax, progress=False)


def test_symlink_out_of_root_is_refused(tmp_path):
    tax = {"name": "t", "benign": ["a"], "malignant": ["b"]}
    root = tmp_path / "root"
    write_image(root / "a.png", 1)
    write_image(tmp_path / "secret.png", 2)
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    pd.DataFrame([{"path": "a.png", "label": "a"}, {"path": "link.png", "label": "b"}]).to_csv(root / "labels.csv",
                                                                                            index=False)
    with pytest.raises(ValueError, match="outside the dataset root"):
        create_datasets("csv", root, taxonomy=tax, progress=False)


# --- data check --------------------------------------------------------------------------------------------
@needs_breakhis
def test_data_check_on_shared_folders_and_damaged_copy(tmp_path):
    ok = check_dataset("breakhis", BREAKHIS)
    assert ok["usable"] and sum(s["n"] for s in ok["splits"].values()) == 28
    assert set(ok["splits"]["train"]["counts"]) == set(create_dataset(
        "breakhis", BREAKHIS, image_size=8, progress=False).classes)
    copy = tmp_path / "bh"
    shutil.copytree(BREAKHIS, copy)
    victim = next(copy.rglob("*.png"))
    victim.write_bytes(victim.read_bytes()[:100])
    bad = check_dataset("breakhis", copy)
    assert not bad["usable"] and str(victim) in bad["bad_images"]


@needs_sicapv2
def test_data_check_sicapv2_partitions_without_images():
    r = check_dataset("sicapv2", SICAPV2)
    assert not r["usable"] and "images" in r["problems"][0]


def test_kfold_validation_folds_partition_train_by_group(tmp_path):
    root = make_isic(tmp_path / "isic", n_lesions=35, per_lesion=2)
    vals = []
    for fold in range(3):
        data = create_datasets("isic2018", root, image_size=8, fold=fold, num_folds=3, progress=False)
        _assert_no_group_leak(data)
        vals.append(set(data.datasets["val"].ids))
    assert not (vals[0] & vals[1]) and not (vals[1] & vals[2]) and not (vals[0] & vals[2])
    train_ids = set(data.datasets["train"].ids) | vals[2]
    assert vals[0] | vals[1] | vals[2] == train_ids
    with pytest.raises(ValueError, match="fold"):
        create_datasets("isic2018", root, image_size=8, fold=3, num_folds=3, progress=False)


def test_empty_class_folder_is_named(tmp_path):
    tax = {"name": "t", "benign": ["calm"], "malignant": ["angry"]}
    write_image(tmp_path / "f" / "calm" / "a.png", 1)
    (tmp_path / "f" / "angry").mkdir(parents=True)
    with pytest.raises(ValueError, match="empty class 'angry'"):
        create_datasets("folder", tmp_path / "f", taxonomy=tax, progress=False)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=200))
def test_random_label_files_give_typed_error_or_valid(tmp_path, text):
    from riskcl.data.tabular import index_csv

    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    (root / "labels.csv").write_text(text, encoding="utf-8")
    try:
        index_csv(root, taxonomy={"name": "t", "benign": ["a"], "malignant": ["b"]})
    except (ValueError, FileNotFoundError):
        return


@needs_isic
def test_isic_real_sample_carves_by_lesion_with_metadata():
    data = create_datasets("isic2018", ISIC_SAMPLE, image_size=48, progress=False)  # the size isic_run trains at
    sizes = {s: len(d) for s, d in data.datasets.items()}
    assert sum(sizes.values()) == 3003 and all(n > 0 for n in sizes.values())
    lesions = {s: set(d.groups) for s, d in data.datasets.items()}
    assert sum(len(g) for g in lesions.values()) == 2241  # every lesion on exactly one side
    assert all(g.startswith("HAM_") for gs in lesions.values() for g in gs)
    for s, f in (("test", 0.2), ("val", 0.15), ("calib", 0.1)):
        assert abs(sizes[s] / 3003 - f) < 0.01, (s, sizes[s])
    meta = data.datasets["test"].meta
    assert list(meta.columns) == ["age", "sex", "localization", "dx_type"]
    assert set(meta["sex"]) <= {"male", "female", "unknown"} and meta["age"].isin(
        ["<30", "30-44", "45-59", "60-74", "75+", "unknown"]).all()
