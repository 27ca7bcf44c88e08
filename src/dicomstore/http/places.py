"""Places for the answers that hold a worker thread of the HTTP server while they work
or wait for their turn (transcoded instances, rendered images): at most ``total`` at
once, ``per_address`` of them for one client address; beyond, 503 with
``Retry-After`` (PS3.18 8.6.3: the origin server is busy), so that they never starve
every other request answered from a thread, nor one client every other client
(review103 F1: 48 renders of one client held a thumbnail 60 s, a QIDO 16 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

from dicomstore.http.common import HttpError

#: (re-entrant: a body let go by the garbage collector while this thread holds the lock
#: releases its place from within it: review44 #3, a plain lock deadlocked)
_LOCK = threading.RLock()


class Places:
    """``total`` places, ``per_address`` for one client address, for answers that are
    ``doing`` it (``instead``: what the client may ask for in the meantime)."""

    def __init__(self, total: int, per_address: int, doing: str, instead: str = "") -> None:
        self.total, self.per_address = total, per_address
        self.doing, self.instead = doing, instead
        self.free = threading.BoundedSemaphore(total)
        self.taken: dict[str, int] = {}
        #: answers waiting for a place (:meth:`wait_for`): told when one is let go
        self.waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def take(self, address: str) -> Slot:
        """A place for an answer to ``address`` (503 if none)."""
        return Slot(address, self)

    async def wait_for(self, address: str, within: float) -> Slot:
        """:meth:`take`, waiting up to ``within`` seconds for a place to be let go, in
        the event loop (no thread held meanwhile); 503 after. (Answers whose client
        left hold their places until they end: a browser's next page would find none,
        review104 F4.)"""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            waiter = (loop, asyncio.Event())
            with _LOCK:  # (told before it tries: no place let go unseen)
                self.waiters.add(waiter)
            try:
                try:
                    return Slot(address, self)
                except HttpError:
                    if loop.time() >= deadline:
                        raise
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter[1].wait(), deadline - loop.time())
            finally:
                with _LOCK:
                    self.waiters.discard(waiter)

    def _let_go(self) -> None:
        """A place is free: every answer waiting for one tries again."""
        with _LOCK:
            waiters = list(self.waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # (its loop closed meanwhile)
                loop.call_soon_threadsafe(event.set)

    def busy(self, why: str) -> HttpError:
        return HttpError(
            503, f"{why} {self.doing} already: ask again{self.instead}", {"Retry-After": "5"}
        )


class Slot:
    """An answer's place among those of ``places`` (:meth:`Places.take`)."""

    def __init__(self, address: str, places: Places) -> None:
        with _LOCK:
            if places.taken.get(address, 0) >= places.per_address:
                raise places.busy(f"{places.per_address} answers to {address} are")
            if not places.free.acquire(blocking=False):
                raise places.busy(f"{places.total} answers are")
            places.taken[address] = places.taken.get(address, 0) + 1
        self.address, self.places, self._held = address, places, True

    def release(self) -> None:
        places = self.places
        with _LOCK:
            if not self._held:
                return
            self._held = False
            left = places.taken.pop(self.address, 1) - 1
            if left:
                places.taken[self.address] = left
        places.free.release()
        if places.waiters:
            places._let_go()

    def held_while(self, body: Iterator[bytes]) -> Iterator[bytes]:
        """``body``, the place let go when it ends, fails, is closed, or is dropped
        unread (``transcoding.HeldResponse`` lets it go when the answer ends, whatever
        the body did: a generator never started runs no ``finally``)."""
        return _Held(body, self)


class _Held:
    """An answer's body holding a :class:`Slot` until it ends (see ``held_while``)."""

    def __init__(self, body: Iterator[bytes], slot: Slot) -> None:
        self.body, self.slot = iter(body), slot

    def __iter__(self) -> _Held:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self.body)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.slot.release()
        close = getattr(self.body, "close", None)
        if close is not None:
            close()

    def __del__(self) -> None:
        self.slot.release()
