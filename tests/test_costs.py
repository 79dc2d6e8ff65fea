"""Uncertain costs (riskcl.decision.costs): decision curves against dcurves and a hand-computed case, the pt <->
lambda mapping, cost-robust thresholds that stay certified, the H-measure against the hmeasure package."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from riskcl.cli import main
from riskcl.decision.costs import (CostDistribution, choose_threshold, cost_table, costs_from_pt, decision_curve,
                                   h_measure, net_benefit, net_benefit_refer_all, pt_from_costs)
from riskcl.decision.risk_control import _pvalues, _prepare, learn_then_test, robust_threshold
from riskcl.taxonomy import Taxonomy


def _scores(n=400, prevalence=0.3, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=n) < prevalence).astype(int)
    return np.clip(0.35 * y + rng.uniform(0, 0.65, n), 0, 1), y


def test_pt_and_costs_map_into_each_other():
    assert pt_from_costs(5, 20) == pytest.approx(0.2) and costs_from_pt(0.2, 20) == pytest.approx(5)
    rng = np.random.default_rng(1)
    l1, l2 = rng.uniform(0.1, 50, 100), rng.uniform(0.1, 50, 100)
    np.testing.assert_allclose(costs_from_pt(pt_from_costs(l1, l2), l2), l1)
    # The cost-minimising threshold: referring a case with p = pt costs the same as clearing it.
    p = pt_from_costs(l1, l2)
    np.testing.assert_allclose(l1 * (1 - p), l2 * p)


def test_net_benefit_by_hand_and_against_dcurves():
    p, y = [0.9, 0.6, 0.3, 0.1], [1, 0, 1, 0]
    # pt 0.25: refer 0.9, 0.6, 0.3 -> TP 2, FP 1 of 4: 2/4 - 1/4 * (0.25 / 0.75)
    assert net_benefit(p, y, [0.25])[0] == pytest.approx(0.5 - 0.25 / 3)
    assert net_benefit(p, y, [0.5])[0] == pytest.approx(0.25 - 0.25)
    assert net_benefit_refer_all(y, [0.25])[0] == pytest.approx(0.5 - 0.5 / 3)
    from dcurves import dca

    p, y = _scores()
    pts = np.round(np.arange(0.02, 0.6, 0.02), 2)
    ref = dca(data=pd.DataFrame({"y": y, "model": p}), outcome="y", modelnames=["model"], thresholds=pts)
    for name, ours in (("model", net_benefit(p, y, pts)), ("all", net_benefit_refer_all(y, pts))):
        theirs = ref.loc[ref["model"] == name].sort_values("threshold")["net_benefit"].to_numpy()
        np.testing.assert_allclose(ours, theirs, atol=1e-12)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        net_benefit(p, y, [0.0, 0.5])


def test_decision_curve_bands_cover_the_curve_and_name_where_the_model_helps():
    p, y = _scores()
    groups = np.arange(len(p)) // 2  # two images per patient: the bootstrap resamples patients
    c = decision_curve(p, y, (0.05, 0.45), groups, n_boot=200, seed=0)
    model, low, high = (np.asarray(c[k]) for k in ("model", "model_low", "model_high"))
    assert len(c["pt"]) == 101 and np.all(low <= model + 1e-12) and np.all(model <= high + 1e-12)
    assert np.all(high > low)
    for a, b in c["adds_benefit"]:  # inside each named interval the model beats both references
        inside = (np.asarray(c["pt"]) >= a) & (np.asarray(c["pt"]) <= b)
        assert np.all(model[inside] > np.maximum(np.asarray(c["refer_all"])[inside], 0))
    assert c == decision_curve(p, y, (0.05, 0.45), groups, n_boot=200, seed=0)  # seeded


def _three_options():
    """Thresholds 0.2 / 0.5 / 0.8 with (FP, FN) = (4, 0) / (1, 1) / (0, 2) of 8 cases."""
    p = np.array([0.9, 0.7, 0.45, 0.6, 0.3, 0.3, 0.25, 0.1])
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    return p, y, [0.2, 0.5, 0.8]


def test_expected_cost_and_minimax_thresholds_on_a_hand_built_case():
    p, y, cands = _three_options()
    np.testing.assert_allclose(cost_table(p, y, cands, [1.0], [1.0])[:, 0], [4 / 8, 2 / 8, 2 / 8])
    fixed = CostDistribution((1.0, 4.0))  # costs 4, 5, 8 (/8): the lowest is 0.2
    assert choose_threshold(cands, p, y, fixed, "expected-cost")["threshold"] == 0.2
    # lambda2 = 1, lambda1 log-uniform on [0.01, 1] (mean 0.215): costs 4 l1, l1 + 1, 2 (/8).
    # Expected: 0.86, 1.215, 2 -> 0.2. Worst-case regret: at l1 = 1, 4 - 2 = 2 for 0.2; at l1 = 0.01,
    # 1.01 - 0.04 = 0.97 for 0.5 and 2 - 0.04 = 1.96 for 0.8 -> 0.5.
    costs = CostDistribution.from_config({"lambda1": [0.01, 1], "distribution": "log-uniform"}, 1.0, 1.0)
    assert choose_threshold(cands, p, y, costs, "expected-cost")["threshold"] == 0.2
    minimax = choose_threshold(cands, p, y, costs, "minimax")
    assert minimax["threshold"] == 0.5 and minimax["max_regret"] == pytest.approx(0.97 / 8, abs=0.01)
    l1, l2 = costs.sample(5000, 3)
    assert np.all((l1 >= 0.01) & (l1 <= 1)) and np.all(l2 == 1)
    assert np.mean(l1) == pytest.approx(0.99 / np.log(100), rel=0.05)  # the log-uniform mean


def test_the_guarantee_stays_the_constraint_whatever_the_objective():
    tax = Taxonomy("t", ("b", "m"), (0, 1))
    rng = np.random.default_rng(4)
    y = (rng.uniform(size=600) < 0.3).astype(int)
    p_mal = np.clip(0.4 * y + rng.uniform(0, 0.6, 600), 0, 1)
    probs = np.stack([1 - p_mal, p_mal], 1)
    base = learn_then_test(probs, y, tax, alpha=0.1, delta=0.1)
    costs = CostDistribution.from_config({"pt": [0.02, 0.3]}, 5, 20)
    for objective in ("expected-cost", "minimax"):
        chosen, choice = robust_threshold(base, probs, y, tax, costs, objective)
        assert chosen.threshold <= base.threshold and choice["certified_threshold"] == base.threshold
        _, _, units, _, _ = _prepare(probs, y, tax, 0.1, None)
        assert _pvalues(units, np.array([chosen.threshold]), 0.1)[0] <= 0.1  # LTT rejected it: certified
        assert chosen.calibration_cer <= base.calibration_cer + 1e-12 and chosen.certified


def test_h_measure_against_the_hmeasure_package():
    from hmeasure import h_score

    for seed, prevalence in ((0, 0.5), (1, 0.2), (2, 0.35)):
        p, y = _scores(300, prevalence, seed)
        n1, n0 = int(y.sum()), int(len(y) - y.sum())
        assert h_measure(p, y) == pytest.approx(h_score(y, p, severity_ratio=1.0), abs=1e-5)  # Beta(2, 2)
        assert h_measure(p, y, 2, 1 + n0 / n1) == pytest.approx(h_score(y, p), abs=1e-5)  # its default prior
    assert h_measure([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0]) == pytest.approx(1.0)
    assert h_measure([0.5] * 6, [1, 0, 1, 0, 1, 0]) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("spec,match", [
    ({"lambda1": [-1, 4]}, r"cost.uncertain.lambda1.*within"),
    ({"lambda1": [5, 2]}, r"cost.uncertain.lambda1.*empty range"),
    ({"lambda1": [2, 30], "lambda2": [20, 40]}, r"lambda2 .*can be drawn below lambda1"),
    ({"pt": [0.0, 0.3]}, r"cost.uncertain.pt.*within \(0, 1\)"),
    ({"pt": [0.1, 1.2]}, r"cost.uncertain.pt.*within \(0, 1\)"),
    ({"pt": [0.1, 0.7]}, r"cost.uncertain.pt.*above 0.5"),
    ({"pt": [0.1, 0.3], "lambda1": [1, 2]}, r"either a pt range or lambda1"),
    ({"lambda1": [1, 2], "distribution": "gamma"}, r"cost.uncertain.distribution"),
    ({"lamda1": [1, 2]}, r"Unknown key.*lamda1"),
    ({"lambda1": 3}, r"cost.uncertain.lambda1.*range \[low, high\]"),
    ({}, r"needs a range"),
])
def test_bad_cost_specifications_name_the_key(spec, match):
    with pytest.raises(ValueError, match=match):
        CostDistribution.from_config(spec, 5, 20)


def test_calibrate_objective_and_decision_curve_through_the_cli(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["cost"]["uncertain"] = {"lambda1": [1, 5], "lambda2": [10, 40], "distribution": "log-uniform"}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["calibrate", str(run), "--alpha", "0.2", "--objective", "guarantee"]) == 0
    plain = json.loads((run / "calibration.json").read_text())
    assert main(["calibrate", str(run), "--alpha", "0.2", "--objective", "minimax"]) == 0
    robust = json.loads((run / "calibration.json").read_text())
    assert robust["objective"]["objective"] == "minimax" and robust["threshold"] <= plain["threshold"]
    assert robust["objective"]["certified_threshold"] == plain["threshold"] and robust["certified"]
    assert "log-uniform" in robust["costs"]["describe"] and "objective minimax" in capsys.readouterr().out
    assert main(["evaluate", str(run), "--decision-curve", "--bootstrap", "50"]) == 0
    curve = json.loads((run / "decision_curve_test.json").read_text())
    lo, hi = pt_from_costs(1, 40), pt_from_costs(5, 10)
    assert curve["pt"][0] == pytest.approx(lo) and curve["pt"][-1] == pytest.approx(hi)
    assert (run / "decision_curve_test.png").stat().st_size > 1000 and "net benefit" in curve["sentence"]
    assert 0 <= curve["cost_figures"]["h_measure"] <= 1
    cfg["cost"]["uncertain"] = {"pt": [0.3, 0.2]}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["evaluate", str(run), "--decision-curve"]) == 2
    assert "cost.uncertain.pt" in capsys.readouterr().err


def test_sampled_severity_is_seeded_and_reproducible():
    import torch

    from riskcl.decision.costs import CostDistribution as CD
    from riskcl.losses import create_loss
    from riskcl.taxonomy import get_taxonomy, loss_weight_matrix, resolve_cost_matrix

    tax = get_taxonomy("brain_mri")
    costs = CD.from_config({"lambda1": [2, 8], "lambda2": [10, 40], "distribution": "log-normal"}, 5, 20)

    def run(seed):
        loss = create_loss("rcl", taxonomy=tax, costs=costs, seed=seed, sampled_costs=True)
        torch.manual_seed(0)
        logits, target = torch.randn(16, tax.num_classes), torch.randint(0, tax.num_classes, (16,))
        out = []
        for epoch in range(2):
            loss.set_epoch(epoch)
            for _ in range(3):
                value = loss(logits, target)
                l1, l2 = loss.last_draw
                expected = torch.as_tensor(loss_weight_matrix(resolve_cost_matrix(tax, l1, l2)), dtype=torch.float32)
                assert torch.equal(loss.inner.matrix, expected)  # the drawn matrix is the one applied
                out.append((l1, l2, float(value)))
        return out

    first = run(0)
    assert first == run(0) and first != run(1)  # same seed, same draws and losses; another seed, others
    assert len({d[:2] for d in first}) == 6  # a new matrix every batch
    with pytest.raises(ValueError, match="needs plausible costs"):
        create_loss("rcl", taxonomy=tax, costs=CD((5.0, 20.0)), sampled_costs=True)
    with pytest.raises(ValueError, match="does not combine"):
        create_loss("rcl-proposed", taxonomy=tax, costs=costs, sampled_costs=True)
