"""Training-step throughput (images/s) of the paper's backbones with CE and RCL, and RCL's overhead.

    python benchmarks/bench_train_step.py --device cuda   # paper protocol: 224 px, batch 32, bf16 autocast
    python benchmarks/bench_train_step.py --device cpu --models resnet10t --size 48
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from riskcl.engine import autocast_context
from riskcl.losses import create_loss
from riskcl.models import create_model
from riskcl.taxonomy import get_taxonomy


def bench(model_name: str, loss_name: str, device: torch.device, size: int, batch: int, steps: int,
          repeats: int = 3) -> float:
    """Median over ``repeats`` timed blocks of ``steps`` training steps, after 10 warm-up steps."""
    tax = get_taxonomy("isic2018")
    model = create_model(model_name, tax.num_classes, pretrained=False).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    loss_fn = create_loss(loss_name, taxonomy=tax).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, tax.num_classes, (batch,), device=device)

    def step() -> None:
        with autocast_context(device, True):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(10):
        step()
    rates = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(batch * steps / (time.perf_counter() - t0))
    return sorted(rates)[len(rates) // 2]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    p.add_argument("--models", nargs="+", default=["resnet50", "vit_base_patch16_224"])
    p.add_argument("--losses", nargs="+", default=["ce", "rcl-proposed"])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    device = torch.device(a.device)
    rows = []
    for m in a.models:
        for loss_name in a.losses:
            ips = bench(m, loss_name, device, a.size, a.batch, a.steps)
            rows.append({"model": m, "loss": loss_name, "images_per_s": round(ips, 1), "size": a.size, "batch": a.batch,
                         "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"})
            print(json.dumps(rows[-1]), flush=True)
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
