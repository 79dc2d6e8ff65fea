"""More sub-commands (filled in below)."""
from __future__ import annotations

import argparse

from .cli import COMMANDS
from .config import parse_overrides


def _add_sweep(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="sweep YAML (base, overrides, grid)")
    p.add_argument("--out", required=True, help="folder that holds one sub-folder per run")
    p.add_argument("--shard", default=None, help="I/N: run only the I-th of N shares of the grid (0 <= I < N)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run")
    p.add_argument("--dry-run", action="store_true", help="list this shard's runs and exit")
    p.add_argument("--quiet", action="store_true")


def _run_sweep(a: argparse.Namespace) -> int:
    from .experiment.sweep import load_sweep, parse_shard, run_sweep, shard_runs

    extra = parse_overrides(a.set)
    if a.dry_run:
        for r in shard_runs(load_sweep(a.config, extra), parse_shard(a.shard)):
            print(r.run_id)
        return 0
    summary = run_sweep(a.config, a.out, a.shard, extra, progress=not a.quiet)
    failed = [k for k, v in summary.items() if v.startswith("failed")]
    print(f"{len(summary)} runs: {len(summary) - len(failed)} ok, {len(failed)} failed")
    return 1 if failed else 0


COMMANDS["sweep"] = ("run (or resume) every unfinished run of a YAML grid", _add_sweep, _run_sweep)
