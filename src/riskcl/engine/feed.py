"""Feeding the model at the speed of the step: batches gathered from the cache, augmented on the device.

A :class:`BatchFeeder` turns one split into batches without per-image Python work: each batch of ``uint8``
images is read from the memory-mapped cache in one indexing operation (``ImageDataset.gather``), pinned, copied
to the device without blocking, and converted, augmented (every image its own rotation and flips) and
normalised there. A background thread gathers the next batches while the current step runs, and on CUDA the
copy of the next batch runs on its own stream, so the transfer hides behind the step. The same code runs on
the CPU (the "device" is then the CPU). Nothing is re-created per epoch.

Reproducibility: the order of an epoch is a permutation drawn from ``(seed, epoch)``, the augmentation
parameters from ``(seed, epoch, rank)``; both are drawn up front, so the batches of an epoch do not depend on
the prefetch timing, and a resumed run draws what an uninterrupted one would. Under ``torchrun`` each rank
takes its own shard of the permutation (padded by wrapping, as ``DistributedSampler`` does, so every rank
runs the same number of steps).
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from ..data.augment import AugmentParams, augment_masks, sample_params, to_model_input
from ..data.base import ImageDataset


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` of a run with ``seed`` (shuffling and augmentation)."""
    return seed * 100003 + epoch


class BatchFeeder:
    """Batches ``(x, y)`` of one split on ``device``: ``x`` normalised float32 ``(B, 3, H, W)``, ``y`` int64
    labels, or for segmentation data ``(B, H, W)`` ``uint8`` masks (augmented exactly as their images). When the
    dataset carries encoded metadata (``dataset.features``), ``x`` is the pair ``(images, metadata (B, D))``.

    Args:
        dataset: the split. batch_size: images per batch (per process under torchrun).
        device: where the batches are made ready (the model's device).
        train: shuffle and augment (else the split's order, no augmentation).
        seed: the run's seed. rank / world_size: this process's shard under torchrun.
        channels_last: return ``x`` in channels-last memory format (CUDA convolutions prefer it).
        prefetch: batches a background thread gathers ahead (0: gather in the calling thread).
        augment: the training augmentation's settings (:func:`riskcl.data.augment.sample_params`'s ``rotation``,
            ``flips``, ``scale``, ``color``; None: the paper's rotation and flips).
    """

    def __init__(self, dataset: ImageDataset, batch_size: int, device: torch.device, train: bool = False,
                 seed: int = 0, rank: int = 0, world_size: int = 1, channels_last: bool = False,
                 prefetch: int = 1, augment: Mapping[str, Any] | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"Expected `batch_size` >= 1, but got {batch_size}")
        self.dataset, self.batch_size, self.device = dataset, int(batch_size), torch.device(device)
        self.train, self.seed, self.rank, self.world_size = train, seed, rank, world_size
        self.channels_last = channels_last and self.device.type == "cuda"
        self.prefetch = max(0, int(prefetch))
        self.augment = dict(augment or {})
        self.pin = self.device.type == "cuda"
        self.targets = torch.from_numpy(np.array(dataset.targets, dtype=np.int64))
        self.segmentation = getattr(dataset, "masks", None) is not None
        features = getattr(dataset, "features", None)
        self.features = None if features is None else torch.from_numpy(np.asarray(features, dtype=np.float32))

    def _order(self, epoch: int) -> np.ndarray:
        n = len(self.dataset)
        if not self.train:
            return np.arange(n)
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        perm = torch.randperm(n, generator=g).numpy()
        if self.world_size > 1:
            total = -(-n // self.world_size) * self.world_size
            perm = np.resize(perm, total)[self.rank::self.world_size]
        return perm

    def _params(self, epoch: int, n: int) -> AugmentParams | None:
        if not self.train:
            return None
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch) * 1009 + self.rank + 1)
        return sample_params(n, g, **self.augment).to(self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Epoch 0's batches (evaluation feeders are the same every epoch)."""
        return self.batches(0)

    def __len__(self) -> int:
        n = len(self.dataset)
        if self.train and self.world_size > 1:  # each rank's shard, padded as in _order
            n = -(-n // self.world_size)
        return -(-n // self.batch_size)

    def _host_batches(self, order: np.ndarray) -> Iterator[tuple[torch.Tensor, torch.Tensor, Any, slice]]:
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            x = torch.from_numpy(self.dataset.gather(idx))
            y = torch.from_numpy(self.dataset.gather_masks(idx)) if self.segmentation else \
                self.targets[torch.from_numpy(idx)]
            m = None if self.features is None else self.features[torch.from_numpy(idx)]
            if self.pin:
                x, y = x.pin_memory(), y.pin_memory()
                m = None if m is None else m.pin_memory()
            yield x, y, m, slice(start, start + len(idx))

    def _prefetched(self, order: np.ndarray) -> Iterator[tuple[torch.Tensor, torch.Tensor, Any, slice]]:
        if self.prefetch == 0:
            yield from self._host_batches(order)
            return
        q: queue.Queue = queue.Queue(maxsize=self.prefetch + 1)
        stop = threading.Event()
        done = object()

        def work() -> None:
            try:
                for item in self._host_batches(order):
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                q.put(done)
            except BaseException as exc:  # re-raised in the consumer
                q.put(exc)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join(timeout=5)

    def batches(self, epoch: int = 0, max_steps: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of epoch ``epoch`` (the same ``(seed, epoch)`` always gives the same batches)."""
        order = self._order(epoch)
        params = self._params(epoch, len(order))
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if cuda else None
        pending = None
        for step, (x_host, y_host, m_host, where) in enumerate(self._prefetched(order)):
            if max_steps is not None and step >= max_steps:
                break
            if cuda:  # copy this batch on the side stream while the previous step computes
                with torch.cuda.stream(stream):
                    x_dev = x_host.to(self.device, non_blocking=True)
                    y_dev = y_host.to(self.device, non_blocking=True)
                    m_dev = None if m_host is None else m_host.to(self.device, non_blocking=True)
            else:
                x_dev, y_dev, m_dev = x_host, y_host, m_host
            if pending is not None:
                yield pending
            if cuda:
                torch.cuda.current_stream(self.device).wait_stream(stream)
                x_dev.record_stream(torch.cuda.current_stream(self.device))
                y_dev.record_stream(torch.cuda.current_stream(self.device))
                if m_dev is not None:
                    m_dev.record_stream(torch.cuda.current_stream(self.device))
            p = None if params is None else params[where]
            if p is not None and self.segmentation:
                y_dev = augment_masks(y_dev, p)
            x_in = to_model_input(x_dev, p, self.channels_last)
            pending = ((x_in, m_dev) if m_dev is not None else x_in, y_dev)
        if pending is not None:
            yield pending
