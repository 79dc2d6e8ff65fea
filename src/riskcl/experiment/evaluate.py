"""Re-evaluating a finished run: its own splits as recorded in ``splits.csv``, or another copy of the data.

Evaluating the run's own split rebuilds exactly the images of that split from ``splits.csv`` (never a new
split of the folder). Evaluating another data folder (``data_root``) uses that folder's official split of the
same name when it has one, else all of it as one evaluation set, and says which. Results of a finished run are
written into its folder (``eval_<split>.json``, ``eval_external_<split>.json``); an unfinished run is refused
unless the caller allows it, and then nothing is written into its folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data import create_eval_dataset
from ..engine import BatchFeeder, predict_logits, resolve_device
from .folder import RunFolder
from .run import build_data
from .scoring import split_report


def evaluate_run(run_dir: str | Path, split: str = "test", data_root: str | Path | None = None,
                 allow_unfinished: bool = False, progress: bool = True) -> dict[str, Any]:
    """Predict ``split`` again with the run's best weights; returns the report (``source``: what was evaluated,
    ``note``: a warning about unfinished weights, or None)."""
    folder = RunFolder(run_dir)
    note = folder.require_finished(allow_unfinished)
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
                                         **d.options)
    taxonomy = folder.taxonomy()
    if ds.taxonomy.classes != taxonomy.classes:
        raise ValueError(f"The data has classes {list(ds.taxonomy.classes)}, the run {list(taxonomy.classes)}")
    device = resolve_device(cfg.device)
    model = folder.load_model().to(device)
    feeder = BatchFeeder(ds, cfg.optim.eval_batch_size, device, prefetch=cfg.data.num_workers)
    logits, target = predict_logits(model, feeder, device, amp=cfg.amp, progress=progress, tta=cfg.tta)
    report = {**split_report(logits, target, taxonomy, folder.cost_matrix(), cfg.decision), "split": split,
              "data_root": str(data_root or cfg.data.root), "source": source, "note": note}
    if note is None:
        folder.write_evaluation(split, report, external=data_root is not None)
    return report
