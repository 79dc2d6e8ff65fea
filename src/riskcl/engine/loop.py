"""A model-agnostic train / evaluate loop: it sees a module, a loss and batches, and returns logits and targets.

CUDA runs use bf16 autocast and channels_last where asked; CPU runs use float32. A non-finite loss or gradient
stops training with :class:`NonFiniteError` naming the epoch and step. On CUDA the loop does not wait for the
GPU at every step: the running loss and the first non-finite step are kept on the device and read every
``SYNC_EVERY`` steps and at the end of the epoch (on the CPU every step is checked at once, at no cost).
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

SYNC_EVERY = 50


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


def _to_device(x, y: torch.Tensor, device: torch.device, channels_last: bool):
    """The batch on ``device``; ``x`` is the images, or the pair ``(images, metadata)`` of a fusion model."""
    if isinstance(x, (tuple, list)):
        images, meta = _to_device(x[0], y, device, channels_last)[0], x[1].to(device, non_blocking=True)
        return (images, meta), torch.as_tensor(y).to(device, non_blocking=True)
    x = x.to(device, non_blocking=True)
    if channels_last and device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.as_tensor(y).to(device, non_blocking=True)


def forward(model: nn.Module, x) -> torch.Tensor:
    """``model(images)``, or ``model(images, metadata)`` for the pair a fusion model's batches hold."""
    return model(*x) if isinstance(x, (tuple, list)) else model(x)


class _Faults:
    """The first step whose loss or gradient norm was not finite, tracked without a host sync per step."""

    def __init__(self, device: torch.device, epoch: int, n_steps: int) -> None:
        self.first = torch.full((), -1, dtype=torch.long, device=device)
        self.kind = torch.zeros((), dtype=torch.long, device=device)  # 1 loss, 2 gradient
        self.epoch, self.n_steps, self.eager = epoch, n_steps, device.type != "cuda"

    def record(self, step: int, loss: torch.Tensor, norm: torch.Tensor) -> None:
        bad_loss, bad_grad = ~torch.isfinite(loss.detach()), ~torch.isfinite(norm)
        new = (self.first < 0) & (bad_loss | bad_grad)
        self.first = torch.where(new, torch.full_like(self.first, step), self.first)
        self.kind = torch.where(new, torch.where(bad_loss, 1, 2).to(self.kind), self.kind)
        if self.eager:
            self.check(loss)

    def check(self, loss: torch.Tensor | None = None) -> None:
        step = int(self.first.item())
        if step < 0:
            return
        what = "non-finite loss" if int(self.kind.item()) == 1 else "non-finite gradient norm"
        value = f" ({loss.item()})" if loss is not None and int(self.kind.item()) == 1 else ""
        raise NonFiniteError(f"{what}{value} at epoch {self.epoch + 1}, step {step + 1} (batch {step} of "
                             f"{self.n_steps})")


def train_one_epoch(model: nn.Module, batches: Iterable, loss_fn: Callable, optimizer: torch.optim.Optimizer,
                    device: torch.device, epoch: int = 0, amp: bool = True, grad_clip: float | None = None,
                    max_steps: int | None = None, channels_last: bool = False, progress: bool = True) -> float:
    """One pass over ``batches`` (``(x, y)`` pairs, e.g. a :class:`BatchFeeder`'s or a DataLoader's); returns the
    mean training loss. A loss with ``set_epoch`` (RCL's warm-up) is told the epoch first, a loss with
    ``set_inputs`` (distillation's teacher) each batch before it scores the batch's logits."""
    model.train()
    if hasattr(loss_fn, "set_epoch"):
        loss_fn.set_epoch(epoch)
    if hasattr(batches, "__len__"):
        n_steps = len(batches) if max_steps is None else min(len(batches), max_steps)  # type: ignore[arg-type]
    elif max_steps is None:
        raise ValueError("Expected `batches` with a length, or `max_steps`")
    else:
        n_steps = max_steps
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    faults = _Faults(device, epoch, n_steps)
    bar = tqdm(total=n_steps, desc=f"epoch {epoch + 1}", disable=not progress, leave=False, mininterval=1.0)
    for step, (x, y) in enumerate(batches):
        if step >= n_steps:
            break
        x, y = _to_device(x, y, device, channels_last)
        with autocast_context(device, amp):
            logits = forward(model, x)
        if hasattr(loss_fn, "set_inputs"):
            loss_fn.set_inputs(x)
        loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip else math.inf)
        faults.record(step, loss, norm)
        optimizer.step()
        total += loss.detach().double() * y.shape[0]
        count += y.shape[0]
        bar.update(1)
        if (step + 1) % SYNC_EVERY == 0:
            faults.check()
            bar.set_postfix(loss=f"{total.item() / count:.4f}", refresh=False)
    bar.close()
    faults.check()
    return float(total.item()) / max(count, 1)


def _flips(x: torch.Tensor) -> list[torch.Tensor]:
    return [x, x.flip(-1), x.flip(-2), x.flip(-1).flip(-2)]


def _unflip(maps: list[torch.Tensor]) -> list[torch.Tensor]:
    """Undo :func:`_flips` on the model's output maps (flips are their own inverses)."""
    return [maps[0], maps[1].flip(-1), maps[2].flip(-2), maps[3].flip(-2).flip(-1)]


def tta_logits(model: nn.Module, x: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """The model's float32 output for a normalised batch ``x`` under the run's test-time augmentation.

    Classification (``(N, K)`` logits): ``none``, the model's logits; ``flip``, the log of the mean softmax over
    the image and its three flips (their softmax is that mean). Segmentation (``(N, 1, H, W)`` lesion logits,
    returned as ``(N, H, W)``): ``flip`` averages the lesion probability of each pixel over the four flipped
    passes, each mapped back onto the image, and returns its logit. The one definition used by evaluation,
    ``riskcl predict``, the service and the exported graph."""
    if tta not in ("none", "flip"):
        raise ValueError(f"Expected `tta` in ('none', 'flip'), but got {tta!r}")
    meta = None
    if isinstance(x, (tuple, list)):  # a fusion model's (images, metadata): the flips move the images only
        x, meta = x

    def run(v: torch.Tensor) -> torch.Tensor:
        return (model(v) if meta is None else model(v, meta)).float()

    if tta == "none":
        out = run(x)
        return out[:, 0] if out.ndim == 4 else out
    outs = [run(v) for v in _flips(x)]
    if outs[0].ndim == 4:
        probs = torch.stack([torch.sigmoid(o[:, 0]) for o in _unflip(outs)]).mean(0).clamp(1e-7, 1 - 1e-7)
        return torch.log(probs) - torch.log1p(-probs)
    probs = torch.stack([torch.softmax(o, 1) for o in outs]).mean(0)
    return torch.log(probs.clamp_min(1e-30))


@torch.no_grad()
def predict_logits(model: nn.Module, batches: Iterable, device: torch.device, amp: bool = True,
                   channels_last: bool = False, progress: bool = True, desc: str = "eval",
                   tta: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits (N, K) float32, targets (N,) int64)`` on the CPU, in batch order; for segmentation
    ``(logits (N, H, W) float32, masks (N, H, W) uint8)``. ``tta``: see :func:`tta_logits`.
    """
    if tta not in ("none", "flip"):
        raise ValueError(f"Expected `tta` in ('none', 'flip'), but got {tta!r}")
    model.eval()
    outs, targets = [], []
    for x, y in tqdm(batches, desc=desc, disable=not progress, leave=False, mininterval=1.0):
        x, y = _to_device(x, y, device, channels_last)
        with autocast_context(device, amp):
            outs.append(tta_logits(model, x, tta).cpu())
        targets.append(y.cpu())
    target = torch.cat(targets)
    return torch.cat(outs), (target.long() if target.ndim == 1 else target)
