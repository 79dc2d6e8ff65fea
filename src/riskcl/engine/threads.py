"""CPU threads per training process: a count that does not depend on what else runs, unless asked.

Float results move with the thread count (reductions are split differently), so the same seed gives the same
numbers only at the same count. The count follows, in order: ``threads: N`` in the config; ``OMP_NUM_THREADS``
(the convention users and SLURM set; ``riskcl sweep --launcher local --jobs N`` sets it to the cores / N for its
runs); else the usable cores (the CPU affinity, which SLURM and taskset restrict). None of these depends on the
machine's load.

``threads: auto`` trades that for speed on a shared machine: two trainings that each take every core slow each
other several times over, so each training registers itself in ``<cache>/processes/`` while it runs and takes the
usable cores divided by the number of live registered trainings (or by ``LOCAL_WORLD_SIZE`` under ``torchrun``),
and no more than the cores that other busy processes leave free (the runnable tasks of ``/proc/loadavg``,
sampled): the same seed can then give other numbers on a busier machine. The count is chosen when a run starts,
recorded per epoch in ``history.csv`` and in ``metrics.json``, and kept by a resumed run.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import torch

from ..data.paths import cache_root
from ..io import pid_alive
from ..machine import usable_cores


class TrainingSlot:
    """``with TrainingSlot(): ...`` registers this process as a running training on this machine."""

    def __init__(self, folder: str | os.PathLike | None = None) -> None:
        self.folder = Path(folder) if folder is not None else cache_root() / "processes"
        self.path = self.folder / f"{socket.gethostname()}-{os.getpid()}"

    def __enter__(self) -> "TrainingSlot":
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.path.write_text(str(os.getpid()))
        except OSError:  # a read-only cache only costs the automatic sharing
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)

    def live(self) -> int:
        """Trainings registered on this host whose process is alive (stale entries are removed)."""
        host = socket.gethostname()
        n = 0
        try:
            entries = list(self.folder.iterdir())
        except OSError:
            return 1
        for p in entries:
            name, _, pid = p.name.rpartition("-")
            if name != host or not pid.isdigit():
                continue
            if pid_alive(int(pid)):
                n += 1
            else:
                p.unlink(missing_ok=True)
        return max(n, 1)


def _own_running() -> int:
    """Threads of this process that are running now (its own OpenMP workers must not count as other load)."""
    n = 0
    for stat in Path("/proc/self/task").glob("*/stat"):
        try:
            n += stat.read_text().rsplit(")", 1)[1].split()[0] == "R"
        except (OSError, IndexError):
            continue
    return n


def busy_cores(samples: int = 5, interval: float = 0.02) -> int:
    """Cores kept busy by other processes: runnable tasks in ``/proc/loadavg`` less this process's running
    threads (the median of a few samples, since the count flickers); 0 where the file does not exist."""
    import statistics
    import time

    counts = []
    for k in range(samples):
        try:
            with open("/proc/loadavg", encoding="ascii") as fh:
                running = int(fh.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return 0
        counts.append(max(0, running - max(1, _own_running())))
        if k + 1 < samples:
            time.sleep(interval)
    return int(statistics.median(counts))


def _omp_threads() -> int | None:
    raw = os.environ.get("OMP_NUM_THREADS", "")
    return int(raw) if raw.isdigit() and int(raw) >= 1 else None


AUTO = "auto"


def thread_count(setting: int | str | None, slot: TrainingSlot | None = None) -> int:
    """``setting`` when a number; None: ``OMP_NUM_THREADS``, else the usable cores; ``"auto"``: usable cores /
    max(live trainings, LOCAL_WORLD_SIZE), capped by the cores other busy processes leave free; at least 1."""
    if setting is not None and setting != AUTO:
        return int(setting)
    omp = _omp_threads()
    if omp is not None and setting is None:
        return omp
    cores = usable_cores()
    if setting is None:
        return cores
    sharing = max(slot.live() if slot is not None else 1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    free = cores - busy_cores()
    return max(1, min(cores // sharing, free))


def apply_threads(setting: int | str | None, slot: TrainingSlot | None = None) -> int:
    """Set torch's intra-op thread count (see :func:`thread_count`); returns it."""
    n = thread_count(setting, slot)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
