"""CPU threads per training process: every process on a machine gets its share of the cores.

Two trainings that each take every core slow each other several times over (the CPU then spends its time
switching threads). Each training registers itself in ``<cache>/processes/`` while it runs; the default thread
count is the machine's usable cores divided by the number of live registered trainings (or by
``LOCAL_WORLD_SIZE`` under ``torchrun``, whichever is larger), re-read at every epoch so that a training started
later shares the cores too. ``threads: N`` in a config fixes the count.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import torch

from ..data.paths import cache_root
from ..io import pid_alive


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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


def thread_count(setting: int | None, slot: TrainingSlot | None = None) -> int:
    """``setting`` when given, else usable cores / max(live trainings, LOCAL_WORLD_SIZE), at least 1."""
    if setting is not None:
        return int(setting)
    sharing = max(slot.live() if slot is not None else 1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, usable_cores() // sharing)


def apply_threads(setting: int | None, slot: TrainingSlot | None = None) -> int:
    """Set torch's intra-op thread count (see :func:`thread_count`); returns it."""
    n = thread_count(setting, slot)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
