"""Crashes, determinism, unsafe files, numerical faults, config validation, concurrency."""
from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _tiny import TINY, tiny
from riskcl.config import ConfigError, config_from_dict, load_config
from riskcl.experiment import RunFailed, read_status, run_experiment
from riskcl.experiment.lock import RunLock
from riskcl.experiment.run import load_checkpoint

KILL_CFG = {**TINY, "epochs": 4, "data": {"name": "demo", "image_size": 16, "options": {"scale": 0.3}}}


def _without_time(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "wall_time_s"}


def test_same_seed_gives_identical_outputs(tmp_path):
    a = run_experiment(tiny(), tmp_path / "a")
    b = run_experiment(tiny(), tmp_path / "b")
    assert (tmp_path / "a" / "predictions.npz").read_bytes() == (tmp_path / "b" / "predictions.npz").read_bytes()
    assert (tmp_path / "a" / "val_predictions.npz").read_bytes() == \
        (tmp_path / "b" / "val_predictions.npz").read_bytes()
    # metrics.json differs only in the measured wall time.
    assert json.dumps(_without_time(a), sort_keys=True) == json.dumps(_without_time(b), sort_keys=True)
    run_experiment(tiny(seed=1), tmp_path / "c")  # another seed: other numbers (the test can fail)
    assert (tmp_path / "c" / "predictions.npz").read_bytes() != (tmp_path / "a" / "predictions.npz").read_bytes()


def _train_cmd(cfg_path, out):
    return [sys.executable, "-m", "riskcl.cli", "train", str(cfg_path), "--out", str(out), "--quiet"]


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
        if read_status(out).get("state") == "finished":
            break
        if (out / "last.pt").exists():
            load_checkpoint(out / "last.pt")  # never torn: always loads
    assert kills >= 3
    subprocess.run(_train_cmd(cfg_path, out), check=True, env=env, capture_output=True)
    assert read_status(out)["state"] == "finished"
    assert (out / "predictions.npz").read_bytes() == (ref / "predictions.npz").read_bytes()
    ref_m = json.loads((ref / "metrics.json").read_text())
    out_m = json.loads((out / "metrics.json").read_text())
    assert _without_time(out_m) == _without_time(ref_m)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickled_checkpoint_is_refused(tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"model": {}, "payload": _Evil()}, path)
    with pytest.raises(RunFailed, match="refused or unreadable checkpoint"):
        load_checkpoint(path)
    path.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(RunFailed):
        load_checkpoint(path)


def test_non_finite_loss_stops_run_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    import riskcl.experiment.run as run_mod

    real = run_mod.create_loss
    calls = {"n": 0}

    class NaNAfter(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, logits, target):
            calls["n"] += 1
            loss = self.inner(logits, target)
            return loss * float("nan") if calls["n"] == 13 else loss  # 10 steps per epoch

    monkeypatch.setattr(run_mod, "create_loss", lambda *a, **k: NaNAfter(real(*a, **k)))
    with pytest.raises(RunFailed, match=r"non-finite loss .*epoch 2, step 3"):
        run_experiment(tiny(), tmp_path / "nan")
    status = read_status(tmp_path / "nan")
    assert status["state"] == "failed" and "step 3" in status["error"]
    assert load_checkpoint(tmp_path / "nan" / "last.pt")["epoch"] == 1


def test_sweep_goes_on_after_a_failed_run(tmp_path, monkeypatch):
    import riskcl.experiment.run as run_mod
    from riskcl.experiment.sweep import run_sweep

    real = run_mod.create_loss

    def failing(name, **kw):
        if name == "focal":
            raise ValueError("boom for focal")
        return real(name, **kw)

    monkeypatch.setattr(run_mod, "create_loss", failing)
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({**TINY, "epochs": 1}))
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"base": "base.yaml", "grid": {"loss.name": ["focal", "ce"]}}))
    summary = run_sweep(sweep, tmp_path / "out", progress=False)
    assert summary["loss.name-focal"].startswith("failed") and summary["loss.name-ce"].startswith("finished")
    assert read_status(tmp_path / "out" / "loss.name-focal")["state"] == "failed"


def test_run_lock_blocks_live_owner_and_recovers_stale(tmp_path):
    with RunLock(tmp_path):
        other = subprocess.run([sys.executable, "-c", (
            "import sys; from riskcl.experiment.lock import RunLock, RunLocked\n"
            f"try:\n RunLock({str(tmp_path)!r}).acquire(); print('got')\n"
            "except RunLocked as e: print('locked')")], capture_output=True, text=True)
        assert other.stdout.strip() == "locked"
    # A lock left by a process that no longer exists is taken over.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket
    (tmp_path / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid}))
    lock = RunLock(tmp_path)
    lock.acquire()
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    lock.release()


def test_two_sweeps_on_one_folder_never_run_a_run_twice(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({**TINY, "epochs": 1}))
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"base": "base.yaml", "grid": {"seed": [0, 1, 2]}}))
    cmd = [sys.executable, "-m", "riskcl.cli", "sweep", str(sweep), "--out", str(tmp_path / "o"), "--quiet"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate()[0] for p in procs]
    finished = sum(o.count("finished in") for o in outs)
    for p in procs:
        assert p.returncode in (0, 1)
    for seed in (0, 1, 2):
        assert read_status(tmp_path / "o" / f"seed-{seed}")["state"] == "finished"
    assert finished == 3  # each run trained exactly once, by one of the two processes


# --- config validation ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override,match", [
    ({"epoch": 3}, "Unknown config key 'epoch' .*did you mean 'epochs'"),
    ({"loss.lamda": 1}, "Unknown config key 'loss.lamda'"),
    ({"epochs": "ten"}, r"`epochs`: expected int, but got 'ten'"),
    ({"epochs": 0}, r"`epochs` = 0: expected an integer >= 1"),
    ({"optim.lr": -1.0}, r"`optim.lr` = -1.0"),
    ({"loss.name": "rcl", "loss.params": {"lambda2": -3}}, "lambda2"),
    ({"loss.name": "rcl-propsed"}, "did you mean 'rcl-proposed'"),
    ({"loss.name": "rcl", "loss.params": {"lamda1": 3}}, "did you mean 'lambda1'"),
    ({"data.name": "brainmri"}, "data.name"),
    ({"data.name": "brain_mri"}, "data.root"),
    ({"data.on_bad_image": "ignore"}, "on_bad_image"),
    ({"data.options": {"scael": 1}}, "did you mean 'scale'"),
    ({"model.pretrained": "yes"}, "model.pretrained"),
    ({"select_metric": "auc"}, "select_metric"),
])
def test_bad_configs_name_key_and_value(override, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict(TINY, override)


def test_taxonomy_not_matching_the_data_is_refused(tmp_path):
    tax = tmp_path / "t.yaml"
    tax.write_text("name: t\nbenign: [nevus, keratosis]\nmalignant: [melanoma, bcc]\n")
    with pytest.raises(ValueError, match="same names, same order"):
        run_experiment(tiny(**{"loss.taxonomy": str(tax)}), tmp_path / "r")


def test_yaml_is_loaded_safely_and_base_chain(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(evil)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(TINY))
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\nepochs: 7\nloss:\n  name: focal\n")
    cfg = load_config(child, ["optim.lr=0.5"])
    assert cfg.epochs == 7 and cfg.loss.name == "focal" and cfg.optim.lr == 0.5 and cfg.data.image_size == 16


_keys = st.sampled_from(["epochs", "seed", "name", "device", "data", "model", "loss", "optim", "bogus",
                         "select_metric", "amp"])
_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 50) | st.floats(allow_nan=True) |
                       st.text(max_size=8), lambda c: st.lists(c, max_size=3) |
                       st.dictionaries(st.sampled_from(["name", "lr", "root", "params", "lambda2", "x"]), c,
                                       max_size=3), max_leaves=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_keys, _values, max_size=5))
def test_random_configs_give_typed_error_or_valid_config(data):
    try:
        cfg = config_from_dict({**TINY, **data})
    except ValueError:
        return
    assert cfg.epochs >= 1


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["name", "classes", "benign", "malignant", "display_names", "x"]),
                       _values, max_size=4))
def test_random_taxonomies_give_value_error_or_valid(data):
    from riskcl.taxonomy import Taxonomy, severity_matrix

    try:
        tax = Taxonomy.from_dict(data)
    except ValueError:
        return
    assert severity_matrix(tax, 2, 3).shape == (tax.num_classes,) * 2


@settings(max_examples=80, deadline=None)
@given(st.binary(max_size=400))
def test_random_image_bytes_give_bad_image_error_or_array(tmp_path_factory, payload):
    from riskcl.data import BadImageError, load_image

    path = tmp_path_factory.mktemp("img") / "x.jpg"
    path.write_bytes(payload)
    try:
        arr = load_image(path, 8)
    except BadImageError as exc:
        assert str(path) in str(exc)
        return
    assert arr.shape == (8, 8, 3)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=200))
def test_random_label_files_give_typed_error_or_valid(tmp_path, text):
    from riskcl.data.tabular import index_csv

    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    (root / "labels.csv").write_text(text, encoding="utf-8")
    try:
        index_csv(root, taxonomy={"name": "t", "benign": ["a"], "malignant": ["b"]})
    except (ValueError, FileNotFoundError):
        return


def test_every_shipped_config_and_sweep_validates():
    from pathlib import Path

    from riskcl.experiment.sweep import load_sweep
    from riskcl.taxonomy import load_taxonomy

    root = Path(__file__).resolve().parents[1] / "configs"
    experiments = sorted(root.glob("*.yaml")) + sorted((root / "paper").glob("*.yaml"))
    assert len(experiments) >= 8
    for path in experiments:
        load_config(path, ["data.root=/data"])
    for path in sorted((root / "sweeps").glob("*.yaml")):
        assert load_sweep(path), path
    for path in sorted((root / "taxonomies").glob("*.yaml")):
        load_taxonomy(str(path))


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tmp_path):
    """DDP through torchrun with the Gloo backend: rank 0 writes a complete run folder."""
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
    assert metrics["run"]["world_size"] == 2 and read_status(tmp_path / "ddp")["state"] == "finished"
