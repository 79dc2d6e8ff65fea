"""Subgroup safety (riskcl.metrics.subgroups, riskcl.decision.groups, riskcl.experiment.subgroups)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import beta as beta_dist

from conftest import ISIC_SAMPLE, needs_isic
from riskcl.cli import main
from riskcl.decision import decide, group_risk_control, learn_then_test, softmax
from riskcl.experiment import RunFolder
from riskcl.metrics.subgroups import clopper_pearson, subgroup_metrics
from riskcl.taxonomy import Taxonomy

BINARY = Taxonomy("t", ("benign", "malignant"), (0, 1))
# Malignant p(malignant) per group: the easy group scores high, the hard one is spread out.
MALIGNANT = {"easy": (6.0, 1.2), "hard": (2.0, 1.6)}
BENIGN = (1.5, 5.0)


def _draw(rng, n_mal=300, n_ben=300):
    scores, y, strata = [], [], []
    for g, (a, b) in MALIGNANT.items():
        scores += [rng.beta(a, b, n_mal), rng.beta(*BENIGN, n_ben)]
        y += [np.ones(n_mal, int), np.zeros(n_ben, int)]
        strata += [[g] * (n_mal + n_ben)]
    s = np.concatenate(scores)
    return np.c_[1 - s, s], np.concatenate(y), np.concatenate(strata)


def _true_cer(group: str, t: float) -> float:
    """The exact miss rate of a group at threshold t: P(score < t) under its malignant score distribution."""
    return float(beta_dist.cdf(t, *MALIGNANT[group]))


def test_group_thresholds_keep_every_group_under_alpha_where_the_pooled_one_fails():
    alpha, delta, draws = 0.1, 0.1, 200
    rng = np.random.default_rng(0)
    pooled_breaks, ltt_ok, crc = 0, 0, {g: [] for g in MALIGNANT}
    for _ in range(draws):
        probs, y, strata = _draw(rng)
        pooled = learn_then_test(probs, y, BINARY, alpha, delta).threshold
        pooled_breaks += _true_cer("hard", pooled) > alpha
        res = group_risk_control("ltt", probs, y, BINARY, strata, alpha, delta)
        assert all(g["certified"] for g in res["groups"].values())
        ltt_ok += all(_true_cer(g, res["groups"][g]["threshold"]) <= alpha for g in MALIGNANT)
        res_crc = group_risk_control("crc", probs, y, BINARY, strata, alpha)
        for g in MALIGNANT:
            crc[g].append(_true_cer(g, res_crc["groups"][g]["threshold"]))
    assert pooled_breaks / draws > 0.5  # the pooled threshold breaks alpha in the hard group in most draws
    assert ltt_ok / draws >= 1 - delta  # every group at once, in at least 1 - delta of the draws
    for g, values in crc.items():  # CRC: each group's expected CER <= alpha (Monte Carlo error allowed)
        assert np.mean(values) <= alpha + 3 * np.std(values) / np.sqrt(draws), g


def test_small_groups_get_a_stated_fallback_not_a_fake_threshold():
    rng = np.random.default_rng(1)
    probs, y, strata = _draw(rng)
    strata = strata.astype(object)
    tiny = np.flatnonzero((strata == "hard") & (y == 1))[:5]  # five malignant cases: nothing can be certified
    strata[tiny] = "tiny"
    for fallback in ("pooled", "conservative"):
        res = group_risk_control("ltt", probs, y, BINARY, strata.astype(str), 0.1, 0.1, fallback=fallback)
        g = res["groups"]["tiny"]
        assert not g["certified"] and "not certified" in g["guarantee"]
        assert g["threshold"] == res["fallback_threshold"]
        certified = [v["threshold"] for v in res["groups"].values() if v["certified"]]
        if fallback == "pooled":
            assert res["fallback_threshold"] == res["pooled"].threshold
        else:
            assert res["fallback_threshold"] == min([res["pooled"].threshold, *certified])
    with pytest.raises(ValueError, match="fallback"):
        group_risk_control("ltt", probs, y, BINARY, strata.astype(str), 0.1, fallback="maximal")


def test_pooled_ltt_against_mapie_binary_classification_controller():
    """MAPIE's BinaryClassificationController (recall >= 1 - alpha with confidence 1 - delta) on the same data.
    Both are Learn-then-Test; riskcl tests a 0.001 grid in a fixed sequence (no multiplicity cost), MAPIE a
    0.01 grid with Bonferroni-Holm over all 100 thresholds, so MAPIE's threshold is at most riskcl's (up to
    its coarser grid). Both must hold recall on fresh data from the same distribution."""
    mapie = pytest.importorskip("mapie.risk_control")
    alpha, delta = 0.1, 0.1
    rng = np.random.default_rng(3)
    probs, y, _ = _draw(rng)
    ours = learn_then_test(probs, y, BINARY, alpha, delta).threshold
    ctrl = mapie.BinaryClassificationController(lambda x: np.c_[1 - np.asarray(x), np.asarray(x)], "recall",
                                                target_level=1 - alpha, confidence_level=1 - delta)
    ctrl.calibrate(probs[:, 1], y)
    theirs = float(ctrl.best_predict_param)
    assert theirs <= ours + 0.01
    assert abs(theirs - ours) < 0.05  # the same guarantee on the same data: close thresholds
    big, yb, _ = _draw(np.random.default_rng(4), 20000, 100)
    for t in (ours, theirs):
        assert np.mean(big[yb == 1, 1] >= t) >= 1 - alpha


def test_subgroup_metrics_against_a_hand_count_and_exact_intervals():
    y = np.array([1, 1, 1, 0, 0, 1, 1, 0])
    yhat = np.array([1, 0, 1, 0, 1, 1, 1, 0])
    strata = np.array(["a", "a", "a", "a", "b", "b", "b", "b"])
    rows = {r["group"]: r for r in subgroup_metrics(yhat, y, BINARY, strata, n_boot=50)}
    assert rows["a"]["n"] == 4 and rows["a"]["n_malignant"] == 3 and rows["a"]["cer"]["value"] == pytest.approx(1 / 3)
    assert rows["b"]["cer"]["value"] == 0 and rows["b"]["specificity"]["value"] == 0.5
    assert rows["a"]["cer"]["ci"] == "clopper-pearson"
    assert (rows["a"]["cer"]["low"], rows["a"]["cer"]["high"]) == pytest.approx(clopper_pearson(1, 3))
    assert all(r["too_few_malignant"] for r in rows.values())
    lo, hi = clopper_pearson(3, 10)
    from scipy.stats import binomtest

    ref = binomtest(3, 10).proportion_ci(method="exact")
    assert (lo, hi) == pytest.approx((ref.low, ref.high))


def test_a_rate_of_0_or_1_gets_an_exact_interval_over_units_not_a_zero_width_bootstrap():
    y = np.zeros(76, dtype=np.int64)  # 76 benign images of 38 patients, all called benign
    units = np.repeat(np.arange(38), 2)
    row = subgroup_metrics(y, y, BINARY, np.array(["g"] * 76), units, n_boot=50)[0]
    spec = row["specificity"]
    assert spec["value"] == 1.0 and spec["ci"] == "clopper-pearson (units)"
    assert (spec["low"], spec["high"]) == pytest.approx(clopper_pearson(38, 38)) and spec["low"] < 0.95
    yhat = y.copy()
    yhat[:4] = 1  # two patients' images called malignant: a rate strictly inside (0, 1) is bootstrapped
    spec = subgroup_metrics(yhat, y, BINARY, np.array(["g"] * 76), units, n_boot=200)[0]["specificity"]
    assert spec["ci"] == "bootstrap" and spec["low"] < spec["value"] < spec["high"]


@needs_isic
@pytest.mark.slow
def test_isic_sample_subgroups_end_to_end(isic_copy, tmp_path, capsys):
    out = isic_copy
    assert main(["evaluate", str(out), "--by", "sex", "--by", "localization", "--bootstrap", "100"]) == 0
    assert "too few malignant" in capsys.readouterr().out
    folder = RunFolder(out)
    test = folder.predictions("test")
    tax = folder.taxonomy()
    labels = decide(softmax(test["logits"]), tax)
    for column in ("sex", "localization"):
        result = json.loads((out / f"subgroups_{column}.json").read_text())
        assert sum(r["n"] for r in result["groups"]) == len(test["target"])  # the groups add up to the split
        meta = test[f"meta__{column}"]
        for r in result["groups"]:  # every number recomputed from the prediction file
            m = meta == r["group"]
            mal = m & (tax.superclass[test["target"]] == 1)
            assert r["n"] == m.sum() and r["n_malignant"] == mal.sum()
            if mal.any():
                assert r["cer"]["value"] == pytest.approx(np.mean(tax.superclass[labels[mal]] == 0))
    assert main(["calibrate", str(out), "--alpha", "0.2", "--by", "sex"]) == 0
    cal = folder.calibration()
    assert cal["by"] == "sex" and set(cal["groups"]) >= {"female", "male"}
    for g in cal["groups"].values():
        assert 0 <= g["threshold"] <= 1 and isinstance(g["certified"], bool)
    imgs = [str(p) for p in sorted((ISIC_SAMPLE / "ISIC2018_Task3_Training_Input").glob("*.jpg"))[:3]]
    assert main(["predict", str(out), *imgs, "--out", str(tmp_path / "p.csv"), "--calibrated"]) == 2
    assert "--metadata" in capsys.readouterr().err
    meta = pd.read_csv(ISIC_SAMPLE / "HAM10000_metadata.csv").set_index("image_id")
    rows = [{"image": p, "sex": meta.loc[p.rsplit("/", 1)[1][:-4], "sex"]} for p in imgs]
    pd.DataFrame(rows).to_csv(tmp_path / "meta.csv", index=False)
    assert main(["predict", str(out), *imgs, "--out", str(tmp_path / "p.csv"), "--calibrated", "--metadata",
                 str(tmp_path / "meta.csv")]) == 0
    got = pd.read_csv(tmp_path / "p.csv")
    want = [cal["groups"].get(r["sex"], {"threshold": cal["unseen_group_threshold"]})["threshold"] for r in rows]
    assert got["threshold"].tolist() == pytest.approx(want)
    # A per-group operating point still ships: the card decides each test case at its group's threshold (its
    # numbers equal calibration.json's), the export applies the pooled one and carries the groups' own.
    assert main(["card", str(out), "--bootstrap", "20"]) == 0
    card = (out / "MODEL_CARD.md").read_text()
    assert "One threshold per `sex` group" in card and "(pooled)" in card
    cer = [ln for ln in card.split("## Test results")[1].splitlines() if ln.startswith("| CER |")][0]
    assert float(cer.split("|")[2]) == pytest.approx(cal["test"]["cer"], abs=6e-5)
    assert main(["export", str(out), "--format", "torchscript", "--out", str(tmp_path / "exp"), "--check-limit",
                 "16"]) == 0
    meta = json.loads((tmp_path / "exp" / "riskcl_export.json").read_text())
    assert meta["operating_point"]["groups"].keys() == cal["groups"].keys() and "pooled" in \
        meta["operating_point"]["note"]
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "rep"), "--by", "sex", "--bootstrap", "50"]) == 0
    md = (tmp_path / "rep" / "REPORT.md").read_text()
    assert "## Subgroups by `sex`" in md and "female" in md
    assert list((tmp_path / "rep" / "figures").glob("subgroups_sex_*.png"))
