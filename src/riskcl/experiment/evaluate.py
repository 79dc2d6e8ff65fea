"""Re-evaluating a finished run: its own splits as recorded in ``splits.csv``, or another copy of the data.

Evaluating the run's own split rebuilds exactly the images of that split from ``splits.csv`` (never a new
split of the folder). Evaluating another data folder (``data_root``) uses that folder's official split of the
same name when it has one, else all of it as one evaluation set, and says which. Results of a finished run are
written into its folder (``eval_<split>.json``, ``eval_external_<split>.json``); an unfinished run is refused
unless the caller allows it, and then nothing is written into its folder.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import dicom_policy
from ..data import create_eval_dataset
from ..engine import BatchFeeder, predict_logits, resolve_device
from ..tasks import task_of
from .calibrate import operating_point
from .folder import RunFolder
from .run import build_data


def training_overlap(folder: RunFolder, ds) -> str | None:
    """A warning when images of ``ds`` were in the run's training split (same decoded content, else same id)."""
    recorded = folder.splits()
    train = recorded.loc[recorded["split"] == "train"]
    if "hash" in train and "hash" in ds.table and train["hash"].astype(bool).all():
        seen, mine, what = set(train["hash"]), ds.table["hash"].astype(str), "content"
    else:
        seen, mine, what = set(train["id"].astype(str)), ds.table["id"].astype(str), "id"
    n = int(mine.isin(seen).sum())
    if not n:
        return None
    return (f"{n} of the {len(ds)} evaluated images were in the run's training split (same image {what}): "
            f"these numbers are optimistic; evaluate on data the run never trained on")


def evaluate_run(run_dir: str | Path, split: str = "test", data_root: str | Path | None = None,
                 allow_unfinished: bool = False, progress: bool = True, threshold: float | None = None,
                 default_rule: bool = False) -> dict[str, Any]:
    """Predict ``split`` again with the run's best weights; returns the report (``source``: what was evaluated,
    ``note``: a warning about unfinished weights, or None). The top level is the run's decision rule at 0.5 (as in
    ``metrics.json``); ``operating_point`` holds the report at the run's operating point (calibrated when
    ``calibration.json`` exists; ``threshold`` / ``default_rule`` override it) and says which point it is."""
    folder = RunFolder(run_dir)
    note = folder.require_finished(allow_unfinished)
    op = operating_point(folder, False if default_rule else None, threshold, allow_uncertified=True)
    cfg = folder.read_config()
    if data_root is None:
        recorded = folder.splits()
        if split not in set(recorded["split"]):
            raise ValueError(f"{folder.file('splits')}: the run has no '{split}' split (it has "
                             f"{sorted(set(recorded['split']))})")
        ds = build_data(cfg, progress, fixed_splits=dict(zip(recorded["path"], recorded["split"]))).datasets[split]
        source = f"the run's own '{split}' split ({len(ds)} images, from splits.csv)"
    else:
        d = cfg.data
        ds, source = create_eval_dataset(d.name, data_root, split, image_size=d.image_size,
                                         on_bad_image=d.on_bad_image, cache_dir=d.cache_dir, progress=progress,
                                         dicom=dicom_policy(d), **d.options)
    if data_root is not None:
        overlap = training_overlap(folder, ds)
        if overlap:
            warnings.warn(overlap, UserWarning, stacklevel=2)
            note = f"{note}; {overlap}" if note else overlap
    encoding = folder.metadata_encoding()
    if encoding is not None:  # a fusion model reads each image's metadata too
        from ..data.encoding import attach_features

        attach_features(encoding, [ds])
    taxonomy = folder.taxonomy()
    if ds.taxonomy.classes != taxonomy.classes:
        raise ValueError(f"The data has classes {list(ds.taxonomy.classes)}, the run {list(taxonomy.classes)}")
    device = resolve_device(cfg.device)
    model = folder.load_model().to(device)
    if getattr(model, "raw_input", False):  # a model trained elsewhere reads the images at their own size
        from ..data.registry import load_source_images

        images = load_source_images(cfg.data.name, data_root or cfg.data.root, list(ds.paths), dicom_policy(cfg.data),
                                    **cfg.data.options)
        logits, target = torch.from_numpy(model.logits_of(images)), torch.as_tensor(np.asarray(ds.targets))
    else:
        feeder = BatchFeeder(ds, cfg.optim.eval_batch_size, device, prefetch=cfg.data.num_workers)
        logits, target = predict_logits(model, feeder, device, amp=cfg.amp, progress=progress, tta=cfg.tta)
    cost = folder.cost_matrix()
    strata = ds.table[op.by].astype(str).to_numpy() if op.per_group and op.by in ds.table else None
    task = task_of(cfg.task)
    at_op = {**task.report_at(op, logits, target, taxonomy, cost, strata, ds.groups),
             "how": op.describe(), "threshold": op.threshold, "method": op.method, "certified": op.certified,
             "per_group": strata is not None}
    report = {**task.report(logits, target, taxonomy, cost, cfg.decision, groups=ds.groups), "split": split,
              "data_root": str(data_root or cfg.data.root), "source": source, "note": note, "operating_point": at_op}
    if note is None:
        folder.write_evaluation(split, report, external=data_root is not None)
    return report
