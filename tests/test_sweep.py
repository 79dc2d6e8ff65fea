"""Sweeps, shards and run locks (riskcl.experiment.sweep, riskcl.experiment.lock) on tiny demo runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from _tiny import TINY
from riskcl.cli import main
from riskcl.experiment import RunFolder
from riskcl.experiment.lock import RunLock
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


def test_sweep_goes_on_after_a_failed_run(tmp_path):
    from _standins import seed_of, write_image

    good, bad = tmp_path / "good", tmp_path / "bad"
    for root in (good, bad):
        for c in ("calm", "angry"):
            for i in range(10):
                write_image(root / c / f"{c}{i}.png", seed_of(c, i), size=12)
    (bad / "calm" / "calm0.png").write_bytes(b"broken")  # on_bad_image: error fails this run during set-up
    (tmp_path / "tax.yaml").write_text("name: t\nbenign: [calm]\nmalignant: [angry]\n")
    base = {**TINY, "epochs": 1, "data": {"name": "folder", "image_size": 12, "options":
                                         {"taxonomy": str(tmp_path / "tax.yaml")}}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"base": "base.yaml", "grid": {"data.root": [str(bad), str(good)]}}))
    summary = run_sweep(sweep, tmp_path / "out", progress=False)
    (failed,) = [k for k, v in summary.items() if v.startswith("failed")]
    (ok,) = [k for k, v in summary.items() if v.startswith("finished")]
    assert "calm0.png" in summary[failed]
    assert RunFolder(tmp_path / "out" / failed).state == "failed"
    assert RunFolder(tmp_path / "out" / ok).state == "finished"


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
    cmd = [sys.executable, "-m", "riskcl", "sweep", str(sweep), "--out", str(tmp_path / "o"), "--quiet"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate()[0] for p in procs]
    finished = sum(o.count("finished in") for o in outs)
    for p in procs:
        assert p.returncode in (0, 1)
    for seed in (0, 1, 2):
        assert RunFolder(tmp_path / "o" / f"seed-{seed}").state == "finished"
    assert finished == 3  # each run trained exactly once, by one of the two processes
