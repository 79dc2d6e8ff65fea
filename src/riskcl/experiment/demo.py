"""The demo: CE against the Risk-Calibrated Loss on the embedded demo data (no download).

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


def run_demo(out: str | Path, epochs: int | None = None, progress: bool = True,
             seed: int | None = None) -> dict[str, dict[str, Any]]:
    """Train the demo's runs into ``out/<loss>``; returns ``{loss: metrics.json content}``."""
    out = Path(out)
    runs = {}
    for loss in DEMO_LOSSES:
        overrides: dict[str, Any] = {"loss.name": loss, "name": f"demo-{loss}"}
        if epochs is not None:
            overrides["epochs"] = epochs
        if seed is not None:
            overrides["seed"] = seed
        cfg = config_from_dict(DEMO_CONFIG, overrides)
        if progress:
            print(f"== training {loss} on the demo data ({cfg.epochs} epochs, {cfg.model.name}, "
                  f"{cfg.data.image_size}px) -> {out / loss}", flush=True)
        runs[loss] = run_experiment(cfg, out / loss, progress=progress)
    return runs
