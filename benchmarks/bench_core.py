"""CPU benchmarks of the pure core and the data path; results are written down in benchmarks/RESULTS.md.

    python benchmarks/bench_core.py [--brain-mri ../shared/data/brain_tumor_mri]

Targets (checked here, not in timed tests):
* RCL costs at most 1.5x plain CE per batch on the CPU (it adds one argmax and one gather);
* safety_report on 1,000,000 predictions in under 2 s; a 1,000-resample bootstrap of the CER on 10,000 in
  under 10 s; Learn-then-Test on 100,000 calibration samples in under 1 s;
* a cached 48 px Brain Tumor MRI epoch is read (with augmentation) at > 2,000 images/s, so training, not
  loading, bounds the CPU preset.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def timeit(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    from riskcl.decision import learn_then_test
    from riskcl.losses import create_loss
    from riskcl.metrics import bootstrap_ci, critical_error_rate, safety_report
    from riskcl.taxonomy import get_taxonomy

    p = argparse.ArgumentParser()
    p.add_argument("--brain-mri", default="../shared/data/brain_tumor_mri")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    res: dict[str, float] = {"torch_threads": torch.get_num_threads()}
    tax = get_taxonomy("isic2018")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 7, generator=g, requires_grad=True)
    y = torch.randint(0, 7, (4096,), generator=g)
    for name in ("ce", "rcl-proposed", "focal", "hxe"):
        loss = create_loss(name, taxonomy=tax)
        res[f"loss_fwd_bwd_ms_{name}_4096x7"] = 1e3 * timeit(lambda: loss(x, y).backward(), 20)
    res["rcl_over_ce"] = res["loss_fwd_bwd_ms_rcl-proposed_4096x7"] / res["loss_fwd_bwd_ms_ce_4096x7"]

    rng = np.random.default_rng(0)
    n = 1_000_000
    probs = rng.dirichlet(np.ones(7), n)
    target = rng.integers(0, 7, n)
    res["safety_report_s_1e6"] = timeit(lambda: safety_report(probs, target, tax), 3)
    small = probs[:10_000].argmax(1), target[:10_000]
    res["bootstrap_cer_1000x_s_1e4"] = timeit(
        lambda: bootstrap_ci(lambda p_, t_: critical_error_rate(p_, t_, tax), *small, n_resamples=1000), 1)
    res["ltt_s_1e5"] = timeit(lambda: learn_then_test(probs[:100_000], target[:100_000], tax, 0.05, 0.1), 3)

    root = Path(a.brain_mri)
    if root.is_dir():
        import tempfile

        from riskcl.data import create_datasets

        with tempfile.TemporaryDirectory() as cache:
            t0 = time.perf_counter()
            data = create_datasets("brain_mri", root, image_size=48, cache_dir=cache, progress=False)
            res["brain_mri_first_index_and_decode_s_48px"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            data = create_datasets("brain_mri", root, image_size=48, cache_dir=cache, progress=False)
            res["brain_mri_cached_index_s_48px"] = time.perf_counter() - t0
            from riskcl.engine import BatchFeeder

            feeder = BatchFeeder(data.datasets["train"], 32, torch.device("cpu"), train=True)
            t0 = time.perf_counter()
            count = sum(len(xb) for xb, _ in feeder.batches(0))
            res["brain_mri_train_epoch_read_images_per_s_48px"] = count / (time.perf_counter() - t0)
    for k, v in res.items():
        print(f"{k:50s} {v:10.4f}")
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
