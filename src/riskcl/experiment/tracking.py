"""Experiment tracking in the trackers labs already run: MLflow and TensorBoard (the ``tracking:`` section).

Each run logs its resolved config as parameters (dotted keys), every epoch's metrics (the row of
``history.csv``), the final test metrics (CER, F1-macro, accuracy, AUROC, mean cost, ... as ``test_<name>``), the
operating point when ``riskcl calibrate`` runs, and the model card as an artifact when ``riskcl card`` runs. The
MLflow run id is kept in the run folder (``tracking.json``), so a resumed run, and the commands after training,
continue the same tracked run instead of starting a second one. A sweep logs its runs under one experiment named
after the sweep, with the grid values as tags.

Tracking never stops training: a tracker that cannot be reached (or fails) warns once and is left out for the
rest of the run, and the run folder records that it is not tracked and why (``tracking.json``), which
``riskcl sweep --status`` and the sweep summary show. MLflow's own HTTP retries are bounded
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` 2 and ``MLFLOW_HTTP_REQUEST_TIMEOUT`` 10 s unless set) so that an unreachable
server costs seconds, not minutes. Runs that start together (a SLURM array, ``--jobs N``) share one store: the
sweep's driver creates it and the experiment before any task starts (:func:`prepare_tracking`), and a task
retries a transient database error (a locked SQLite file) a few times before giving up.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config import ExperimentConfig
from .folder import RunFolder

FINAL_KEYS = ("cer", "f1_macro", "accuracy", "auroc", "mean_cost", "sensitivity", "specificity", "type_ii",
              "type_i", "dice", "jaccard", "thresholded_jaccard", "fnr", "missed_half", "over_rate", "hd95")


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _numbers(row: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in row.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(float(v)):
            out[str(k)] = float(v)
    return out


RETRIES = 5  # attempts at a tracking store call that failed (a transient database error), 0.5 s, 1 s, 2 s ... apart


def _retry(call):
    """``call()``, tried :data:`RETRIES` times with a growing pause: parallel runs that open one SQLite store race
    on its locks (and, on a new store, on its schema)."""
    for attempt in range(RETRIES):
        try:
            return call()
        except Exception:  # noqa: BLE001 - the store's own errors; the last one is raised
            if attempt == RETRIES - 1:
                raise
            time.sleep(0.5 * 2 ** attempt)


def _experiment_id(client, experiment: str, uri: str) -> str:
    """The experiment's id, created when missing (a concurrent creation by another run is found, not doubled)."""
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):  # artifacts beside the database, not in the working folder
        location = Path(uri[len("sqlite:///"):]).resolve().parent.joinpath("mlartifacts").as_uri()
    try:
        return client.create_experiment(experiment, artifact_location=location)
    except Exception:  # noqa: BLE001 - another run created it first
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise
        return exp.experiment_id


def prepare_tracking(configs: Sequence[ExperimentConfig]) -> list[str]:
    """Create each MLflow store and experiment the configs name, once, before their runs start (a sweep's driver
    calls it); returns a note for each store that could not be prepared (the runs then try, and record, on their
    own)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    notes = []
    for uri, experiment in sorted({(c.tracking.mlflow, c.tracking.experiment or c.name) for c in configs
                                   if c.tracking.mlflow}):
        try:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=uri)
            _retry(lambda: _experiment_id(client, experiment, uri))
        except Exception as exc:  # noqa: BLE001 - tracking never stops a sweep
            notes.append(f"MLflow store {uri} could not be prepared ({type(exc).__name__}: {str(exc)[:200]})")
    return notes


def tracking_state(cfg: ExperimentConfig, folder: RunFolder) -> str:
    """``-`` (the config tracks nothing), ``yes``, ``no: <why>`` or ``not yet`` (the run has not started)."""
    if not (cfg.tracking.mlflow or cfg.tracking.tensorboard):
        return "-"
    record = folder.tracking() if folder.path.is_dir() else {}
    if record.get("not_tracked"):
        return f"no: {record['not_tracked']}"
    return "yes" if record else "not yet"


class _MLflow:
    name = "MLflow"

    def __init__(self, uri: str, experiment: str, folder: RunFolder, tags: Mapping[str, Any]) -> None:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        record = folder.tracking()
        run_id = record.get("mlflow_run_id") if record.get("mlflow_uri") == uri else None
        if run_id is not None:
            try:
                self.client.get_run(run_id)
            except Exception:  # noqa: BLE001 - the store was reset: start a new tracked run
                run_id = None
        if run_id is None:
            exp_id = _retry(lambda: _experiment_id(self.client, experiment, uri))
            run = _retry(lambda: self.client.create_run(exp_id, run_name=folder.path.name,
                                                        tags={"riskcl.run_folder": str(folder.path.resolve()),
                                                              **{str(k): str(v) for k, v in tags.items()}}))
            run_id = run.info.run_id
            record = {k: v for k, v in record.items() if k != "not_tracked"}
            folder.write_tracking({**record, "mlflow_uri": uri, "mlflow_run_id": run_id, "experiment": experiment})
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        logged = self.client.get_run(self.run_id).data.params
        new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in logged]
        for i in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[i:i + 100])

    def metrics(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric
        import time

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


class _TensorBoard:
    name = "TensorBoard"

    def __init__(self, folder_uri: str, folder: RunFolder) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(folder_uri) / folder.path.name))

    def params(self, params: Mapping[str, Any]) -> None:
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in sorted(params.items())), 0)

    def metrics(self, values: Mapping[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def artifact(self, path: Path) -> None:
        pass  # TensorBoard keeps scalars and text; the card stays in the run folder

    def close(self, status: str) -> None:
        self.writer.close()


class Tracker:
    """The run's trackers (none when the config names none); every call is safe: a failing tracker warns once
    and is dropped, and training goes on."""

    def __init__(self, cfg: ExperimentConfig, folder: RunFolder) -> None:
        self.backends: list[Any] = []
        self.folder = folder
        t = cfg.tracking
        if t.mlflow:
            self._try(lambda: self.backends.append(_MLflow(t.mlflow, t.experiment or cfg.name, folder, t.tags)),
                      "MLflow")
        if t.tensorboard:
            self._try(lambda: self.backends.append(_TensorBoard(t.tensorboard, folder)), "TensorBoard")

    def _not_tracked(self, name: str, exc: BaseException) -> None:
        """Record in the run folder that a tracker was dropped, and why (``--status`` and the summary show it)."""
        try:
            record = self.folder.tracking()
            if not record.get("not_tracked"):
                self.folder.write_tracking({**record, "not_tracked": f"{name} failed ({type(exc).__name__}: "
                                                                     f"{str(exc)[:160]})"})
        except (OSError, ValueError):
            pass

    @staticmethod
    def _warn(name: str, exc: BaseException) -> None:
        warnings.warn(f"tracking: {name} failed ({type(exc).__name__}: {str(exc)[:300]}); the run goes on without "
                      f"it", UserWarning, stacklevel=3)

    def _try(self, call, name: str) -> None:
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - tracking never stops training
            self._warn(name, exc)
            self._not_tracked(name, exc)

    def _each(self, method: str, *args: Any) -> None:
        for backend in list(self.backends):
            try:
                getattr(backend, method)(*args)
            except Exception as exc:  # noqa: BLE001
                self._warn(backend.name, exc)
                self._not_tracked(backend.name, exc)
                self.backends.remove(backend)

    def params(self, cfg: ExperimentConfig) -> None:
        self._each("params", _flat(cfg.to_dict()))

    def epoch(self, row: Mapping[str, Any]) -> None:
        values = _numbers({k: v for k, v in row.items() if k != "epoch"})
        self._each("metrics", values, int(row.get("epoch", 0)))

    def final(self, metrics: Mapping[str, Any], step: int) -> None:
        self._each("metrics", {f"test_{k}": v for k, v in _numbers(metrics).items() if k in FINAL_KEYS}, step)

    def log(self, values: Mapping[str, Any], step: int = 0) -> None:
        self._each("metrics", _numbers(values), step)

    def artifact(self, path: str | Path) -> None:
        self._each("artifact", Path(path))

    def close(self, status: str = "FINISHED") -> None:
        self._each("close", status)


def track_after_training(folder: RunFolder, values: Mapping[str, Any] | None = None,
                         artifacts: Sequence[str | Path] = ()) -> None:
    """Log what a command after training produced (the calibrated operating point, the model card, the report's
    figures) into the run's tracked run, when its config tracks; nothing otherwise."""
    cfg = folder.read_config()
    if not (cfg.tracking.mlflow or cfg.tracking.tensorboard):
        return
    tracker = Tracker(cfg, folder)
    if values:
        tracker.log(values, step=cfg.epochs)
    for path in artifacts:
        tracker.artifact(path)
    tracker.close()
