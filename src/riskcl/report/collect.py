"""Read finished run folders into one table (nothing here trains or evaluates a model)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..experiment.io import load_npz
from ..taxonomy import Taxonomy


@dataclass
class RunRecord:
    """One finished run as read from its folder."""

    path: Path
    metrics: dict[str, Any]
    history: pd.DataFrame
    _predictions: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def run(self) -> dict[str, Any]:
        return self.metrics["run"]

    @property
    def method(self) -> str:
        params = self.run.get("loss_params") or {}
        extra = ",".join(f"{k}={v}" for k, v in sorted(params.items()))
        return self.run["loss"] + (f"({extra})" if extra else "")

    @property
    def taxonomy(self) -> Taxonomy:
        levels = self.run.get("levels", self.run["superclass"])
        return Taxonomy(self.run["dataset"], tuple(self.run["classes"]), tuple(int(v) for v in levels))

    def predictions(self, split: str = "test") -> dict[str, np.ndarray]:
        """The run's saved predictions, read once per report."""
        if split not in self._predictions:
            name = "predictions.npz" if split == "test" else "val_predictions.npz"
            self._predictions[split] = load_npz(self.path / name)
        return self._predictions[split]


def find_runs(root: str | Path) -> tuple[list[RunRecord], list[str]]:
    """Finished runs under ``root`` (any depth) and a note for each unfinished or failed one."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder of runs")
    records, notes = [], []
    for status in sorted(root.rglob("status.json")):
        folder = status.parent
        state = json.loads(status.read_text()).get("state")
        if state != "finished" or not (folder / "metrics.json").is_file():
            notes.append(f"{folder.relative_to(root)}: {state}")
            continue
        metrics = json.loads((folder / "metrics.json").read_text())
        hist_path = folder / "history.csv"
        history = pd.read_csv(hist_path) if hist_path.is_file() else pd.DataFrame()
        records.append(RunRecord(folder, metrics, history))
    if not records:
        raise FileNotFoundError(f"No finished run under {root}")
    return records, notes


def runs_table(records: list[RunRecord], root: Path) -> pd.DataFrame:
    """One row per run: dataset, model, method, seed, the test metrics and the run folder (relative)."""
    rows = []
    for r in records:
        m = r.metrics
        rows.append({"dataset": r.run["dataset"], "model": r.run["model"], "method": r.method, "seed": r.run["seed"],
                     **{k: m[k] for k in ("cer", "f1_macro", "accuracy", "visual_ambiguity", "type_i", "type_ii",
                                          "sensitivity", "specificity", "auroc", "ece", "mean_cost", "n")},
                     "epochs": r.run["epochs"], "wall_time_s": m.get("wall_time_s", float("nan")),
                     "folder": str(r.path.relative_to(root))})
    return pd.DataFrame(rows).sort_values(["dataset", "model", "method", "seed"]).reset_index(drop=True)
