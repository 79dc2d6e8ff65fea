"""One training run in its own folder (:mod:`riskcl.experiment.folder`), written atomically and resumable.

Re-running into a finished folder does nothing; an unfinished one resumes from ``last.pt``. A folder whose run
never finished an epoch (e.g. it failed during set-up) may be started again with a corrected config. Every epoch
is seeded from ``(seed, epoch)``, so a resumed run equals an uninterrupted one.
"""
from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any, Mapping

import torch

from ..config import ConfigError, ExperimentConfig, dicom_policy
from ..data import SplitData, check_root, create_datasets
from ..distributed import DistInfo, barrier, device_for, init_distributed
from ..engine import NonFiniteError, TrainingSlot, resolve_device
from ..models import check_model_name
from ..taxonomy import Taxonomy, load_taxonomy
from .folder import RunFolder
from .lock import RunLock
from .tracking import Tracker
from .trainer import Trainer


class RunFailed(RuntimeError):
    """The run stopped on a fault; its folder is marked failed and keeps the last good checkpoint."""


def _comparable(cfg: ExperimentConfig) -> dict[str, Any]:
    """The config without the settings of the machine it runs on (they do not change the results)."""
    d = cfg.to_dict()
    for key in ("progress", "threads", "tracking"):
        d.pop(key, None)
    for key in ("num_workers", "cache_dir"):
        d["data"].pop(key, None)
    return d


def _seed_everything(seed: int, deterministic: bool) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def resolve_taxonomy(cfg: ExperimentConfig, data_taxonomy: Taxonomy) -> Taxonomy:
    """The data set's taxonomy, or ``loss.taxonomy`` when it names the same classes in the same order."""
    if cfg.loss.taxonomy is None:
        return data_taxonomy
    tax = load_taxonomy(cfg.loss.taxonomy)
    if tax.classes != data_taxonomy.classes:
        raise ConfigError(f"`loss.taxonomy` = {cfg.loss.taxonomy!r} has classes {list(tax.classes)}, but the data "
                          f"set '{cfg.data.name}' has {list(data_taxonomy.classes)} (same names, same order expected)")
    return tax


def build_data(cfg: ExperimentConfig, progress: bool, fixed_splits: Mapping[str, str] | None = None) -> SplitData:
    """The config's data set, split as the run splits it (``fixed_splits``: a run's recorded ``splits.csv``)."""
    d = cfg.data
    return create_datasets(d.name, d.root, image_size=d.image_size, val_fraction=d.val_fraction,
                           test_fraction=d.test_fraction, calib_fraction=d.calib_fraction, seed=d.split_seed,
                           fold=d.fold, num_folds=d.num_folds, on_bad_image=d.on_bad_image,
                           duplicates=d.duplicates, cache_dir=d.cache_dir, progress=progress,
                           fixed_splits=fixed_splits, limit_train=d.limit_train, dicom=dicom_policy(d), **d.options)


def _check_before_start(cfg: ExperimentConfig) -> None:
    """What can be checked before a run folder is created: the model name and the data folder."""
    check_model_name(cfg.model.name)
    check_root(cfg.data.name, cfg.data.root)
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"`device` = {cfg.device!r}: no CUDA device on this machine; use device=auto or cpu")


def config_difference(old: ExperimentConfig, new: ExperimentConfig, limit: int = 6,
                      ignore: tuple[str, ...] = ()) -> list[str]:
    """``key: old -> new`` for each setting (dotted, machine settings and ``ignore`` left out) where two configs
    differ."""
    def flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, dict) and k != "options" and k != "params":
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    a, b = flat(_comparable(old)), flat(_comparable(new))
    diff = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and k not in ignore]
    return diff[:limit] + ([f"... ({len(diff) - limit} more)"] if len(diff) > limit else [])


def check_same_config(folder: RunFolder, cfg: ExperimentConfig) -> None:
    """Raise unless ``folder`` holds no progress of another config (the difference is named)."""
    if not folder.file("config").is_file():
        return
    old = folder.read_config()
    if _comparable(old) != _comparable(cfg) and (folder.has_progress() or folder.state == "finished"):
        raise ConfigError(f"{folder.path} holds a run of a different config ({'; '.join(config_difference(old, cfg))}"
                          f"); choose another --out folder")


def _claim(folder: RunFolder, cfg: ExperimentConfig) -> None:
    """Refuse a folder that holds progress of another config; a folder with no finished epoch is restarted."""
    if not folder.file("config").is_file():
        return
    check_same_config(folder, cfg)
    old = folder.read_config()
    if _comparable(old) == _comparable(cfg):
        return
    print(f"note: {folder.path} held a run of another config that never finished an epoch "
          f"(state: {folder.state}); starting it again with this config", flush=True)


def run_experiment(cfg: ExperimentConfig, out_dir: str | Path, progress: bool | None = None) -> dict[str, Any]:
    """Train, select, evaluate and write the run folder; returns ``metrics.json``'s content.

    Raises :class:`RunFailed` (folder marked failed) on a numerical fault; :class:`ConfigError` when the folder
    holds progress of another config.
    """
    progress = cfg.progress if progress is None else progress
    folder = RunFolder(out_dir)
    info = init_distributed()
    if not info.is_main:  # rank 0 owns the folder; the others follow its decision
        barrier(info)
        if folder.state == "finished":
            return {}
        return _train_and_evaluate(cfg, folder, False, info)
    _check_before_start(cfg)
    folder.prepare()
    with RunLock(folder.path):
        _claim(folder, cfg)
        if folder.is_finished():
            barrier(info)
            return folder.metrics()
        folder.write_config(cfg)
        folder.mark("running")
        barrier(info)
        try:
            return _train_and_evaluate(cfg, folder, progress, info)
        except NonFiniteError as exc:
            folder.mark("failed", error=str(exc))
            raise RunFailed(f"{folder.path}: {exc}; the last good checkpoint is kept") from None
        except KeyboardInterrupt:
            folder.mark("interrupted")
            raise
        except Exception as exc:
            folder.mark("failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
            raise


def _train_and_evaluate(cfg: ExperimentConfig, folder: RunFolder, progress: bool,
                        info: DistInfo = DistInfo()) -> dict[str, Any]:
    start = time.time()
    _seed_everything(cfg.seed, cfg.deterministic)
    device = device_for(info, resolve_device(cfg.device))
    with TrainingSlot() as slot:
        if not info.is_main:
            barrier(info)  # let rank 0 build the image cache first
        data = build_data(cfg, progress)
        if info.is_main:
            barrier(info)
        for name, ds in data.datasets.items():
            if len(ds) == 0:
                raise ValueError(f"The '{name}' split of '{cfg.data.name}' is empty; check the data and split "
                                 f"fractions")
        taxonomy = resolve_taxonomy(cfg, data.datasets["train"].taxonomy)
        if info.is_main:
            folder.write_splits(data)
            folder.write_taxonomy(taxonomy)
        trainer = Trainer(cfg, folder, info, device, taxonomy, data, progress, slot)
        trainer.resume()
        tracker = Tracker(cfg, folder) if info.is_main else None
        try:
            if tracker:
                tracker.params(cfg)
            for epoch in range(trainer.first_epoch, cfg.epochs):
                trainer.fit_epoch(epoch)
                if tracker:
                    tracker.epoch(trainer.history[-1])
            if not info.is_main:
                return {}
            metrics = trainer.final_metrics(trainer.predict_splits())
        except BaseException as exc:
            if tracker:
                tracker.close("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
    metrics["wall_time_s"] = round(time.time() - start, 2)
    folder.write_metrics(metrics)
    folder.mark("finished")
    tracker.final(metrics, cfg.epochs)
    tracker.close("FINISHED")
    return metrics
