"""How fast the command line answers: ``riskcl --version``, ``--help``, ``COMMAND --help`` vs ``python -c pass``.

Wall time (median of ``--repeat`` runs) and peak memory (the child's ru_maxrss from ``os.wait4``) of each command in
a fresh interpreter. Target (issue 26): ``--help`` and ``--version`` under 0.5 s and 100 MB on an idle 2-core
machine. ``--quick`` runs each once (the CI-sized form that keeps the benchmark from rotting).

    python benchmarks/bench_cli.py [--repeat 5] [--quick]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "riskcl --version": [sys.executable, "-m", "riskcl", "--version"],
    "riskcl --help": [sys.executable, "-m", "riskcl", "--help"],
    "riskcl train --help": [sys.executable, "-m", "riskcl", "train", "--help"],
    "riskcl serve --help": [sys.executable, "-m", "riskcl", "serve", "--help"],
}


def run_once(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak resident MB) of one run of ``cmd``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="one run each (CI)")
    a = ap.parse_args()
    repeat = 1 if a.quick else a.repeat
    print(f"{'command':24s} {'wall (median)':>14s} {'peak MB':>8s}  (repeat {repeat}, {os.cpu_count()} CPUs)")
    for name, cmd in COMMANDS.items():
        runs = [run_once(cmd) for _ in range(repeat)]
        wall = statistics.median(r[0] for r in runs)
        peak = max(r[1] for r in runs)
        print(f"{name:24s} {wall:13.3f}s {peak:8.1f}")


if __name__ == "__main__":
    main()
