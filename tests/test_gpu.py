"""GPU-only checks (skipped without CUDA): the losses under CUDA bf16 autocast, and a run on the GPU."""
from __future__ import annotations

import pytest
import torch

from _tiny import tiny
from riskcl.losses import create_loss, list_losses
from riskcl.taxonomy import get_taxonomy

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
TAX = get_taxonomy("isic2018")


# distill runs a teacher network on its batch (tests/test_distill.py), not on logits alone
@pytest.mark.parametrize("name", [n for n in list_losses("classification") if n != "distill"])
def test_losses_on_cuda_under_bf16_autocast_match_cpu(name):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 7, generator=g) * 20
    y = torch.randint(0, 7, (64,), generator=g)
    counts = [50, 400, 30, 20, 60, 10, 15]
    cpu = create_loss(name, taxonomy=TAX, class_counts=counts)(x, y)
    loss = create_loss(name, taxonomy=TAX, class_counts=counts).cuda()
    xc = x.cuda().requires_grad_(True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        value = loss(xc.to(torch.bfloat16), y.cuda())
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(xc.grad).all()
    assert value.item() == pytest.approx(cpu.item(), rel=0.05, abs=0.05)


def test_tiny_run_on_cuda(tmp_path):
    from riskcl.experiment import run_experiment

    metrics = run_experiment(tiny(device="cuda"), tmp_path / "gpu")
    assert metrics["run"]["device"].startswith("cuda") and 0 <= metrics["cer"] <= 1


def test_feeder_on_cuda_gives_the_cpu_batches():
    """The same (seed, epoch): the same images, labels and augmentation parameters on either device."""
    from riskcl.data import create_datasets
    from riskcl.engine import BatchFeeder

    ds = create_datasets("demo", image_size=16, scale=0.05, progress=False).datasets["train"]
    cpu = BatchFeeder(ds, 16, torch.device("cpu"), train=True, seed=1)
    gpu = BatchFeeder(ds, 16, torch.device("cuda"), train=True, seed=1, prefetch=2)
    n = 0
    for (xc, yc), (xg, yg) in zip(cpu.batches(0), gpu.batches(0)):
        assert xg.is_cuda and torch.equal(yc, yg.cpu())
        torch.testing.assert_close(xg.cpu(), xc, atol=2e-3, rtol=0)  # grid_sample's float rounding differs
        n += 1
    assert n == len(cpu)
