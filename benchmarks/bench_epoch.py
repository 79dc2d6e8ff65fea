"""End-to-end training epoch against the training-step ceiling, in one process.

    python benchmarks/bench_epoch.py --device cpu --model resnet10t --size 48 --batch 32 \
        --dataset brain_mri --root ../shared/data/brain_tumor_mri
    python benchmarks/bench_epoch.py --device cuda --model resnet50 --size 224 --batch 128 --dataset demo
    python benchmarks/bench_epoch.py ... --side-by-side 2     # two trainings at once, default thread share
    python benchmarks/bench_epoch.py ... --host-only          # the host side of the path alone (no model)
    python benchmarks/bench_epoch.py ... --background-load 1  # the epoch alone, then beside N busy loops

* ceiling: the same engine step (model, loss, optimizer, autocast, gradient checks) on a random batch already
  on the device (no data path);
* end to end: riskcl's engine on the cached data: ``BatchFeeder`` (batched gather from the memory map, pinned
  non-blocking copy, device-side augmentation, prefetch) + ``train_one_epoch``.
Both run the same number of steps after a warm-up; the JSON line has images/s of each and their ratio.
With ``--host-only`` it times only what the feeder's background thread does per epoch on the host (the batched
gather from the memory map; the pinning needs CUDA and is left out), the CPU budget of the CUDA path.
With ``--side-by-side N`` the end-to-end epoch runs in N processes at once (each with riskcl's default thread
share) and the line reports each one's epoch time next to the time of one alone. With ``--background-load N`` a
fresh process trains one end-to-end epoch alone, then again with N plain busy loops (``while True: pass``, started
before it and stopped after it) beside it; each process picks its threads as a run does (riskcl's default, which
sees the busy cores), and the line reports both epoch times and their ratio (issue 26: <= 2.5x with one busy
process on 2 cores, <= 4x with two).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import time

import torch


def _train_split(a):
    from riskcl.data import create_datasets

    kwargs = {"scale": a.scale} if a.dataset == "demo" else {}
    return create_datasets(a.dataset, a.root, image_size=a.size, progress=False, **kwargs).datasets["train"]


def _setup(a):
    from riskcl.engine import BatchFeeder, resolve_device
    from riskcl.losses import create_loss
    from riskcl.models import create_model

    device = resolve_device(a.device)
    train = _train_split(a)
    tax = train.taxonomy
    torch.manual_seed(0)
    model = create_model(a.model, tax.num_classes, pretrained=False).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    loss = create_loss(a.loss, taxonomy=tax, class_counts=train.class_counts).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    feeder = BatchFeeder(train, a.batch, device, train=True, seed=0, channels_last=device.type == "cuda",
                         prefetch=a.prefetch)
    return device, model, loss, opt, feeder, train


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def ceiling(a, device, model, loss_fn, opt, n_classes, steps):
    """The same engine step (``train_one_epoch``) on one random batch already on the device: no data path."""
    from riskcl.engine import train_one_epoch

    x = torch.randn(a.batch, 3, a.size, a.size, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, n_classes, (a.batch,), device=device)
    train_one_epoch(model, [(x, y)] * a.warmup, loss_fn, opt, device, progress=False)
    _sync(device)
    t0 = time.perf_counter()
    train_one_epoch(model, [(x, y)] * steps, loss_fn, opt, device, progress=False)
    _sync(device)
    return steps * a.batch / (time.perf_counter() - t0)


def end_to_end(a, device, model, loss_fn, opt, feeder, epoch=1):
    from riskcl.engine import train_one_epoch

    steps = len(feeder)
    train_one_epoch(model, feeder.batches(0, a.warmup), loss_fn, opt, device, max_steps=a.warmup, progress=False)
    _sync(device)
    t0 = time.perf_counter()
    train_one_epoch(model, feeder.batches(epoch), loss_fn, opt, device, max_steps=steps, progress=False)
    _sync(device)
    seconds = time.perf_counter() - t0
    return steps * a.batch / seconds, seconds, steps


def host_only(a, repeat):
    """Images/s of the feeder's host side (order + batched gather), best of ``repeat`` epochs; no model."""
    from riskcl.engine import BatchFeeder

    train = _train_split(a)
    feeder = BatchFeeder(train, a.batch, torch.device("cpu"), train=True, seed=0, prefetch=0)
    best = 0.0
    for epoch in range(repeat):
        t0, n = time.perf_counter(), 0
        for _, y, _ in feeder._host_batches(feeder._order(epoch)):
            n += len(y)
        best = max(best, n / (time.perf_counter() - t0))
    return {"train_images": len(train), "host_gather_images_per_s": round(best)}


def _one_epoch_process(a, queue, start):
    from riskcl.engine import TrainingSlot, apply_threads

    with TrainingSlot() as slot:
        start.wait()
        time.sleep(1.0)  # every process registered before any picks its thread count
        threads = apply_threads(a.side_threads, slot)
        device, model, loss_fn, opt, feeder, _ = _setup(a)
        ips, seconds, _ = end_to_end(a, device, model, loss_fn, opt, feeder)
        queue.put({"pid": os.getpid(), "threads": threads, "epoch_s": round(seconds, 2), "images_per_s": round(ips, 1)})


def _busy() -> None:
    while True:
        pass


def _epoch_in_fresh_process(a, queue) -> None:
    from riskcl.engine import TrainingSlot, apply_threads

    with TrainingSlot() as slot:
        threads = apply_threads(a.threads, slot)
        device, model, loss_fn, opt, feeder, _ = _setup(a)
        _, seconds, _ = end_to_end(a, device, model, loss_fn, opt, feeder)
        queue.put({"threads": threads, "epoch_s": round(seconds, 2)})


def background_load(a, n: int) -> dict:
    """One end-to-end epoch alone and one beside ``n`` busy processes, each in a fresh process."""
    ctx = mp.get_context("spawn")
    out = {}
    for label, busy in (("alone", 0), (f"with {n} busy", n)):
        loops = [ctx.Process(target=_busy, daemon=True) for _ in range(busy)]
        for p in loops:
            p.start()
        time.sleep(1.0 if busy else 0.0)  # the loops are running when the training picks its threads
        queue = ctx.Queue()
        trainer = ctx.Process(target=_epoch_in_fresh_process, args=(a, queue))
        trainer.start()
        out[label] = queue.get()
        trainer.join()
        for p in loops:
            p.terminate()
            p.join()
    out["ratio"] = round(out[f"with {n} busy"]["epoch_s"] / out["alone"]["epoch_s"], 2)
    return out


def side_by_side(a, n):
    ctx = mp.get_context("spawn")
    queue, start = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_one_epoch_process, args=(a, queue, start)) for _ in range(n)]
    for p in procs:
        p.start()
    start.set()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--model", default="resnet10t")
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--loss", default="ce")
    p.add_argument("--dataset", default="demo")
    p.add_argument("--root", default=None)
    p.add_argument("--scale", type=float, default=1.0, help="demo data size multiplier")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--prefetch", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: riskcl's share)")
    p.add_argument("--side-by-side", type=int, default=0, help="also run N end-to-end epochs at once")
    p.add_argument("--side-threads", type=int, default=None, help="threads of each side-by-side process (default: "
                   "riskcl's share; e.g. the core count to see what happens without it)")
    p.add_argument("--repeat", type=int, default=2, help="alternate end-to-end and ceiling this often; best of each")
    p.add_argument("--host-only", action="store_true", help="time only the host side of the data path")
    p.add_argument("--background-load", type=int, default=0, help="an epoch alone, then beside N busy processes")
    a = p.parse_args()
    from riskcl.engine import TrainingSlot, apply_threads

    row = {"machine": platform.processor() or platform.machine(), "cores": os.cpu_count(), "model": a.model,
           "size": a.size, "batch": a.batch, "dataset": a.dataset, "loss": a.loss}
    if a.background_load:
        row["background_load"] = background_load(a, a.background_load)
        print(json.dumps(row), flush=True)
        return
    with TrainingSlot() as slot:
        row["threads"] = apply_threads(a.threads, slot)
        if a.host_only:  # no model, loss or device involved
            row = {k: v for k, v in row.items() if k not in ("model", "loss", "threads")}
            row.update(host_only(a, max(a.repeat, 3)))
            print(json.dumps(row), flush=True)
            return
        device, model, loss_fn, opt, feeder, train = _setup(a)
        row["device"] = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
        e2e, seconds, ceil = 0.0, float("inf"), 0.0
        for k in range(a.repeat):  # alternate, so that machine noise hits both alike; keep the best of each
            ips, sec, steps = end_to_end(a, device, model, loss_fn, opt, feeder, epoch=k + 1)
            e2e, seconds = max(e2e, ips), min(seconds, sec)
            ceil = max(ceil, ceiling(a, device, model, loss_fn, opt, train.taxonomy.num_classes, steps))
    row.update({"train_images": len(train), "steps": steps, "step_ceiling_images_per_s": round(ceil, 1),
                "end_to_end_images_per_s": round(e2e, 1), "epoch_s": round(seconds, 2),
                "ratio": round(e2e / ceil, 3)})
    if a.side_by_side:
        row["side_by_side"] = side_by_side(a, a.side_by_side)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
