"""Sweeps, shards, the report, calibration and the lambda1 search, on tiny runs of the demo data."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from _tiny import TINY
from riskcl.cli import main
from riskcl.experiment.sweep import load_sweep, parse_shard, run_sweep, shard_runs


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    (d / "base.yaml").write_text(yaml.safe_dump({**TINY, "epochs": 1}))
    (d / "grid.yaml").write_text(yaml.safe_dump({"base": "base.yaml", "overrides": {"optim.lr": 0.003},
                                                 "grid": {"loss.name": ["ce", "rcl-proposed"], "seed": [0, 1]}}))
    return d / "grid.yaml"


@pytest.fixture(scope="module")
def swept(sweep_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    first = run_sweep(sweep_file, out, progress=False)
    return out, first


def test_sweep_runs_grid_then_second_run_does_nothing(sweep_file, swept):
    out, first = swept
    assert sorted(first) == ["loss.name-ce__seed-0", "loss.name-ce__seed-1", "loss.name-rcl-proposed__seed-0",
                             "loss.name-rcl-proposed__seed-1"]
    assert all(v.startswith("finished") for v in first.values())
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")}
    second = run_sweep(sweep_file, out, progress=False)
    assert all(v == "skipped (finished)" for v in second.values())
    assert {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")} == stamps


def test_shards_partition_the_grid(sweep_file):
    runs = load_sweep(sweep_file)
    shards = [shard_runs(runs, parse_shard(f"{i}/3")) for i in range(3)]
    ids = [r.run_id for s in shards for r in s]
    assert sorted(ids) == sorted(r.run_id for r in runs) and len(ids) == len(set(ids))
    for bad in ("3/3", "1/0", "x"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)


def test_sharded_sweeps_union_equals_unsharded(sweep_file, swept, tmp_path):
    out_full, _ = swept
    out = tmp_path / "sharded"
    for i in range(3):
        assert main(["sweep", str(sweep_file), "--out", str(out), "--shard", f"{i}/3", "--quiet"]) == 0
    full = sorted(p.parent.name for p in out_full.rglob("metrics.json"))
    sharded = sorted(p.parent.name for p in out.rglob("metrics.json"))
    assert sharded == full
    for name in full:  # same config and seed: same numbers
        a = json.loads((out_full / name / "metrics.json").read_text())
        b = json.loads((out / name / "metrics.json").read_text())
        assert a["cer"] == b["cer"] and a["f1_macro"] == b["f1_macro"]


def test_report_tables_agree_with_run_metrics(swept, tmp_path):
    out, _ = swept
    rep = tmp_path / "rep"
    assert main(["report", str(out), "--out", str(rep), "--baseline", "ce", "--bootstrap", "100"]) == 0
    for f in ("REPORT.md", "report.html", "runs.csv", "report.json"):
        assert (rep / f).is_file()
    assert any(p.name.startswith("pareto_") for p in (rep / "figures").iterdir())
    data = json.loads((rep / "report.json").read_text())
    for row in data["runs"]:
        m = json.loads((out / row["folder"] / "metrics.json").read_text())
        assert row["cer"] == m["cer"] and row["f1_macro"] == m["f1_macro"] and row["type_ii"] == m["type_ii"]
    for row in data["methods"]:
        per_seed = [r["cer"] for r in data["runs"] if r["method"] == row["method"]]
        assert row["CER mean"] == pytest.approx(np.mean(per_seed))
        assert row["CER 95% CI low"] <= row["CER mean"] + 1e-9 <= row["CER 95% CI high"] + 2e-9
    (paired,) = data["paired"]
    assert paired["ce CER"] == pytest.approx(np.mean([r["cer"] for r in data["runs"] if r["method"] == "ce"]))
    md = (rep / "REPORT.md").read_text()
    assert "Table V style" in md and "loss.name-ce__seed-0" in md


def test_calibrate_writes_operating_point_and_predict_uses_it(swept, tmp_path, capsys):
    out, _ = swept
    run = out / "loss.name-ce__seed-0"
    assert main(["calibrate", str(run), "--alpha", "0.2", "--method", "crc"]) == 0
    cal = json.loads((run / "calibration.json").read_text())
    assert cal["method"] == "crc" and cal["alpha"] == 0.2 and 0 <= cal["threshold"] <= 1
    assert {"cer", "sensitivity", "specificity", "f1_macro"} <= set(cal["test"])
    from PIL import Image

    from riskcl.data import create_dataset

    ds = create_dataset("demo", split="test", image_size=16, scale=0.15, progress=False, augment=False)
    img = tmp_path / "x.png"
    Image.fromarray(np.asarray(ds.images[ds.rows[0]])).save(img)
    assert main(["predict", str(run), str(img), "--out", str(tmp_path / "p.csv"), "--calibrated"]) == 0
    row = pd.read_csv(tmp_path / "p.csv").iloc[0]
    assert (row["superclass"] == "malignant") == (row["p_malignant"] >= cal["threshold"])


@pytest.mark.slow
def test_ltt_and_crc_validity_on_a_real_trained_run(tmp_path):
    """A real (small) trained model. Its 1,500 validation + test predictions are the population: 200
    calibration sets of 500 are drawn i.i.d. from it, and each threshold's CER is measured on the whole
    population, which is exactly what the guarantees are about. (On the complement half of a finite pool the
    test CER adds its own sampling noise on top of the guarantee.)"""
    from riskcl.config import config_from_dict
    from riskcl.decision import conformal_risk_control, learn_then_test, softmax, threshold_decision
    from riskcl.experiment import load_run_predictions, run_experiment
    from riskcl.metrics import critical_error_rate
    from riskcl.taxonomy import get_taxonomy

    cfg = config_from_dict({**TINY, "epochs": 1, "data": {"name": "demo", "image_size": 16}})
    run_experiment(cfg, tmp_path / "run")
    tax = get_taxonomy("demo")
    parts = [load_run_predictions(tmp_path / "run", s) for s in ("val", "test")]
    probs = softmax(np.concatenate([p["logits"] for p in parts]))
    y = np.concatenate([p["target"] for p in parts])
    alpha, delta = 0.1, 0.1
    rng = np.random.default_rng(0)
    ltt_ok, crc = [], []
    for _ in range(200):
        cal = rng.choice(len(y), 500, replace=True)
        t_ltt = learn_then_test(probs[cal], y[cal], tax, alpha, delta).threshold
        t_crc = conformal_risk_control(probs[cal], y[cal], tax, alpha).threshold
        ltt_ok.append(critical_error_rate(threshold_decision(probs, tax, t_ltt), y, tax) <= alpha)
        crc.append(critical_error_rate(threshold_decision(probs, tax, t_crc), y, tax))
    assert np.mean(ltt_ok) >= 1 - delta
    assert np.mean(crc) <= alpha + 3 * np.std(crc) / np.sqrt(len(crc))


def test_tune_lambda_picks_lowest_val_cer_under_fpr_bound(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "epochs": 1}))
    assert main(["tune-lambda", str(cfg), "--lambda2", "20", "--lambda1", "1", "10", "--max-fpr", "1.0",
                 "--out", str(tmp_path / "t"), "--quiet"]) == 0
    r = json.loads((tmp_path / "t" / "tuning.json").read_text())
    assert [g["lambda1"] for g in r["grid"]] == [1.0, 10.0]
    assert r["best"]["val_cer"] == min(g["val_cer"] for g in r["grid"])
    # An impossible bound: no admissible setting, exit code 1 and a note.
    assert main(["tune-lambda", str(cfg), "--lambda2", "20", "--lambda1", "1", "10", "--max-fpr", "1e-9",
                 "--out", str(tmp_path / "t"), "--quiet"]) in (0, 1)
