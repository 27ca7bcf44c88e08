"""Values made for the metadata cache while answering WADO-RS metadata (PS3.18
10.4.1.1.2, :mod:`~dicomstore.http.metadata`), held to be written once the answer is
sent: writing them cost a cold 400-instance series a quarter of its time.

The values held by every answer of a process together are bounded by :data:`HOLD`
bytes: a batch that would pass it is written as the answer goes (:meth:`Held.add`
says no). What an answer holds is written by :meth:`Held.write` (the response's
background task), or let go unwritten by :meth:`Held.drop` when the answer ended
early (a HEAD, a client gone, an error) or by the garbage collector: each takes all
that is held at once, so whichever comes first, nothing is counted twice or kept.

:func:`store` writes values, then looks their instances up in the index and drops
again those no longer there: a delete removes its index rows, then the cache rows of
what it deleted (``metacache.forget``), so one of the two always sees the other, and
no deleted instance's metadata (patient data) stays in the cache.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Container

from dicomstore.archive.metacache import MetadataCache

log = logging.getLogger("dicomstore.http.metadata")

#: ``(SOP Instance UID, cache key, value)``
Entry = tuple[str, str, bytes]
#: The SOP Instance UIDs of these the index holds now (``ArchiveReader.instance_rows``).
Indexed = Callable[[list[str]], Container[str]]
#: Bytes of values held by all the answers of a process together.
HOLD = 64 * 1024 * 1024


class Held:
    """The values one answer holds for the cache."""

    _lock = threading.RLock()  # (RLock: __del__ may run, by the collector, inside add)
    _total = 0  # bytes held by every answer of this process

    def __init__(self) -> None:
        self._entries: list[Entry] = []
        self._size = 0

    @classmethod
    def total(cls) -> int:
        """Bytes held now by every answer of this process."""
        with cls._lock:
            return cls._total

    def add(self, entries: list[Entry]) -> bool:
        """Hold ``entries``; False (nothing held) when they would pass :data:`HOLD`."""
        size = sum(len(value) for _, _, value in entries)
        with Held._lock:
            if Held._total + size > HOLD:
                return False
            Held._total += size
            self._entries.extend(entries)
            self._size += size
        return True

    def drop(self) -> list[Entry]:
        """Let go of what is held (and return it)."""
        entries, size = self._take()
        _release(size)
        return entries

    def write(self, cache: MetadataCache, indexed: Indexed | None) -> None:
        """Write what is held (:func:`store`), once the answer is sent; counted in
        the bound until written (review66 M2: a write waiting on the cache's lock
        held its values uncounted)."""
        entries, size = self._take()
        try:
            store(cache, entries, indexed)
        finally:
            _release(size)

    def _take(self) -> tuple[list[Entry], int]:
        """What is held and its size, no longer this holder's (still counted)."""
        with Held._lock:
            taken = self._entries, self._size
            self._entries, self._size = [], 0
        return taken

    def __del__(self) -> None:
        self.drop()


def _release(size: int) -> None:
    with Held._lock:
        Held._total -= size


def store(cache: MetadataCache, entries: list[Entry], indexed: Indexed | None) -> None:
    """Write ``entries``, then drop again those whose instances ``indexed`` no longer
    holds (all of them when it cannot tell: a WARNING). Never raises."""
    if not entries:
        return
    cache.put_many(entries)
    if indexed is None:
        return
    uids = [uid for uid, _, _ in entries]
    try:
        now = indexed(uids)
    except Exception as exc:  # noqa: BLE001 - after the answer: nobody to tell but the log
        log.warning("metadata cache: %d entries dropped, the index not read: %s", len(uids), exc)
        now = ()
    gone = [uid for uid in uids if uid not in now]
    if gone:
        cache.drop(gone)
