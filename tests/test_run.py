"""Training runs end to end (riskcl.experiment.run / trainer): the folder contract, resume, determinism, faults."""
from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from _tiny import TINY, tiny
from riskcl.config import config_from_dict
from riskcl.decision import decide, softmax
from riskcl.experiment import RunFailed, RunFolder, run_experiment
from riskcl.losses import create_loss
from riskcl.losses.registry import LOSSES, LossSpec
from riskcl.metrics import safety_report
from riskcl.taxonomy import get_taxonomy, severity_matrix

RUN_FILES = {"config.yaml", "taxonomy.yaml", "history.csv", "metrics.json", "predictions.npz",
             "val_predictions.npz", "calib_predictions.npz", "model.safetensors", "last.pt", "status.json",
             "splits.csv", "data.json"}
KILL_CFG = {**TINY, "epochs": 4, "data": {"name": "demo", "image_size": 16, "options": {"scale": 0.3}}}


def _without_time(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "wall_time_s"}


def test_run_folder_contract(tiny_run):
    out, metrics = tiny_run
    folder = RunFolder(out)
    assert RUN_FILES <= {p.name for p in out.iterdir()}
    assert folder.state == "finished" and folder.taxonomy() == get_taxonomy("demo")
    preds = folder.predictions("test")
    assert {"logits", "target", "ids", "groups", "paths"} <= set(preds)
    tax = get_taxonomy("demo")
    probs = softmax(preds["logits"])
    # Top level: the superclass-first rule at 0.5; by_rule holds the paper's argmax too.
    assert metrics["decision_rule"] == "superclass"
    recomputed = safety_report(probs, preds["target"], tax, labels=decide(probs, tax, "superclass"))
    argmax = safety_report(probs, preds["target"], tax)
    for k, v in recomputed.items():
        assert metrics[k] == pytest.approx(v), k
        assert metrics["by_rule"]["superclass"][k] == pytest.approx(v), k
        assert metrics["by_rule"]["argmax"][k] == pytest.approx(argmax[k]), k
    from riskcl.data import create_datasets

    data = create_datasets("demo", image_size=16, scale=0.15, progress=False).datasets
    assert list(preds["ids"]) == data["test"].ids and len(data["test"]) == metrics["n"]
    assert list(folder.predictions("calib")["ids"]) == data["calib"].ids and len(data["calib"]) > 0
    with open(out / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"train_loss", "val_cer", "val_f1_macro", "val_type_i", "val_type_ii"} <= set(rows[0])
    run = metrics["run"]
    assert run["dataset"] == "demo" and run["loss"] == "ce" and run["seed"] == 0 and run["device"] == "cpu"
    clinical = severity_matrix(tax, 5, 20)
    np.fill_diagonal(clinical, 0.0)  # a correct decision costs nothing; the paper's weight matrix has 1 there
    assert run["cost_matrix"] == clinical.tolist() and run["loss_matrix"] is None  # CE has no weight matrix
    assert run["n_calib"] == len(data["calib"]) and metrics["calib"]["n"] == len(data["calib"])
    assert metrics["wall_time_s"] > 0
    splits = folder.splits()
    assert set(splits["split"]) == {"train", "val", "calib", "test"}


def test_rerun_of_finished_folder_does_nothing(tiny_run):
    out, metrics = tiny_run
    stamp = (out / "metrics.json").stat().st_mtime_ns
    assert run_experiment(tiny(), out) == metrics
    assert (out / "metrics.json").stat().st_mtime_ns == stamp


def test_folder_of_another_config_is_refused(tiny_run):
    out, _ = tiny_run
    with pytest.raises(ValueError, match="different config"):
        run_experiment(tiny(seed=5), out)


def _register(monkeypatch, name, forward_hook):
    """A registry loss wrapping CE whose forward calls ``forward_hook(call_number, loss)``."""
    calls = {"n": 0}

    class Hooked(torch.nn.Module):
        def forward(self, logits, target):
            calls["n"] += 1
            return forward_hook(calls["n"], create_loss("ce")(logits, target))

    monkeypatch.setitem(LOSSES, name, LossSpec(lambda ctx: Hooked()))
    return calls


def test_resume_after_interruption_equals_uninterrupted(tmp_path, tiny_run, monkeypatch):
    _, full = tiny_run

    def interrupt(n, loss):
        if n == 13:  # 9 steps per epoch: stopped during the second epoch
            raise KeyboardInterrupt
        return loss

    _register(monkeypatch, "ce-interrupted", interrupt)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run_experiment(tiny(**{"loss.name": "ce-interrupted"}), out)
    folder = RunFolder(out)
    assert folder.state == "interrupted" and folder.load_checkpoint()["epoch"] == 1
    # The same run resumes with the plain loss (same numbers: the hooked loss is CE).
    cfg_text = (out / "config.yaml").read_text().replace("ce-interrupted", "ce")
    (out / "config.yaml").write_text(cfg_text)
    first = int(folder.history()["threads"].iloc[0])
    monkeypatch.setenv("OMP_NUM_THREADS", str(first + 1))  # a fresh start would now choose another count
    resumed = run_experiment(tiny(), out)
    assert folder.history()["threads"].tolist() == [first, first]  # the resumed run kept the count it started with
    assert np.array_equal(folder.predictions("test")["logits"], RunFolder(tiny_run[0]).predictions("test")["logits"])
    assert _without_time(resumed) == _without_time(full)


def test_same_seed_gives_identical_outputs(tmp_path, tiny_run):
    a = run_experiment(tiny(), tmp_path / "a")
    for name in ("predictions.npz", "val_predictions.npz", "calib_predictions.npz"):
        assert (tmp_path / "a" / name).read_bytes() == (tiny_run[0] / name).read_bytes(), name
    # metrics.json differs only in the measured wall time.
    assert json.dumps(_without_time(a), sort_keys=True) == json.dumps(_without_time(tiny_run[1]), sort_keys=True)
    run_experiment(tiny(seed=1), tmp_path / "c")  # another seed: other numbers (the test can fail)
    assert (tmp_path / "c" / "predictions.npz").read_bytes() != (tmp_path / "a" / "predictions.npz").read_bytes()


def _train_cmd(cfg_path, out):
    return [sys.executable, "-m", "riskcl", "train", str(cfg_path), "--out", str(out), "--quiet"]


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_equals_uninterrupted(tmp_path):
    cfg_path = tmp_path / "kill.yaml"
    cfg_path.write_text(yaml.safe_dump(KILL_CFG))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ref = tmp_path / "ref"
    t0 = time.time()
    subprocess.run(_train_cmd(cfg_path, ref), check=True, env=env, capture_output=True)
    duration = time.time() - t0
    out = tmp_path / "killed"
    rng = random.Random(0)
    kills = 0
    for _ in range(8):  # until three kills landed (each restart re-imports, so progress per try is small)
        if kills >= 3:
            break
        proc = subprocess.Popen(_train_cmd(cfg_path, out), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.15, 0.45) * duration)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        folder = RunFolder(out)
        if folder.state == "finished":
            break
        if folder.has_progress():
            folder.load_checkpoint()  # never torn: always loads
    assert kills >= 3
    subprocess.run(_train_cmd(cfg_path, out), check=True, env=env, capture_output=True)
    assert RunFolder(out).state == "finished"
    assert not [p for p in out.iterdir() if ".tmp" in p.name]  # no temp file of a killed write is left
    assert (out / "predictions.npz").read_bytes() == (ref / "predictions.npz").read_bytes()
    ref_m = json.loads((ref / "metrics.json").read_text())
    out_m = json.loads((out / "metrics.json").read_text())
    assert _without_time(out_m) == _without_time(ref_m)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickled_checkpoint_is_refused(tmp_path):
    import pickle

    folder = RunFolder(tmp_path)
    torch.save({"model": {}, "payload": _Evil()}, folder.file("checkpoint"))
    with pytest.raises(ValueError, match="refused or unreadable checkpoint"):
        folder.load_checkpoint()
    folder.file("checkpoint").write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(ValueError, match="last.pt"):
        folder.load_checkpoint()


def test_non_finite_loss_stops_run_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    # 9 steps per epoch (270 training images, batch 32): call 12 is epoch 2, step 3.
    _register(monkeypatch, "ce-nan", lambda n, loss: loss * float("nan") if n == 12 else loss)
    with pytest.raises(RunFailed, match=r"non-finite loss .*epoch 2, step 3"):
        run_experiment(tiny(**{"loss.name": "ce-nan"}), tmp_path / "nan")
    folder = RunFolder(tmp_path / "nan")
    status = folder.status()
    assert status["state"] == "failed" and "step 3" in status["error"]
    assert folder.load_checkpoint()["epoch"] == 1


def test_cost_section_sets_selection_metric_and_rcl_default(tmp_path):
    cfg = tiny(**{"epochs": 1, "loss.name": "rcl", "cost.lambda1": 2, "cost.lambda2": 40})
    metrics = run_experiment(cfg, tmp_path / "r")
    tax = get_taxonomy("demo")
    m = severity_matrix(tax, 2, 40)     # the paper's weights: 1 on the diagonal
    cost = m.copy()
    np.fill_diagonal(cost, 0.0)         # the clinical cost: a correct decision costs 0
    assert metrics["run"]["cost_matrix"] == cost.tolist() and metrics["run"]["loss_matrix"] == m.tolist()
    preds = RunFolder(tmp_path / "r").predictions("test")
    probs = softmax(preds["logits"])
    labels = decide(probs, tax)
    assert metrics["mean_cost"] == pytest.approx(cost[preds["target"], labels].mean())
    # rcl without parameters of its own trains with the run's cost, weighted as the paper weights (1 if correct).
    loss = create_loss("rcl", taxonomy=tax, cost=cost)
    assert loss.matrix.tolist() == m.tolist()
    assert create_loss("rcl", taxonomy=tax, cost=m, lambda2=10).matrix.tolist() == severity_matrix(tax, 5, 10).tolist()


def test_calibration_split_never_selects_the_model(tmp_path, monkeypatch):
    """Two data sets equal but for the labels of the calibration images (wrong in one of them): training,
    selection, validation and test predictions must be identical; only the calibration predictions' targets
    differ. Registered through the public dataset registry."""
    from riskcl.data import registry
    from riskcl.data.demo import index_demo

    def with_calib(flip):
        def adapter(root=None, size=32, seed=0, scale=1.0):
            idx = index_demo(root, size, seed, scale)
            t = idx.table
            calib = t.index[t["split"] == "train"][::5]  # every 5th training image is calibration data
            t.loc[calib, "split"] = "calib"
            if flip:
                t.loc[calib, "label"] = (t.loc[calib, "label"] + 1) % 4
            return idx
        return adapter

    runs = {}
    for flip in (False, True):
        monkeypatch.setitem(registry.DATASETS, f"demo-calib-{flip}", with_calib(flip))
        cfg = {**TINY, "data": {"name": f"demo-calib-{flip}", "image_size": 16, "options": {"scale": 0.15}},
               "loss": {"name": "ce", "taxonomy": "demo"}}
        run_experiment(config_from_dict(cfg), tmp_path / str(flip))
        runs[flip] = RunFolder(tmp_path / str(flip))
    a, b = runs[False], runs[True]
    for split in ("val", "test"):
        assert a.prediction_file(split).read_bytes() == b.prediction_file(split).read_bytes(), split
    assert a.history().drop(columns="epoch_time_s").equals(b.history().drop(columns="epoch_time_s"))
    ca, cb = a.predictions("calib"), b.predictions("calib")
    assert np.array_equal(ca["logits"], cb["logits"]) and not np.array_equal(ca["target"], cb["target"])


def test_skipped_bad_images_are_listed_in_the_run_folder(tmp_path):
    from _standins import seed_of, write_image

    root = tmp_path / "data"
    for c in ("calm", "angry"):
        for i in range(12):
            write_image(root / c / f"{c}{i}.png", seed_of(c, i), size=12)
    (root / "angry" / "angry3.png").write_bytes(b"")
    (tmp_path / "tax.yaml").write_text("name: t\nbenign: [calm]\nmalignant: [angry]\n")
    cfg = {**TINY, "epochs": 1, "data": {"name": "folder", "root": str(root), "image_size": 12,
                                         "val_fraction": 0.2, "test_fraction": 0.2, "calib_fraction": 0.2,
                                         "options": {"taxonomy": str(tmp_path / "tax.yaml")}}}
    with pytest.raises(ValueError, match="angry3.png"):
        run_experiment(config_from_dict(cfg), tmp_path / "strict")
    cfg["data"]["on_bad_image"] = "skip"
    metrics = run_experiment(config_from_dict(cfg), tmp_path / "run")
    listed = (tmp_path / "run" / "skipped_images.txt").read_text()
    assert "angry3.png" in listed and "zero-byte" in listed
    r = metrics["run"]
    assert r["n_train"] + r["n_val"] + r["n_calib"] + metrics["n"] == 23


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tmp_path):
    """DDP through torchrun with the Gloo backend: rank 0 writes a complete run folder; each rank trains on its
    own shard of the batch indices."""
    import shutil

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.skip("torchrun not found beside the Python interpreter")
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([torchrun, "--nproc_per_node=2", "-m", "riskcl", "train", str(cfg), "--out",
                           str(tmp_path / "ddp"), "--quiet"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["run"]["world_size"] == 2 and RunFolder(tmp_path / "ddp").state == "finished"
