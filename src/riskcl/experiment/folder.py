"""The run folder: the one module that knows its files, how they are written and how they are read back.

A run folder holds:

* ``config.yaml`` -- the resolved config;  ``taxonomy.yaml`` -- the resolved class hierarchy;
* ``status.json`` -- ``running`` / ``finished`` / ``failed`` / ``interrupted``;
* ``splits.csv`` -- every sample's id, split, group, label, path and metadata;  ``data.json`` -- counts,
  duplicates, skipped files;
* ``history.csv`` -- per-epoch train loss and validation metrics;
* ``last.pt`` -- the training state at the last epoch boundary (model, optimizer, scheduler, epoch, history),
  saved with ``torch.save`` and read back with ``torch.load(weights_only=True)``;
* ``model.safetensors`` -- the best weights (by ``select_metric`` on validation);
* ``predictions.npz`` (test), ``val_predictions.npz``, ``calib_predictions.npz`` -- ``logits``, ``target``,
  ``ids``, ``groups``, ``paths`` and one ``meta__<column>`` array per metadata column (segmentation: lesion logit
  maps ``(N, H, W)`` in float16 and the masks ``(N, H, W)`` as ``target``);
* ``predictions_no_metadata.npz`` / ``calib_predictions_no_metadata.npz`` -- a fusion model's test / calibration
  predictions with every image's metadata missing (the second calibrates the point for requests without metadata);
  ``metadata_encoding.json`` -- its metadata encoding, fitted on the training split;
* ``ensemble.json`` -- an ensemble's members and their weights' SHA-256 (it has no weights of its own);
* ``adopted.json`` and ``adopted_model.onnx`` / ``adopted_model.pt`` / ``adopted_table.csv`` (``.parquet``) -- a
  model trained elsewhere (``riskcl adopt``): the file it was adopted from, copied, with its SHA-256, its kind and
  its declared preprocessing (it has no training history and no weights of riskcl's);
* ``metrics.json`` -- the test report under the run's decision rule, the report under each rule, validation and
  calibration reports, and run facts (``run``: classes, levels, cost matrix, best epoch, ...);
* ``calibration.json`` -- the operating point chosen by ``riskcl calibrate``;
* ``eval_<split>.json`` / ``eval_external_<split>.json`` -- reports of ``riskcl evaluate`` on the run's own split
  or on another data folder; ``subgroups_<column>.json`` (``subgroups_<column>_<split>.json`` off test) -- the
  per-group report of ``riskcl evaluate --by``;
* ``input_check.npz`` -- the fitted check that flags images unlike the held-out data (``experiment.input_check``);
* ``export/`` -- the conventional place of ``riskcl export``'s folder (the model card cites it);
* ``gallery/`` -- ``gallery.json`` and one PNG per Type II error of ``riskcl explain --type-ii`` (read by the report
  and the model card).

Every write is atomic. Every read names the file and what is wrong with it when it is damaged.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
import yaml

from ..config import (ConfigError, ExperimentConfig, config_from_dict, config_taxonomy, parse_yaml_text,
                      run_cost_matrix, save_config)
from ..data import ImageDataset, SplitData
from ..io import (atomic_write_json, atomic_write_npz, atomic_write_text, atomic_write_with, file_sha256, load_npz,
                  make_folder, read_csv, read_json, remove_stale_temps, spreadsheet_safe, spreadsheet_value)
from ..taxonomy import Taxonomy

FILES = {
    "config": "config.yaml", "taxonomy": "taxonomy.yaml", "status": "status.json", "splits": "splits.csv",
    "data": "data.json", "history": "history.csv", "checkpoint": "last.pt", "weights": "model.safetensors",
    "metrics": "metrics.json", "calibration": "calibration.json", "skipped": "skipped_images.txt",
    "lock": ".lock", "gallery": "gallery.json", "input_check": "input_check.npz", "tracking": "tracking.json",
    "ensemble": "ensemble.json", "encoding": "metadata_encoding.json", "adopted": "adopted.json",
    "adopted_onnx": "adopted_model.onnx", "adopted_torchscript": "adopted_model.pt", "adopted_table": "adopted_table",
}
ADOPTED_KINDS = {".onnx": "onnx", ".pt": "torchscript", ".pth": "torchscript", ".ts": "torchscript", ".csv": "table",
                 ".parquet": "table", ".pq": "table"}  # what riskcl adopt takes, by extension
NO_METADATA = "test_no_metadata"  # a fusion model's test predictions with every image's metadata missing
CALIB_NO_METADATA = "calib_no_metadata"  # ... and its calibration predictions so
NO_METADATA_SPLITS = {"test": NO_METADATA, "calib": CALIB_NO_METADATA}  # split -> its no-metadata twin
PREDICTIONS = {"test": "predictions.npz", "val": "val_predictions.npz", "calib": "calib_predictions.npz",
               NO_METADATA: "predictions_no_metadata.npz", CALIB_NO_METADATA: "calib_predictions_no_metadata.npz"}


def source_split(split: str) -> str:
    """The split whose images a prediction split holds (``test_no_metadata`` -> ``test``)."""
    return next((base for base, twin in NO_METADATA_SPLITS.items() if twin == split), split)
PREDICTION_KEYS = ("logits", "target", "ids", "groups")
CALIBRATION_FIELDS = {"threshold": float, "method": str, "alpha": float, "calibration_split": str}


class RunFolderError(ValueError):
    """A run folder's file is missing a part or is damaged; the message names the file."""


class RunFolder:
    """``RunFolder(path)``: paths, reads and atomic writes of one run's files."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @staticmethod
    def find(root: str | Path) -> list["RunFolder"]:
        """Every run folder under ``root`` (any depth), in path order; symbolic links to folders are followed (a
        natural way to gather runs kept elsewhere), each real folder visited once (no loop)."""
        import os

        found, seen = [], set()
        for folder, dirs, files in os.walk(root, followlinks=True):
            real = os.path.realpath(folder)
            if real in seen:
                dirs[:] = []
                continue
            seen.add(real)
            dirs.sort()
            if FILES["status"] in files:
                found.append(Path(folder))
        return [RunFolder(p) for p in sorted(found)]

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def file(self, key: str) -> Path:
        return self.path / FILES[key]

    def prediction_file(self, split: str) -> Path:
        if split not in PREDICTIONS:
            raise ValueError(f"Expected a split with saved predictions {list(PREDICTIONS)}, but got {split!r}")
        return self.path / PREDICTIONS[split]

    # --- the folder itself -------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Create the folder for a new run (errors name a file standing where the folder should be)."""
        make_folder(self.path, "run")
        remove_stale_temps(self.path)

    def require(self) -> None:
        """Raise ``FileNotFoundError`` unless this is a riskcl run folder."""
        if not self.path.is_dir():
            raise FileNotFoundError(f"{self.path} is not a folder (expected a riskcl run folder)")
        if not self.file("config").is_file():
            raise FileNotFoundError(f"{self.path} is not a riskcl run folder ({FILES['config']} not found)")

    # --- status ------------------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        path = self.file("status")
        if not path.is_file():
            return {"state": "new"}
        data = read_json(path)
        if not isinstance(data.get("state"), str):
            raise RunFolderError(f"{path}: expected a `state` string, but got {data.get('state')!r}")
        return data

    @property
    def state(self) -> str:
        return self.status()["state"]

    def is_finished(self) -> bool:
        return self.state == "finished" and self.file("metrics").is_file()

    def mark(self, state: str, **extra: Any) -> None:
        atomic_write_json(self.file("status"), {"state": state, **extra})

    def has_progress(self) -> bool:
        """Whether an epoch has finished (a checkpoint exists): only then is there anything to resume."""
        return self.file("checkpoint").is_file()

    # --- config and taxonomy -----------------------------------------------------------------------------------
    def read_config(self) -> ExperimentConfig:
        self.require()
        path = self.file("config")
        data = parse_yaml_text(path.read_text(encoding="utf-8", errors="replace"), str(path))
        if not isinstance(data, dict):
            raise RunFolderError(f"{path}: expected a mapping of config keys, but got {type(data).__name__}")
        try:
            return config_from_dict(data)
        except ConfigError as exc:
            raise RunFolderError(f"{path}: {exc}") from None

    def write_config(self, cfg: ExperimentConfig) -> None:
        atomic_write_text(self.file("config"), save_config(cfg))

    def write_taxonomy(self, taxonomy: Taxonomy) -> None:
        d = taxonomy.to_dict()
        atomic_write_text(self.file("taxonomy"), yaml.safe_dump(d, sort_keys=False, allow_unicode=True))

    def taxonomy(self) -> Taxonomy:
        """The run's resolved taxonomy: ``taxonomy.yaml``, or (older runs) ``metrics.json``, or the config."""
        path = self.file("taxonomy")
        if path.is_file():
            data = parse_yaml_text(path.read_text(encoding="utf-8", errors="replace"), str(path))
            try:
                return Taxonomy.from_dict(data)
            except ValueError as exc:
                raise RunFolderError(f"{path}: {exc}") from None
        if self.file("metrics").is_file():
            run = self.metrics()["run"]
            return Taxonomy(run["dataset"], tuple(run["classes"]), tuple(int(v) for v in run["levels"]))
        tax = config_taxonomy(self.read_config())
        if tax is None:
            raise RunFolderError(f"{self.path}: no {FILES['taxonomy']} and the config does not name a taxonomy")
        return tax

    def cost_matrix(self) -> np.ndarray:
        """The run's clinical cost matrix (``run.cost_matrix`` in metrics.json, else from the config)."""
        if self.file("metrics").is_file():
            m = self.metrics()["run"].get("cost_matrix")
            if m is not None:
                return np.asarray(m, dtype=np.float64)
        return run_cost_matrix(self.read_config(), self.taxonomy())

    # --- data --------------------------------------------------------------------------------------------------
    def write_splits(self, data: SplitData) -> None:
        meta_cols = data.info.get("metadata", [])
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["id", "split", "group", "label", "path", "hash", *meta_cols])
        for split, ds in data.datasets.items():
            meta = ds.meta.to_numpy() if meta_cols else np.empty((len(ds), 0))
            hashes = ds.table["hash"].astype(str).to_numpy() if "hash" in ds.table else [""] * len(ds)
            for i in range(len(ds)):  # text cells spreadsheet-safe (a metadata value may start with "=")
                w.writerow([spreadsheet_safe(v) for v in (ds.ids[i], split, ds.groups[i])]
                           + [int(ds.targets[i]), spreadsheet_safe(ds.paths[i]), hashes[i],
                              *(spreadsheet_safe(v) for v in meta[i])])
        atomic_write_text(self.file("splits"), buf.getvalue())
        info = {k: v for k, v in data.info.items() if k != "duplicate_groups"}
        info["duplicate_groups"] = data.info.get("duplicate_groups", [])
        atomic_write_json(self.file("data"), info)
        if data.info.get("skipped"):
            atomic_write_text(self.file("skipped"),
                              "".join(f"{p}\t{r}\n" for p, r in sorted(data.info["skipped"].items())))

    def splits(self) -> pd.DataFrame:
        path = self.file("splits")
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: the run never got as far as splitting its data")
        df = read_csv(path)
        missing = [c for c in ("id", "split", "group", "label", "path") if c not in df.columns]
        if missing:
            raise RunFolderError(f"{path}: missing column(s) {missing}")
        return df.map(spreadsheet_value)

    def data_info(self) -> dict[str, Any]:
        return read_json(self.file("data"))

    # --- training state ----------------------------------------------------------------------------------------
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        atomic_write_with(self.file("checkpoint"), lambda tmp: torch.save(state, tmp))

    def load_checkpoint(self) -> dict[str, Any]:
        """Read ``last.pt`` with ``weights_only=True``: a checkpoint carrying arbitrary objects is refused."""
        path = self.file("checkpoint")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise RunFolderError(f"{path}: refused or unreadable checkpoint ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''})") from None

    def write_history(self, history: list[dict[str, Any]]) -> None:
        if not history:
            return
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(history[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(history)
        atomic_write_text(self.file("history"), buf.getvalue())

    def history(self) -> pd.DataFrame:
        path = self.file("history")
        if not path.is_file():
            return pd.DataFrame()
        return read_csv(path, dtype=None, keep_default_na=True)

    # --- weights and model -------------------------------------------------------------------------------------
    def save_weights(self, model: torch.nn.Module) -> None:
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        atomic_write_with(self.file("weights"), lambda tmp: save_file(state, tmp))

    def load_weights(self, model: torch.nn.Module) -> None:
        from safetensors.torch import load_file

        path = self.file("weights")
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {self.path} has not finished an epoch yet")
        try:
            state = load_file(str(path))
        except Exception as exc:  # SafetensorError and friends
            raise RunFolderError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise RunFolderError(f"{path}: weights do not fit the run's model ({str(exc).splitlines()[0]})") from None

    def weights_sha256(self) -> str:
        """The SHA-256 of ``model.safetensors``, after checking that the file is whole (a truncated or damaged
        file is named as such, never given a checksum as if it were the model)."""
        from safetensors.torch import load_file

        record = self.ensemble()
        if record is not None:  # one digest over the members' (each checked whole)
            import hashlib

            members = self._ensemble_members(record)
            return hashlib.sha256("\n".join(m.weights_sha256() for m in members).encode()).hexdigest()
        if self.adopted() is not None:  # the adopted file, checked against its recorded digest
            return file_sha256(self.adopted_file())
        path = self.file("weights")
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {self.path} has not finished an epoch yet")
        try:
            load_file(str(path))  # reads every tensor: a truncated file fails here
        except Exception as exc:  # SafetensorError and friends
            raise RunFolderError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None
        return file_sha256(path)

    def ensemble(self) -> dict[str, Any] | None:
        """``ensemble.json`` (an ensemble's members and their weights' SHA-256), or None for a trained run."""
        path = self.file("ensemble")
        if not path.is_file():
            return None
        data = read_json(path)
        if not isinstance(data.get("members"), list) or len(data.get("weights_sha256", [])) != len(data["members"]):
            raise RunFolderError(f"{path}: expected `members` and one `weights_sha256` per member")
        return data

    def metadata_encoding(self):
        """The run's metadata encoding (:class:`riskcl.data.encoding.MetadataEncoding`), or None (image only)."""
        from ..data.encoding import MetadataEncoding

        path = self.file("encoding")
        if not path.is_file():
            return None
        try:
            return MetadataEncoding.from_dict(read_json(path))
        except ValueError as exc:
            raise RunFolderError(f"{path}: {exc}") from None

    def write_metadata_encoding(self, encoding) -> None:
        atomic_write_json(self.file("encoding"), encoding.to_dict())

    @staticmethod
    def adopted_name(kind: str, suffix: str) -> str:
        """The name an adopted file is copied under (a table keeps its own extension)."""
        return FILES[f"adopted_{kind}"] + (suffix.lower() if kind == "table" else "")

    def adopted(self) -> dict[str, Any] | None:
        """``adopted.json`` (a model trained elsewhere: its kind, file, SHA-256, classes, preprocessing), or None."""
        path = self.file("adopted")
        if not path.is_file():
            return None
        data = read_json(path)
        missing = [k for k in ("kind", "file", "sha256", "classes", "output") if k not in data]
        if missing or Path(str(data.get("file"))).name != data.get("file"):
            raise RunFolderError(f"{path}: expected a plain `file` name and {missing or 'its fields'}")
        return data

    def write_adopted(self, record: dict[str, Any]) -> None:
        atomic_write_json(self.file("adopted"), record)

    def adopted_file(self) -> Path:
        """The adopted model (or table) in this folder, checked against the SHA-256 recorded when it was adopted."""
        from ..io import verify_sha256

        record = self.adopted()
        if record is None:
            raise RunFolderError(f"{self.path} is not an adopted model")
        path = self.path / record["file"]
        verify_sha256(path, record["sha256"], "the adopted model", f"adopt it again (riskcl adopt ... --out "
                                                                    f"{self.path})")
        return path

    def write_ensemble(self, record: dict[str, Any]) -> None:
        atomic_write_json(self.file("ensemble"), record)

    def ensemble_members(self) -> list["RunFolder"] | None:
        """An ensemble's members, each checked against the SHA-256 of its weights recorded when the ensemble was
        made (None for a trained run)."""
        record = self.ensemble()
        return None if record is None else self._ensemble_members(record)

    def _ensemble_members(self, record: dict[str, Any]) -> list["RunFolder"]:
        members = [RunFolder(p) for p in record["members"]]
        for m, digest in zip(members, record["weights_sha256"]):
            if not m.file("config").is_file():
                raise RunFolderError(f"{m.path}: a member of the ensemble {self.path} is gone (no run folder there); "
                                     f"make the ensemble again from runs that exist")
            if m.weights_sha256() != digest:
                raise RunFolderError(f"{m.path}: its weights changed since the ensemble {self.path} was made "
                                     f"(SHA-256 differs); make the ensemble again")
        return members

    def load_model(self) -> torch.nn.Module:
        """The run's model with its best weights, in eval mode on the CPU (an ensemble: its members as one
        :class:`riskcl.models.EnsembleNet`)."""
        from dataclasses import replace

        from ..tasks import task_of

        record = self.ensemble()
        if record is not None:
            from ..models import EnsembleNet

            nets = [m.load_model() for m in self._ensemble_members(record)]
            return EnsembleNet(nets, record.get("task") == "segmentation").eval()
        adopted = self.adopted()
        if adopted is not None:
            return self._adopted_model(adopted)
        cfg = self.read_config()
        model = task_of(cfg.task).create_model(replace(cfg.model, pretrained=False, weights_path=None),
                                               self.taxonomy().num_classes, self.metadata_encoding())
        self.load_weights(model)
        return model.eval()

    def _adopted_model(self, record: dict[str, Any]) -> torch.nn.Module:
        """An adopted model file as one module: the declared preprocessing, the model in its own runtime and its
        outputs in the taxonomy's order (:class:`riskcl.models.AdoptedNet`)."""
        from ..data.adopted import DeclaredPreprocess, class_order
        from ..models import AdoptedNet

        if record["kind"] == "table":
            raise RunFolderError(f"{self.path} was adopted from a table of predictions: there is no model to run, so "
                                 f"predict, serve, export and saliency need the model file itself (riskcl adopt "
                                 f"MODEL.onnx or MODEL.pt)")
        cfg = self.read_config()
        perm = class_order(record["classes"], self.taxonomy().classes, "the model")
        return AdoptedNet(self.adopted_file(), record["kind"], DeclaredPreprocess(cfg.adopt.__dict__), perm,
                          record["output"]).eval()

    def weights_epoch(self) -> int | None:
        """The epoch whose weights ``model.safetensors`` holds (the best so far), from the history."""
        from ..tasks import task_of

        hist = self.history()
        if hist.empty:
            return None
        cfg = self.read_config()
        return task_of(cfg.task).best_epoch(hist.to_dict("records"), cfg.select_metric)

    def require_finished(self, allow_unfinished: bool | None = False) -> str | None:
        """Raise unless the run finished; with ``allow_unfinished`` return a note naming the weights' epoch.

        ``allow_unfinished=None``: the caller (export, card, serve) never ships an unfinished run, and the error
        does not offer the option."""
        self.require()
        if self.is_finished():
            return None
        state = self.state
        epoch = self.weights_epoch() if self.file("weights").is_file() else None
        if not allow_unfinished or epoch is None:
            have = f"; its best weights so far are from epoch {epoch}" if epoch else "; it has no weights yet"
            offer = "" if allow_unfinished is None else ", or pass --allow-unfinished to use those weights"
            raise RunFolderError(f"{self.path} is not a finished run (state: {state}{have}). Finish it with "
                                 f"`riskcl train` (it resumes){offer}")
        cfg = self.read_config()
        return (f"WARNING: {self.path} is unfinished (state: {state}): using the best weights so far, from epoch "
                f"{epoch} of {cfg.epochs}")

    # --- predictions -------------------------------------------------------------------------------------------
    def write_predictions(self, split: str, logits: torch.Tensor, target: torch.Tensor, ds: ImageDataset) -> None:
        """Classification: ``logits (N, K)`` float32, ``target (N,)``; segmentation: lesion ``logits (N, H, W)``
        as float16 (a probability differs by < 1e-3 from float32's) and the masks ``target (N, H, W)`` uint8."""
        seg = logits.ndim == 3
        arrays = {"logits": logits.numpy().astype(np.float16 if seg else np.float32),
                  "target": target.numpy().astype(np.uint8 if seg else np.int64),
                  "ids": np.asarray(ds.ids, dtype=str), "groups": np.asarray(ds.groups, dtype=str),
                  "paths": np.asarray(ds.paths, dtype=str)}
        for col in ds.metadata:
            arrays[f"meta__{col}"] = ds.table[col].astype(str).to_numpy(dtype=str)
        atomic_write_npz(self.prediction_file(split), **arrays)

    def write_prediction_arrays(self, split: str, arrays: Mapping[str, np.ndarray]) -> None:
        """A prediction file from arrays (an ensemble's mean), with the keys :meth:`write_predictions` writes."""
        arrays = dict(arrays)
        if arrays["logits"].ndim == 3:
            arrays["logits"] = arrays["logits"].astype(np.float16)
        atomic_write_npz(self.prediction_file(split), **arrays)

    def has_predictions(self, split: str) -> bool:
        return self.prediction_file(split).is_file()

    def predictions(self, split: str = "test") -> dict[str, np.ndarray]:
        """``logits``, ``target``, ``ids``, ``groups`` (and ``paths``, ``meta__<column>``) of one split."""
        path = self.prediction_file(split)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {self.path} a finished run"
                                    + (" with a calibration split (data.calib_fraction > 0)?" if split == "calib"
                                       else "?"))
        arrays = load_npz(path)
        missing = [k for k in PREDICTION_KEYS if k not in arrays]
        if missing:
            raise RunFolderError(f"{path}: missing array(s) {missing}")
        n, shape = arrays["target"].shape[0], arrays["logits"].shape
        fits = shape == arrays["target"].shape if arrays["target"].ndim == 3 else (len(shape) == 2 and shape[0] == n)
        if not fits:
            raise RunFolderError(f"{path}: `logits` of shape {shape} does not match the targets' "
                                 f"{arrays['target'].shape}")
        if arrays["logits"].dtype == np.float16:
            arrays["logits"] = arrays["logits"].astype(np.float32)
        return arrays

    @staticmethod
    def metadata_of(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The metadata columns held in a predictions dict (``meta__<column>`` arrays)."""
        return {k[len("meta__"):]: v for k, v in arrays.items() if k.startswith("meta__")}

    # --- results -----------------------------------------------------------------------------------------------
    def write_metrics(self, metrics: dict[str, Any]) -> None:
        atomic_write_json(self.file("metrics"), metrics)

    def metrics(self) -> dict[str, Any]:
        path = self.file("metrics")
        data = read_json(path)
        run = data.get("run")
        if not isinstance(run, dict) or not all(k in run for k in ("classes", "levels", "dataset")):
            raise RunFolderError(f"{path}: expected a `run` section with classes, levels and dataset")
        return data

    def write_evaluation(self, split: str, report: dict[str, Any], external: bool = False) -> None:
        atomic_write_json(self.path / (f"eval_external_{split}.json" if external else f"eval_{split}.json"), report)

    def write_subgroups(self, column: str, split: str, result: dict[str, Any]) -> None:
        name = f"subgroups_{column}.json" if split == "test" else f"subgroups_{column}_{split}.json"
        atomic_write_json(self.path / name, result)

    def subgroup_columns(self) -> list[str]:
        """The metadata columns ``riskcl evaluate --by`` was run for on the test split."""
        cols = {p.stem[len("subgroups_"):] for p in self.path.glob("subgroups_*.json")}
        return sorted(c for c in cols if not any(c.endswith(f"_{s}") for s in PREDICTIONS if s != "test"))

    @property
    def export_dir(self) -> Path:
        """Where ``riskcl export`` puts the run's export by convention (``RUN/export``)."""
        return self.path / "export"

    @property
    def gallery_dir(self) -> Path:
        return self.path / "gallery"

    def gallery_image(self, k: int) -> Path:
        """The PNG of the gallery's ``k``-th case."""
        return self.gallery_dir / f"type_ii_{k:03d}.png"

    def write_gallery(self, gallery: dict[str, Any]) -> None:
        atomic_write_json(self.gallery_dir / FILES["gallery"], gallery)

    def gallery(self) -> dict[str, Any] | None:
        """``gallery/gallery.json`` (the Type II gallery), or None when the run has none."""
        path = self.gallery_dir / FILES["gallery"]
        return read_json(path) if path.is_file() else None

    def write_input_check(self, arrays: Mapping[str, np.ndarray]) -> None:
        atomic_write_npz(self.file("input_check"), **arrays)

    def input_check(self) -> dict[str, np.ndarray] | None:
        """``input_check.npz`` (the fitted input check), or None when the run has none yet."""
        return load_npz(self.file("input_check")) if self.file("input_check").is_file() else None

    def decision_curve_file(self, split: str = "test", suffix: str = "json") -> Path:
        """``decision_curve_<split>.json`` (net benefit, written by ``riskcl evaluate --decision-curve``) and its
        figure (``suffix="png"``)."""
        return self.path / f"decision_curve_{split}.{suffix}"

    def write_decision_curve(self, split: str, curve: dict[str, Any]) -> None:
        atomic_write_json(self.decision_curve_file(split), curve)

    def decision_curve(self, split: str = "test") -> dict[str, Any] | None:
        path = self.decision_curve_file(split)
        return read_json(path) if path.is_file() else None

    def tracking(self) -> dict[str, Any]:
        """``tracking.json``: the tracked run this run logs to (MLflow URI and run id); empty when none."""
        path = self.file("tracking")
        return read_json(path) if path.is_file() else {}

    def write_tracking(self, record: dict[str, Any]) -> None:
        atomic_write_json(self.file("tracking"), record)

    def write_calibration(self, result: dict[str, Any]) -> None:
        atomic_write_json(self.file("calibration"), result)

    def archive_calibration(self) -> Path | None:
        """Keep the current ``calibration.json`` as ``calibration_<time>.json`` (before a recalibration replaces
        it); None when there is none."""
        import shutil
        import time

        if not self.file("calibration").is_file():
            return None
        path = self.file("calibration").with_name(f"calibration_{time.strftime('%Y%m%d-%H%M%S')}.json")
        shutil.copyfile(self.file("calibration"), path)
        return path

    def calibration(self) -> dict[str, Any]:
        """``calibration.json``, its fields checked (``threshold`` in [0, 1], ...)."""
        path = self.file("calibration")
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; run `riskcl calibrate {self.path} --alpha A` first")
        data = read_json(path)
        for key, kind in CALIBRATION_FIELDS.items():
            value = data.get(key)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else \
                isinstance(value, kind)
            if not ok:
                raise RunFolderError(f"{path}: expected `{key}` to be a {kind.__name__}, but got {value!r}")
        if not 0.0 <= float(data["threshold"]) <= 1.0:
            raise RunFolderError(f"{path}: `threshold` = {data['threshold']} is outside [0, 1]")
        groups = data.get("groups")
        if groups is not None and not isinstance(groups, dict):
            raise RunFolderError(f"{path}: expected `groups` to be a mapping, but got {type(groups).__name__}")
        return data


