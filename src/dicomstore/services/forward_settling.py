"""What a forwarding batch learned of its entries, recorded in the queue as it goes:
every :data:`SETTLE_EVERY` outcomes or :data:`SETTLE_AFTER` seconds, also while a
destination's reply is awaited (review49 #12: a batch's outcomes were recorded at its
end only, so a kill sent every delivered instance of it again and ``stats`` showed 0
sent while it ran; then a reply held by the destination kept the ones before it
unrecorded for as long as it was held)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from dicomstore.services.destinations import Destination
from dicomstore.services.forward_queue import Settled

#: A batch records what became of its entries every this many, or this many seconds.
SETTLE_EVERY, SETTLE_AFTER = 10, 2.0

T = TypeVar("T")


class Settling:
    """The outcomes of a batch not recorded yet, and when they last were."""

    def __init__(self, record: Callable[[list[Settled]], Awaitable[None]]) -> None:
        self._record = record
        #: outcomes not recorded yet (append to this list; it is replaced once recorded)
        self.outcomes: list[Settled] = []
        self._at = time.monotonic()

    def _left(self) -> float:
        """Seconds until the outcomes are due (at most 0 once they are)."""
        return SETTLE_AFTER - (time.monotonic() - self._at)

    async def flush(self) -> None:
        """Record the outcomes now; if that fails, they stay to be recorded (with the
        batch's last record: review59 L2, they were lost, and sent again)."""
        outcomes, self.outcomes = self.outcomes, []
        self._at = time.monotonic()
        if outcomes:
            try:
                await self._record(outcomes)
            except Exception:  # (not a cancel: its thread records them all the same)
                self.outcomes[:0] = outcomes
                raise

    async def when_due(self) -> None:
        """Record the outcomes if there are enough of them or they waited long enough."""
        if len(self.outcomes) >= SETTLE_EVERY or (self.outcomes and self._left() < 0):
            await self.flush()

    async def awaiting(self, job: Coroutine[Any, Any, T]) -> T:
        """``job``'s result, the outcomes recorded meanwhile whenever they fall due (a
        destination may hold a reply for its DIMSE timeout); ``job`` is cancelled with
        the caller."""
        task = asyncio.ensure_future(job)
        try:
            while True:
                wait = max(self._left(), 0.0) if self.outcomes else None
                done, _ = await asyncio.wait({task}, timeout=wait)
                if done:
                    return task.result()
                await self.flush()
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


@dataclass
class BatchReport:
    """What one batch to one destination came to (the log line, the metrics)."""

    destination: Destination
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    retry: int = 0
    error: str | None = None

    def __str__(self) -> str:
        text = (
            f"forward to {self.destination}: {self.sent} sent, {self.failed} failed,"
            f" {self.skipped} skipped, {self.retry} to retry"
        )
        return f"{text} ({self.error})" if self.error else text
