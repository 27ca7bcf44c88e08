"""Publishing checked instances, a batch at a time: the commit point of the archive.

A batch is one instance, or all those whose commits met (``commit.py``). The
:class:`Publisher` here has the index logic and the order of the steps; every
step on the bytes is a method of the archive's storage
(``storage.WritableStorage``, its name on the left below), which for the local
file system (``filestorage.FileStorage``) does what is described. With
``fsync`` on (the crash points of ``crashpoints.py`` in brackets)::

  stage:                 (each file's name in .tmp is its trace once it is placed:
                         see recovery.recover)          [publish.after-trace]
    flush the files      fsync of each file; a batch: one syncfs of the file system
                                                        [publish.after-file-flush]
  (the index):
    BEGIN IMMEDIATE      the index write lock (after ``lock_timeout``: A700 for all)
    look them up         the duplicate policy decides, instance by instance
  place (each):
    old names            a trace (``.pub``, a second name of the temporary); the
                         file at the final name gets a second name in .tmp
                         (``.bak``); one at another name (the instance moves to
                         another series) a removal intent (``removal.py``)
                                                        [publish.after-old-link]
    mkdir, rename        the file to its final name (a failure fails that one only)
                                                        [publish.after-rename]
    (``fsync`` off, a new instance: mkdir, then a hard link of the temporary to
    its final name instead, which fails if a file is there; the temporary's name
    is the trace. Durable, a link costs every flush more: ``FileStorage.place``)
  settle:
    flush the folders    fsync of the series folder (and of the parent of a new
                         folder, and of .tmp for the trace, backup or intent of a
                         replace or of a file renamed over another: not for a new
                         instance); a batch with several
                         folders or new ones: syncfs   [publish.after-folder-flush]
  (the index):
    write the rows       one INSERT per instance, parent rows only if new or richer
                                                        [publish.before-commit]
    COMMIT               SQLite's one WAL fsync (synchronous=FULL): now Success
                                                        [publish.after-commit]
  finish (or undo when anything above failed after a place):
    old version goes     a moved instance's old file is unlinked (fsync of its
                         folder), then the ``.bak``    [publish.after-old-gone]
    drop the traces      and the intents               [publish.after-traces-dropped]

So a file is at its final name only once its data is durable, its name is
durable before its row is committed, and Success is answered only after the
COMMIT. A failure after the renames (a folder flush, the index) undoes every
rename of the batch before answering A700; but a COMMIT that failed is read
back first (``aftercommit.committed_after_all``: its answer may be what was
lost, the rows committed): done, the batch is stored; not readable either, the
files stay as a crash there leaves them (A700). A crash after the renames and
before the COMMIT leaves files without rows, and their traces: the next start
adopts them into the index (``recovery.recover``), or puts back what a replace
replaced (after a power cut a new instance's trace may be gone: its file is then
one ``check`` reports and ``reindex`` adopts; it was never acknowledged). A
crash after the COMMIT and before the old file of a moved instance is gone
leaves its removal intent: the next start (or ``delete``)
removes the file, which the index no longer names. Either way the index then
serves the last committed version and ``check`` is clean.

**New instances committed before their flush** (``Publisher.defers``: fsync and
syncfs on, the index a SQLite file on the archive's file system, and duplicates
kept or rejected — with ``replace`` a batch may rename over a committed
instance's file, and every batch takes the steps above). Then::

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
answered: its batch would have been struck off after its flush otherwise).
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

Several nodes (processes, on one host or several) sharing one root and one
PostgreSQL index: what one node decides is never a memory of its own. Each
takes the index write lock (``BEGIN`` + ``SELECT … FOR UPDATE`` of the one
``dicomstore_index`` row, ``engine.py``) before it looks anything up, and holds
it through the renames to its COMMIT: the duplicate policy, the hierarchy
checks (``relations.py``), a replace and a ``delete`` (``removal.py``, under
the same lock) see every other node's committed rows (READ COMMITTED: each
statement after the lock sees the commits before it) and nothing uncommitted
of theirs can be on disk meanwhile. So two nodes storing one SOP Instance UID
take turns: the second finds the first's row (keep: an identical copy is
answered 0000 and its temporary goes, another is answered B000; reject: C111)
or, with replace, renames its file over the first's and commits its own row:
the file at the final name is always the one the committed row describes. The
writer's caches are emptied when another node has committed (the generation).
A node killed between its renames and its COMMIT loses its transaction (the
server rolls it back when the session ends) and leaves files without rows:
the next node to store those instances renames over them as over any file; a
start settles the rest from the dead node's traces (``recovery.recover``).
Left: a node that loses its database session between its renames and its
COMMIT while it runs on (the server let go of its lock) could race another
node storing the same instance in that moment; it puts back only files still
its own (``FileStorage.undo``), and ``check`` would report a file that differs.

Flushes (fsync/syncfs calls) per batch of ``n`` instances::

    n == 1 (or syncfs=False)  n files + 1 series folder + 1 WAL = 3 for one
                              (new folders: 1 syncfs instead of the series folder)
                              (+1 per new folder: 5 for an instance of a new study)
                              (a replace, or a file already at the final name:
                              +1 for .tmp; a replace that moves the instance: +1
                              for the old file's folder after the COMMIT)
    n >= 2 with syncfs        1 syncfs + 1 folder fsync or syncfs + 1 WAL = 3 for all
    written before a syncfs   no flush of the files: 2 (see below)
    committed before the flush   1 syncfs, whatever n (new folders too)

(and SQLite's checkpoints: 2 fsyncs per ~1000 pages written to the WAL).
No flush happens before stage: while a large instance arrives its bytes are only
handed to the disk every ``ingest.WRITEBACK_EVERY`` (``storage.writeback``), so
that the fsync of stage waits for the last few MiB; the order above is unchanged.
A syncfs that succeeds has made durable every byte written before it began:
a batch whose members were all submitted (``Staged.seq``) before such a
syncfs began — typically queued while the previous batch flushed its folders
with one — has its files flushed already and goes straight to the renames.
``syncfs`` writes back everything dirty on the file system, other writers' data
too; it stands for the fsyncs of the files only where it reports writeback
errors (Linux 5.8+). When it fails, every file is fsynced on its own, so that
only the instances whose data was lost fail.
"""

from __future__ import annotations

import functools
import itertools
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dicomstore.archive import crashpoints, digests, nodes
from dicomstore.archive import outcome as st
from dicomstore.archive.aftercommit import committed_after_all, finish
from dicomstore.archive.commit import CommitStats, Staged
from dicomstore.archive.deferred import DeferredFlushes, rollback_quietly
from dicomstore.archive.dicomfile import HeaderError
from dicomstore.archive.engine import (
    DatabaseError,
    DatabaseOrOSError,
    IntegrityError,
    error_cause,
    unavailable,
)
from dicomstore.archive.fields import nul_free
from dicomstore.archive.index import Index
from dicomstore.archive.layout import instance_relstr
from dicomstore.archive.outcome import StoreOutcome, describe_os_error, duplicate, failure
from dicomstore.archive.relations import Relations
from dicomstore.archive.storage import WritableStorage


class Publisher(DeferredFlushes):
    """Bytes in ``storage`` and rows in ``index``, published batch by batch: the
    index logic and the order of the steps here, every step on the bytes the
    storage's (``storage.WritableStorage``; for files ``FileStorage``, with the
    flushes counted in :attr:`stats`).

    How durable each step is, the storage's settings say (``FileStorage``:
    ``fsync``, ``syncfs``). ``submitted()``: the number of instances submitted so far
    (``GroupCommit.submitted``).
    """

    def __init__(
        self,
        storage: WritableStorage,
        index: Index,
        *,
        on_duplicate: str,
        on_relational_mismatch: str = "reject",
        submitted: Callable[[], int] = lambda: 0,
        journal: Path | None = None,
        owner: str = "",
    ) -> None:
        self.storage = storage
        self.index = index
        self.on_duplicate = on_duplicate
        #: ``relations.py``: refuse (A900) or accept a series/study filed elsewhere
        self.on_relational_mismatch = on_relational_mismatch
        self.stats = CommitStats()
        #: seconds the last batch spent waiting for flushes (files, folders, COMMIT)
        self.flush_time = 0.0
        storage.start(self.stats, submitted)
        #: new instances are committed before their files are flushed, then one flush
        #: makes both durable (the module docstring)
        #: (never with replace: a batch renaming over a committed instance flushes first)
        self.defers = (
            on_duplicate != "replace"
            and storage.defers_flush(index.engine.local_file())
            and index.defer_flushes()
        )
        if journal is not None and self.defers:
            storage.use_journal(journal)
        #: batches made durable by the journal, still to be flushed where they belong
        #: (their traces stay until then); the time the oldest may wait
        self._journaled: list[tuple[list[Staged], str]] = []
        self._due = 0.0
        #: a batch whose records may count though their write failed: never struck off
        self._unstruck: set[str] = set()
        self._batches = itertools.count(1)
        #: batch names are unique among the writers, and name the node
        #: (``recovery.verify_unflushed`` leaves a live node's batches to it)
        self._owner = owner or secrets.token_hex(6)
        #: batches flushed since their COMMIT, to strike off ``unflushed`` in the next
        self._flushed: list[str] = []

    def close(self) -> None:
        """Flush what the journal holds where it belongs, strike off the batches
        flushed since the last COMMIT (else the next start verifies them again), and
        let go of the storage's publishing resources (call when no batch runs)."""
        if self._journaled:
            self._checkpoint()
        if self._flushed:
            index = self.index
            with index.lock:
                try:
                    index.begin()
                    index.flushed(self._flushed)
                    index.commit()
                    self._flushed = []
                except DatabaseOrOSError:
                    rollback_quietly(index)
        self.storage.close()

    def publish(self, batch: list[Staged]) -> None:
        """Give every member of ``batch`` its outcome (see the module docstring)."""
        self.stats.batches += 1
        self.stats.instances += len(batch)
        self.flush_time = 0.0
        if self._journaled and time.monotonic() >= self._due:
            self._checkpoint()
        if self.index.engine.dialect == "postgresql":
            batch = [m for m in batch if self._holdable(m)]
        if self.defers:  # (never with on_duplicate=replace: see Publisher.defers)
            if crashpoints.ENABLED:
                crashpoints.reached("publish.after-trace")
                crashpoints.reached("publish.after-file-flush")
            live = batch
        else:
            live = self._stage(batch) if batch else batch
        if live:
            self._publish_staged(live)

    # -- steps ----------------------------------------------------------------------

    def _holdable(self, member: Staged) -> bool:
        """A member PostgreSQL's text can hold (``fields.nul_free``), else answered alone."""
        column = nul_free(member.row)
        if column is not None:
            why = f"out of resources: index error: an embedded NUL in {column} (no index holds it)"
            self._answer(member, failure(st.OUT_OF_RESOURCES, why))
        return column is None

    def _stage(self, batch: list[Staged]) -> list[Staged]:
        """Flush the files of ``batch`` (``storage.stage``); those flushed (the others
        are answered A700)."""
        started = time.perf_counter()
        live = self.storage.stage(batch)  # traces, flush of the files
        self.flush_time += time.perf_counter() - started
        if live is not batch and len(live) < len(batch):  # (some failed their flush)
            for member in batch:
                if member.failed is not None:
                    comment = describe_os_error(member.failed, "flushing the file")
                    self._answer(member, failure(st.OUT_OF_RESOURCES, comment))
        if crashpoints.ENABLED:
            crashpoints.reached("publish.after-file-flush")
        return live

    def _publish_staged(self, live: list[Staged]) -> None:
        index = self.index
        storage = self.storage
        placed: list[Staged] = []
        batch_name = ""
        committed: bool | None = False  # (of a failed COMMIT; None: unknown)
        with index.lock:
            try:  # (and the lookup: PostgreSQL sends both at once)
                found = index.begin([m.row["sop_instance_uid"] for m in live])
            except DatabaseError as exc:
                comment = f"out of resources: {unavailable(exc)}"
                for member in live:
                    self._answer(member, failure(st.OUT_OF_RESOURCES, comment))
                return
            try:
                deferred = self.defers
                unsure = self._flush_found(found) if deferred and found else None
                relations = Relations(index) if self.on_relational_mismatch == "reject" else None
                for member in live:
                    existing = found.get(member.row["sop_instance_uid"])
                    if existing is not None and unsure is not None:
                        doing = "making the stored copy durable"
                        self._answer(
                            member, failure(st.OUT_OF_RESOURCES, describe_os_error(unsure, doing))
                        )
                        continue
                    if existing is not None and self.on_duplicate != "replace":
                        path = storage.local_path(existing["path"])
                        try:
                            verdict = duplicate(
                                self.on_duplicate,
                                existing,
                                path,
                                functools.partial(_identical, existing, member),
                                member.warning,
                            )
                        except OSError as exc:  # (reading its file again: another algorithm)
                            doing = "comparing it with the stored copy"
                            verdict = failure(st.OUT_OF_RESOURCES, describe_os_error(exc, doing))
                        self._answer(member, verdict)
                        continue
                    if relations is not None:
                        mismatch = relations.check(member.row, replacing=existing is not None)
                        if mismatch is not None:
                            self._answer(member, mismatch)
                            continue
                    member.existing = existing
                    member.unflushed = deferred
                    if self._place(member):
                        placed.append(member)
                        if relations is not None:
                            relations.add(member.row)
                if not placed:
                    index.rollback()
                    return
                if not deferred:
                    started = time.perf_counter()
                    storage.settle(placed)  # flush of the folders
                    self.flush_time += time.perf_counter() - started
                if crashpoints.ENABLED:
                    crashpoints.reached("publish.after-folder-flush")
                rows = self._put(placed)
                for member in placed:
                    old = member.existing
                    if old is not None and old["path"] != member.rel:
                        index.prune(old["series_uid"], old["study_uid"], old["patient_id"])
                if deferred:
                    batch_name = nodes.batch_name(self._owner, next(self._batches))
                    index.unflushed(batch_name, [m.row["sop_instance_uid"] for m in placed])
                if self._flushed:
                    index.flushed(self._flushed)
                if crashpoints.ENABLED:
                    crashpoints.reached("publish.before-commit")
                started = time.perf_counter()
                try:
                    index.commit(flush=not deferred)
                except DatabaseError:
                    committed = committed_after_all(index, placed)
                    if not committed:
                        raise
                self.flush_time += time.perf_counter() - started
                self._flushed = []
                if crashpoints.ENABLED:
                    crashpoints.reached("publish.after-commit")
            except BaseException as exc:
                rollback_quietly(index)
                self._undo(placed, in_doubt=committed is None)
                if isinstance(exc, DatabaseError):
                    comment = f"out of resources: index error: {error_cause(exc)}"
                elif isinstance(exc, OSError):
                    comment = describe_os_error(exc, "storing the file")
                else:
                    raise  # a bug: the members learn of it (commit.GroupCommit)
                for member in live:  # (those answered as duplicates keep their answer)
                    if member.outcome is None:
                        self._answer(member, failure(st.OUT_OF_RESOURCES, comment))
                return
        journaled = bool(batch_name) and self._journal(placed, batch_name)
        if not journaled:  # (journaled: its traces stay until the checkpoint)
            if batch_name:  # (the traces stay until it is done: see the module docstring)
                self._flush(placed, batch_name)
            finish(index, self.storage, placed)  # the old versions, intents, traces go
            if crashpoints.ENABLED:
                crashpoints.reached("publish.after-traces-dropped")
        for member, row in zip(placed, rows, strict=True):
            if member.failed is not None:  # (committed, not flushed: see _flush)
                comment = describe_os_error(member.failed, "flushing the file")
                member.outcome = failure(st.OUT_OF_RESOURCES, comment)
            elif member.warning is not None:
                status, comment, tags = member.warning
                member.outcome = StoreOutcome(
                    status, comment, tags, path=Path(member.final), instance=row
                )
            else:
                member.outcome = StoreOutcome(st.SUCCESS, path=Path(member.final), instance=row)

    def _place(self, member: Staged) -> bool:
        """Give one member its key (the storage renames it there); False (and A700)
        when that failed."""
        row = member.row
        member.rel = key = instance_relstr(
            row["study_uid"], row["series_uid"], row["sop_instance_uid"]
        )
        old = member.existing
        try:
            self.storage.place(member, key, None if old is None else old["path"])
        except OSError as exc:
            comment = describe_os_error(exc, "storing the file")
            self._answer(member, failure(st.OUT_OF_RESOURCES, comment))
            return False
        return True

    def _put(self, placed: list[Staged]) -> list[dict[str, Any]]:
        rows = [{**member.row, "path": member.rel} for member in placed]
        try:
            return self.index.put_many(rows)
        except IntegrityError:
            self.index.forget()  # a parent row the cache believed in is gone: look again
            return self.index.put_many(rows)

    def _undo(self, placed: list[Staged], *, in_doubt: bool = False) -> None:
        """Take back the placements of a batch that cannot be committed (the files go;
        ``in_doubt``: they stay, see ``storage.WritableStorage.undo``)."""
        self.storage.undo(placed, in_doubt=in_doubt)

    def _answer(self, member: Staged, outcome: StoreOutcome) -> None:
        """Answer ``outcome`` for a member that will not be placed: its temporary goes."""
        member.outcome = outcome
        self.storage.discard(member)


def _identical(existing: dict[str, Any], member: Staged) -> bool:
    """Whether ``member`` has the data set stored for ``existing`` (its digest; a
    row of an older algorithm has the member's file read again with that one, under
    the index lock: once per such duplicate). ``OSError`` propagates (A700)."""
    try:
        return digests.same(existing["digest"], member.row["digest"], member.temp)
    except (HeaderError, ValueError):  # our own file not PS3.10, an unknown algorithm
        return False
