"""One run's model, loss, optimizer and schedule, and what happens at each epoch boundary.

Each epoch trains on batches seeded from ``(seed, epoch)`` (:class:`riskcl.engine.BatchFeeder`), then, on rank 0:
:meth:`Trainer.validate` scores the validation split, :meth:`Trainer.select` keeps the best weights,
:meth:`Trainer.checkpoint` saves the training state and the history. The calibration split is never read here:
it chooses nothing. At the end :meth:`Trainer.predict_splits` writes the prediction files and
:meth:`Trainer.final_metrics` builds ``metrics.json``.
"""
from __future__ import annotations

import dataclasses
import logging
import platform
import time
import warnings
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..config import ExperimentConfig, run_cost_matrix, run_loss
from ..data import SplitData
from ..data.encoding import METADATA_ONLY
from ..distributed import DistInfo, barrier, wrap_model
from ..engine import BatchFeeder, TrainingSlot, apply_threads, predict_logits, train_one_epoch
from ..tasks import task_of
from ..taxonomy import Taxonomy
from .folder import NO_METADATA, NO_METADATA_SPLITS, RunFolder, source_split

log = logging.getLogger(__name__)


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


class Trainer:
    """The state of one run between epochs (see the module docstring)."""

    def __init__(self, cfg: ExperimentConfig, folder: RunFolder, info: DistInfo, device: torch.device,
                 taxonomy: Taxonomy, data: SplitData, progress: bool, slot: TrainingSlot | None = None) -> None:
        self.cfg, self.folder, self.info, self.device, self.taxonomy = cfg, folder, info, device, taxonomy
        self.data, self.progress, self.slot = data, progress, slot
        self.train_ds = data.datasets["train"]
        self.cost = run_cost_matrix(cfg, taxonomy)
        self.task = task_of(cfg.task)
        self.encoding = self._metadata_encoding()
        # an image fused with metadata (not the metadata-only reference, which reads no image: nothing is fused)
        self.fuses = self.encoding is not None and cfg.model.name != METADATA_ONLY
        torch.manual_seed(cfg.seed)
        model = self.task.create_model(cfg.model, taxonomy.num_classes, self.encoding)
        self.weights_source = getattr(model, "riskcl_weights", "unknown")
        model.to(device)
        if cfg.channels_last and device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        self.loss_fn = run_loss(cfg, taxonomy, self.train_ds.class_counts, self.cost).to(device)
        self.teacher: dict | None = None  # a distillation run's teacher: its folder and weights' SHA-256
        if hasattr(self.loss_fn, "attach_teacher"):
            from .distill import load_teacher

            net, self.teacher = load_teacher(cfg, folder, taxonomy)
            self.loss_fn.attach_teacher(net.to(device))
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.raw_model, self.model = model, wrap_model(model, info, device)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=cfg.epochs)
        self.history: list[dict[str, Any]] = []
        self.threads: int | None = None
        self.best: list[float] | None = None
        self.first_epoch = 0
        self.common = dict(device=device, amp=cfg.amp, channels_last=cfg.channels_last, progress=progress)
        self.train_feeder = BatchFeeder(self.train_ds, cfg.optim.batch_size, device, train=True, seed=cfg.seed,
                                        rank=info.rank, world_size=info.world_size,
                                        channels_last=cfg.channels_last, prefetch=cfg.data.num_workers,
                                        augment=dataclasses.asdict(cfg.augment))

    def _metadata_encoding(self):
        """With ``model.metadata``: the encoding fitted on the training split (saved in the run folder, reused on
        resume), attached to every split; else None."""
        from ..data.encoding import MetadataEncoding, attach_features, check_input_columns

        columns = self.cfg.model.metadata
        if not columns:
            return None
        check_input_columns(columns, self.data.info.get("metadata", []), self.data.info.get("label_derived", []))
        encoding = self.folder.metadata_encoding()
        if encoding is None or encoding.column_names != list(columns):
            train = self.train_ds.table
            encoding = MetadataEncoding.fit({c: train[c].tolist() for c in columns}, columns,
                                             self.cfg.model.metadata_spec)
            if self.info.is_main:
                self.folder.write_metadata_encoding(encoding)
        attach_features(encoding, self.data.datasets)
        return encoding

    def feeder(self, split: str) -> BatchFeeder:
        """Evaluation batches of ``split`` (no augmentation, in order)."""
        return BatchFeeder(self.data.datasets[split], self.cfg.optim.eval_batch_size, self.device,
                           channels_last=self.cfg.channels_last, prefetch=self.cfg.data.num_workers)

    def resume(self) -> None:
        if not self.folder.has_progress():
            return
        state = self.folder.load_checkpoint()
        self.raw_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.first_epoch, self.history, self.best = int(state["epoch"]), list(state["history"]), state["best"]
        recorded = [int(r["threads"]) for r in self.history if r.get("threads")]
        if recorded and self.cfg.threads is None:  # a resumed run keeps the thread count it started with
            self.threads = apply_threads(recorded[0])
        log.info("resuming %s from epoch %d", self.folder.path, self.first_epoch)

    def fit_epoch(self, epoch: int) -> None:
        """Train one epoch, then on rank 0 validate, select and checkpoint."""
        t0 = time.time()
        if self.threads is None:  # chosen once per run (see riskcl.engine.threads), then kept
            self.threads = apply_threads(self.cfg.threads, self.slot)
            if self.progress:
                print(f"  using {self.threads} CPU thread(s)", flush=True)
        lr = self.optimizer.param_groups[0]["lr"]
        train_loss = train_one_epoch(self.model, self.train_feeder.batches(epoch, self.cfg.max_steps_per_epoch),
                                     self.loss_fn, self.optimizer, epoch=epoch, grad_clip=self.cfg.optim.grad_clip,
                                     max_steps=self._steps(), **self.common)
        self.scheduler.step()
        if self.info.is_main:  # rank 0 evaluates, selects and writes; the others wait at the barrier
            report = self.validate()
            row = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss,
                   **{f"val_{k}": report[k] for k in self.task.history_keys},
                   "epoch_time_s": round(time.time() - t0, 3),
                   "threads": self.threads}
            self.history.append(row)
            if train_loss == 0.0:  # nothing to learn from: a cost or weight matrix, or a loss, that vanishes
                warnings.warn(f"epoch {epoch + 1}: the training loss is exactly 0, so the model learns nothing; check "
                              f"the loss and its cost / weight matrix", UserWarning, stacklevel=2)
            self.select(report)
            self.checkpoint(epoch)
            self._print(row)
        barrier(self.info)

    def _steps(self) -> int:
        n = len(self.train_feeder)
        return n if self.cfg.max_steps_per_epoch is None else min(n, self.cfg.max_steps_per_epoch)

    def validate(self) -> dict[str, Any]:
        logits, target = predict_logits(self.raw_model, self.feeder("val"), desc="val", tta=self.cfg.tta,
                                        **self.common)
        return self.task.report(logits, target, self.taxonomy, self.cost, self.cfg.decision, final=False)

    def select(self, report: dict[str, Any]) -> None:
        """Keep the weights when this epoch's validation score is the best so far."""
        s = list(self.task.score(report, self.cfg.select_metric))
        if self.best is None or s < self.best:
            self.best = s
            self.folder.save_weights(self.raw_model)

    def checkpoint(self, epoch: int) -> None:
        self.folder.save_checkpoint({"model": self.raw_model.state_dict(), "optimizer": self.optimizer.state_dict(),
                                     "scheduler": self.scheduler.state_dict(), "epoch": epoch + 1,
                                     "history": self.history, "best": self.best})
        self.folder.write_history(self.history)

    def _print(self, row: dict[str, Any]) -> None:
        if self.progress:
            print(self.task.epoch_line(row, self.cfg.epochs), flush=True)

    def predict_splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The best weights on every evaluation split; writes the prediction files."""
        self.folder.load_weights(self.raw_model)
        out = {}
        for split in ("val", "calib", "test"):
            if split not in self.data.datasets:
                continue
            logits, target = predict_logits(self.raw_model, self.feeder(split), desc=split, tta=self.cfg.tta,
                                            **self.common)
            self.folder.write_predictions(split, logits, target, self.data.datasets[split])
            out[split] = (logits, target)
        if self.fuses:  # what happens when a clinic sends no metadata: the calibration and test splits again
            for split, twin in NO_METADATA_SPLITS.items():
                if split not in self.data.datasets:
                    continue
                ds = self.data.datasets[split]
                with_metadata = ds.features
                ds.features = np.repeat(self.encoding.missing_row()[None], len(ds), axis=0)
                try:
                    logits, target = predict_logits(self.raw_model, self.feeder(split), desc=f"{split} (no metadata)",
                                                    tta=self.cfg.tta, **self.common)
                finally:
                    ds.features = with_metadata
                self.folder.write_predictions(twin, logits, target, ds)
                out[twin] = (logits, target)
        return out

    def final_metrics(self, predictions: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
        """The ``metrics.json`` content: the test report (top level), validation and calibration reports, facts."""
        cfg, tax = self.cfg, self.taxonomy
        reports = {s: self.task.report(lg, t, tax, self.cost, cfg.decision,
                                       groups=self.data.datasets[source_split(s)].groups)
                   for s, (lg, t) in predictions.items()}
        counts = {s: len(d) for s, d in self.data.datasets.items()}
        loss_matrix = getattr(self.loss_fn, "matrix", None)  # the weights of a cost-based loss (1 on the diagonal)
        run = {"name": cfg.name, "task": cfg.task, "dataset": cfg.data.name, "model": cfg.model.name,
               "loss": cfg.loss.name,
               "loss_params": cfg.loss.params, "seed": cfg.seed, "epochs": cfg.epochs,
               "best_epoch": self.task.best_epoch(self.history, cfg.select_metric), "select_metric": cfg.select_metric,
               "decision_rule": cfg.decision, "tta": cfg.tta, "device": str(self.device),
               "weights": self.weights_source, "world_size": self.info.world_size, "classes": list(tax.classes),
               "levels": list(tax.levels), "superclass": tax.superclass.tolist(),
               "cost_matrix": np.asarray(self.cost).tolist(),
               "loss_matrix": None if loss_matrix is None else loss_matrix.cpu().tolist(),
               "loss_costs": (f"sampled per batch from cost.uncertain: {self.loss_fn.costs.describe()}"
                              if hasattr(self.loss_fn, "last_draw") else "fixed"),
               **{f"n_{s}": n for s, n in counts.items()}, "threads": self.threads,
               "threads_per_epoch": [r.get("threads") for r in self.history], "riskcl": __version__,
               "torch": torch.__version__, "timm": _version("timm"),
               **({"segmentation_models_pytorch": _version("segmentation-models-pytorch"), "arch": cfg.model.arch
                   or self.task.default_arch} if cfg.task == "segmentation" else {}), "numpy": np.__version__,
               "python": platform.python_version()}
        extra = {s: reports[s] for s in ("val", "calib", NO_METADATA) if s in reports}
        if self.teacher is not None:
            run["teacher"] = self.teacher
        if self.encoding is not None:
            run["metadata_inputs"] = self.encoding.column_names
            if self.fuses:
                run["fusion"] = {"head": cfg.model.fusion, "metadata_dropout": cfg.model.metadata_dropout,
                                 "features": self.encoding.dim}
        return {**reports["test"], **extra, "run": run}
