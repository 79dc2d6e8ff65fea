"""The demo: CE against the Risk-Calibrated Loss on the embedded demo data (no download); for segmentation, BCE +
Dice against the risk-calibrated pixel loss on generated lesions with their masks.

Both runs share every setting but the loss; :func:`run_demo` returns their metrics, the CLI prints them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import config_from_dict
from .run import run_experiment

# Small enough for 2 CPU cores: 32 px generated lesions, a ResNet-18 from scratch, 8 epochs.
DEMO_CONFIG: dict[str, Any] = {
    "name": "demo",
    "seed": 0,
    "epochs": 8,
    "select_metric": "mean_cost",
    "data": {"name": "demo", "image_size": 32},
    "model": {"name": "resnet18", "pretrained": False},
    "optim": {"lr": 2e-3, "weight_decay": 0.05, "batch_size": 64, "eval_batch_size": 256},
}
DEMO_LOSSES = ("ce", "rcl-proposed")
# Segmentation: a small U-Net on a ResNet-10 encoder, 32 px generated lesions with their masks, seconds per epoch.
SEGMENTATION_DEMO_CONFIG: dict[str, Any] = {
    "name": "demo-segmentation",
    "task": "segmentation",
    "seed": 0,
    "epochs": 4,
    "select_metric": "mean_cost",
    "data": {"name": "seg_demo", "image_size": 32, "options": {"scale": 0.3}},
    "model": {"name": "resnet10t", "arch": "unet", "pretrained": False,
              "options": {"decoder_channels": [64, 32, 16, 16, 8]}},
    "optim": {"lr": 3e-3, "weight_decay": 1e-4, "batch_size": 32, "eval_batch_size": 128},
}
DEMOS = {"classification": (DEMO_CONFIG, DEMO_LOSSES),
         "segmentation": (SEGMENTATION_DEMO_CONFIG, ("bce-dice", "rcl-pixel"))}


def run_demo(out: str | Path, epochs: int | None = None, progress: bool = True,
             seed: int | None = None, task: str = "classification") -> dict[str, dict[str, Any]]:
    """Train the demo's runs of ``task`` into ``out/<loss>``; returns ``{loss: metrics.json content}``."""
    if task not in DEMOS:
        raise ValueError(f"Expected --task in {list(DEMOS)}, but got {task!r}")
    base, losses = DEMOS[task]
    out = Path(out)
    runs = {}
    for loss in losses:
        overrides: dict[str, Any] = {"loss.name": loss, "name": f"{base['name']}-{loss}"}
        if epochs is not None:
            overrides["epochs"] = epochs
        if seed is not None:
            overrides["seed"] = seed
        cfg = config_from_dict(base, overrides)
        if progress:
            print(f"== training {loss} on the {cfg.data.name} data ({cfg.epochs} epochs, {cfg.model.name}, "
                  f"{cfg.data.image_size}px) -> {out / loss}", flush=True)
        runs[loss] = run_experiment(cfg, out / loss, progress=progress)
    return runs
