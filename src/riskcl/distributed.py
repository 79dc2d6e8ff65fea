"""Multi-process data parallelism under ``torchrun`` (DDP), kept out of the way of single-process runs.

``torchrun --nproc_per_node=N -m riskcl train CONFIG --out DIR`` starts N processes; each trains on its share
of every epoch (``DistributedSampler``), gradients are averaged by ``DistributedDataParallel``, and only rank 0
evaluates, selects and writes the run folder (the others wait at barriers). ``optim.batch_size`` is per process.
Backend: NCCL on CUDA, Gloo on CPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the process group described by torchrun's environment (no-op for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(world, int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def device_for(info: DistInfo, default: torch.device) -> torch.device:
    """Each process's device: its own GPU under torchrun on CUDA, else ``default``."""
    if info.enabled and default.type == "cuda":
        return torch.device("cuda", info.local_rank)
    return default


def wrap_model(model: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    if not info.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
