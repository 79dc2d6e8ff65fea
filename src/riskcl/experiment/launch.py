"""Launching a sweep's runs through submitit: one SLURM job array (``--launcher slurm``), or several runs at once
on this machine (``--launcher local --jobs N``).

Each array task runs one run with the code that runs it in a plain sweep (:func:`run_experiment`): the same run
names, a finished run is skipped and an unfinished one resumes from its ``last.pt``, so resubmitting a sweep only
runs what is missing. A task is :class:`submitit.helpers.Checkpointable`: when SLURM preempts it or its time
limit nears, submitit requeues it with the same arguments and the run resumes from its last finished epoch. A
task that fails leaves its run folder marked failed and is reported as failed, never as done. The driver only
submits and exits; which job runs which run is kept in ``OUT/sweep-jobs.json`` and the logs in
``OUT/.submitit/<job id>/``, so ``--status`` (from the run folders, that file and ``squeue``) and ``--wait`` work
from any login node at any time. A run that asks for several GPUs (``--gpus-per-task`` > 1) runs under
``torchrun`` inside its task (:func:`torchrun_command`).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import submitit

from ..io import atomic_write_json, pid_alive, read_json
from .folder import RunFolder
from .sweep import PlannedRun, load_sweep
from .tracking import prepare_tracking, tracking_state

JOBS_FILE = "sweep-jobs.json"
LOG_DIR = ".submitit"
LAUNCHERS = ("local", "slurm")


@dataclass
class LaunchOptions:
    """SLURM resources of each array task (``None``: the cluster's default)."""

    partition: str | None = None
    gpus_per_task: int = 0
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    time_min: int = 24 * 60
    array_parallelism: int = 64
    slurm: dict[str, str] = field(default_factory=dict)  # any other sbatch option, e.g. {"account": "lab"}
    jobs: int = 1  # --launcher local: runs at once on this machine

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> "LaunchOptions":
        """From a sweep YAML's ``launcher:`` section (keys as the command-line options, dashes or underscores)."""
        names = {f for f in cls.__dataclass_fields__}
        kwargs = {}
        for key, value in (data or {}).items():
            k = str(key).replace("-", "_")
            k = {"gpus": "gpus_per_task", "mem": "mem_gb", "time": "time_min"}.get(k, k)
            if k not in names:
                raise ValueError(f"Unknown key `launcher.{key}`; expected one of {sorted(names)}")
            kwargs[k] = value
        return cls(**kwargs)


def torchrun_command(sweep: str | Path, out: str | Path, run_id: str, gpus: int,
                     extra: Sequence[str] = ()) -> list[str]:
    """The command a multi-GPU task runs: ``torchrun`` with one process per GPU, each running this one run of the
    sweep (rank 0 owns the run folder, as in ``torchrun -m riskcl train``)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={int(gpus)}",
            "-m", "riskcl", "sweep", str(sweep), "--out", str(out), "--only", run_id, "--quiet",
            *(["--set", *extra] if extra else [])]


class RunTask(submitit.helpers.Checkpointable):
    """One array task: one run of the sweep (resumed when it has progress). Requeued with the same arguments on
    preemption or timeout (submitit's ``Checkpointable``); the run folder holds the state (``last.pt`` after every
    epoch), so the run resumes from its last finished epoch."""

    def __call__(self, sweep: str, out: str, run_id: str, extra: Mapping[str, Any], gpus: int = 0) -> str:
        from .run import run_experiment

        if gpus > 1:
            overrides = [f"{k}={json.dumps(v)}" for k, v in extra.items()]
            subprocess.run(torchrun_command(sweep, out, run_id, gpus, overrides), check=True)
            return "finished"
        (run,) = [r for r in load_sweep(sweep, extra) if r.run_id == run_id]
        run_experiment(run.config, Path(out) / run_id, progress=False)
        return "finished"


def _jobs(out: Path) -> dict[str, Any]:
    path = out / JOBS_FILE
    return read_json(path) if path.is_file() else {}


def _active_slurm_jobs() -> dict[str, str]:
    """``{job id: state}`` of the jobs SLURM still holds (pending, running, completing, ...), one per array
    element (``squeue -r``)."""
    if not shutil.which("squeue"):
        return {}
    done = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        return {}
    return dict(line.split(maxsplit=1) for line in done.stdout.splitlines() if line.strip())


def run_states(sweep: str | Path, out: str | Path, extra: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per run of the sweep: ``state`` (pending / running / done / failed / not submitted), the last
    finished ``epoch``, the ``job`` id and its ``log`` folder, from the run folders, ``sweep-jobs.json`` and the
    scheduler."""
    out = Path(out)
    jobs, active = _jobs(out), _active_slurm_jobs()
    rows = []
    for run in load_sweep(sweep, extra):
        folder = RunFolder(out / run.run_id)
        try:
            state = folder.state
        except ValueError:
            state = "damaged"
        job = jobs.get(run.run_id, {})
        jid, launcher = job.get("job_id"), job.get("launcher")
        if launcher == "slurm":
            live = active.get(str(jid), "") if jid else ""
        else:
            live = "RUNNING" if jid and str(jid).isdigit() and pid_alive(int(jid)) else ""
        epochs = len(folder.history()) if folder.file("history").is_file() else 0
        if state == "finished":
            shown = "done"
        elif live.startswith(("PENDING", "CONFIGURING", "REQUEUE")):
            shown = "pending"
        elif live or (state == "running" and not jid):  # a task, or a plain `riskcl sweep` on this folder
            shown = "running"
        elif state in ("failed", "damaged", "interrupted") or (jid and state != "finished"):
            shown = "failed"  # the job is gone and the run did not finish: never reported as done
        else:
            shown = "not submitted"
        try:
            tracked = tracking_state(run.config, folder)
        except ValueError:
            tracked = "?"
        rows.append({"run": run.run_id, "state": shown, "epoch": epochs, "epochs": run.config.epochs,
                     "job": jid, "log": job.get("log"), "folder_state": state, "tracked": tracked})
    return rows


def check_sweep_folder(sweep: str | Path, out: str | Path, extra: Mapping[str, Any] | None = None) -> None:
    """``--status`` / ``--wait`` need a folder this sweep ran or submitted into: refuse a missing folder, or one that
    holds none of its runs and no job record (a typo would otherwise read as "every run not submitted")."""
    out = Path(out)
    if not out.is_dir():
        raise FileNotFoundError(f"{out}: no such folder; nothing of {sweep} was run or submitted there (check --out)")
    ids = [r.run_id for r in load_sweep(sweep, extra)]
    if not (out / JOBS_FILE).is_file() and not any((out / rid).is_dir() for rid in ids) \
            and not any(out.glob("sweep-shard-*.json")):
        raise FileNotFoundError(f"{out} holds no run of {sweep} and no job record: it is not this sweep's folder "
                                f"(check --out and the sweep file)")


def format_states(rows: Sequence[Mapping[str, Any]]) -> str:
    width = max([len(r["run"]) for r in rows] + [3])
    tracks = any(r.get("tracked", "-") != "-" for r in rows)
    lines = [f"{'run':<{width}}  {'state':<13}  epoch  {'job':<12}  " + ("tracked  " if tracks else "") + "log"]
    for r in rows:
        tracked = f"{str(r.get('tracked', '-')).split(':')[0]:<7}  " if tracks else ""
        lines.append(f"{r['run']:<{width}}  {r['state']:<13}  {r['epoch']:>2}/{r['epochs']:<2}  "
                     f"{str(r['job'] or '-'):<12}  {tracked}{r['log'] or '-'}")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    untracked = [r for r in rows if str(r.get("tracked", "")).startswith("no")]
    notes = [f"{len(untracked)} not tracked ({r['run']}: {r['tracked'][4:]})" for r in untracked[:1]]
    return "\n".join(lines + [", ".join([f"{n} {s}" for s, n in sorted(counts.items())] + notes)])


def _executor(out: Path, launcher: str, options: LaunchOptions, name: str):
    executor = submitit.AutoExecutor(folder=out / LOG_DIR / "%j", cluster=launcher)
    params: dict[str, Any] = {"name": name, "timeout_min": int(options.time_min)}
    if launcher == "slurm":
        params.update({"slurm_array_parallelism": int(options.array_parallelism)})
        if options.partition:
            params["slurm_partition"] = options.partition
        if options.cpus_per_task:
            params["cpus_per_task"] = int(options.cpus_per_task)
        if options.gpus_per_task:
            params["gpus_per_node"] = int(options.gpus_per_task)
        if options.mem_gb:
            params["mem_gb"] = float(options.mem_gb)
        if options.slurm:
            params["slurm_additional_parameters"] = dict(options.slurm)
    executor.update_parameters(**params)
    return executor


def launch(sweep: str | Path, out: str | Path, launcher: str = "slurm", options: LaunchOptions | None = None,
           extra: Mapping[str, Any] | None = None, runs: Sequence[PlannedRun] | None = None) -> list[dict[str, Any]]:
    """Submit the sweep's runs that are neither done nor already queued or running; returns one row per submitted
    run (its job id and log folder). ``--launcher local`` runs ``options.jobs`` at a time and returns when all
    are done (each with the usable cores / ``jobs`` threads); ``slurm`` returns at once."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"Expected --launcher in {list(LAUNCHERS)}, but got {launcher!r}")
    if launcher == "slurm" and not shutil.which("sbatch"):
        raise RuntimeError("--launcher slurm needs SLURM's sbatch on this machine (a login node of the cluster)")
    options, extra, out = options or LaunchOptions(), dict(extra or {}), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    planned = {r.run_id: r for r in (runs if runs is not None else load_sweep(sweep, extra))}
    states = {r["run"]: r["state"] for r in run_states(sweep, out, extra)}
    todo = [rid for rid in planned if states.get(rid) not in ("done", "pending", "running")]
    if not todo:
        return []
    for note in prepare_tracking([planned[rid].config for rid in todo]):  # once, before any task opens the store
        print(f"tracking: {note}", flush=True)
    executor = _executor(out, launcher, options, f"riskcl-{Path(sweep).stem}")
    gpus = int(options.gpus_per_task or 0)
    args = ([str(Path(sweep).resolve())] * len(todo), [str(out.resolve())] * len(todo), todo,
            [extra] * len(todo), [gpus] * len(todo))
    task = RunTask()
    if launcher == "slurm":
        jobs = executor.map_array(task, *args)
        return _record(out, launcher, todo, jobs)
    jobs = max(1, int(options.jobs))
    with _runs_threads(jobs):
        return _run_local(executor, task, out, todo, args, jobs)


@contextlib.contextmanager
def _runs_threads(jobs: int):
    """``OMP_NUM_THREADS`` = the usable cores / ``jobs`` for the local runs (unless the user set it): each run's
    thread count, and so its numbers, then depend on ``--jobs`` only, never on the load (see
    :mod:`riskcl.engine.threads`)."""
    from ..machine import usable_cores

    if os.environ.get("OMP_NUM_THREADS"):
        yield
        return
    os.environ["OMP_NUM_THREADS"] = str(max(1, usable_cores() // jobs))
    try:
        yield
    finally:
        os.environ.pop("OMP_NUM_THREADS", None)


def _record(out: Path, launcher: str, run_ids: Sequence[str], jobs: Sequence[Any]) -> list[dict[str, Any]]:
    table = _jobs(out)
    rows = []
    for rid, job in zip(run_ids, jobs):
        row = {"job_id": str(job.job_id), "launcher": launcher, "log": str(out / LOG_DIR / str(job.job_id)),
               "submitted": time.strftime("%Y-%m-%d %H:%M:%S")}
        table[rid] = row
        rows.append({"run": rid, **row})
    atomic_write_json(out / JOBS_FILE, table)
    return rows


def _run_local(executor, task, out: Path, todo: list[str], args: tuple, jobs_at_once: int) -> list[dict[str, Any]]:
    """``jobs_at_once`` runs at a time through submitit's local executor (each a process of its own)."""
    rows, running, position = [], [], 0
    while position < len(todo) or running:
        while position < len(todo) and len(running) < jobs_at_once:
            job = executor.submit(task, *(a[position] for a in args))
            rows += _record(out, "local", [todo[position]], [job])
            running.append(job)
            position += 1
        finished = next(submitit.helpers.as_completed(running))
        running.remove(finished)
        try:
            finished.result()
        except Exception:  # noqa: BLE001 - the run folder says failed; the others go on
            pass
    return rows
