"""The flush of a batch committed before it: one write to the journal
(``journal.py``) or one syncfs, the journal's checkpoint, and the withdrawal of
members whose files could not be flushed; and the flush of a stored copy another
writer committed so. The steps of ``publish.py`` become these:

**New instances committed before their flush** (``Publisher.defers``: fsync and
syncfs on, the index a SQLite file on the archive's file system, and duplicates
kept or rejected — with ``replace``, a row dropped by the start after a power
cut, its file lost, would take the version it replaced with it: every batch
takes the steps of ``publish.py``). Then::

  (nothing flushed yet)                           [publish.after-trace, after-file-flush]
  (the index): BEGIN IMMEDIATE, look them up
  place (each): a trace ``<temp>.<digest>.new`` (a second name of the temporary, the
    digest of the data set received in its name), mkdir, rename into place
                                          [publish.after-rename, after-folder-flush]
  (the index): the rows, the batch listed in ``unflushed``, the batches flushed
    since the last COMMIT struck off; COMMIT without the WAL's fdatasync
                                          [publish.before-commit, after-commit]
  flush: one syncfs — the files' data, their names and the COMMIT  [publish.after-flush]
  finish: the traces go                   [publish.after-traces-dropped]
  Success

**Or through the journal** (``journal.py``: each member's file at most
``filepublish.JOURNAL_MAX``, the node's journal has room), in place of the flush::

  journal: the members' files, keys, digests and batch: one pwritev(RWF_DSYNC)
                                          [publish.after-journal]
  Success (the traces stay)
  ... later, the checkpoint (``CHECKPOINT_AFTER`` after the oldest record: with a
  batch, or from a timer as the leader when none comes: ``deferred.IdleCheckpoint``;
  a batch that does not fit; the close):
  flush: one syncfs — everything journaled: data, names, COMMITs  [publish.after-flush]
  the journal's superblock: its records obsolete (pwritev(RWF_DSYNC))
  finish: the traces go                   [publish.after-traces-dropped]
  the batches struck off in the next COMMIT

Why the journal's one write is enough: the record is written after the COMMIT
and before the answer, and holds every byte of the file, so an answered instance
is durable in the journal whatever the file system kept of its file, name or
COMMIT. The next start replays the records the superblock does not mark obsolete
(``recovery.replay``, before the traces are settled): a row with the record's
digest whose file lost its data gets it written again; a COMMIT lost (no row,
its batch not listed: SQLite's WAL reaches the disk in order, so nothing after
it did) gets the file and its trace back, and the trace is adopted as below; a
row gone while its batch is still listed was deleted since, and stays gone. The
superblock is durable before the traces go and before a batch is struck off
(which is what tells a lost COMMIT from a delete), and before any record is
written over. The journal's file is zeros written and flushed before its first
use, so a record's write changes no metadata: one device flush (~0.2 ms) where
a syncfs waits for the file system's own journal (~1 ms for a lone instance).
A failed write (a record, the superblock) or a failed syncfs (Linux reports a
writeback error once per descriptor: the next syncfs would succeed without the
lost data) breaks the journal (``Journal.broken``): nothing more is written to
it or marked obsolete, and it stays at the close, for the next start to replay;
its batches are never struck off, nor the batch whose records' write failed
(they may count), so that start still tells a delete from a lost COMMIT. Batch
names carry the node's name, and a start leaves a live node's batches listed
(``recovery.verify_unflushed``; starts take turns: ``recovery.recover``): only
its own checkpoint strikes them off.

Why it holds: nothing is answered before the one flush, which makes durable
everything written before it began (data, names, WAL); so after a crash every
acknowledged instance is whole, at its name, with its row. What a crash can
leave of the others, the next start settles (``recovery.recover``): a trace
without a row is adopted only if the file it names still has the digest in
the trace's name (else it goes, with the file: a power cut took its data); a
committed row whose batch is still listed in ``unflushed`` is checked against
its digest and dropped with its file if it does not match (it was never
answered: its batch would have been struck off after its flush otherwise, in
the next COMMIT, or in one of its own :data:`STRIKE_AFTER` seconds after the
flush when no store comes: review117 F3, an answered instance damaged since
was dropped when a crash came before the next store; left: damage and a crash
both within those seconds of its answer).
The traces go only after the flush: until then a rename that reached the disk
has its trace there too (made before it, on a file system that journals
names in order: ext4, XFS), so recovery checks the digest of every file the
flush did not cover. Where names may reach the disk out of order, a file at
its final name whose data and trace were both lost (a zero-length file after
a power cut) has no row: ``check`` reports it, and the instance sent again
(never answered) is renamed over it; one that lost only some blocks with its
trace, ``check`` reports too, and ``reindex`` would adopt it as it is: delete
such a file rather than reindex it. A row is seen by others (another
node's duplicate look-up, a Storage Commitment) between its COMMIT and its
flush: before an answer rests on it, they flush (``Publisher._flush_found``,
``ArchiveReader.make_durable``: a row still listed ``unflushed`` is flushed
again, ``FileStorage.flush_keys``: one syncfs, which covers the WAL). The
WAL keeps SQLite consistent without its fdatasync (``synchronous=NORMAL``:
checkpoints still flush), and its commits are durable in order, so a COMMIT
striking a batch off is never durable without the rows it strikes off. When
the syncfs fails, each file and folder is fsynced and then the WAL; a file
that cannot be is withdrawn, under the index lock (its file if its key still
holds that very file — not another node's replace since — then its row) and
answered A700.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from dicomstore.archive import crashpoints
from dicomstore.archive.commit import CommitStats, Staged
from dicomstore.archive.engine import DatabaseOrOSError
from dicomstore.archive.index import Index
from dicomstore.archive.storage import WritableStorage

log = logging.getLogger("dicomstore.archive")

#: The longest a batch made durable by the journal waits before it is flushed
#: where it belongs (seconds; checked when a batch is published, and at close).
CHECKPOINT_AFTER = 0.5
#: Seconds after a batch was flushed with none after it that it is struck off
#: ``unflushed`` in a COMMIT of its own (a store meanwhile does it in its COMMIT).
STRIKE_AFTER = 2.0
#: The longest the idle checkpoint waits before it tries again after failing (s).
RETRY_MAX = 60.0


class DeferredFlushes:
    """The flushing part of :class:`~dicomstore.archive.publish.Publisher` (which
    sets the attributes below)."""

    storage: WritableStorage
    index: Index
    stats: CommitStats
    flush_time: float
    _journaled: list[tuple[list[Staged], str]]
    _due: float
    _flushed: list[str]
    _unstruck: set[str]
    #: called when a batch is journaled, or flushed, while none waited
    #: (``IdleCheckpoint.arm``: the checkpoint, the strike-off, when no batch comes)
    on_journaled: Callable[[float | None], None] | None = None

    def _journal(self, placed: list[Staged], batch_name: str) -> bool:
        """After a COMMIT not yet flushed: make the batch durable by one write to the
        journal (``storage.journal``); False when it cannot go there (then
        :meth:`_flush`)."""
        started = time.perf_counter()
        sound = self.storage.journal_sound
        done = self.storage.journal(placed, batch_name)
        self.flush_time += time.perf_counter() - started
        if not done and sound and not self.storage.journal_sound:
            self._unstruck.add(batch_name)  # (its records' write failed: they may count)
        if done:
            first = not self._journaled
            if first:
                self._due = time.monotonic() + CHECKPOINT_AFTER
            self._journaled.append((placed, batch_name))
            if first:
                self._arm_idle()
            if crashpoints.ENABLED:
                crashpoints.reached("publish.after-journal")
        return done

    def checkpoint_due(self) -> float | None:
        """(When no batch is being published: ``GroupCommit.when_idle``.) Flush
        the journaled batches where they belong if the oldest has waited long
        enough, and strike off the batches flushed (:meth:`_strike_off`); the
        seconds until the next is due, ``None`` when none waits."""
        if self._journaled and time.monotonic() >= self._due:
            self._checkpoint()
        if self._flushed:
            self._strike_off()
        if not self._journaled or not self.storage.journal_sound:
            return None  # (a broken journal: left for the next start)
        return max(0.0, self._due - time.monotonic())

    def _strike_off(self) -> None:
        """Strike off ``unflushed`` the batches flushed since the last COMMIT, in a
        COMMIT of their own: no store came to do it (review117 F3: a batch left
        listed until the next store was taken at a start after a crash for one never
        answered, and an answered instance damaged since was dropped with its file).
        When that fails they stay, for the next COMMIT (or the next start)."""
        index = self.index
        with index.lock:
            try:
                index.begin()
                index.flushed(self._flushed)
                index.commit()
            except DatabaseOrOSError:
                rollback_quietly(index)
                return
        self._flushed = []

    def _arm_idle(self, delay: float | None = None) -> None:
        if self.on_journaled is not None:
            try:  # (answered Success whatever: the next batch or the close does it)
                self.on_journaled(delay)
            except Exception:  # noqa: BLE001 - e.g. no thread could start
                log.exception("the journal's idle checkpoint could not be armed")

    def _checkpoint(self) -> None:
        """Flush the journaled batches where they belong (one syncfs), then retire
        them; when that fails they stay journaled, and it is tried again later."""
        if self.storage.checkpoint():
            self._retire()
        else:
            self._due = time.monotonic() + CHECKPOINT_AFTER

    def _retire(self) -> None:
        """The journaled batches are durable where they belong and their records
        obsolete: their traces go, and they are struck off at the next COMMIT."""
        if crashpoints.ENABLED:
            crashpoints.reached("publish.after-flush")
        for placed, batch_name in self._journaled:
            self.storage.finish(placed)
            self._flushed.append(batch_name)
        self._journaled = []
        if crashpoints.ENABLED:
            crashpoints.reached("publish.after-traces-dropped")

    def _flush(self, placed: list[Staged], batch_name: str) -> None:
        """After a COMMIT not yet flushed: flush the files, names and COMMIT of the
        batch (``storage.flush_placed``; when that cannot use one flush, the index
        after the files). A member whose file could not be flushed is withdrawn
        (its file, then its row: A700); its batch stays ``unflushed``, for the next
        start to verify what a crash may leave of it (``recovery.verify_unflushed``)."""
        started = time.perf_counter()
        whole = False
        try:
            whole = self.storage.flush_placed(placed)  # (one syncfs: everything before)
            if not whole:
                self.index.flush()
        except OSError as exc:  # (nothing of the batch known durable)
            for member in placed:
                member.failed = member.failed or exc
        self.flush_time += time.perf_counter() - started
        failed = [member for member in placed if member.failed is not None]
        if failed:
            self._withdraw(failed)
        elif batch_name not in self._unstruck:
            self._flushed.append(batch_name)
            self._arm_idle(STRIKE_AFTER)  # (struck off by the next COMMIT, or when none comes)
        if whole and self._journaled:  # (a full journal: the flush covered it)
            try:
                self.storage.covered()
            except OSError:
                pass  # (they stay journaled: the next checkpoint)
            else:
                self._retire()
        if crashpoints.ENABLED:
            crashpoints.reached("publish.after-flush")

    def _withdraw(self, failed: list[Staged]) -> None:
        """Take back committed members whose files could not be flushed, under the
        index lock: each file that is still theirs at its key goes, then its row
        (best effort: what is left, the next start verifies)."""
        index = self.index
        with index.lock:
            try:
                index.begin()
                for member in failed:
                    row = member.row
                    if self.storage.withdraw(member):  # (else another node's by now)
                        index.remove(row["sop_instance_uid"])
                        index.prune(
                            row["series_uid"], row["study_uid"], row.get("patient_id") or ""
                        )
                index.commit()
            except DatabaseOrOSError:
                rollback_quietly(index)
            finally:
                for member in failed:
                    self.storage.discard(member)  # (closed, if withdraw did not get to it)

    def _flush_found(self, found: dict[str, dict[str, Any]]) -> OSError | None:
        """Make the stored copies of the instances a batch found durable before any
        answer rests on them: one may be committed and not yet flushed (another
        node's batch, ``unflushed``); the error when that failed."""
        keys = self.index.unflushed_keys(list(found))
        if not keys:
            return None
        try:
            if not self.storage.flush_keys(keys, self.index.engine.local_file()):
                self.index.flush()
        except OSError as exc:
            return exc
        return None


class IdleCheckpoint:
    """The checkpoint of a node that stopped receiving: ``CHECKPOINT_AFTER`` after
    a batch was journaled while none waited, a timer thread runs
    ``checkpoint_due`` as the group commit's leader (``GroupCommit.when_idle``;
    while a batch is being published, a little later), and again while batches
    wait. :meth:`close` before the archive's publisher closes."""

    def __init__(
        self,
        when_idle: Callable[[Callable[[], float | None]], tuple[bool, Any]],
        checkpoint_due: Callable[[], float | None],
    ) -> None:
        self._when_idle = when_idle
        self._checkpoint_due = checkpoint_due
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._at = 0.0  # (when the armed timer fires: monotonic)
        self._closed = False
        self._failures = 0  # (in a row: each waits twice as long, up to RETRY_MAX)

    def arm(self, delay: float | None = None) -> None:
        """Run the checkpoint after ``delay`` (``CHECKPOINT_AFTER``), unless armed to
        run sooner (a new batch after failures: their backoff gives way, the count
        starts again)."""
        wait = CHECKPOINT_AFTER if delay is None else delay
        with self._lock:
            at = time.monotonic() + wait
            if self._closed or (self._timer is not None and self._at <= at):
                return
            if self._timer is not None:
                self._timer.cancel()
            if delay is None:
                self._failures = 0
            timer = threading.Timer(wait + 0.005, self._run)
            timer.daemon = True
            self._timer, self._at = timer, at
        try:
            timer.start()
        except BaseException:
            with self._lock:
                self._timer = None
            raise

    def close(self) -> None:
        with self._lock:
            self._closed = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _run(self) -> None:
        with self._lock:
            if self._timer is not None and self._timer is not threading.current_thread():
                return  # (replaced by a sooner one meanwhile)
            self._timer = None
        try:
            ran, wait = self._when_idle(self._checkpoint_due)
        except Exception as exc:  # noqa: BLE001 - a bug, or the archive gone: said, not raised
            self._failures += 1
            wait = min(CHECKPOINT_AFTER * 2 ** min(self._failures - 1, 8), RETRY_MAX)
            if self._failures == 1:
                log.exception("the journal's checkpoint failed")
            else:  # (once a minute at most: not a traceback every half second)
                log.error(
                    "the journal's checkpoint failed again (%d times): %s", self._failures, exc
                )
            self.arm(wait)
            return
        self._failures = 0
        if not ran:
            wait = CHECKPOINT_AFTER / 10  # (a batch is being published: soon again)
        if wait is not None:
            self.arm(wait)


def rollback_quietly(index: Index) -> None:
    """Abandon ``index``'s transaction, whatever the error (best effort: an answer
    is already decided)."""
    try:
        index.rollback()
    except DatabaseOrOSError:
        pass
