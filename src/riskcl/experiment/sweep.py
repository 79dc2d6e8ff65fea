"""Sweeps: a YAML grid over any config keys, expanded into runs, sharded without coordination.

Sweep file::

    base: ../brain_mri_cpu.yaml        # the experiment config every run starts from (relative to this file)
    overrides:                         # dotted keys applied to every run
      data.root: ../shared/data/brain_tumor_mri
    grid:                              # the cartesian product of these values gives the runs
      loss.name: [ce, rcl-proposed]
      seed: [0, 1, 2]

The grid key ``recipe`` takes named bundles of overrides, for contenders that differ in several keys at once::

    grid:
      recipe:
        - {name: ce, loss.name: ce}
        - {name: ce-tta, loss.name: ce, tta: flip}
        - {name: rcl-warmup, loss.name: rcl, loss.params: {warmup_epochs: 2}}

Each run's folder name is built from its grid values (``loss.name-ce__seed-0``), so every machine computes the
same names; ``--shard I/N`` takes the runs whose position in the sorted list is ``I mod N``. Finished runs are
skipped, unfinished ones resume, a failed run is recorded and the sweep goes on.
"""
from __future__ import annotations

import itertools
import json
import re
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping


from ..config import ConfigError, ExperimentConfig, config_from_dict, parse_yaml_text, read_yaml
from ..io import atomic_write_json
from .lock import RunLocked
from .folder import RunFolder
from .run import RunFailed, check_same_config, run_experiment
from .tracking import prepare_tracking, tracking_state


RECIPE = "recipe"


@dataclass(frozen=True)
class PlannedRun:
    run_id: str
    values: dict[str, Any]
    config: ExperimentConfig


def _slug(value: Any) -> str:
    if isinstance(value, Mapping) and "name" in value:  # a whole section (e.g. data): named by its `name`
        value = value["name"]
    if isinstance(value, float) and value.is_integer():  # 2 and 2.0 are one setting, so one run
        value = int(value)
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "x"


def run_id(values: Mapping[str, Any]) -> str:
    return "__".join(f"{k}-{_slug(v)}" for k, v in values.items()) or "run"


def load_sweep(path: str | Path, extra_overrides: Mapping[str, Any] | None = None) -> list[PlannedRun]:
    """Expand a sweep file into validated runs (all configs are checked before any run starts)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Sweep file {path} does not exist")
    spec = parse_yaml_text(path.read_text(encoding="utf-8", errors="replace"), str(path))
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: expected a mapping with `base`, `overrides` and `grid`")
    unknown = set(spec) - {"base", "overrides", "grid", "launcher"}
    if unknown:
        raise ConfigError(f"{path}: unknown sweep keys {sorted(unknown)}; expected base, overrides, grid, launcher")
    if spec.get("base") is not None and (not isinstance(spec["base"], str) or not spec["base"].strip()):
        raise ConfigError(f"{path}: `base` = {spec['base']!r}: expected the path of one YAML file (relative to "
                          f"{path.name})")
    base = read_yaml(path.parent / spec["base"]) if spec.get("base") else {}
    overrides = {**(spec.get("overrides") or {}), **(extra_overrides or {})}
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict) or any(not isinstance(v, list) or not v for v in grid.values()):
        raise ConfigError(f"{path}: `grid` must map dotted keys to non-empty lists of values")
    for recipe in grid.get(RECIPE, []):
        if not isinstance(recipe, dict) or not isinstance(recipe.get("name"), str):
            raise ConfigError(f"{path}: every `{RECIPE}` entry must be a mapping with a `name` and dotted overrides, "
                              f"but got {recipe!r}")
    keys = list(grid)
    runs = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        values = dict(zip(keys, combo))
        rid = run_id(values)
        applied = {k: v for k, v in values.items() if k != RECIPE}
        applied.update({k: v for k, v in values.get(RECIPE, {}).items() if k != "name"})
        try:
            cfg = config_from_dict(base, {**overrides, **applied, "name": rid})
        except ConfigError as exc:
            raise ConfigError(f"{path}: run {rid}: {exc}") from None
        if cfg.tracking.mlflow or cfg.tracking.tensorboard:  # one experiment per sweep, the grid values as tags
            cfg.tracking.experiment = cfg.tracking.experiment or path.stem
            cfg.tracking.tags = {**cfg.tracking.tags, "riskcl.sweep": path.stem,
                                 **{f"grid.{k}": _slug(v) for k, v in values.items()}}
        runs.append(PlannedRun(rid, values, cfg))
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{path}: two grid points give the same run name; make the grid values distinct")
    return sorted(runs, key=lambda r: r.run_id)


def sweep_launcher(path: str | Path) -> dict[str, Any]:
    """The sweep file's ``launcher:`` section (SLURM resources of ``--launcher slurm``), or ``{}``."""
    spec = parse_yaml_text(Path(path).read_text(encoding="utf-8", errors="replace"), str(path))
    section = spec.get("launcher") if isinstance(spec, dict) else None
    if section is not None and not isinstance(section, dict):
        raise ConfigError(f"{path}: `launcher` must be a mapping of options (partition, gpus_per_task, ...)")
    return dict(section or {})


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``; ``None`` -> ``(0, 1)``."""
    if text is None:
        return 0, 1
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise ValueError(f"Expected --shard I/N with 0 <= I < N, but got {text!r}")
    return int(m.group(1)), int(m.group(2))


def shard_runs(runs: list[PlannedRun], shard: tuple[int, int]) -> list[PlannedRun]:
    i, n = shard
    return [r for k, r in enumerate(runs) if k % n == i]


def run_sweep(path: str | Path, out: str | Path, shard: str | None = None,
              extra_overrides: Mapping[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) this shard's unfinished runs; returns ``{run_id: state}`` and writes a shard summary."""
    runs = shard_runs(load_sweep(path, extra_overrides), parse_shard(shard))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for note in prepare_tracking([r.config for r in runs]):
        print(f"  tracking: {note}", flush=True)
    summary: dict[str, Any] = {}
    for k, run in enumerate(runs, 1):
        folder = out / run.run_id
        try:
            before = RunFolder(folder).state
        except ValueError:
            before = "damaged"
        if before == "finished":
            try:  # a finished run is kept only when it is this grid point's run
                check_same_config(RunFolder(folder), run.config)
            except ValueError as exc:
                summary[run.run_id] = f"failed: {exc}"
                print(f"  FAILED {run.run_id}: {exc}", flush=True)
                continue
            summary[run.run_id] = "skipped (finished)"
            continue
        print(f"[{k}/{len(runs)}] {run.run_id}", flush=True)
        t0 = time.time()
        try:
            run_experiment(run.config, folder, progress=progress)
            summary[run.run_id] = f"finished in {time.time() - t0:.0f}s"
            print(f"  {run.run_id}: {summary[run.run_id]}", flush=True)
        except RunLocked as exc:
            summary[run.run_id] = f"locked: {exc}"
            print(f"  {run.run_id}: {summary[run.run_id]}", flush=True)
        except (RunFailed, ValueError, RuntimeError, OSError) as exc:
            summary[run.run_id] = f"failed: {exc}"
            print(f"  FAILED {run.run_id}: {exc}", flush=True)
            if folder.is_dir():
                (folder / "error.txt").write_text(traceback.format_exc())
    write_shard_summary(path, out, runs, parse_shard(shard), summary)
    return summary


def write_shard_summary(path: str | Path, out: Path, runs: list[PlannedRun], shard: tuple[int, int],
                        notes: Mapping[str, str]) -> None:
    """``sweep-shard-I-of-N.json``: each run's state read from its folder (the truth on disk, so two sweeps that
    share a folder write the same table), with what this process did to it."""
    table = {}
    for run in runs:
        folder = RunFolder(out / run.run_id)
        try:
            state = folder.state
            tracked = tracking_state(run.config, folder)
        except ValueError:
            state, tracked = "damaged", "?"
        table[run.run_id] = {"state": state, "this_process": notes.get(run.run_id, "not reached"), "tracked": tracked}
    atomic_write_json(out / f"sweep-shard-{shard[0]}-of-{shard[1]}.json", {"sweep": str(path), "runs": table})
