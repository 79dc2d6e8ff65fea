"""A model-agnostic train / evaluate loop: it sees a module, a loss and loaders, and returns logits and targets.

CUDA runs use bf16 autocast and channels_last where asked; CPU runs use float32. A non-finite loss or gradient
stops training with :class:`NonFiniteError` naming the epoch, step and batch.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm


class NonFiniteError(RuntimeError):
    """The loss or a gradient became NaN or infinite."""


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device '{name}' requested but CUDA is not available; use device=auto or cpu")
    return dev


def autocast_context(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_one_epoch(model: nn.Module, loader: Iterable, loss_fn: Callable, optimizer: torch.optim.Optimizer,
                    device: torch.device, epoch: int = 0, amp: bool = True, grad_clip: float | None = None,
                    max_steps: int | None = None, channels_last: bool = False, progress: bool = True) -> float:
    """One pass over ``loader``; returns the mean training loss."""
    model.train()
    total, count = 0.0, 0
    n_steps = len(loader) if max_steps is None else min(len(loader), max_steps)  # type: ignore[arg-type]
    bar = tqdm(loader, total=n_steps, desc=f"epoch {epoch + 1}", disable=not progress, leave=False,
               mininterval=1.0)
    for step, (x, y) in enumerate(bar):
        if step >= n_steps:
            break
        x = x.to(device, non_blocking=True)
        if channels_last and device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        with autocast_context(device, amp):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        if not torch.isfinite(loss):
            raise NonFiniteError(f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {step + 1} "
                                 f"(batch {step} of {n_steps})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip else math.inf)
        if not torch.isfinite(norm):
            raise NonFiniteError(f"non-finite gradient norm at epoch {epoch + 1}, step {step + 1} "
                                 f"(batch {step} of {n_steps})")
        optimizer.step()
        total += loss.item() * y.shape[0]
        count += y.shape[0]
        bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
    return total / max(count, 1)


@torch.no_grad()
def predict_logits(model: nn.Module, loader: Iterable, device: torch.device, amp: bool = True,
                   channels_last: bool = False, progress: bool = True,
                   desc: str = "eval") -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits (N, K) float32, targets (N,) int64)`` on the CPU, in loader order."""
    model.eval()
    outs, targets = [], []
    for x, y in tqdm(loader, desc=desc, disable=not progress, leave=False, mininterval=1.0):
        x = x.to(device, non_blocking=True)
        if channels_last and device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_context(device, amp):
            outs.append(model(x).float().cpu())
        targets.append(torch.as_tensor(y).cpu())
    return torch.cat(outs), torch.cat(targets).long()
