"""Monitoring after deployment (riskcl.decision.sequential, riskcl.deploy.monitor): the confidence sequence covers
the true rate at every look at its level; the label-free tests hold their level when nothing changes; an injected
shift is detected; the monitor reads the service's own decision log; the benchmark runs in its small form."""
from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from conftest import demo_png
from riskcl.cli import main
from riskcl.decision.sequential import exact_interval, rate_sequence, shifted

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("p", [0.03, 0.2, 0.5])
def test_the_confidence_sequence_covers_the_rate_at_every_look(p):
    """600 Bernoulli streams of 400 cases: the share of streams whose sequence ever misses p stays under delta."""
    rng = np.random.default_rng(int(p * 1000))
    misses = 0
    for _ in range(600):
        low, high = rate_sequence(rng.random(400) < p, delta=0.1)
        misses += bool(((low > p) | (high < p)).any())
    assert misses / 600 <= 0.1
    low, high = rate_sequence(np.zeros(300), delta=0.05)  # it narrows as cases come
    assert low[-1] == 0 and high[-1] < 0.03 and high[9] > high[-1]


def test_the_label_free_test_holds_its_level_and_detects_a_shift():
    rng = np.random.default_rng(0)
    false = sum(bool(shifted(rng.random(500) < 0.3, 150, 500, 0.05)[0].any()) for _ in range(400))
    assert false / 400 <= 0.05  # the reference sample's own uncertainty is accounted for
    alarm, ref, low, high = shifted(rng.random(500) < 0.45, 150, 500, 0.05)
    assert alarm.any() and ref[0] < 0.3 < ref[1] and low[-1] > ref[1]
    assert exact_interval(0, 20, 0.05)[0] == 0.0


@pytest.fixture(scope="module")
def deployed(tiny_run, tmp_path_factory):
    """A calibrated copy of the tiny run, served with a decision log, 160 decisions made through the API."""
    base = tmp_path_factory.mktemp("deployed")
    run = base / "run"
    shutil.copytree(tiny_run[0], run)
    assert main(["calibrate", str(run), "--alpha", "0.3", "--method", "crc"]) == 0
    from riskcl.data import create_dataset
    from riskcl.deploy.serve import ServiceOptions, create_app

    log = base / "decisions.jsonl"
    client = TestClient(create_app(run, options=ServiceOptions(log=str(log))))
    ds = create_dataset("demo", split="test", image_size=16, scale=0.15, progress=False)
    answers = []
    for k in range(160):
        png = demo_png(base, k % 40).read_bytes()
        r = client.post("/predict", files={"file": (f"{k}.png", png, "image/png")})
        answers.append((r.headers["X-Request-ID"], int(ds.taxonomy.superclass[ds.targets[k % 40]])))
    return run, log, answers, client


def test_the_monitor_reads_the_service_log_and_its_outcomes(deployed, tmp_path, capsys):
    run, log, answers, client = deployed
    outcomes = tmp_path / "outcomes.csv"
    with outcomes.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["request_id", "malignant", "date"])
        w.writerows([(rid, mal, "2026-12-03") for rid, mal in answers[:120]] + [("nowhere", 1, "2026-12-03")])
    assert main(["monitor", str(log), "--reference", str(run), "--outcomes", str(outcomes), "--out",
                 str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "m" / "monitor.json").read_text())
    assert result["decisions"] == 160 and "miss rate" in result["detectors"]
    miss = result["detectors"]["miss rate"]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    by_id = {r["request_id"]: r for r in records}
    malignant = [by_id[rid] for rid, mal in answers[:120] if mal == 1]
    assert miss["cases"] == len(malignant)  # every confirmed malignant case, and only those
    assert miss["rate"] == pytest.approx(np.mean([r["decision"] == "clear" for r in malignant]))
    assert any("1 outcome row(s) match no decision" in n for n in result["notes"])
    assert "referral rate" in result["detectors"] and "p(malignant) distribution" in result["detectors"]
    assert (tmp_path / "m" / "monitor.html").is_file() and "monitor_curves.png" in (tmp_path / "m" / "monitor.md"
                                                                                   ).read_text()
    assert "miss rate" in out and result["state"] in client.get("/model").json()["monitor"]


def test_fail_on_alarm_for_a_scheduler_when_the_cases_change(deployed, tmp_path):
    """The log's referral rate pushed far from the reference's: the label-free alarm fires, says the cases changed
    (not that the guarantee broke), and --fail-on-alarm exits 1."""
    from riskcl.deploy.decision_log import DecisionLog
    from riskcl.deploy.monitor import load_reference, monitor

    run, log, _, _ = deployed
    copy = DecisionLog(tmp_path / "d.jsonl")
    record = json.loads(log.read_text().splitlines()[0])
    for k in range(400):
        copy.record({**{k2: v for k2, v in record.items() if k2 not in ("seq", "prev", "time")},
                     "request_id": f"r{k}", "decision": "refer", "p_malignant": 0.99})
    result = monitor([tmp_path / "d.jsonl"], load_reference(run))
    referral = result["detectors"]["referral rate"]
    assert referral["alarm"] and referral["since"]["case"] < 200
    assert "the cases changed" in result["state"] and "guarantee is broken" not in result["state"]
    assert main(["monitor", str(tmp_path / "d.jsonl"), "--reference", str(run), "--fail-on-alarm"]) == 1


def test_the_export_carries_its_monitoring_reference(deployed, tmp_path):
    from riskcl.deploy.export import export_run
    from riskcl.deploy.monitor import load_reference

    run, _, _, _ = deployed
    export_run(run, tmp_path / "e", "onnx", check_limit=16)
    a, b = load_reference(run), load_reference(tmp_path / "e")
    assert a.to_dict() == b.to_dict() and sum(a.bin_counts) == a.n


def test_the_simulated_deployment_runs_in_small_form(deployed):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_monitor

    run, _, _, _ = deployed
    result = bench_monitor.run(str(run), streams=30, delay=20)
    assert set(result["shifts"]) == {"none", "blur", "colour", "prevalence", "subgroup", "hard cases"}
    assert result["shifts"]["none"]["streams"] == 30
    hard = result["shifts"]["hard cases"]["detectors"]["miss rate"]
    assert hard["alarmed"] >= result["shifts"]["none"]["detectors"]["miss rate"]["alarmed"]


def test_recalibrating_on_the_confirmed_window_names_it_and_keeps_the_old(deployed, tmp_path, capsys):
    from riskcl.decision.risk_control import conformal_risk_control  # noqa: F401  (the method used)

    run, log, answers, _ = deployed
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    outcomes = tmp_path / "o.csv"
    with outcomes.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["request_id", "malignant"])
        w.writerows(answers)
    before = json.loads((copy / "calibration.json").read_text())
    assert main(["calibrate", str(copy), "--from-log", str(log), "--outcomes", str(outcomes), "--alpha", "0.3",
                 "--method", "crc", "--window", "100"]) == 0
    after = json.loads((copy / "calibration.json").read_text())
    assert after["calibration_split"] == "log" and after["window"]["n"] == 100 and after["window"]["last_seq"] == 160
    kept = copy / after["window"]["previous"]
    assert json.loads(kept.read_text()) == before and after["temperature"] == before["temperature"]
    records = {json.loads(line)["request_id"]: json.loads(line) for line in log.read_text().splitlines()}
    p = np.array([records[rid]["p_malignant"] for rid, _ in answers[-100:]])
    y = np.array([mal for _, mal in answers[-100:]])
    # CRC on the window by hand: the largest logged score threshold whose miss rate bound holds
    n = int(y.sum())
    ok = [t for t in np.unique(np.r_[0, p[y == 1]]) if n / (n + 1) * np.mean(p[y == 1] < t) + 1 / (n + 1) <= 0.3]
    assert after["threshold"] == pytest.approx(max(ok))
    assert main(["predict", str(copy), str(demo_png(tmp_path)), "--out", str(tmp_path / "p.csv")]) == 0
    assert "chosen by crc on the log split" in capsys.readouterr().out
