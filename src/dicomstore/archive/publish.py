"""Publishing checked instances, a batch at a time: the commit point of the archive.

A batch is one instance, or all those whose commits met (``commit.py``). With
``fsync`` on (the crash points of ``crashpoints.py`` in brackets)::

    trace                a second name for each file in .tmp (see recovery.recover)
                                                        [publish.after-trace]
    flush the files      fsync of each file; a batch: one syncfs of the file system
                                                        [publish.after-file-flush]
    BEGIN IMMEDIATE      the index write lock (after ``lock_timeout``: A700 for all)
    look them up         the duplicate policy decides, instance by instance
    replace: old names   the file at the final name gets a second name in .tmp
                         (``.bak``); one at another name (the instance moves to
                         another series) a removal intent (``removal.py``)
                                                        [publish.after-old-link]
    mkdir, rename        each file to its final name (a failure fails that one only)
                                                        [publish.after-rename]
    flush the folders    fsync of the series folder (and of the parent of a new
                         folder, and of .tmp for an intent); a batch with several
                         folders or new ones: syncfs   [publish.after-folder-flush]
    write the rows       one INSERT per instance, parent rows only if new or richer
                                                        [publish.before-commit]
    COMMIT               SQLite's one WAL fsync (synchronous=FULL): now Success
                                                        [publish.after-commit]
    old version goes     a moved instance's old file is unlinked (fsync of its
                         folder), then the ``.bak``    [publish.after-old-gone]
    drop the traces      and the intents               [publish.after-traces-dropped]

So a file is at its final name only once its data is durable, its name is
durable before its row is committed, and Success is answered only after the
COMMIT. A failure after the renames (a folder flush, the index) undoes every
rename of the batch before answering A700. A crash after the renames and
before the COMMIT leaves files without rows, and their traces: the next start
adopts them into the index (``recovery.recover``), or puts back what a replace
replaced. A crash after the COMMIT and before the old file of a moved
instance is gone leaves its removal intent: the next start (or ``delete``)
removes the file, which the index no longer names. Either way the index then
serves the last committed version and ``check`` is clean.

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
its own (``_undo``), and ``check`` would report a file that differs.

Flushes (fsync/syncfs calls) per batch of ``n`` instances::

    n == 1 (or syncfs=False)  n files + 1 series folder + 1 WAL = 3 for one
                              (new folders: 1 syncfs instead of the series folder)
                              (+1 per new folder: 5 for an instance of a new study)
                              (a replace that moves the instance: +1 for .tmp,
                              +1 for the old file's folder after the COMMIT)
    n >= 2 with syncfs        1 syncfs + 1 folder fsync or syncfs + 1 WAL = 3 for all
    written before a syncfs   no flush of the files: 2 (see below)

(and SQLite's checkpoints: 2 fsyncs per ~1000 pages written to the WAL).
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

import errno
import os
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from dicomstore.archive import crashpoints, layout
from dicomstore.archive import outcome as st
from dicomstore.archive.commit import CommitStats, Staged
from dicomstore.archive.engine import DatabaseError, IntegrityError
from dicomstore.archive.index import Index
from dicomstore.archive.outcome import StoreOutcome, describe_os_error, duplicate, failure
from dicomstore.archive.relations import Relations
from dicomstore.archive.removal import link_intent

#: Batches at least this large are flushed with syncfs (when available).
SYNCFS_MIN_BATCH = 2
#: Folders remembered as existing before the memory starts again.
DIRS_LIMIT = 100_000
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK}


class Publisher:
    """Files under ``root`` and rows in ``index``, published batch by batch.

    ``syncfs``: ``None`` uses it where it can be trusted, ``False`` never (each
    file fsynced, e.g. on a file system shared with heavy unrelated writers).
    """

    def __init__(
        self,
        root: Path,
        index: Index,
        *,
        fsync: bool,
        on_duplicate: str,
        syncfs: bool | None = None,
        on_relational_mismatch: str = "reject",
    ) -> None:
        self.root = root
        self._root = str(root)
        self.index = index
        self.fsync = fsync
        self.on_duplicate = on_duplicate
        #: ``relations.py``: refuse (A900) or accept a series/study filed elsewhere
        self.on_relational_mismatch = on_relational_mismatch
        self.stats = CommitStats()
        #: seconds the last batch spent waiting for flushes (files, folders, COMMIT)
        self.flush_time = 0.0
        self._dirs: set[str] = set()  # folders (relative) known to exist
        self._links = True  # hard links work here
        if syncfs and not layout.SYNCFS_AVAILABLE:
            raise ValueError("syncfs needs Linux 5.8 or later")
        #: how many instances had been submitted (``Staged.seq``) when the last
        #: successful syncfs began: their data was durable when it returned
        self.durable_seq = 0
        #: the number of instances submitted so far (``GroupCommit.submitted``)
        self.submitted: Callable[[], int] = lambda: 0
        self._fs_fd = -1
        if fsync and (layout.SYNCFS_AVAILABLE if syncfs is None else syncfs):
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
            self._fs_fd = os.open(root / layout.TMP_DIR, flags)

    def close(self) -> None:
        """Release the descriptor used for syncfs (call when no batch runs)."""
        if self._fs_fd >= 0:
            os.close(self._fs_fd)
            self._fs_fd = -1

    def publish(self, batch: list[Staged]) -> None:
        """Give every member of ``batch`` its outcome (see the module docstring)."""
        self.stats.batches += 1
        self.stats.instances += len(batch)
        whole_fs = self._fs_fd >= 0 and len(batch) >= SYNCFS_MIN_BATCH
        if self._links:  # (without fsync too: a node killed keeps its page cache)
            for member in batch:
                self._link_trace(member)  # before the flush, which covers it too
            if crashpoints.ENABLED:
                crashpoints.reached("publish.after-trace")
        started = time.perf_counter()
        live = self._flush_files(batch, whole_fs)
        self.flush_time = time.perf_counter() - started
        if crashpoints.ENABLED:
            crashpoints.reached("publish.after-file-flush")
        if live:
            self._publish_flushed(live, whole_fs)

    # -- steps ----------------------------------------------------------------------

    def _flush_files(self, batch: list[Staged], whole_fs: bool) -> list[Staged]:
        """Make the data of the files durable; those that are (the others failed)."""
        if not self.fsync or all(0 < m.seq <= self.durable_seq for m in batch):
            # (with fsync: a syncfs that began after they were written flushed them)
            if self.fsync:
                self.stats.flushed_before += 1
            for member in batch:
                _close(member)
            return batch
        if whole_fs:
            try:
                self._syncfs()
            except OSError:
                pass  # find out whose data was lost: each descriptor reports its own
            else:
                for member in batch:
                    _close(member)
                return batch
        if len(batch) > 1:
            for member in batch:
                layout.start_writeback(member.fd)
        live = []
        for member in batch:
            try:
                self.stats.flushes += 1
                os.fsync(member.fd)
            except OSError as exc:
                _answer(
                    member,
                    failure(st.OUT_OF_RESOURCES, describe_os_error(exc, "flushing the file")),
                )
            else:
                _close(member)
                live.append(member)
        return live

    def _publish_flushed(self, live: list[Staged], whole_fs: bool) -> None:
        index = self.index
        placed: list[Staged] = []
        with index.lock:
            try:  # (and the lookup: PostgreSQL sends both at once)
                found = index.begin([m.row["sop_instance_uid"] for m in live])
            except DatabaseError as exc:
                comment = f"out of resources: index unavailable: {exc}"
                for member in live:
                    _answer(member, failure(st.OUT_OF_RESOURCES, comment))
                return
            try:
                relations = Relations(index) if self.on_relational_mismatch == "reject" else None
                for member in live:
                    existing = found.get(member.row["sop_instance_uid"])
                    if existing is not None and self.on_duplicate != "replace":
                        path = layout.resolve(self.root, existing["path"])
                        verdict = duplicate(
                            self.on_duplicate, existing, path, member.row["digest"], member.warning
                        )
                        _answer(member, verdict)
                        continue
                    if relations is not None:
                        mismatch = relations.check(member.row, replacing=existing is not None)
                        if mismatch is not None:
                            _answer(member, mismatch)
                            continue
                    member.existing = existing
                    # with syncfs, new folders are made durable by the one syncfs
                    # of _flush_dirs instead of an fsync of each parent
                    durable_dirs = self.fsync and self._fs_fd < 0
                    if self._place(member, durable_dirs=durable_dirs):
                        placed.append(member)
                        if relations is not None:
                            relations.add(member.row)
                if not placed:
                    index.rollback()
                    return
                started = time.perf_counter()
                self._flush_dirs(placed, whole_fs)
                self.flush_time += time.perf_counter() - started
                if crashpoints.ENABLED:
                    crashpoints.reached("publish.after-folder-flush")
                rows = self._put(placed)
                for member in placed:
                    old = member.existing
                    if old is not None and old["path"] != member.rel:
                        index.prune(old["series_uid"], old["study_uid"], old["patient_id"])
                if crashpoints.ENABLED:
                    crashpoints.reached("publish.before-commit")
                started = time.perf_counter()
                index.commit()
                self.flush_time += time.perf_counter() - started
                if crashpoints.ENABLED:
                    crashpoints.reached("publish.after-commit")
            except BaseException as exc:
                _quietly(index.rollback)
                self._undo(placed)
                if isinstance(exc, DatabaseError):
                    comment = f"out of resources: index error: {exc}"
                elif isinstance(exc, OSError):
                    comment = describe_os_error(exc, "storing the file")
                else:
                    raise  # a bug: the members learn of it (commit.GroupCommit)
                for member in live:  # (those answered as duplicates keep their answer)
                    if member.outcome is None:
                        _answer(member, failure(st.OUT_OF_RESOURCES, comment))
                return
        if len(self._dirs) > DIRS_LIMIT:
            self._dirs.clear()
        for member, row in zip(placed, rows, strict=True):
            self._dirs.add(member.rel.rpartition("/")[0])
            # the final name is committed now: the replaced version's names go, its
            # removal intent only once it is gone, the trace last (see recovery.recover)
            old = member.existing
            if old is not None and old["path"] != member.rel:
                self._remove_file(old["path"])
            if member.backup is not None:
                layout.remove_quietly(member.backup)
            if old is not None and crashpoints.ENABLED:
                crashpoints.reached("publish.after-old-gone")
            if member.intent is not None:
                layout.remove_quietly(member.intent)
            if member.trace is not None:
                layout.remove_quietly(member.trace)
            if member.warning is not None:
                status, comment, tags = member.warning
                member.outcome = StoreOutcome(
                    status, comment, tags, path=Path(member.final), instance=row
                )
            else:
                member.outcome = StoreOutcome(st.SUCCESS, path=Path(member.final), instance=row)
        if crashpoints.ENABLED:
            crashpoints.reached("publish.after-traces-dropped")

    def _place(self, member: Staged, *, durable_dirs: bool) -> bool:
        """Rename one file to its final name; False (and A700) when that failed.

        The file has a second name in ``.tmp`` by now, its *trace* (made
        before the flush), kept until after the COMMIT: a crash in between
        leaves it there, and the next start adopts the file it names
        (``recovery.recover``). A file already at the final name (replace, or a
        crash's leftover) is kept as a link in ``.tmp`` until the COMMIT, and
        restored if the batch fails. The file of a replaced instance stored at
        another name gets a removal intent (``removal.py``), flushed with the
        folders: after the COMMIT it says that file must go.
        """
        row = member.row
        member.rel = rel = layout.instance_relstr(
            row["study_uid"], row["series_uid"], row["sop_instance_uid"]
        )
        member.final = final = f"{self._root}/{rel}"
        folder = rel.rpartition("/")[0]
        try:
            if folder not in self._dirs:
                member.created = self._make_dirs(folder, durable_dirs)
            backup = f"{member.temp}.bak"
            try:
                os.link(final, backup)
                member.backup = backup
            except FileNotFoundError:
                pass
            old = member.existing
            if old is not None and old["path"] != rel and self.fsync and self._links:
                tmp, _, owner = member.temp.rpartition("/")
                member.intent = link_intent(self.root, tmp, owner, old["path"])
            if old is not None and crashpoints.ENABLED:
                crashpoints.reached("publish.after-old-link")
            try:
                os.rename(member.temp, final)
            except FileNotFoundError:
                if folder not in self._dirs:
                    raise
                self._dirs.discard(folder)  # removed behind our back (a delete emptied it)
                member.created = self._make_dirs(folder, durable_dirs)
                os.rename(member.temp, final)
            if crashpoints.ENABLED:
                crashpoints.reached("publish.after-rename")
        except OSError as exc:
            if member.backup is not None:
                layout.remove_quietly(member.backup)
                member.backup = None
            if member.intent is not None:
                layout.remove_quietly(member.intent)
                member.intent = None
            layout.remove_empty_dirs(member.created or [])
            comment = describe_os_error(exc, "storing the file")
            _answer(member, failure(st.OUT_OF_RESOURCES, comment))
            return False
        return True

    def _link_trace(self, member: Staged) -> None:
        """Best effort: without a trace, a crash before the COMMIT leaves a file that
        ``check`` reports and ``reindex`` adopts (as before traces)."""
        trace = f"{member.temp}.pub"
        try:
            os.link(member.temp, trace)
        except OSError as exc:
            if exc.errno in _NO_LINKS:
                self._links = False  # a file system without hard links
        else:
            member.trace = trace

    def _make_dirs(self, folder: str, durable: bool) -> list[Path]:
        created = layout.make_dirs(self.root, PurePosixPath(folder), durable=durable)
        if durable:
            self.stats.flushes += len(created)
        return created

    def _flush_dirs(self, placed: list[Staged], whole_fs: bool) -> None:
        """Make the new names durable (and the folders made for them)."""
        if not self.fsync:
            return
        folders = {member.final.rpartition("/")[0] for member in placed}
        # removal intents (replaces that move an instance) are durable before the COMMIT
        folders.update(m.intent.rpartition("/")[0] for m in placed if m.intent is not None)
        created = any(member.created for member in placed)
        if self._fs_fd >= 0 and (created or (whole_fs and len(folders) > 1)):
            try:
                self._syncfs()
                return
            except OSError:
                # a writeback error anywhere on the file system: flush our own folders,
                # and the parents of the folders made for the batch (not yet durable)
                for member in placed:
                    for path in member.created or ():
                        folders.add(str(path.parent))
        for folder in folders:
            self.stats.flushes += 1
            layout.fsync_dir(Path(folder))

    def _put(self, placed: list[Staged]) -> list[dict[str, Any]]:
        rows = [{**member.row, "path": member.rel} for member in placed]
        try:
            return self.index.put_many(rows)
        except IntegrityError:
            self.index.forget()  # a parent row the cache believed in is gone: look again
            return self.index.put_many(rows)

    def _undo(self, placed: list[Staged]) -> None:
        """Take back the renames of a batch that cannot be committed (the files go)."""
        for member in reversed(placed):
            try:
                if not _same_file(member.final, member.trace or member.temp):
                    pass  # not ours any more (another node's, see the module docstring)
                elif member.backup is not None:
                    os.replace(member.backup, member.final)
                    member.backup = None
                else:
                    layout.remove_quietly(member.final)
            except OSError:
                pass  # check() will report it
            for name in ("backup", "trace"):
                if getattr(member, name) is not None:
                    _quietly(layout.remove_quietly, getattr(member, name))
                    setattr(member, name, None)
            if member.intent is not None:
                layout.remove_quietly(member.intent)
                member.intent = None
            layout.remove_empty_dirs(member.created or [])
        if self.fsync:
            for folder in {member.final.rpartition("/")[0] for member in placed}:
                _quietly(layout.fsync_dir, Path(folder))

    def _syncfs(self) -> None:
        self.stats.flushes += 1
        upto = self.submitted()  # written before this syncfs begins: durable after it
        layout.syncfs(self._fs_fd)
        self.durable_seq = max(self.durable_seq, upto)

    def _remove_file(self, relpath: str) -> None:
        """Remove a file the index no longer points to (after a replace moved it)."""
        try:
            path = layout.resolve(self.root, relpath)
            os.unlink(path)
            if self.fsync:
                layout.fsync_dir(path.parent)
        except (OSError, ValueError):
            pass  # check() reports it as unindexed


def _same_file(path: str, other: str) -> bool:
    try:
        return os.path.samefile(path, other)
    except OSError:
        return True  # (no trace to tell: the file at ``path`` is taken as ours)


def _close(member: Staged) -> None:
    if member.fd >= 0:
        try:
            os.close(member.fd)
        except OSError:
            pass
        member.fd = -1


def _answer(member: Staged, outcome: StoreOutcome) -> None:
    """Answer ``outcome`` for a member that will not be placed: its temporary goes."""
    member.outcome = outcome
    _close(member)
    layout.remove_quietly(member.temp)
    if member.trace is not None:
        layout.remove_quietly(member.trace)
        member.trace = None


def _quietly(action: Any, *args: Any) -> None:
    try:
        action(*args)
    except OSError:
        pass
    except DatabaseError:
        pass
