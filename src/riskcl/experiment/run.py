"""One training run in its own folder, written atomically and resumable.

A run folder holds:

* ``config.yaml`` -- the resolved config;  ``status.json`` -- ``running`` / ``finished`` / ``failed``;
* ``splits.csv`` -- every sample's id, split, group and label;  ``data.json`` -- counts, duplicates, skipped files;
* ``history.csv`` -- per-epoch train loss and validation metrics;
* ``last.pt`` -- the training state at the last epoch boundary (model, optimizer, scheduler, epoch, history),
  saved with ``torch.save`` and read back with ``torch.load(weights_only=True)``;
* ``model.safetensors`` -- the best weights (by ``select_metric`` on validation);
* ``predictions.npz`` / ``val_predictions.npz`` -- ``logits``, ``target``, ``ids`` (and ``groups``);
* ``metrics.json`` -- the test ``safety_report`` plus run facts.

Re-running into a finished folder does nothing; an unfinished one resumes from ``last.pt``. Every epoch is
seeded from ``(seed, epoch)``, so a resumed run equals an uninterrupted one.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import platform
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ..config import SELECT_METRICS, ConfigError, ExperimentConfig, config_from_dict, save_config
from ..data import SplitData, create_datasets
from ..distributed import DistInfo, barrier, device_for, init_distributed, wrap_model
from ..engine import NonFiniteError, predict_logits, resolve_device, train_one_epoch
from ..losses import create_loss
from ..metrics import safety_report
from ..models import create_model
from ..taxonomy import Taxonomy, load_taxonomy
from .io import atomic_write_json, atomic_write_npz, atomic_write_text, atomic_write_with, load_npz
from .lock import RunLock

log = logging.getLogger(__name__)
HISTORY_KEYS = ("cer", "f1_macro", "accuracy", "visual_ambiguity", "type_i", "type_ii", "mean_cost")


class RunFailed(RuntimeError):
    """The run stopped on a fault; its folder is marked failed and keeps the last good checkpoint."""


def read_status(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "status.json"
    if not path.is_file():
        return {"state": "new"}
    return json.loads(path.read_text())


def read_config(run_dir: str | Path) -> ExperimentConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a riskcl run folder")
    return config_from_dict(yaml.safe_load(path.read_text()))


def _comparable(cfg: ExperimentConfig) -> dict[str, Any]:
    d = cfg.to_dict()
    d.pop("progress", None)
    return d


def _seed_everything(seed: int, deterministic: bool) -> None:
    import random

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


def build_data(cfg: ExperimentConfig, progress: bool, root: str | None = None, augment: bool = True) -> SplitData:
    """The config's data set, split as the run splits it (``root`` replaces ``data.root`` when given)."""
    d = cfg.data
    return create_datasets(d.name, root or d.root, image_size=d.image_size, val_fraction=d.val_fraction,
                           test_fraction=d.test_fraction, seed=d.split_seed, fold=d.fold, num_folds=d.num_folds,
                           on_bad_image=d.on_bad_image, duplicates=d.duplicates, cache_dir=d.cache_dir,
                           augment=augment, progress=progress, **d.options)


def _loader(dataset, batch_size: int, shuffle: bool, seed: int, workers: int, info: DistInfo = DistInfo()):
    g = torch.Generator()
    g.manual_seed(seed)
    sampler = None
    if info.enabled and shuffle:  # each process trains on its own share of the epoch
        sampler = torch.utils.data.DistributedSampler(dataset, info.world_size, info.rank, shuffle=True, seed=seed)
        shuffle = False
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler,
                                       generator=g, num_workers=workers, drop_last=False,
                                       pin_memory=torch.cuda.is_available(), persistent_workers=False)


def _write_splits(run_dir: Path, data: SplitData) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "split", "group", "label", "path"])
    for split, ds in data.datasets.items():
        for i in range(len(ds)):
            w.writerow([ds.ids[i], split, ds.groups[i], int(ds.targets[i]), ds.paths[i]])
    atomic_write_text(run_dir / "splits.csv", buf.getvalue())
    info = {k: v for k, v in data.info.items() if k != "duplicate_groups"}
    info["duplicate_groups"] = data.info.get("duplicate_groups", [])
    atomic_write_json(run_dir / "data.json", info)
    if data.info.get("skipped"):
        atomic_write_text(run_dir / "skipped_images.txt",
                          "".join(f"{p}\t{r}\n" for p, r in sorted(data.info["skipped"].items())))


def _write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    if not history:
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(history[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(history)
    atomic_write_text(run_dir / "history.csv", buf.getvalue())


def _score(report: dict[str, Any], metric: str) -> tuple[float, float]:
    """Sort key, smaller is better: the selection metric, then -F1 to break ties."""
    v = report[metric]
    v = math.inf if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
    primary = v if SELECT_METRICS[metric] == "min" else -v
    return primary, -float(report["f1_macro"])


def _save_predictions(path: Path, logits: torch.Tensor, target: torch.Tensor, ds) -> None:
    atomic_write_npz(path, logits=logits.numpy().astype(np.float32), target=target.numpy().astype(np.int64),
                     ids=np.asarray(ds.ids, dtype=str), groups=np.asarray(ds.groups, dtype=str))


def _save_weights(path: Path, model: torch.nn.Module) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_with(path, lambda tmp: save_file(state, tmp))


def load_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path)))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read ``last.pt`` with ``weights_only=True``: a checkpoint carrying arbitrary pickled objects is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RunFailed(f"{path}: refused or unreadable checkpoint ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def _mark(run_dir: Path, state: str, **extra: Any) -> None:
    atomic_write_json(run_dir / "status.json", {"state": state, **extra})


def run_experiment(cfg: ExperimentConfig, out_dir: str | Path, progress: bool | None = None) -> dict[str, Any]:
    """Train, select, evaluate and write the run folder; returns ``metrics.json``'s content.

    Raises :class:`RunFailed` (folder marked failed) on a numerical fault; :class:`ConfigError` when the folder
    holds a run of another config.
    """
    progress = cfg.progress if progress is None else progress
    run_dir = Path(out_dir)
    info = init_distributed()
    if not info.is_main:  # rank 0 owns the folder; the others follow its decision
        barrier(info)
        if read_status(run_dir).get("state") == "finished":
            return {}
        return _train_and_evaluate(cfg, run_dir, False, info)
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir):
        cfg_path = run_dir / "config.yaml"
        if cfg_path.is_file():
            old = read_config(run_dir)
            if _comparable(old) != _comparable(cfg):
                raise ConfigError(f"{run_dir} holds a run of a different config; choose another --out folder")
        if read_status(run_dir).get("state") == "finished" and (run_dir / "metrics.json").is_file():
            barrier(info)
            return json.loads((run_dir / "metrics.json").read_text())
        atomic_write_text(cfg_path, save_config(cfg))
        _mark(run_dir, "running")
        barrier(info)
        try:
            return _train_and_evaluate(cfg, run_dir, progress, info)
        except NonFiniteError as exc:
            _mark(run_dir, "failed", error=str(exc))
            raise RunFailed(f"{run_dir}: {exc}; the last good checkpoint is kept") from None
        except KeyboardInterrupt:
            _mark(run_dir, "interrupted")
            raise
        except Exception as exc:
            _mark(run_dir, "failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
            raise


def _train_and_evaluate(cfg: ExperimentConfig, run_dir: Path, progress: bool,
                        info: DistInfo = DistInfo()) -> dict[str, Any]:
    start = time.time()
    _seed_everything(cfg.seed, cfg.deterministic)
    device = device_for(info, resolve_device(cfg.device))
    if not info.is_main:
        barrier(info)  # let rank 0 build the image cache first
    data = build_data(cfg, progress)
    if info.is_main:
        barrier(info)
    for name, ds in data.datasets.items():
        if len(ds) == 0:
            raise ValueError(f"The '{name}' split of '{cfg.data.name}' is empty; check the data and split fractions")
    taxonomy = resolve_taxonomy(cfg, data.datasets["train"].taxonomy)
    if info.is_main:
        _write_splits(run_dir, data)
    trainer = _Trainer(cfg, run_dir, info, device, taxonomy, data, progress)
    trainer.resume()
    for epoch in range(trainer.first_epoch, cfg.epochs):
        trainer.fit_epoch(epoch)
    if not info.is_main:
        return {}
    metrics = trainer.final_metrics()
    metrics["wall_time_s"] = round(time.time() - start, 2)
    atomic_write_json(run_dir / "metrics.json", metrics)
    _mark(run_dir, "finished")
    return metrics


class _Trainer:
    """The model, loss, optimizer and schedule of one run, and what happens at each epoch boundary."""

    def __init__(self, cfg: ExperimentConfig, run_dir: Path, info: DistInfo, device: torch.device,
                 taxonomy: Taxonomy, data: SplitData, progress: bool) -> None:
        self.cfg, self.run_dir, self.info, self.device, self.taxonomy = cfg, run_dir, info, device, taxonomy
        self.train_ds, self.val_ds, self.test_ds = (data.datasets[s] for s in ("train", "val", "test"))
        torch.manual_seed(cfg.seed)
        model = create_model(cfg.model.name, taxonomy.num_classes, pretrained=cfg.model.pretrained,
                             weights_path=cfg.model.weights_path, drop_rate=cfg.model.drop_rate)
        self.weights_source = getattr(model, "riskcl_weights", "unknown")
        model.to(device)
        if cfg.channels_last and device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        self.loss_fn = create_loss(cfg.loss.name, taxonomy=taxonomy, class_counts=self.train_ds.class_counts,
                                   **cfg.loss.params).to(device)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.raw_model, self.model = model, wrap_model(model, info, device)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=cfg.epochs)
        self.history: list[dict[str, Any]] = []
        self.best: list[float] | None = None
        self.first_epoch = 0
        self.common = dict(device=device, amp=cfg.amp, channels_last=cfg.channels_last, progress=progress)
        self.val_loader = _loader(self.val_ds, cfg.optim.eval_batch_size, False, 0, cfg.data.num_workers)

    @property
    def ckpt_path(self) -> Path:
        return self.run_dir / "last.pt"

    def resume(self) -> None:
        if not self.ckpt_path.is_file():
            return
        state = load_checkpoint(self.ckpt_path)
        self.raw_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.first_epoch, self.history, self.best = int(state["epoch"]), list(state["history"]), state["best"]
        log.info("resuming %s from epoch %d", self.run_dir, self.first_epoch)

    def fit_epoch(self, epoch: int) -> None:
        """Train one epoch (seeded from ``(seed, epoch)``), then on rank 0 validate, select and checkpoint."""
        cfg, t0 = self.cfg, time.time()
        epoch_seed = cfg.seed * 100003 + epoch
        torch.manual_seed(epoch_seed)  # augmentation randomness of this epoch
        loader = _loader(self.train_ds, cfg.optim.batch_size, True, epoch_seed, cfg.data.num_workers, self.info)
        lr = self.optimizer.param_groups[0]["lr"]
        train_loss = train_one_epoch(self.model, loader, self.loss_fn, self.optimizer, epoch=epoch,
                                     grad_clip=cfg.optim.grad_clip, max_steps=cfg.max_steps_per_epoch,
                                     **self.common)
        self.scheduler.step()
        if self.info.is_main:  # rank 0 evaluates, selects and writes; the others wait at the barrier
            self._validate_and_checkpoint(epoch, lr, train_loss, t0)
        barrier(self.info)

    def _validate_and_checkpoint(self, epoch: int, lr: float, train_loss: float, t0: float) -> None:
        logits, target = predict_logits(self.raw_model, self.val_loader, desc="val", **self.common)
        report = safety_report(torch.softmax(logits, 1), target, self.taxonomy)
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss,
               **{f"val_{k}": report[k] for k in HISTORY_KEYS}, "epoch_time_s": round(time.time() - t0, 3)}
        self.history.append(row)
        score = list(_score(report, self.cfg.select_metric))
        if self.best is None or score < self.best:
            self.best = score
            _save_weights(self.run_dir / "model.safetensors", self.raw_model)
        state = {"model": self.raw_model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "epoch": epoch + 1, "history": self.history,
                 "best": self.best}
        atomic_write_with(self.ckpt_path, lambda tmp: torch.save(state, tmp))
        _write_history(self.run_dir, self.history)
        if self.common["progress"]:
            print(f"  epoch {epoch + 1}/{self.cfg.epochs}  loss {train_loss:.4f}  val CER {report['cer']:.4f}  "
                  f"F1 {report['f1_macro']:.4f}  acc {report['accuracy']:.4f}  "
                  f"typeII {report['type_ii']}  ({row['epoch_time_s']:.1f}s)", flush=True)

    def final_metrics(self) -> dict[str, Any]:
        """Best weights on validation and test: prediction files and the ``metrics.json`` content."""
        cfg, tax = self.cfg, self.taxonomy
        load_weights(self.raw_model, self.run_dir / "model.safetensors")
        results = {}
        for split, ds in (("val", self.val_ds), ("test", self.test_ds)):
            loader = _loader(ds, cfg.optim.eval_batch_size, False, 0, cfg.data.num_workers)
            logits, target = predict_logits(self.raw_model, loader, desc=split, **self.common)
            _save_predictions(self.run_dir / ("predictions.npz" if split == "test" else "val_predictions.npz"),
                              logits, target, ds)
            results[split] = safety_report(torch.softmax(logits, 1), target, tax)
        best_epoch = 1 + min(range(len(self.history)), key=lambda i: _score(
            {k: self.history[i][f"val_{k}"] for k in HISTORY_KEYS}, cfg.select_metric))
        run = {"name": cfg.name, "dataset": cfg.data.name, "model": cfg.model.name, "loss": cfg.loss.name,
               "loss_params": cfg.loss.params, "seed": cfg.seed, "epochs": cfg.epochs, "best_epoch": best_epoch,
               "select_metric": cfg.select_metric, "device": str(self.device), "weights": self.weights_source,
               "world_size": self.info.world_size, "classes": list(tax.classes), "levels": list(tax.levels),
               "superclass": tax.superclass.tolist(), "n_train": len(self.train_ds), "n_val": len(self.val_ds),
               "n_test": len(self.test_ds), "torch": torch.__version__, "python": platform.python_version()}
        return {**results["test"], "val": results["val"], "run": run}


def load_run_predictions(run_dir: str | Path, split: str = "test") -> dict[str, np.ndarray]:
    """``logits``, ``target``, ``ids``, ``groups`` of a finished run (``split``: ``test`` or ``val``)."""
    name = {"test": "predictions.npz", "val": "val_predictions.npz"}.get(split)
    if name is None:
        raise ValueError(f"Expected split 'test' or 'val', but got {split!r}")
    path = Path(run_dir) / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a finished run?")
    return load_npz(path)
