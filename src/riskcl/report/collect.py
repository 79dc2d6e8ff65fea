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

from ..experiment.folder import RunFolder
from ..metrics import REPORT_KEYS
from ..taxonomy import Taxonomy

METRIC_COLUMNS = (*REPORT_KEYS, "n")


@dataclass
class RunRecord:
    """One finished run as read from its folder."""

    folder: RunFolder
    metrics: dict[str, Any]
    history: pd.DataFrame
    taxonomy: Taxonomy
    _predictions: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def path(self) -> Path:
        return self.folder.path

    @property
    def run(self) -> dict[str, Any]:
        return self.metrics["run"]

    @property
    def method(self) -> str:
        params = self.run.get("loss_params") or {}
        extra = ",".join(f"{k}={v}" for k, v in sorted(params.items()))
        tta = "+tta" if self.run.get("tta", "none") != "none" else ""
        return self.run["loss"] + (f"({extra})" if extra else "") + tta

    def predictions(self, split: str = "test") -> dict[str, np.ndarray]:
        """The run's saved predictions, read once per report."""
        if split not in self._predictions:
            self._predictions[split] = self.folder.predictions(split)
        return self._predictions[split]

    def has_predictions(self, split: str) -> bool:
        return split in self._predictions or self.folder.has_predictions(split)


def _read(folder: RunFolder) -> RunRecord:
    record = RunRecord(folder, folder.metrics(), folder.history(), folder.taxonomy())
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
    return records, notes


def runs_table(records: list[RunRecord], root: Path) -> pd.DataFrame:
    """One row per run: dataset, model, method, seed, the test metrics and the run folder (relative)."""
    rows = []
    for r in records:
        m = r.metrics
        rows.append({"dataset": r.run["dataset"], "model": r.run["model"], "method": r.method, "seed": r.run["seed"],
                     **{k: m[k] for k in METRIC_COLUMNS}, "epochs": r.run["epochs"],
                     "wall_time_s": m.get("wall_time_s", float("nan")), "folder": str(r.path.relative_to(root))})
    return pd.DataFrame(rows).sort_values(["dataset", "model", "method", "seed"]).reset_index(drop=True)
