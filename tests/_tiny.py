"""A tiny, fast experiment config on the embedded demo data (seconds per epoch on 2 CPU cores)."""
from __future__ import annotations

import copy

TINY = {
    "name": "tiny",
    "seed": 0,
    "epochs": 2,
    "progress": False,
    "data": {"name": "demo", "image_size": 16, "options": {"scale": 0.15}},
    "model": {"name": "resnet10t", "pretrained": False},
    "loss": {"name": "ce"},
    "optim": {"lr": 0.003, "batch_size": 32, "eval_batch_size": 128},
}


def tiny(**overrides):
    from riskcl.config import config_from_dict

    return config_from_dict(copy.deepcopy(TINY), overrides)
