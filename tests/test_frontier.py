"""The fair safety frontier (riskcl.report.frontier): thresholds from held-out predictions only, scored on test."""
from __future__ import annotations

import numpy as np
import pytest

from _tiny import tiny
from riskcl.experiment import RunFolder
from riskcl.io import atomic_write_npz
from riskcl.metrics import REPORT_KEYS
from riskcl.report.collect import find_runs
from riskcl.report.frontier import fair_frontier_table, threshold_for_sensitivity
from riskcl.taxonomy import Taxonomy

TAX = Taxonomy("hand", ("benign", "malignant"), (0, 1))


def _logits(p_mal):
    p = np.clip(np.asarray(p_mal, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.c_[np.zeros_like(p), np.log(p / (1 - p))].astype(np.float32)


def _run(folder: RunFolder, split_scores: dict, method: str = "ce", seed: int = 0, split_seed: int = 0,
         dataset: str = "hand", **config) -> None:
    folder.prepare()
    folder.write_config(tiny(seed=seed, **{"data.split_seed": split_seed, "name": folder.path.name, **config}))
    folder.write_taxonomy(TAX)
    for split, (mal, ben) in split_scores.items():
        scores = np.r_[mal, ben]
        target = np.r_[np.ones(len(mal)), np.zeros(len(ben))].astype(np.int64)
        ids = np.array([f"{split}{i}" for i in range(len(scores))])
        atomic_write_npz(folder.prediction_file(split), logits=_logits(scores), target=target, ids=ids, groups=ids)
    run = {"name": method, "dataset": dataset, "model": "m", "loss": method, "loss_params": {}, "seed": seed,
           "epochs": 1, "classes": list(TAX.classes), "levels": list(TAX.levels), "decision_rule": "superclass"}
    folder.write_metrics({**{k: 0.5 for k in REPORT_KEYS}, "n": 20, "run": run})
    folder.mark("finished")


def test_threshold_from_calibration_that_misses_on_test_is_reported(tmp_path):
    # Calibration: 10 malignant cases; the 90% target allows one miss, so t = the second lowest score, 0.50.
    calib = (np.array([0.45, 0.50, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9]), np.linspace(0.0, 0.4, 10))
    # Test: only 7 of 10 malignant cases reach 0.50: the threshold misses the target there.
    test = (np.array([0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]), np.array([0.1] * 8 + [0.6, 0.7]))
    # Validation (which chose the model) would give another threshold; it must not be read.
    val = (np.array([0.05] * 10), np.array([0.01] * 10))
    _run(RunFolder(tmp_path / "runs" / "a"), {"calib": calib, "test": test, "val": val})
    records, _ = find_runs(tmp_path / "runs")
    assert threshold_for_sensitivity(_softmax_pmal(calib), np.r_[np.ones(10), np.zeros(10)] == 1, 0.9) == \
        pytest.approx(0.5, abs=1e-6)
    table = fair_frontier_table(records, targets=[0.9], n_boot=50)
    (row,) = table.to_dict("records")
    assert row["thresholds from"] == "calib"
    assert row["test sensitivity"] == pytest.approx(0.7)  # what the test split actually reached ...
    assert row["missed target (seeds)"] == 1  # ... and that it missed the 90% target
    assert row["test specificity"] == pytest.approx(0.8)  # 8 of 10 benign cases under 0.50


def _softmax_pmal(scores):
    lg = _logits(np.r_[scores[0], scores[1]])
    e = np.exp(lg - lg.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True))[:, 1]


def test_runs_without_a_calibration_split_use_validation_labelled_so_and_ranking(tmp_path):
    strong = (np.linspace(0.6, 0.99, 20), np.linspace(0.0, 0.3, 20))
    weak = (np.linspace(0.3, 0.99, 20), np.linspace(0.0, 0.7, 20))
    _run(RunFolder(tmp_path / "runs" / "strong"), {"val": strong, "test": strong}, method="strong")
    _run(RunFolder(tmp_path / "runs" / "weak"), {"calib": weak, "val": weak, "test": weak}, method="weak")
    records, _ = find_runs(tmp_path / "runs")
    table = fair_frontier_table(records, targets=[0.95], n_boot=50).set_index("method")
    assert table.loc["strong", "thresholds from"] == "val (selection split!)"
    assert table.loc["weak", "thresholds from"] == "calib"
    assert table.loc["strong", "rank"] == "1" and table.loc["weak", "rank"] == "2"
    assert table.loc["strong", "pAUROC sens>=0.9"] > table.loc["weak", "pAUROC sens>=0.9"]


def test_a_method_that_misses_the_target_never_ranks_above_one_that_holds_it(tmp_path):
    # "greedy" calibrates to 95% but its test malignant scores sit lower: it misses the target and keeps a high
    # specificity; "honest" holds the target at a lower specificity. The honest method ranks first.
    greedy_cal = (np.linspace(0.6, 0.99, 20), np.linspace(0.0, 0.3, 20))
    greedy_test = (np.r_[np.linspace(0.1, 0.5, 6), np.linspace(0.6, 0.99, 14)], np.linspace(0.0, 0.3, 20))
    honest = (np.linspace(0.5, 0.99, 20), np.linspace(0.0, 0.7, 20))
    _run(RunFolder(tmp_path / "runs" / "greedy"), {"calib": greedy_cal, "val": greedy_cal, "test": greedy_test},
         method="greedy")
    _run(RunFolder(tmp_path / "runs" / "honest"), {"calib": honest, "val": honest, "test": honest}, method="honest")
    records, _ = find_runs(tmp_path / "runs")
    table = fair_frontier_table(records, targets=[0.95], n_boot=20).set_index("method")
    assert table.loc["greedy", "missed target (seeds)"] == 1 and not table.loc["greedy", "held target"]
    assert table.loc["greedy", "test specificity"] > table.loc["honest", "test specificity"]
    assert table.loc["honest", "rank"] == "1" and table.loc["greedy", "rank"] == "2 (missed target)"


def test_the_difference_to_the_reference_is_paired_over_the_same_test_images(tmp_path):
    # Both methods decide alike on every image but two benign ones, which only "better" clears: its specificity is
    # 2/20 higher, and on every bootstrap resample of the same images it is never lower (the paired CI stays >= 0;
    # intervals of the two specificities taken apart would overlap widely).
    mal = np.linspace(0.6, 0.99, 20)
    ref_ben = np.r_[np.linspace(0.0, 0.3, 10), np.linspace(0.7, 0.9, 10)]
    better_ben = ref_ben.copy()
    better_ben[10:12] = 0.1
    for name, ben in (("ref", ref_ben), ("better", better_ben)):
        split = (mal, ben)
        _run(RunFolder(tmp_path / "runs" / name), {"calib": split, "val": split, "test": split}, method=name)
    records, _ = find_runs(tmp_path / "runs")
    table = fair_frontier_table(records, targets=[0.95], n_boot=200, reference="ref").set_index("method")
    column = "specificity minus ref's"
    spec = table["test specificity"]
    assert spec["better"] - spec["ref"] == pytest.approx(0.1)
    assert table.loc["better", column] == pytest.approx(0.1)
    # one seed each: the two-level interval is the paired one over images, marked as for these seeds only
    lo, hi = (float(v) for v in table.loc["better", f"{column} CI (two-level)"].strip("[]*").split(","))
    assert 0.0 <= lo < 0.1 < hi and table.loc["better", f"{column} CI (two-level)"].endswith("*")
    assert table.loc["better", "vs ref"] in ("beats (for these 1 seed(s) only)",
                                             "not distinguishable at this scale (for these 1 seed(s) only)")
    assert np.isnan(table.loc["ref", column]) and table.loc["ref", f"{column} CI (two-level)"] == ""
    assert column not in fair_frontier_table(records, targets=[0.95], n_boot=20).columns


def test_each_split_seed_is_a_replication_and_the_verdict_needs_both(tmp_path):
    """Three seeds of two methods on two split seeds: each split has its own rows; `better` beats `ref` on split 0
    (it clears 8 more benign cases in every seed) but not on split 1 (it does the same as `ref` there), so it does
    not replicate; the runs of one split are never pooled with the other's."""
    rng = np.random.default_rng(0)
    mal = np.linspace(0.6, 0.99, 40)
    for split_seed in (0, 1):
        base = rng.uniform(0.0, 0.9, 60)  # each benign image's score; a training seed moves it a little
        for seed in range(3):
            ref_ben = np.clip(base + rng.normal(0, 0.02, 60), 0, 1)
            better_ben = ref_ben.copy()
            if split_seed == 0:  # 8 benign cases above the threshold cleared
                better_ben[np.flatnonzero(ref_ben > 0.7)[:8]] = 0.05
            for name, ben in (("ref", ref_ben), ("better", better_ben)):
                scores = (mal, ben)
                _run(RunFolder(tmp_path / "runs" / f"{name}-split{split_seed}-seed{seed}"),
                     {"calib": scores, "val": scores, "test": scores}, method=name, seed=seed, split_seed=split_seed)
    records, notes = find_runs(tmp_path / "runs")
    assert not any("separate row" in n for n in notes)  # a split seed is a replication, not a variant
    table = fair_frontier_table(records, targets=[0.95], n_boot=300, reference="ref")
    assert sorted(zip(table["method"], table["split seed"], table["seeds"])) == \
        [("better", 0, 3), ("better", 1, 3), ("ref", 0, 3), ("ref", 1, 3)]
    better = table[table["method"] == "better"].set_index("split seed")
    assert better.loc[0, "vs ref"] == "beats" and better.loc[1, "specificity minus ref's"] == pytest.approx(0)
    assert better.loc[1, "vs ref"] == "not distinguishable at this scale"
    from riskcl.report.frontier import replication_table

    (row,) = replication_table(table, "ref").to_dict("records")
    assert (row["split seeds"], row["beats"], row["not distinguishable"], row["replicates"]) == (2, 1, 1, False)


def test_a_recipe_names_its_rows_in_every_data_set_once_it_must_in_one(tmp_path):
    """Data set a ran the `ce` recipe and a `ce-long` one (same loss, more epochs): their rows are named by recipe.
    Data set b ran `ce` only: its row is named `ce [ce]` too, so that one reference means one recipe in both."""
    split = (np.linspace(0.6, 0.99, 20), np.linspace(0.0, 0.5, 20))
    scores = {"calib": split, "val": split, "test": split}
    _run(RunFolder(tmp_path / "runs" / "a" / "recipe-ce__seed-0"), scores, dataset="a")
    _run(RunFolder(tmp_path / "runs" / "a" / "recipe-ce-long__seed-0"), scores, dataset="a", epochs=3)
    _run(RunFolder(tmp_path / "runs" / "b" / "recipe-ce__seed-0"), scores, dataset="b")
    records, _ = find_runs(tmp_path / "runs")
    assert sorted((r.run["dataset"], r.method) for r in records) == \
        [("a", "ce [ce-long]"), ("a", "ce [ce]"), ("b", "ce [ce]")]
    table = fair_frontier_table(records, targets=[0.95], n_boot=20, reference="ce [ce]")
    assert set(table.loc[table["method"] == "ce [ce-long]", "vs ce [ce]"]) == {
        "not distinguishable at this scale (for these 1 seed(s) only)"}
