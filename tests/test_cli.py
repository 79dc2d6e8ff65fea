"""The command line (riskcl.cli): every command's help, train / evaluate / predict round trips, exit codes."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import yaml

from _tiny import TINY
from conftest import BRAIN_MRI, demo_png, needs_brain_mri, needs_isic
from riskcl.cli import COMMANDS, main
from riskcl.decision import softmax
from riskcl.experiment import RunFolder
from riskcl.metrics import malignant_probability
from riskcl.taxonomy import get_taxonomy


def test_cli_help_for_every_command(capsys):
    names = [c.name for c in COMMANDS]
    assert {"demo", "train", "evaluate", "predict", "sweep", "report", "calibrate", "tune-lambda", "data"} <= set(names)
    for name in names:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        assert "usage: riskcl" in capsys.readouterr().out


def test_cli_train_with_overrides(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    assert main(["train", str(cfg), "epochs=1", "loss.name=rcl", "cost.lambda1=2", "cost.lambda2=40", "--out",
                 str(tmp_path / "r"), "--quiet"]) == 0
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["run"]["loss"] == "rcl" and m["run"]["epochs"] == 1
    assert m["run"]["cost_matrix"][2][0] == 40.0 and m["run"]["cost_matrix"][0][2] == 2.0
    assert main(["train", str(cfg), "loss.nme=ce", "--out", str(tmp_path / "x")]) == 2
    assert "did you mean 'loss.name'" in capsys.readouterr().err


def test_cli_evaluate_and_predict(tiny_run, tmp_path, capsys):
    out, metrics = tiny_run
    assert main(["evaluate", str(out), "--json"]) == 0
    text = capsys.readouterr().out
    report = json.loads(text[text.index("{"):])
    assert report["cer"] == pytest.approx(metrics["cer"]) and report["type_ii"] == metrics["type_ii"]
    assert report["decision_rule"] == "superclass" and "own 'test' split" in report["source"]
    paths = [str(demo_png(tmp_path, i)) for i in range(2)]
    csv_path = tmp_path / "preds.csv"
    assert main(["predict", str(out), *paths, "--out", str(csv_path)]) == 0
    with open(csv_path) as fh:
        rows = list(csv.DictReader(fh))
    tax = get_taxonomy("demo")
    assert len(rows) == 2 and set(rows[0]) >= {"image", "decision", "predicted", "superclass", "p_malignant",
                                               "threshold", "p_nevus"}
    probs = np.array([[float(r[f"p_{c}"]) for c in tax.classes] for r in rows])
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    saved = softmax(RunFolder(out).predictions("test")["logits"][:2])
    np.testing.assert_allclose(probs, saved, atol=1e-4)  # the same pixels and model as the run's own test split
    for r, p in zip(rows, probs):  # the decision never contradicts p(malignant)
        p_mal = malignant_probability(p[None], tax)[0]
        assert (r["decision"] == "refer") == (p_mal >= 0.5) == (r["superclass"] == "malignant")
    # A missing file is a row that says so (exit 3: some inputs need a look), not a stop.
    missing = tmp_path / "missing.png"
    assert main(["predict", str(out), str(missing), "--out", str(tmp_path / "m.csv")]) == 3
    (row,) = list(csv.DictReader(open(tmp_path / "m.csv")))
    assert row["image"] == str(missing) and row["decision"] == "unreadable" and "not found" in row["error"]


@needs_brain_mri
@pytest.mark.slow
def test_brain_mri_cli_acceptance_command(tmp_path):
    out = tmp_path / "bm"
    assert main(["train", "configs/brain_mri_cpu.yaml", f"data.root={BRAIN_MRI}", "epochs=1",
                 "max_steps_per_epoch=30", "--out", str(out), "--quiet"]) == 0  # every split predicted in full
    folder = RunFolder(out)
    m = folder.metrics()
    preds = folder.predictions("test")
    # the official Testing folder without the copies of training images (data.duplicates: drop, the default)
    dropped = [p for p in folder.data_info()["dropped_duplicates"] if "/Testing/" in p]
    assert len(dropped) > 0 and m["n"] == len(preds["ids"]) == 1311 - len(dropped)
    assert preds["ids"][0].startswith("Te-") and not set(preds["paths"]) & set(dropped)
    assert folder.predictions("calib")["ids"][0].startswith("Tr-")
    from riskcl.decision import decide
    from riskcl.metrics import safety_report

    tax = get_taxonomy("brain_mri")
    probs = softmax(preds["logits"])
    r = safety_report(probs, preds["target"], tax, labels=decide(probs, tax))
    assert r["cer"] == pytest.approx(m["cer"]) and r["type_ii"] == m["type_ii"]
    imgs = [str(BRAIN_MRI / "Testing" / "glioma" / "Te-gl_0010.jpg"),
            str(BRAIN_MRI / "Testing" / "notumor" / "Te-no_0010.jpg")]
    assert main(["predict", str(out), *imgs, "--out", str(tmp_path / "p.csv")]) == 0
    assert len((tmp_path / "p.csv").read_text().strip().splitlines()) == 3


@needs_brain_mri
def test_data_check_cli_on_brain_mri_reports_cross_split_duplicates(capsys):
    # at the size the Brain MRI runs train at: the check fills the cache they read (one decode for the session)
    assert main(["data", "check", "brain_mri", "--root", str(BRAIN_MRI), "--image-size", "48", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["usable"] and report["splits"]["test"]["counts"]["notumor"] == 405
    assert report["duplicates"]["across_splits"] == 79 and len(report["duplicate_groups"]) == 194
    assert any(any(f.endswith("Te-me_0135.jpg") for f in g) for g in report["duplicate_groups"])


def test_python_dash_m_runs_the_cli():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "riskcl", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("riskcl ")
    assert torch.__version__  # the CLI process imported riskcl without a GPU


@needs_isic
@pytest.mark.slow
def test_isic_ham10000_layout_trains_and_calibrates_on_its_calibration_split(isic_copy, capsys):
    out = isic_copy
    folder = RunFolder(out)
    splits = folder.splits()
    lesions = {s: set(g) for s, g in splits.groupby("split")["group"]}
    assert set(lesions) == {"train", "val", "calib", "test"} and all(lesions.values())
    assert all(not lesions[a] & lesions[b] for a in lesions for b in lesions if a < b)
    assert main(["calibrate", str(out), "--alpha", "0.1"]) == 0
    assert folder.calibration()["calibration_split"] == "calib"
    assert "on the calib split" in capsys.readouterr().out


def test_the_command_line_answers_without_importing_torch():
    """`riskcl --help`, `--version` and `COMMAND --help` build the parser only: no PyTorch, numpy or torchmetrics
    (7.4 s and 1.2 GB before; benchmarks/bench_cli.py measures it)."""
    import subprocess
    import sys

    code = ("import sys; from riskcl.cli.main import build_parser; p = build_parser(); "
            "heavy = [m for m in ('torch', 'numpy', 'torchmetrics', 'timm', 'pandas') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    version = subprocess.run([sys.executable, "-m", "riskcl", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.strip() == "riskcl 0.4.0"
    bench = subprocess.run([sys.executable, "benchmarks/bench_cli.py", "--quick"], capture_output=True, text=True,
                           cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert bench.returncode == 0 and "riskcl --version" in bench.stdout  # the benchmark runs (CI-sized)
