"""Dynamic batching for the service: concurrent requests share one model call.

A request hands its image to :class:`MicroBatcher` and waits. One worker thread takes the first waiting image,
then keeps collecting until ``max_batch`` images are waiting or ``max_wait_ms`` have passed since the first,
scores them in one call and hands each request its own row. Under no load a request waits at most
``max_wait_ms``; under load the model sees batches (ONNX Runtime and PyTorch both run a batch of 8 much faster
than 8 calls of one). A failing call fails every request of its batch with the same error; the worker goes on.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Sequence

from .._checks import check_int, check_number
from ..defaults import MAX_BATCH, MAX_WAIT_MS


class MicroBatcher:
    """``batcher(item)`` -> the row of ``score([..., item, ...])`` that belongs to ``item``.

    ``score``: a list of items -> a sequence of results of the same length, in order."""

    def __init__(self, score: Callable[[list[Any]], Sequence[Any]], max_batch: int = MAX_BATCH,
                 max_wait_ms: float = MAX_WAIT_MS, on_batch: Callable[[int], None] | None = None) -> None:
        check_int("max_batch", max_batch, minimum=1)
        check_number("max_wait_ms", max_wait_ms, 0, None)
        self.score, self.max_batch, self.max_wait = score, int(max_batch), float(max_wait_ms) / 1000.0
        self.on_batch = on_batch  # told each batch's size (the service's metrics)
        self.queue: queue.Queue[tuple[Any, Future]] = queue.Queue()
        self.batches = 0  # calls made, and images scored: batches < images means batching happened
        self.items = 0
        self.worker = threading.Thread(target=self._run, name="riskcl-batcher", daemon=True)
        self.worker.start()

    def __call__(self, item: Any, timeout: float | None = None) -> Any:
        future: Future = Future()
        self.queue.put((item, future))
        return future.result(timeout)

    def _collect(self) -> list[tuple[Any, Future]]:
        batch = [self.queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            left = deadline - time.monotonic()
            try:
                batch.append(self.queue.get(timeout=left) if left > 0 else self.queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        while True:
            batch = self._collect()
            try:
                results = self.score([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"the model returned {len(results)} results for {len(batch)} inputs")
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting requests, the worker goes on
                for _, future in batch:
                    future.set_exception(exc)
                continue
            self.batches += 1
            self.items += len(batch)
            if self.on_batch is not None:
                self.on_batch(len(batch))
            for (_, future), result in zip(batch, results):
                future.set_result(result)
