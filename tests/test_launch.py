"""Sweeps through submitit (riskcl.experiment.launch): a real one-node SLURM cluster (scripts/slurm_cluster.sh,
Debian's slurm-wlm + munge, started here as root), and submitit's local executor on the same code path."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from _tiny import TINY
from riskcl.cli import main
from riskcl.experiment.folder import RunFolder
from riskcl.experiment.launch import JOBS_FILE, LaunchOptions, run_states, torchrun_command

pytest.importorskip("submitit", reason="the launcher tests need submitit (pip install 'riskcl[cluster]')")
ROOT = Path(__file__).resolve().parents[1]


def _sweep(folder: Path, epochs: int, seeds=(0, 1), extra: dict | None = None) -> Path:
    (folder / "base.yaml").write_text(yaml.safe_dump({**TINY, "epochs": epochs}))
    path = folder / "seeds.yaml"
    path.write_text(yaml.safe_dump({"base": "base.yaml", "grid": {"seed": list(seeds)}, **(extra or {})}))
    return path


@pytest.fixture(scope="module")
def slurm():
    """A one-node SLURM cluster for these tests (skipped, with the reason, where it cannot start)."""
    if not shutil.which("slurmctld") or not shutil.which("munged"):
        pytest.skip("slurm-wlm / munge are not installed (apt-get install slurm-wlm munge; .ci/run does)")
    if os.geteuid() != 0:
        pytest.skip("starting slurmctld and slurmd needs root")
    was_up = subprocess.run(["pgrep", "-x", "slurmctld"], capture_output=True).returncode == 0
    done = subprocess.run([str(ROOT / "scripts" / "slurm_cluster.sh"), "start"], capture_output=True, text=True,
                          timeout=120)
    if done.returncode != 0:
        pytest.skip(f"the one-node SLURM cluster did not start: {done.stderr.strip()[-500:]}")
    yield
    if not was_up:
        subprocess.run([str(ROOT / "scripts" / "slurm_cluster.sh"), "stop"], capture_output=True, timeout=60)


def _until(condition, timeout: float = 300, what: str = "") -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(1)


def test_a_sweep_runs_as_a_slurm_job_array(slurm, tmp_path, capsys):
    sweep, out = _sweep(tmp_path, 1), tmp_path / "runs"
    assert main(["sweep", str(sweep), "--out", str(out), "--launcher", "slurm", "--time", "10"]) == 0
    assert "submitted 2 run(s) as SLURM job array" in capsys.readouterr().out
    jobs = json.loads((out / JOBS_FILE).read_text())
    assert sorted(jobs) == ["seed-0", "seed-1"] and all(j["launcher"] == "slurm" for j in jobs.values())
    assert main(["sweep", str(sweep), "--out", str(out), "--wait", "--quiet"]) == 0
    assert all(RunFolder(out / r).is_finished() for r in jobs)
    assert main(["sweep", str(sweep), "--out", str(out), "--status"]) == 0
    table = capsys.readouterr().out
    assert "2 done" in table and jobs["seed-0"]["job_id"] in table
    assert main(["sweep", str(sweep), "--out", str(out), "--launcher", "slurm"]) == 0  # resubmitting: nothing left
    assert "nothing to submit" in capsys.readouterr().out


def test_a_cancelled_task_is_failed_and_resumes_from_its_checkpoint_when_resubmitted(slurm, tmp_path, capsys):
    # 20 short epochs: the job is still running when it is cancelled however many cores its epochs get
    sweep, out = _sweep(tmp_path, 20, seeds=(0,)), tmp_path / "runs"
    assert main(["sweep", str(sweep), "--out", str(out), "--launcher", "slurm", "--time", "10"]) == 0
    folder = RunFolder(out / "seed-0")
    _until(lambda: folder.file("history").is_file() and len(folder.history()) >= 2, what="two epochs")
    job = json.loads((out / JOBS_FILE).read_text())["seed-0"]["job_id"]
    subprocess.run(["scancel", job], check=True)
    _until(lambda: job not in subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True,
                                             text=True).stdout.split(), what="the cancelled job to leave")
    (row,) = run_states(sweep, out)
    assert row["state"] == "failed" and 2 <= row["epoch"] < 20  # never reported as done
    kept = folder.history().iloc[:2].to_dict("records")
    assert main(["sweep", str(sweep), "--out", str(out), "--launcher", "slurm", "--time", "10"]) == 0
    second = json.loads((out / JOBS_FILE).read_text())["seed-0"]["job_id"]
    assert second != job
    assert main(["sweep", str(sweep), "--out", str(out), "--wait", "--quiet"]) == 0
    history = folder.history()
    assert folder.is_finished() and history["epoch"].tolist() == list(range(1, 21))
    assert history.iloc[:2].to_dict("records") == kept  # resumed from its checkpoint, not started again


def test_the_local_launcher_runs_several_runs_through_submitit(tmp_path, capsys):
    sweep, out = _sweep(tmp_path, 1), tmp_path / "runs"
    assert main(["sweep", str(sweep), "--out", str(out), "--launcher", "local", "--jobs", "2"]) == 0
    jobs = json.loads((out / JOBS_FILE).read_text())
    assert {j["launcher"] for j in jobs.values()} == {"local"}
    assert [r["state"] for r in run_states(sweep, out)] == ["done", "done"]


def test_launcher_options_and_the_torchrun_command(tmp_path, capsys):
    sweep = _sweep(tmp_path, 1, extra={"launcher": {"partition": "gpu", "gpus-per-task": 4, "time": 90,
                                                    "slurm": {"account": "lab"}}})
    from riskcl.experiment.sweep import sweep_launcher

    options = LaunchOptions.from_mapping(sweep_launcher(sweep))
    assert (options.partition, options.gpus_per_task, options.time_min, options.slurm) == ("gpu", 4, 90,
                                                                                           {"account": "lab"})
    with pytest.raises(ValueError, match="launcher.bogus"):
        LaunchOptions.from_mapping({"bogus": 1})
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "r"), "--launcher", "local", "--jobs", "2",
                 "--slurm", "account"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    cmd = torchrun_command(sweep, tmp_path / "r", "seed-0", 4, ["optim.lr=0.01"])
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    assert cmd[5:9] == ["-m", "riskcl", "sweep", str(sweep)]
    assert "--only" in cmd and cmd[cmd.index("--only") + 1] == "seed-0" and cmd[-1] == "optim.lr=0.01"
    # --only runs one run of the sweep in this process (what each torchrun rank executes)
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "r"), "--only", "seed-1", "--quiet"]) == 0
    assert RunFolder(tmp_path / "r" / "seed-1").is_finished() and not (tmp_path / "r" / "seed-0").exists()


def test_a_preempted_or_timed_out_task_is_requeued_and_resumes(slurm, tmp_path):
    """SLURM signals a job before its time limit or on preemption (USR2, as submitit asks with --signal): the
    task checkpoints through submitit, is requeued, and the run resumes from its last finished epoch."""
    sweep, out = _sweep(tmp_path, 5, seeds=(0,)), tmp_path / "runs"
    assert main(["sweep", str(sweep), "--out", str(out), "--launcher", "slurm", "--time", "10"]) == 0
    folder = RunFolder(out / "seed-0")
    _until(lambda: folder.file("history").is_file() and len(folder.history()) >= 2, what="two epochs")
    job = json.loads((out / JOBS_FILE).read_text())["seed-0"]["job_id"]
    subprocess.run(["scancel", "--signal=USR2", job], check=True)

    def requeued() -> bool:
        info = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
        return "Restarts=1" in info and "JobState=PENDING" in info

    _until(requeued, timeout=120, what="the requeue")
    kept = folder.history().iloc[:2].to_dict("records")
    assert run_states(sweep, out)[0]["state"] == "pending"
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)  # skip SLURM's delay
    assert main(["sweep", str(sweep), "--out", str(out), "--wait", "--quiet"]) == 0
    history = folder.history()
    assert folder.is_finished() and history["epoch"].tolist() == [1, 2, 3, 4, 5]
    assert history.iloc[:2].to_dict("records") == kept
    assert json.loads((out / JOBS_FILE).read_text())["seed-0"]["job_id"] == job  # the same job, requeued
    log = "".join(p.read_text() for p in (out / ".submitit").rglob("*.err"))
    assert "Caught signal SIGUSR2" in log
