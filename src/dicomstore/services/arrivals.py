"""What the other nodes store (issue 17): forwarding and the study-complete events
run in one node of a storage root (``archive/nodes.ServiceLock``), which sees
its own stores as they happen (the store service's observers) but not those of
the other nodes. While other nodes live, it reads them from the shared index:
every :data:`INTERVAL` seconds, the instances whose ``received_at`` is at most
:data:`SLACK` seconds before the newest it has seen (an instance is committed
after its ``received_at`` is set: a group commit, a turn on the index write
lock — ``--lock-timeout`` at most — and the flushes; the slack covers them),
those not seen yet handed to the consumers: forwarding queues them for its
``when=instance`` rules, the events count them as arrivals of their study.
Those a rebuild of the index from the files made (``archive/rebuild.py``) are
none: their time was their file's (review58 H1); whatever is stored after it is
one, whatever the clock of the node that stored it (review59 M2). The newest seen is never
taken past this node's own clock (:func:`newest_of`): one node's clock ahead
hid every other node's arrivals for as long (review88 F10).

Both take an instance twice without harm (the queue keeps an entry already
there; a study's quiet time runs from its newest arrival; an arrival its
study's last event already covered is left out), so the node's own stores,
which the index shows too, need no telling apart. An instance committed more
than the slack after its ``received_at``, or stored by a host whose clock is
behind by more, is left to the next start's recovery (``forward_recovery``,
``StudyStability.recover``), as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import closing
from typing import Any

from dicomstore.archive import nodes
from dicomstore.archive.engine import DatabaseOrOSError, IndexNotBuilt
from dicomstore.archive.reader import ArchiveReader
from dicomstore.archive.rebuild import arrivals_only
from dicomstore.archive.schema import arrivals_indexed
from dicomstore.services.stable_log import epoch, iso, shifted

log = logging.getLogger("dicomstore.server")

#: Seconds between two looks at the index (while other nodes live).
INTERVAL = 2.0
#: Seconds before the newest arrival seen that each look reads again.
SLACK = 15.0
#: Seconds the making of the index of arrival times waits for the write lock (SQLite),
#: and before it is tried again when it failed.
INDEX_WAIT = 30.0
INDEX_AGAIN = 600.0
_NOT_MADE: tuple[type[Exception], ...] = (IndexNotBuilt, *DatabaseOrOSError)

#: The columns of an arrival (forwarding's and the events' needs).
COLUMNS = (
    "sop_instance_uid",
    "received_at",
    "calling_ae",
    "modality",
    "sop_class_uid",
    "study_uid",
    "patient_id",
    "path",
)
_SELECT = (
    "SELECT i.sop_instance_uid, i.received_at, i.calling_ae, se.modality, i.sop_class_uid,"
    " st.study_uid, p.patient_id, i.path FROM instance i"
    " JOIN series se ON se.series_pk = i.series_pk"
    " JOIN study st ON st.study_pk = se.study_pk"
    " JOIN patient p ON p.patient_pk = st.patient_pk"
    " WHERE i.received_at >= ? AND {}"
)

Consumer = Callable[[list[dict[str, Any]]], object]

#: When a node's clock ahead was last told (time.monotonic), so as to tell it once in
#: :data:`AHEAD_TOLD_EVERY` seconds.
_ahead_told: list[float] = []
AHEAD_TOLD_EVERY = 600.0


def newest_of(rows: list[dict[str, Any]], now: float, slack: float) -> str:
    """The newest ``received_at`` of ``rows``, but never after ``now`` (this node's
    clock): a node whose clock is ahead stamps its arrivals in the future, and a
    mark there (the arrivals' floor, the forward queue's ``observed``) hid every
    other node's arrivals for as long (review88 F10). One more than ``slack``
    seconds ahead is a WARNING (at most once in :data:`AHEAD_TOLD_EVERY` seconds)."""
    newest, cap = max(row["received_at"] for row in rows), iso(now)
    if newest <= cap:
        return newest
    if newest > iso(now + slack) and (
        not _ahead_told or time.monotonic() - _ahead_told[-1] >= AHEAD_TOLD_EVERY
    ):
        _ahead_told[:] = [time.monotonic()]
        log.warning(
            "instance %s is stamped received %s, %.0f s after this node's clock (%s):"
            " the clock of a node storing into this archive is ahead (keep the nodes'"
            " clocks in step)",
            next(r["sop_instance_uid"] for r in rows if r["received_at"] == newest),
            newest,
            epoch(newest) - now,
            cap,
        )
    return cap


class OtherArrivals:
    """Hands the instances the index received (other nodes' among them) to
    ``consumer``, a list at a time, while other nodes live (module notes)."""

    def __init__(
        self,
        reader: ArchiveReader,
        consumer: Consumer,
        *,
        interval: float = INTERVAL,
        slack: float = SLACK,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.reader = reader
        self.consumer = consumer
        self.interval = interval
        self.slack = slack
        self.clock = clock
        #: the newest ``received_at`` seen (ISO 8601, UTC: compared as text)
        self.newest = iso(clock())
        #: what the last look saw within the slack: SOP Instance UID -> received_at
        self.seen: dict[str, str] = {}
        #: whether other nodes lived at the last look (at first: unknown, so read)
        self._others = True
        #: when (time.monotonic) to look for the index of arrival times (once made:
        #: never; ``schema.ARRIVALS_INDEX``)
        self._index_due = 0.0
        self._task: asyncio.Task[None] | None = None

    def _index(self) -> None:
        """The index of arrival times made, once another node lives (a look without it
        reads the whole instance table: ``schema.ARRIVALS_INDEX``); tried again in
        :data:`INDEX_AGAIN` seconds when it fails (review92 A3)."""
        self._index_due = float("inf")
        try:
            made = arrivals_indexed(self.reader.engine, INDEX_WAIT)
        except _NOT_MADE as exc:
            if not isinstance(exc, IndexNotBuilt):
                self._index_due = time.monotonic() + INDEX_AGAIN
            log.warning(
                "the index of arrival times not made (%s): each look at the other nodes'"
                " stores reads the whole instance table",
                exc,
            )
            return
        if made:
            log.info("another node lives: the index of arrival times made (instance_received_idx)")

    def look(self) -> list[dict[str, Any]]:
        """One look (blocking: call it in a worker thread): the arrivals not seen
        yet, or none while no other node lives (since the last look)."""
        alive = others_alive(self.reader.root)
        if not alive and not self._others:
            self.newest = max(self.newest, iso(self.clock()))
            self.seen.clear()
            return []
        if alive and time.monotonic() >= self._index_due:
            self._index()
        floor = shifted(self.newest, -self.slack)
        new: list[dict[str, Any]] = []
        seen: dict[str, str] = {}
        with closing(self.reader.connect()) as db:
            arrival = arrivals_only(self.reader.engine, db)  # (module notes)
            for values in db.execute(_SELECT.format(arrival), (floor,)):
                row = dict(zip(COLUMNS, values, strict=True))
                uid, at = row["sop_instance_uid"], row["received_at"]
                seen[uid] = at
                if self.seen.get(uid) != at:
                    new.append(row)
        self.seen = seen
        # (a read after the last other node went: what it committed since the look
        # before, review50 #5; until one succeeds, review51 #2)
        self._others = alive
        if new:
            self.newest = max(self.newest, newest_of(new, self.clock(), self.slack))
        return new

    async def start(self) -> None:
        """Look every ``interval`` seconds (in the running loop) until :meth:`close`."""
        self._task = asyncio.create_task(self._run(), name="other-arrivals")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                rows = await asyncio.to_thread(self.look)
            except DatabaseOrOSError as exc:
                log.warning("other nodes' arrivals not read: %s (tried again)", exc)
                continue
            if rows:
                self.consumer(rows)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


def others_alive(root: Any) -> bool:
    """Whether a node other than this process's lives on the storage root ``root``
    (two live nodes' lock files: this process's own counts, ``archive/nodes.py``)."""
    return sum(1 for _ in nodes.alive(root)) >= 2
