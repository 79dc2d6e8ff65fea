"""Inference from a finished run folder: evaluate a split again or predict image files."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .data import load_image
from .data.transforms import build_transform
from .decision import threshold_decision
from .experiment.io import atomic_write_text
from .experiment.run import load_weights, read_config, resolve_taxonomy
from .metrics import malignant_probability
from .models import create_model
from .taxonomy import Taxonomy, load_taxonomy


def load_run_model(run_dir: str | Path) -> tuple[Any, torch.nn.Module, Taxonomy]:
    """``(config, model in eval mode on CPU with the best weights, taxonomy)`` of a finished run."""
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    weights = run_dir / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found: {run_dir} has not finished an epoch yet")
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    classes = metrics.get("run", {}).get("classes")
    if classes is not None:
        levels = [int(s) for s in metrics["run"].get("levels", metrics["run"]["superclass"])]
        taxonomy = Taxonomy(cfg.data.name, tuple(classes), tuple(levels))
        if cfg.loss.taxonomy is not None:
            taxonomy = resolve_taxonomy(cfg, taxonomy)
    else:
        taxonomy = load_taxonomy(cfg.loss.taxonomy or cfg.data.name)
    model = create_model(cfg.model.name, taxonomy.num_classes, pretrained=False)
    load_weights(model, weights)
    model.eval()
    return cfg, model, taxonomy


def predict_files(run_dir: str | Path, images: Sequence[str | Path], out_csv: str | Path | None = None,
                  calibrated: bool = False, batch_size: int = 64) -> list[dict[str, Any]]:
    """One row per image: predicted class, its superclass, p(malignant) and every class probability.

    With ``calibrated=True`` the decision uses the threshold from the run's ``calibration.json``.
    """
    cfg, model, taxonomy = load_run_model(run_dir)
    threshold = None
    if calibrated:
        cal_path = Path(run_dir) / "calibration.json"
        if not cal_path.is_file():
            raise FileNotFoundError(f"{cal_path} not found; run `riskcl calibrate {run_dir}` first")
        threshold = float(json.loads(cal_path.read_text())["threshold"])
    transform = build_transform(train=False)
    probs = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            batch = [transform(torch.from_numpy(load_image(p, cfg.data.image_size)).permute(2, 0, 1))
                     for p in images[i : i + batch_size]]
            probs.append(torch.softmax(model(torch.stack(batch)).float(), 1).numpy())
    p = np.concatenate(probs) if probs else np.zeros((0, taxonomy.num_classes))
    labels = p.argmax(1) if threshold is None else threshold_decision(p, taxonomy, threshold)
    p_mal = malignant_probability(p, taxonomy) if len(p) else np.zeros(0)
    rows = []
    for path, lab, pm, pr in zip(images, labels, p_mal, p):
        rows.append({"image": str(path), "predicted": taxonomy.classes[lab],
                     "superclass": "malignant" if taxonomy.superclass[lab] else "benign",
                     "p_malignant": float(pm), **{f"p_{c}": float(v) for c, v in zip(taxonomy.classes, pr)}})
    if out_csv is not None:
        buf = io.StringIO()
        fields = ["image", "predicted", "superclass", "p_malignant"] + [f"p_{c}" for c in taxonomy.classes]
        w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(out_csv, buf.getvalue())
    return rows
