"""Reports (riskcl.report) built from run folders only."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from _tiny import TINY
from riskcl.cli import main
from riskcl.experiment.sweep import run_sweep


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    (d / "base.yaml").write_text(yaml.safe_dump({**TINY, "epochs": 1}))
    (d / "grid.yaml").write_text(yaml.safe_dump({"base": "base.yaml", "overrides": {"optim.lr": 0.003},
                                                 "grid": {"loss.name": ["ce", "rcl-proposed"], "seed": [0, 1]}}))
    out = tmp_path_factory.mktemp("out")
    return out, run_sweep(d / "grid.yaml", out, progress=False)


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
