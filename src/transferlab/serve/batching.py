"""An asyncio micro-batcher: requests that arrive together share one forward pass.

Handlers enqueue one decoded image each and await a future. A single worker task takes
the first waiting image, gives concurrent requests `max_wait_s` to join, drains up to
`max_batch`, runs the model in its own thread (the event loop keeps accepting uploads
meanwhile) and resolves the futures. While a batch runs, the next one fills up, so under
load batches grow by themselves and the wait costs nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np


class Overloaded(Exception):
    """The queue is full: the caller should answer 503 and let the client retry."""


@dataclass
class BatchStats:
    batches: int = 0
    images: int = 0
    largest: int = 0
    model_seconds: float = 0.0  # time inside the engine: tells model cost from HTTP/decoding cost

    def as_dict(self) -> dict:
        mean = self.images / self.batches if self.batches else 0.0
        return {"batches": self.batches, "images": self.images, "largest": self.largest,
                "mean_batch": round(mean, 2), "model_seconds": round(self.model_seconds, 3)}


class MicroBatcher:
    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], max_batch: int = 32,
                 max_wait_s: float = 0.002, max_queue: int = 1024):
        self._predict = predict
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.stats = BatchStats()
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future]] | None = None
        self._task: asyncio.Task | None = None
        # One model thread: batches run one after another, each using the engine's own
        # intra-op threads; two concurrent forward passes would only fight over the cores.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="transferlab-model")

    async def start(self) -> None:
        self._queue = asyncio.Queue(self.max_queue)
        self._task = asyncio.create_task(self._run(), name="transferlab-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while self._queue is not None and not self._queue.empty():
            _fail([self._queue.get_nowait()], RuntimeError("server is shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def predict(self, image: np.ndarray) -> np.ndarray:
        """One uint8 (3, R, R) image -> its probability row, computed in some batch."""
        if self._queue is None or self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((image, future))
        except asyncio.QueueFull:
            raise Overloaded(f"{self.max_queue} images are already waiting") from None
        return await future

    async def _collect(self) -> list[tuple[np.ndarray, asyncio.Future]]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        if self._queue.qsize() < self.max_batch - 1:
            # A short pause lets requests that are being decoded right now join this batch.
            # (A plain sleep, not wait_for(queue.get()), which can drop an item on timeout.)
            await asyncio.sleep(self.max_wait_s)
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        # A client that went away cancelled its future: don't spend the model on it.
        return [(image, future) for image, future in batch if not future.done()]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            live = await self._collect()
            if not live:
                continue
            try:
                stacked = np.stack([image for image, _ in live])
                started = time.perf_counter()
                probabilities = await loop.run_in_executor(self._executor, self._predict, stacked)
                self.stats.model_seconds += time.perf_counter() - started
            except asyncio.CancelledError:
                _fail(live, RuntimeError("server is shutting down"))
                raise
            except Exception as exc:  # noqa: BLE001 - the model failed on this batch: fail its requests, keep serving
                _fail(live, exc)
                continue
            self.stats.batches += 1
            self.stats.images += len(live)
            self.stats.largest = max(self.stats.largest, len(live))
            for (_, future), row in zip(live, probabilities):
                if not future.done():
                    future.set_result(row)


def _fail(items: list[tuple[np.ndarray, asyncio.Future]], exc: BaseException) -> None:
    for _, future in items:
        if not future.done():
            future.set_exception(exc)
