"""Read finished run folders into one table (nothing here trains or evaluates a model).

A damaged run folder (corrupt metrics, missing predictions, ...) is skipped with a note naming the file, so one
bad folder never stops the report of a whole study.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..data.encoding import METADATA_ONLY
from ..experiment.folder import RunFolder
from ..metrics import REPORT_KEYS
from ..taxonomy import Taxonomy

METRIC_COLUMNS = (*REPORT_KEYS, "n")


LABEL_OMITS = ("teacher",)  # loss parameters that are paths, not settings


def method_label(run: dict[str, Any]) -> str:
    """How tables name a run's method: the loss and its parameters, ``+tta`` (for a model that reads images), and
    a fusion model's head and metadata dropout (``ce+tta+late-dropout0.3``). A distilled student's teacher is
    not named (its folder is recorded with the run; runs with other teachers are told apart as variants)."""
    params = run.get("loss_params") or {}
    extra = ",".join(f"{k}={v}" for k, v in sorted(params.items()) if k not in LABEL_OMITS)
    tta = "+tta" if run.get("tta", "none") != "none" and run["model"] != METADATA_ONLY else ""
    fusion = run.get("fusion")
    meta = "" if not fusion else (f"+{fusion['head']}" + (f"-dropout{fusion['metadata_dropout']:g}"
                                                           if fusion.get("metadata_dropout") else ""))
    return run["loss"] + (f"({extra})" if extra else "") + tta + meta


@dataclass
class RunRecord:
    """One finished run as read from its folder."""

    folder: RunFolder
    metrics: dict[str, Any]
    history: pd.DataFrame
    taxonomy: Taxonomy
    variant: str = ""                   # set when runs of one method differ in more than the seed
    split_seed: int = 0                 # data.split_seed: runs of one recipe on another split are a replication
    _predictions: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)
    _order: np.ndarray | None = field(default=None, repr=False)  # test rows in the pool's image-id order

    @property
    def path(self) -> Path:
        return self.folder.path

    @property
    def run(self) -> dict[str, Any]:
        return self.metrics["run"]

    @property
    def method(self) -> str:
        return method_label(self.run) + self.variant

    def predictions(self, split: str = "test") -> dict[str, np.ndarray]:
        """The run's saved predictions, read once per report; the test split in its pool's image-id order, so
        that runs pooled or paired image by image line up by id, not by position."""
        if split not in self._predictions:
            arrays = self.folder.predictions(split)
            if split == "test" and self._order is not None:
                arrays = {k: v[self._order] for k, v in arrays.items()}
            self._predictions[split] = arrays
        return self._predictions[split]

    def align_to(self, ids: np.ndarray) -> None:
        """Reorder this run's test predictions to ``ids`` (the same set of image ids in another order)."""
        mine = self.folder.predictions("test")["ids"].astype(str)
        position = {i: k for k, i in enumerate(mine)}
        self._order = np.array([position[str(i)] for i in ids])
        self._predictions.pop("test", None)

    @property
    def training_seconds(self) -> float:
        """What the run cost to train (an ensemble: its members together; a distilled student: with its teacher's
        training), from ``metrics.json``."""
        members = self.run.get("wall_time_s_members")
        own = float(members if members is not None else self.metrics.get("wall_time_s", float("nan")))
        teacher = (self.run.get("teacher") or {}).get("training_seconds")
        return own + (float(teacher) if teacher is not None else 0.0)

    def has_predictions(self, split: str) -> bool:
        return split in self._predictions or self.folder.has_predictions(split)


def _read(folder: RunFolder) -> RunRecord:
    record = RunRecord(folder, folder.metrics(), folder.history(), folder.taxonomy(),
                       split_seed=folder.read_config().data.split_seed)
    record.predictions("test")  # a report needs them: a damaged file is found here, not halfway through
    return record


def find_runs(root: str | Path) -> tuple[list[RunRecord], list[str]]:
    """Finished runs under ``root`` (any depth) and a note for each unfinished, failed or damaged one."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder of runs")
    records, notes = [], []
    for folder in RunFolder.find(root):
        where = folder.path.relative_to(root)
        try:
            if not folder.is_finished():
                notes.append(f"{where}: {folder.state}")
                continue
            records.append(_read(folder))
        except (ValueError, OSError, KeyError, TypeError) as exc:
            notes.append(f"{where}: skipped, damaged ({exc})")
    if not records:
        raise FileNotFoundError(f"No finished run under {root}" + (f" ({'; '.join(notes)})" if notes else ""))
    records, pool_notes = settle_pools(records, root)
    return records, notes + pool_notes


def pool_key(record: RunRecord) -> tuple:
    """``(dataset, model, method, split seed)``: the runs a table pools as seeds of one method on one split."""
    return record.run["dataset"], record.run["model"], record.method, record.split_seed


def recipe_name(run_name: str) -> str | None:
    """The sweep recipe a run came from (``recipe-ce-tta-96px__data.split_seed-0__seed-1`` -> ``ce-tta-96px``)."""
    import re

    m = re.search(r"(?:^|__)recipe-(.+?)(?:__|$)", str(run_name))
    return m.group(1) if m else None


POOL_IGNORES = ("seed", "name", "data.split_seed")  # what runs pooled as one method may differ in (a split seed is
                                                    # a replication: its runs are pooled apart and shown apart)


def settle_pools(records: list[RunRecord], root: Path) -> tuple[list[RunRecord], list[str]]:
    """Decide which runs a report may pool as seeds of one method: only runs that differ in the seed and nothing
    else, on the same split and test images. A run with the same config and seed as another is a duplicate and
    counts once; runs of another ``data.split_seed`` are pooled apart as a replication of the same method (the
    tables show each split seed); runs that differ in other settings, or were tested on other images, become
    separate rows (their method gets a variant label: the sweep recipe's name, else the difference). Pooled runs
    are aligned image by image by id."""
    from ..experiment.run import config_difference

    kept, notes = [], []
    named, unnamed = set(), []  # methods whose sweep recipes name their rows; pools of recipe runs not yet named
    configs = {id(r): r.folder.read_config() for r in records}  # read once, compared many times
    by_method: dict[tuple, list[RunRecord]] = {}
    for r in records:
        by_method.setdefault((r.run["dataset"], r.run["model"], r.method), []).append(r)
    for group in by_method.values():
        pools: list[list[RunRecord]] = []  # each: runs that may be pooled as seeds
        for r in group:
            cfg, ids = configs[id(r)], np.sort(r.folder.predictions("test")["ids"].astype(str))
            home = None
            for pool in pools:
                first = pool[0]
                same_config = not config_difference(configs[id(first)], cfg, ignore=POOL_IGNORES) \
                    and first.split_seed == r.split_seed
                same_images = np.array_equal(ids, np.sort(first.predictions("test")["ids"].astype(str)))
                if same_config and same_images:
                    home = pool
                    break
            if home is None:
                pools.append([r])
                continue
            twin = next((p for p in home if p.run["seed"] == r.run["seed"]), None)
            if twin is not None:
                notes.append(f"{r.path.relative_to(root)}: same config and seed as {twin.path.relative_to(root)} "
                             f"(a copy?): counted once")
                continue
            r.align_to(home[0].predictions("test")["ids"])
            home.append(r)
        base = pools[0][0]
        recipes = {recipe_name(configs[id(p[0])].name) for p in pools}
        differ = [p for p in pools if config_difference(configs[id(base)], configs[id(p[0])], ignore=POOL_IGNORES)]
        for pool in pools:
            diff = config_difference(configs[id(base)], configs[id(pool[0])], ignore=POOL_IGNORES, limit=3)
            if differ and None not in recipes and len(recipes) > 1:  # a sweep's recipes name their own rows
                named.add(pool[0].method)
                for r in pool:
                    r.variant = f" [{recipe_name(configs[id(r)].name)}]"
            elif diff or (pool is not pools[0] and pool[0].split_seed == base.split_seed):
                what = ", ".join(diff) if diff else "other test images"
                for r in pool:
                    r.variant = f" [{what}]"
                notes.append(f"{pool[0].method}: runs of {base.method.split(' [')[0]} that differ in more than the "
                             f"seed ({what}) are reported as a separate row, not pooled as seeds")
            elif len({recipe_name(configs[id(r)].name) for r in pool} - {None}) == 1:
                unnamed.append(pool)
            kept.extend(pool)
    for pool in unnamed:  # once a method's recipes name its rows in one data set, they name them in every one,
        if pool[0].method in named:  # so that a reference (`ce+tta [ce-tta]`) means the same recipe throughout
            for r in pool:
                r.variant = f" [{recipe_name(configs[id(r)].name)}]"
    return kept, notes


def runs_table(records: list[RunRecord], root: Path) -> pd.DataFrame:
    """One row per run: dataset, model, method, seed, the test metrics and the run folder (relative)."""
    rows = []
    for r in records:
        m = r.metrics
        rows.append({"dataset": r.run["dataset"], "model": r.run["model"], "method": r.method,
                     "split seed": r.split_seed, "seed": r.run["seed"],
                     **{k: m[k] for k in METRIC_COLUMNS}, "epochs": r.run["epochs"],
                     "wall_time_s": m.get("wall_time_s", float("nan")), "folder": str(r.path.relative_to(root))})
    return pd.DataFrame(rows).sort_values(["dataset", "model", "method", "split seed", "seed"]).reset_index(drop=True)
