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
    # The cost-robust table: each method's expected cost is the mean of its runs' (recomputed here by hand at
    # each run's operating point, the 0.5 default rule: every run's costs are the fixed 5 / 20).
    from riskcl.experiment import RunFolder
    from riskcl.metrics import malignant_probability

    assert "Cost-robust comparison" in md and (rep / "figures" / "decision_curve_demo.png").is_file()
    for row in data["cost_robust"]:
        costs = []
        for r in (r for r in data["runs"] if r["method"] == row["method"]):
            folder = RunFolder(out / r["folder"])
            preds, tax = folder.predictions("test"), folder.taxonomy()
            e = np.exp(preds["logits"] - preds["logits"].max(1, keepdims=True))
            p_mal = malignant_probability(e / e.sum(1, keepdims=True), tax)
            is_mal = tax.superclass[preds["target"]] == 1
            costs.append((5 * np.sum((p_mal >= 0.5) & ~is_mal) + 20 * np.sum((p_mal < 0.5) & is_mal)) / len(p_mal))
        assert row["cost (fixed)"] == pytest.approx(np.mean(costs)) == pytest.approx(row["expected cost"])
        assert 0 <= row["H-measure"] <= 1 and row["seeds"] == 2


def test_only_runs_that_differ_in_the_seed_alone_are_pooled(swept, tmp_path):
    """A copied run counts once; a run of other epochs, or on other test images, is its own row (issue 21)."""
    import shutil

    from riskcl.experiment import RunFolder
    from riskcl.report.collect import find_runs

    out, _ = swept
    root = tmp_path / "runs"
    shutil.copytree(out / "loss.name-ce__seed-0", root / "a")
    shutil.copytree(out / "loss.name-ce__seed-0", root / "copy")                   # the same run twice
    shutil.copytree(out / "loss.name-ce__seed-1", root / "b")
    shutil.copytree(out / "loss.name-ce__seed-1", root / "longer")                 # seed 1, but other epochs
    cfg = (root / "longer" / "config.yaml").read_text().replace("epochs: 1", "epochs: 3")
    (root / "longer" / "config.yaml").write_text(cfg)
    shutil.copytree(out / "loss.name-ce__seed-1", root / "shuffled")               # other order, other images
    folder = RunFolder(root / "shuffled")
    preds = folder.predictions("test")
    order = np.arange(len(preds["ids"]))[::-1]
    np.savez(folder.prediction_file("test"), **{k: v[order] for k, v in preds.items()})
    (root / "shuffled" / "config.yaml").write_text(
        (root / "shuffled" / "config.yaml").read_text().replace("seed: 1", "seed: 2"))
    metrics = json.loads((root / "shuffled" / "metrics.json").read_text())
    metrics["run"]["seed"] = 2
    (root / "shuffled" / "metrics.json").write_text(json.dumps(metrics))
    records, notes = find_runs(root)
    methods = sorted(r.method for r in records)
    assert methods.count("ce") == 3 and any("epochs: 1 -> 3" in m for m in methods)  # a, b, shuffled (seed 2)
    assert any("counted once" in n for n in notes) and any("separate row" in n for n in notes)
    pooled = [r for r in records if r.method == "ce"]
    ids = [r.predictions("test")["ids"].tolist() for r in pooled]
    assert ids[0] == ids[1] == ids[2]  # aligned image by image, not by position
    # other test images (a different set): a separate row, not a numpy shape error
    small = RunFolder(root / "shuffled")
    preds = small.predictions("test")
    np.savez(small.prediction_file("test"), **{k: v[:-5] for k, v in preds.items()})
    records, notes = find_runs(root)
    assert any("other test images" in r.method for r in records)
    assert main(["report", str(root), "--out", str(tmp_path / "rep"), "--bootstrap", "50"]) == 0


def test_a_one_run_report_says_what_it_cannot_make_and_embeds_its_figures(swept, tmp_path):
    import shutil

    out, _ = swept
    shutil.copytree(out / "loss.name-ce__seed-0", tmp_path / "one" / "a")
    rep = tmp_path / "rep"
    assert main(["report", str(tmp_path / "one"), "--out", str(rep), "--bootstrap", "20"]) == 0
    md = (rep / "REPORT.md").read_text()
    assert "(no rows)" not in md and md.count("Not made: this section needs") == 3
    html = (rep / "report.html").read_text()
    assert "data:image/png;base64," in html and "src='figures/" not in html
