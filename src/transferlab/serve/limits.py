"""Admission limits that keep one process's memory bounded under hostile or heavy load.

`DecodeBudget` caps the memory that the decodes in flight may use together, from each
image's header (read without decoding pixels); `BatchGate` caps how many /predict/batch
requests are in progress at once. Both refuse rather than queue without bound: the client
gets a 413 (never fits) or a 503 with Retry-After (busy now).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from transferlab.serve.batching import Overloaded
from transferlab.serve.uploads import UploadError, mib

DEFAULT_DECODE_MEMORY_BYTES = 1 << 30
DEFAULT_DECODE_WAIT_S = 5.0
DEFAULT_MAX_CONCURRENT_BATCHES = 2


class DecodeBudget:
    """Bytes that concurrent decodes may hold together; each decode reserves its estimate first.

    An image whose estimate alone exceeds the budget is refused (413). One that fits but
    not next to the decodes already running waits up to `wait_s` for them, in arrival
    order, then gets a 503 with Retry-After.
    """

    def __init__(self, total_bytes: int, wait_s: float = DEFAULT_DECODE_WAIT_S):
        self.total = total_bytes
        self.wait_s = wait_s
        self.in_use = 0
        self.peak = 0
        self._changed: asyncio.Condition | None = None  # made on first use, inside the running loop

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def reserve(self, cost: int, what: str) -> None:
        """Take `cost` bytes, or raise: UploadError(413) if it can never fit, Overloaded if not now."""
        if cost > self.total:
            raise UploadError(413, f"{what} needs about {mib(cost)} to decode and resize, more than this "
                                   f"server's decode memory of {mib(self.total)}")
        changed = self._condition()
        async with changed:
            if self.in_use + cost > self.total:
                if self.wait_s <= 0:
                    raise Overloaded("the decode memory budget is in use")
                try:
                    await asyncio.wait_for(changed.wait_for(lambda: self.in_use + cost <= self.total), self.wait_s)
                except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11
                    raise Overloaded("the decode memory budget is in use") from None
            self.in_use += cost
            self.peak = max(self.peak, self.in_use)

    def release(self, cost: int) -> None:
        """Give `cost` bytes back (called from a future's done callback, so it cannot await)."""
        self.in_use -= cost
        changed = self._changed
        if changed is not None:
            asyncio.ensure_future(_notify(changed))

    def as_dict(self) -> dict:
        return {"total_bytes": self.total, "in_use_bytes": self.in_use, "peak_bytes": self.peak}


async def _notify(changed: asyncio.Condition) -> None:
    async with changed:
        changed.notify_all()


class BatchGate:
    """At most `limit` batch requests at once; the next one is told to retry (503), not queued."""

    def __init__(self, limit: int):
        self.limit = limit
        self.active = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.active >= self.limit:
            raise Overloaded(f"{self.limit} batch requests are already being processed")
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
