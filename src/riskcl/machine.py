"""What this process may use of the machine (no PyTorch: the torch-free service reads it too)."""
from __future__ import annotations

import os


def usable_cores() -> int:
    """The CPU cores this process may run on (the affinity SLURM or taskset gives), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
