"""The Python door to what was stored (PS3.4 B.1.2 Note 1): query, read, subscribe,
and remove (audited and logged as ``dicomstore delete``: ``services/deletion.py``).

Query and read, in any thread or process, next to a running server::

    from dicomstore.query import open_archive

    archive = open_archive("dicomstore-data")          # read-only
    for study in archive.studies(PatientID="PID1", StudyDate="20240101-"):
        print(study["study_uid"], study["modalities"], study["n_instances"])
    for row in archive.iter_instances(StudyInstanceUID=study["study_uid"]):
        ds = archive.dataset(row, stop_before_pixels=True)   # pydicom Dataset
        with archive.open(row) as f:                          # the stored bytes
            header = f.read(132)
        with archive.open_checked(row) as f:   # read through the indexed size and
            f.verify()                         # digest: DamagedCopy if damaged since

Be told of each instance the server acknowledged (after it is durable)::

    from dicomstore import Server, ServerConfig
    from dicomstore.archive import Archive
    from dicomstore.query import StoredEvents

    events = StoredEvents()
    server = Server(ServerConfig(), Archive("dicomstore-data"), on_stored=events.publish)

    async with events.subscribe() as stream:     # in any task on the server's loop
        async for event in stream:               # a services.storage_scp.StoredEvent
            print(event.sop_instance_uid, hex(event.status))

``events.publish`` is the server's ``on_stored`` hook; it never blocks the
server: each subscriber has a bounded queue, and when a subscriber falls
behind its oldest events are dropped (``Subscription.dropped`` counts them).
Callbacks (sync or async) can be added with :meth:`StoredEvents.add_listener`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from dicomstore.archive.attributes import ATTRIBUTES
from dicomstore.archive.query import LEVELS, QueryError
from dicomstore.archive.reader import ArchiveNotFoundError, ArchiveReader, NotStoredError
from dicomstore.hooks import call_hook
from dicomstore.services.deletion import (
    AuditLogUnavailableError,
    AuditRecordNotWrittenError,
    Removal,
    remove,
)

log = logging.getLogger("dicomstore.events")

__all__ = [
    "ATTRIBUTES",
    "LEVELS",
    "ArchiveNotFoundError",
    "ArchiveReader",
    "AuditLogUnavailableError",
    "AuditRecordNotWrittenError",
    "NotStoredError",
    "QueryError",
    "Removal",
    "StoredEvents",
    "Subscription",
    "open_archive",
    "remove",
]


def open_archive(
    root: Path | str = "dicomstore-data", *, index: str | None = None
) -> ArchiveReader:
    """Open the archive at ``root`` read-only (raises :class:`ArchiveNotFoundError`);
    ``index``: its index when not the SQLite file in ``root`` (``postgresql://...``)."""
    return ArchiveReader(root, index=index)


class Subscription:
    """A stream of events for one subscriber: ``async for event in subscription``."""

    def __init__(self, hub: StoredEvents, maxsize: int) -> None:
        self._hub = hub
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)
        self.dropped = 0

    def _offer(self, event: Any) -> None:
        while True:
            try:
                self._queue.put_nowait(event)
                return
            except asyncio.QueueFull:
                self._queue.get_nowait()  # drop the oldest, never block the server
                self.dropped += 1

    async def get(self) -> Any:
        """The next event (waits for one)."""
        return await self._queue.get()

    def close(self) -> None:
        """Stop receiving events."""
        self._hub._subscribers.discard(self)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        return await self._queue.get()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


Listener = Callable[[Any], Any]


class StoredEvents:
    """Fan-out of "instance stored" events: pass :meth:`publish` as ``on_stored``."""

    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()
        self._listeners: list[Listener] = []

    def subscribe(self, maxsize: int = 1000) -> Subscription:
        """A new subscription (use it as an async context manager and iterator)."""
        sub = Subscription(self, maxsize)
        self._subscribers.add(sub)
        return sub

    def add_listener(self, callback: Listener) -> Callable[[], None]:
        """Call ``callback(event)`` (sync or async) for each event; returns a remover."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback)

    async def publish(self, event: Any) -> None:
        """Deliver one event; the ``on_stored`` hook of the server. Never raises."""
        for sub in list(self._subscribers):
            sub._offer(event)
        for callback in list(self._listeners):
            try:
                await call_hook(callback, event)
            except Exception:  # noqa: BLE001 - a listener must not break the server
                log.exception("stored-event listener %r failed", callback)
