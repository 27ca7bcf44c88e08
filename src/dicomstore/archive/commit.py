"""Group commit: concurrent ``Ingest.commit`` calls share their flushes and transaction.

Every commit announces itself (:meth:`GroupCommit.arriving`) while it checks
its instance, then hands the checked instance (:class:`Staged`) to
:meth:`GroupCommit.submit` and blocks until the instance has its outcome. The
first caller finding nobody at work becomes the *leader*: it takes every
instance waiting (its own first), has the whole batch published at once
(``publish.Publisher.publish``: one flush of the files, renames, one flush of
the folders, one index transaction; or renames, one transaction, then one
flush of it all), wakes the members, and hands the lead to
the first caller that arrived meanwhile — who then finds a batch of
everything that queued while the disk was busy.

With ``gather`` (``fsync`` on), a leader first waits a little for more: for
the commits announced and still checking their header, and for as many
members as the previous batch had (several committers stay several), but
never longer than half of what the previous batch spent flushing (nor
:data:`MAX_GATHER`): waiting must cost less than the flushes it saves. A lone
committer never waits: a batch of one, the price of a commit without group
commit.

Members are answered only after the batch is durable; each member's outcome
is its own (a failed flush or rename of one file fails only that instance).
Two instances with the same SOP Instance UID never share a batch (the later
waits for the next one), so duplicates are decided as if one after the other.
Safe to call from any number of threads.
"""

from __future__ import annotations

import _thread
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dicomstore.archive.outcome import StoreOutcome

#: The most instances published in one batch.
MAX_BATCH = 256
#: The longest a leader waits for more members (seconds).
MAX_GATHER = 0.002


class ArchiveClosedError(RuntimeError):
    """The archive was closed: nothing more is published."""


@dataclass(slots=True, eq=False)
class Staged:
    """A complete, checked temporary file waiting to be published.

    ``fd`` (still open, so that it can be fsynced) is owned by the publisher
    from then on: it closes it and removes ``temp`` unless the file was renamed.
    """

    temp: str
    fd: int
    row: dict[str, Any]  # index columns, all but "path"
    outcome: StoreOutcome | None = None
    error: BaseException | None = None
    #: (status, comment, offending elements) when stored with a warning (B006, B007)
    warning: tuple[int, str, tuple[int, ...]] | None = None
    wake: Any = None  # a lock held until the member is answered or leads
    #: its rank among the instances submitted (1, 2, ...): every byte of it was
    #: written before any instance of a higher rank was submitted
    seq: int = 0
    # set while publishing
    rel: str = ""
    final: str = ""
    backup: str | None = None
    trace: str | None = None  # second name in .tmp until COMMIT (see recovery.recover)
    intent: str | None = None  # the replaced file's removal intent (see removal.py)
    created: list[Any] | None = None
    existing: dict[str, Any] | None = None
    failed: OSError | None = None  # its bytes could not be made durable (storage.stage)
    #: placed and committed before its bytes are flushed (``publish.py``)
    unflushed: bool = False


@dataclass(slots=True)
class CommitStats:
    """Counters of the group commit: ``flushes`` are the archive's own fsync,
    syncfs calls (SQLite's WAL fsync at each batch is not among them; a batch
    committed before its flush has none, its one syncfs is counted);
    ``flushed_before`` counts the batches whose files an earlier syncfs had
    made durable already (no flush of their own)."""

    batches: int = 0
    instances: int = 0
    flushes: int = 0
    flushed_before: int = 0

    def snapshot(self) -> dict[str, int]:
        return {
            "batches": self.batches,
            "instances": self.instances,
            "flushes": self.flushes,
            "flushed_before": self.flushed_before,
        }


class GroupCommit:
    """The queue of instances to publish and the rule of who publishes them.

    ``gather``: the time the last batch spent flushing (seconds), or ``None``
    for leaders that never wait (``fsync`` off: a batch costs no flush).
    """

    def __init__(
        self,
        publish: Callable[[list[Staged]], None],
        *,
        gather: Callable[[], float] | None = None,
    ) -> None:
        self._publish = publish
        self._gather = gather
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._joined = threading.Condition(self._lock)
        self._queue: list[Staged] = []
        self._arriving = 0  # commits checking their instance, soon submitted
        self._last = 1  # size of the last batch
        self._busy = False
        self._closed = False
        self._gathering = False  # a leader waits on _joined (notify only then)
        #: instances submitted so far (the ``seq`` of the last one)
        self.submitted = 0

    def arriving(self) -> None:
        """A commit starts checking its instance: it will :meth:`submit` or :meth:`left`."""
        with self._lock:
            self._arriving += 1

    def left(self) -> None:
        """An announced commit will not submit (its instance failed its checks)."""
        with self._lock:
            self._arriving -= 1
            if self._gathering:
                self._joined.notify_all()

    def submit(self, staged: Staged) -> StoreOutcome:
        """Publish ``staged`` (with whatever else is waiting); its outcome."""
        with self._lock:
            self._arriving -= 1
            if self._closed:
                if self._gathering:
                    self._joined.notify_all()
                raise ArchiveClosedError("the archive is closed")
            self.submitted += 1
            staged.seq = self.submitted
            self._queue.append(staged)
            if self._gathering:  # (a Condition's notify costs a few calls: the hot path)
                self._joined.notify_all()
            leader = not self._busy
            if leader:
                self._busy = True
            else:
                staged.wake = _thread.allocate_lock()
                staged.wake.acquire()
        if not leader:
            staged.wake.acquire()  # released when answered, or when it is our turn to lead
            if staged.outcome is None and staged.error is None:
                self._lead(staged)
        else:
            self._lead(staged)
        if staged.error is not None:
            raise RuntimeError("publishing the instance failed") from staged.error
        assert staged.outcome is not None
        return staged.outcome

    def _lead(self, own: Staged) -> None:
        while own.outcome is None and own.error is None:
            with self._lock:
                if self._gather is not None:
                    self._wait_for_members()
                batch, self._queue = _take(self._queue)
                self._last = len(batch)
            if not batch:  # cannot happen: a leader's instance is the first queued
                own.error = RuntimeError("the instance left the queue unpublished")
                break
            try:
                self._publish(batch)
            except BaseException as exc:  # a bug: every member learns of it
                for member in batch:
                    if member.outcome is None:
                        member.error = exc
            for member in batch:
                if member.outcome is None and member.error is None:
                    member.error = RuntimeError("the batch gave this instance no outcome")
                if member is not own and member.wake is not None:
                    member.wake.release()
        with self._lock:
            if self._queue:
                self._queue[0].wake.release()  # the lead passes on; still busy
            else:
                self._busy = False
                if self._closed:  # (only close() waits on it)
                    self._idle.notify_all()

    def _wait_for_members(self) -> None:
        """(Holding the lock.) Let the commits on their way join the next batch."""
        deadline = None
        while len(self._queue) < MAX_BATCH and (
            self._arriving > 0 or len(self._queue) < self._last
        ):
            if deadline is None:
                assert self._gather is not None
                deadline = time.monotonic() + min(MAX_GATHER, self._gather() / 2)
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._gathering = True
            try:
                self._joined.wait(left)
            finally:
                self._gathering = False

    def when_idle(self, action: Callable[[], Any]) -> tuple[bool, Any]:
        """Run ``action`` as the leader if no batch is being published (nor the
        archive closed): (True, its result); else (False, None). Instances
        submitted meanwhile wait for it, then the first of them leads."""
        with self._lock:
            if self._busy or self._closed:
                return False, None
            self._busy = True
        try:
            return True, action()
        finally:
            with self._lock:
                if self._queue:
                    self._queue[0].wake.release()  # the lead passes on; still busy
                else:
                    self._busy = False
                    if self._closed:
                        self._idle.notify_all()

    def close(self) -> None:
        """Refuse new instances and wait for the batch being published."""
        with self._lock:
            self._closed = True
            while self._busy:
                self._idle.wait()


def _take(queue: list[Staged]) -> tuple[list[Staged], list[Staged]]:
    """The next batch and what stays queued (a repeated SOP Instance UID, the overflow)."""
    if len(queue) == 1:
        return queue, []
    batch: list[Staged] = []
    rest: list[Staged] = []
    seen: set[Any] = set()
    for member in queue:
        uid = member.row.get("sop_instance_uid")
        if uid in seen or len(batch) >= MAX_BATCH:
            rest.append(member)
        else:
            seen.add(uid)
            batch.append(member)
    return batch, rest
