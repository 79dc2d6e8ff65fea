"""The paper's lambda1 search (riskcl.experiment.tune)."""
from __future__ import annotations

import json

import yaml

from _tiny import TINY
from riskcl.cli import main


def test_tune_lambda_picks_lowest_val_cer_under_fpr_bound(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "epochs": 1}))
    assert main(["tune-lambda", str(cfg), "--lambda2", "40", "--lambda1", "1", "10", "--max-fpr", "1.0",
                 "--out", str(tmp_path / "t"), "--quiet"]) == 0
    r = json.loads((tmp_path / "t" / "tuning.json").read_text())
    for g in r["grid"]:  # --lambda2 is the run's clinical cost too, not only the loss weight
        run = json.loads((tmp_path / "t" / g["folder"] / "metrics.json").read_text())["run"]
        assert run["cost_matrix"][2][0] == 40.0 and run["loss_matrix"][2][0] == 40.0
    assert [g["lambda1"] for g in r["grid"]] == [1.0, 10.0]
    assert r["best"]["val_cer"] == min(g["val_cer"] for g in r["grid"])
    # An impossible bound: no admissible setting, exit code 1 and a note.
    assert main(["tune-lambda", str(cfg), "--lambda2", "40", "--lambda1", "1", "10", "--max-fpr", "1e-9",
                 "--out", str(tmp_path / "t"), "--quiet"]) in (0, 1)
