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
    BEGIN IMMEDIATE      the index write lock (after ``lock_timeout``: A700 for all;
                         its file removed since it was opened, looked at once a
                         second: A700 for all, ``index_health.py``)
    look them up         the duplicate policy decides, instance by instance
  place (each):
    old names            a trace (``.pub``, a second name of the temporary); the
                         replaced version a removal intent (``removal.py``): a
                         replace is never renamed over it but put at the
                         instance's other place (``layout.other_place``) or in
                         its new series; a file at the final name (no one's: a
                         crash's leftover) a second name in .tmp (``.bak``)
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
files stay as a crash there leaves them, traces and intents too (A700), and are
settled by the rows before the next batch once the index answers
(``recovery.settle_placed``). A crash after the renames and before the COMMIT
leaves files without rows, and their traces: the next start adopts them into
the index (``recovery.recover``), or removes a replace's new version (after a
power cut a new instance's trace may be gone: its file is then one ``check``
reports and ``reindex`` adopts; it was never acknowledged). A crash after the
COMMIT and before a replaced version is gone leaves its removal intent: the
next start (or ``delete``) removes the file, which the index no longer names.
Meanwhile every file a committed row names is the one it describes: other
nodes serve it, and a duplicate is compared with it (review50 #1, #2).

**New instances committed before their flush** (``Publisher.defers``), and **through
the journal**: the steps, and why they hold, are in ``deferred.py``.

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
answered 0000 and its temporary goes, another is answered B000, or A900 filed
under another patient, study or series: ``relations.py``; reject: C111)
or, with replace, puts its file at the other place, commits its own row and
then removes the first's file: the file at a committed row's path is always
the one the row describes. The
writer's caches are emptied when another node has rewritten rows (deleted,
changed, filed a UID under a second parent: ``parentcache.py``).
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
    OperationalError,
    error_cause,
    unavailable,
)
from dicomstore.archive.equivalence import MAX_SIZE, same_reencoded
from dicomstore.archive.fields import nul_free, received_now
from dicomstore.archive.index import Index
from dicomstore.archive.index_health import IndexHealth
from dicomstore.archive.layout import instance_relstr, other_place
from dicomstore.archive.outcome import StoreOutcome, describe_os_error, duplicate, failure
from dicomstore.archive.relations import Relations, instance_elsewhere
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
        health: IndexHealth,
    ) -> None:
        self.storage = storage
        self.index = index
        #: the index lost or damaged while it serves (``index_health.py``)
        self.health = health
        self.on_duplicate = on_duplicate
        #: ``relations.py``: refuse (A900) or accept a series/study filed elsewhere
        self.on_relational_mismatch = on_relational_mismatch
        self.stats = CommitStats()
        #: seconds the last batch spent waiting for flushes (files, folders, COMMIT)
        self.flush_time = 0.0
        storage.start(self.stats, submitted)
        #: new instances are committed before their files are flushed, then one flush
        #: makes both durable (``deferred.py``; never with replace: see there)
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
        #: members placed by batches whose COMMIT was in doubt, still to be settled
        self._doubt: list[Staged] = []

    def close(self) -> None:
        """Flush what the journal holds where it belongs, strike off the batches
        flushed since the last COMMIT (else the next start verifies them again), and
        let go of the storage's publishing resources (call when no batch runs)."""
        if self._journaled:
            self._checkpoint()
        if self._doubt:
            self._settle_doubt()
        if self._flushed:
            self._strike_off()
        self.storage.close()

    def publish(self, batch: list[Staged]) -> None:
        """Give every member of ``batch`` its outcome (see the module docstring)."""
        self.stats.batches += 1
        self.stats.instances += len(batch)
        self.flush_time = 0.0
        if self._journaled and time.monotonic() >= self._due:
            self._checkpoint()
        if self._doubt:
            self._settle_doubt()
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
            why = f"index error: an embedded NUL in {column} (no index holds it)"
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
        conflicts: list[tuple[Staged, StoreOutcome]] = []  # (B000 once recorded: H2)
        batch_name = ""
        committed: bool | None = False  # (of a failed COMMIT; None: unknown)
        with index.lock:
            try:  # (and the lookup: PostgreSQL sends both at once)
                self.health.watch()  # (its file removed: review58 M4)
                found = index.begin([m.row["sop_instance_uid"] for m in live])
            except DatabaseError as exc:
                self.health.failed(exc)
                comment = f"{unavailable(exc)}"
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
                        why = describe_os_error(unsure, "making the stored copy durable")
                        self._answer(member, failure(st.OUT_OF_RESOURCES, why))
                        continue
                    verdict: StoreOutcome | None = None
                    if existing is not None and self.on_duplicate != "replace":
                        path = storage.local_path(existing["path"])
                        keep = self.on_duplicate == "keep"
                        try:
                            verdict = duplicate(
                                self.on_duplicate,
                                existing,
                                path,
                                functools.partial(_identical, existing, path, member),
                                member.warning,
                                instance_elsewhere(existing, member.row) if keep else None,
                                functools.partial(_intact, existing, path),
                            )
                        except OSError as exc:  # (reading its file again: another algorithm)
                            doing = "comparing it with the stored copy"
                            verdict = failure(st.OUT_OF_RESOURCES, describe_os_error(exc, doing))
                        conflict = st.conflicting(verdict, existing, member.row)
                    elif relations is not None:  # (refusing a copy of a stored one: a
                        verdict = relations.check(member.row, replacing=existing is not None)
                        conflict = existing is not None  # conflict too, review109 M2)
                    if verdict is not None:
                        if conflict:
                            conflicts.append((member, verdict))  # (schema.CONFLICTS)
                        else:
                            self._answer(member, verdict)
                        continue
                    member.existing = existing
                    member.unflushed = deferred
                    if self._place(member):
                        placed.append(member)
                        if relations is not None:
                            relations.add(member.row)
                if conflicts:  # (their B000 only once the index says it, flushed: H2)
                    index.conflicted([member.row for member, _verdict in conflicts], received_now())
                if not placed:
                    if conflicts:
                        index.commit()
                        for member, verdict in conflicts:
                            self._answer(member, verdict)
                    else:
                        index.rollback()
                    return
                if not deferred:
                    started = time.perf_counter()
                    storage.settle(placed)  # flush of the folders
                    self.flush_time += time.perf_counter() - started
                if crashpoints.ENABLED:
                    crashpoints.reached("publish.after-folder-flush")
                stamp = received_now()  # (late in the transaction: fields.received_now)
                for member in placed:
                    member.row["received_at"] = stamp
                rows = self._put(placed)
                index.resolved([member.row["sop_instance_uid"] for member in placed])
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
                    index.commit(flush=not deferred or bool(conflicts))
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
                if isinstance(exc, IntegrityError):  # (PostgreSQL's, at COMMIT: a cache
                    index.forget()  # gone stale without a count, review59 L4: not again)
                self._undo(placed, in_doubt=committed is None)
                if isinstance(exc, OperationalError):  # (unreachable, busy, locked, full)
                    comment = f"{unavailable(exc)}"
                elif isinstance(exc, DatabaseError):
                    self.health.failed(exc)  # (damaged: said once, with the remedy)
                    comment = f"index error: {error_cause(exc)}"
                elif isinstance(exc, OSError):
                    comment = describe_os_error(exc, "storing the file")
                else:
                    raise  # a bug: the members learn of it (commit.GroupCommit)
                doubt = {id(m) for m in placed} if committed is None else set()
                if doubt:
                    self._doubt += placed
                for member in live:  # (those answered as duplicates keep their answer)
                    if id(member) in doubt:  # (its trace stays: recovery settles it)
                        member.outcome = failure(st.OUT_OF_RESOURCES, comment)
                    elif member.outcome is None:
                        self._answer(member, failure(st.OUT_OF_RESOURCES, comment))
                return
        for member, verdict in conflicts:
            self._answer(member, verdict)
        journaled = bool(batch_name) and self._journal(placed, batch_name)
        if not journaled:  # (journaled: its traces stay until the checkpoint)
            if batch_name:  # (the traces stay until it is done: ``deferred.py``)
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
        key = instance_relstr(row["study_uid"], row["series_uid"], row["sop_instance_uid"])
        old = member.existing
        if old is not None and old["path"] == key:
            key = other_place(key)  # (never over the committed file: the module docstring)
        member.rel = key
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

    def _settle_doubt(self) -> None:
        """The members of batches whose COMMIT was in doubt, settled by the rows now
        that the index may answer (``storage.settle_doubt``); else kept for the next
        batch (a start settles what a close leaves)."""
        try:
            self.storage.settle_doubt(self.index, self._doubt)
        except DatabaseOrOSError:
            return  # (not now)
        except Exception:  # noqa: BLE001 - a file it cannot read: left for a start
            pass
        self._doubt = []

    def _answer(self, member: Staged, outcome: StoreOutcome) -> None:
        """Answer ``outcome`` for a member that will not be placed: its temporary goes."""
        member.outcome = outcome
        self.storage.discard(member)


def _intact(existing: dict[str, Any], stored: Path | None) -> bool:
    """Whether the stored copy's file holds the data set indexed for it (read whole
    once per duplicate identical to it: ``outcome.duplicate``); True when it is no
    local file, or larger than ``equivalence.MAX_SIZE`` (read under the index lock,
    which every store waits for: its size was checked; ``check`` reads the rest).
    ``OSError`` propagates (A700)."""
    if stored is None or int(existing["file_size"]) > MAX_SIZE:
        return True
    try:
        return digests.matches(existing["digest"], stored)
    except (HeaderError, ValueError):  # (no PS3.10 file any more: damaged)
        return False


def _identical(existing: dict[str, Any], stored: Path | None, member: Staged) -> bool:
    """Whether ``member`` has the data set stored for ``existing`` (its digest; a
    row of an older algorithm has the member's file read again with that one, under
    the index lock: once per such duplicate; sent in another transfer syntax, each
    re-encoded into the other's, the stored copy at ``stored``: ``equivalence.py``).
    ``OSError`` propagates (A700)."""
    try:
        if digests.same(existing["digest"], member.row["digest"], member.temp):
            return True
        return same_reencoded(existing, stored, member.row, member.temp)  # (another syntax)
    except (HeaderError, ValueError):  # our own file not PS3.10, an unknown algorithm
        return False
