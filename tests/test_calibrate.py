"""Operating points of finished runs (riskcl.experiment.calibrate): the calibration split, never the one that
chose the model unless asked, only prediction files read, and the guarantees on a real trained model."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from _tiny import TINY
from conftest import demo_png
from riskcl.cli import main
from riskcl.decision import softmax, threshold_decision
from riskcl.experiment import RunFolder, calibrate_run
from riskcl.metrics import critical_error_rate
from riskcl.taxonomy import get_taxonomy


def test_calibrate_uses_the_calibration_split_and_predict_uses_it(tiny_copy, tmp_path, capsys):
    assert main(["calibrate", str(tiny_copy), "--alpha", "0.2", "--method", "crc"]) == 0
    cal = RunFolder(tiny_copy).calibration()
    assert cal["method"] == "crc" and cal["alpha"] == 0.2 and 0 <= cal["threshold"] <= 1
    assert cal["calibration_split"] == "calib" and cal["calibration_file"] == "calib_predictions.npz"
    assert {"cer", "sensitivity", "specificity", "f1_macro"} <= set(cal["test"])
    assert {"p_value", "shift", "note"} <= set(cal["shift_check"])
    # The threshold is the one conformal risk control gives on the calibration predictions alone.
    from riskcl.decision import conformal_risk_control

    c = RunFolder(tiny_copy).predictions("calib")
    want = conformal_risk_control(softmax(c["logits"]), c["target"], get_taxonomy("demo"), 0.2, c["groups"])
    assert cal["threshold"] == want.threshold
    img = demo_png(tmp_path)
    assert main(["predict", str(tiny_copy), str(img), "--out", str(tmp_path / "p.csv"), "--calibrated"]) == 0
    row = pd.read_csv(tmp_path / "p.csv").iloc[0]
    assert row["threshold"] == pytest.approx(cal["threshold"])
    assert (row["superclass"] == "malignant") == (row["p_malignant"] >= cal["threshold"])


def test_calibrating_on_the_selection_split_needs_a_flag(tiny_copy, capsys):
    with pytest.raises(ValueError, match="validation split.*chose the best epoch"):
        calibrate_run(tiny_copy, 0.2, split="val")
    assert main(["calibrate", str(tiny_copy), "--alpha", "0.2", "--split", "val"]) == 2
    assert main(["calibrate", str(tiny_copy), "--alpha", "0.2", "--split", "val", "--allow-selection-split"]) == 0
    out = capsys.readouterr().out
    assert "WARNING" in out and "optimistic" in out
    cal = json.loads((tiny_copy / "calibration.json").read_text())
    assert cal["calibration_split"] == "val" and "optimistic" in cal["selection_split_warning"]


def test_calibrate_reads_only_prediction_files(tiny_copy):
    (tiny_copy / "model.safetensors").unlink()
    (tiny_copy / "last.pt").unlink()
    r = calibrate_run(tiny_copy, 0.3, method="ltt")
    assert r["calibration_split"] == "calib"
    (tiny_copy / "calib_predictions.npz").unlink()
    with pytest.raises(FileNotFoundError, match="no calibration split.*--allow-selection-split"):
        calibrate_run(tiny_copy, 0.3)


def test_shift_check_flags_different_score_distributions():
    from riskcl.experiment.calibrate import shift_check

    rng = np.random.default_rng(0)
    same = shift_check(rng.beta(5, 2, 300), rng.beta(5, 2, 300))
    moved = shift_check(rng.beta(5, 2, 300), rng.beta(2, 5, 300))
    assert not same["shift"] and moved["shift"] and "not exchangeable" in moved["note"]


@pytest.mark.slow
def test_ltt_and_crc_validity_on_a_real_trained_run(tmp_path):
    """A real (small) trained model. Its validation, calibration and test predictions are the population:
    calibration sets of 500 are drawn i.i.d. from it (400 of them), and each threshold's CER is measured on the whole
    population, which is exactly what the guarantees are about."""
    from riskcl.config import config_from_dict
    from riskcl.decision import conformal_risk_control, learn_then_test
    from riskcl.experiment import run_experiment

    cfg = config_from_dict({**TINY, "epochs": 1, "data": {"name": "demo", "image_size": 16}})
    run_experiment(cfg, tmp_path / "run")
    tax = get_taxonomy("demo")
    parts = [RunFolder(tmp_path / "run").predictions(s) for s in ("val", "calib", "test")]
    probs = softmax(np.concatenate([p["logits"] for p in parts]))
    y = np.concatenate([p["target"] for p in parts])
    alpha, delta = 0.1, 0.1
    rng = np.random.default_rng(0)
    ltt_ok, crc = [], []
    draws = 400
    for _ in range(draws):
        cal = rng.choice(len(y), 500, replace=True)
        t_ltt = learn_then_test(probs[cal], y[cal], tax, alpha, delta).threshold
        t_crc = conformal_risk_control(probs[cal], y[cal], tax, alpha).threshold
        ltt_ok.append(critical_error_rate(threshold_decision(probs, tax, t_ltt), y, tax) <= alpha)
        crc.append(critical_error_rate(threshold_decision(probs, tax, t_crc), y, tax))
    # The guarantee is P(CER <= alpha) >= 1 - delta; the estimate over `draws` calibration sets carries Monte
    # Carlo error (sd sqrt(delta (1 - delta) / draws)), so the check allows three of those.
    assert np.mean(ltt_ok) >= 1 - delta - 3 * np.sqrt(delta * (1 - delta) / draws)
    assert np.mean(crc) <= alpha + 3 * np.std(crc) / np.sqrt(len(crc))
