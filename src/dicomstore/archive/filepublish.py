"""Publishing on the local file system: the steps, flushes and crash points of
``publish.py`` (``storage.WritableStorage`` from ``start`` on) for
:class:`~dicomstore.archive.filestorage.FileStorage`, whose base this is (hard-link
traces, fsync/syncfs, ``.bak``, removal intents, renames, folder flushes, the
flush after an unflushed COMMIT); start-up recovery is ``recovery.recover``.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path, PurePosixPath

from dicomstore.archive import crashpoints, layout
from dicomstore.archive.commit import CommitStats, Staged
from dicomstore.archive.journal import Journal

#: Batches at least this large are flushed with syncfs (when available).
SYNCFS_MIN_BATCH = 2
#: Folders remembered as existing before the memory starts again.
DIRS_LIMIT = 100_000
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK}
#: The suffix of the trace of a file placed before its data was flushed
#: (``<temp>.<digest>.new``, the digest's ``:`` as ``_``: see ``recovery.recover``).
UNFLUSHED = ".new"


class FilePublishing:
    """The publishing steps of :class:`~dicomstore.archive.filestorage.FileStorage`
    (which sets the attributes below)."""

    root: Path
    _root: str
    fsync: bool
    _use_syncfs: bool | None
    stats: CommitStats
    submitted: Callable[[], int]
    durable_seq: int
    _fs_fd: int
    _watch_fd: int
    _whole_fs: bool
    _dirs: set[str]
    _links: bool
    _journal: Journal | None
    #: a syncfs through ``_fs_fd`` failed once (see ``_syncfs``)
    _tainted: bool

    def start(self, stats: CommitStats, submitted: Callable[[], int]) -> None:
        self.stats = stats
        self.submitted = submitted
        if self._syncs():
            self._fs_fd = layout.open_folder(self.root / layout.TMP_DIR)
            self.watch_errors()

    def _syncs(self) -> bool:
        """Whether this storage flushes with syncfs (fsync on, syncfs not refused)."""
        return self.fsync and layout.SYNCFS_AVAILABLE and self._use_syncfs is not False

    def watch_errors(self) -> None:
        """Open now the descriptor the syncfs of :meth:`flush_keys` will go through
        (a writer at :meth:`start`; a reader that may make a Storage Commitment).
        A descriptor reports each write-back error of its file system that happens
        after it was opened (Linux errseq), even one another process saw first, and
        each once: one opened at the flush would miss an error the writing node saw
        just before (and for which it withdraws that very file), and sharing the
        writer's own descriptor, the writer's flushes could take it first.
        Released by :meth:`close`."""
        if self._watch_fd < 0 and self._syncs():
            self._watch_fd = layout.open_folder(self.root)

    def close(self) -> None:
        """Release the descriptors used for syncfs and the journal, which goes when
        nothing in it counts (call when no batch runs)."""
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if self._fs_fd >= 0:
            os.close(self._fs_fd)
            self._fs_fd = -1
        if self._watch_fd >= 0:
            os.close(self._watch_fd)
            self._watch_fd = -1

    def defers_flush(self, index_file: Path | None) -> bool:
        """Whether a batch of new instances may be placed and committed before its
        files are flushed (``publish.py``): with fsync and syncfs on, and the index a
        file (``index_file``) on this file system, whose one syncfs after the COMMIT
        makes the files, their names and the COMMIT durable at once."""
        if not self.fsync or self._fs_fd < 0 or index_file is None:
            return False
        return _same_fs(index_file, self._fs_fd)

    def stage(self, batch: list[Staged]) -> list[Staged]:
        """Make the data of the files durable: one syncfs for a batch, else an fsync
        each. (Each file's name in ``.tmp`` is its trace once it is placed: see
        :meth:`place`.)"""
        # (tainted: a syncfs stands for the files no more, see _syncfs)
        whole_fs = self._fs_fd >= 0 and not self._tainted and len(batch) >= SYNCFS_MIN_BATCH
        self._whole_fs = whole_fs
        if self._links and crashpoints.ENABLED:
            crashpoints.reached("publish.after-trace")
        if not self.fsync or all(0 < m.seq <= self.durable_seq for m in batch):
            # (with fsync: a syncfs that began after they were written flushed them)
            if self.fsync:
                self.stats.flushed_before += 1
            for member in batch:
                close_member(member)
            return batch
        if whole_fs:
            try:
                self._syncfs()
            except OSError:
                pass  # find out whose data was lost: each descriptor reports its own
            else:
                for member in batch:
                    close_member(member)
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
                member.failed = exc
            else:
                close_member(member)
                live.append(member)
        return live

    def place(self, member: Staged, key: str, replacing: str | None) -> None:
        """Give one file its final name (``OSError``: taken back).

        Until after the COMMIT the file keeps a second name in ``.tmp``, its
        *trace*: a crash in between leaves it there, and the next start adopts
        the file it names (``recovery.recover``: a ``.part`` or ``.pub`` name
        with a link count over 1). Without ``fsync``, a new instance (no row,
        nothing at the final name) is placed by a hard link to its final name,
        which fails rather than replace anything: its temporary name is the trace
        (two system calls per instance: the link, and the unlink of the trace
        after the COMMIT). Otherwise — durable (see below), a replace, a file
        already at the final name (a crash's leftover, another node's uncommitted
        file), or a file system without hard links — the file gets a trace
        (``<temp>.pub``) and is renamed there; a file already at the final
        name is kept as a link in ``.tmp`` (``.bak``) until the COMMIT, and
        restored if the batch fails.

        A member ``unflushed`` (committed before its flush: ``publish.py``)
        gets the trace ``<temp>.<digest>.new`` and no ``.bak``: nothing committed
        is at its final name (no row names it), so what is there is no one's.

        Why not the hard link when durable: on ext4 every flush of a lone
        instance placed by a link (and unlinked from ``.tmp`` after its COMMIT)
        took 15-20% longer than one placed by a rename (cause not established);
        a crash tells no difference between the two.
        The file of a replaced instance (always at another name: ``publish.py``)
        gets a removal intent (``removal.py``). Names made in ``.tmp`` here are flushed with the
        folders (:meth:`settle`): after the COMMIT an intent says that file must go.
        """
        # with syncfs, new folders are made durable by the one syncfs of settle
        # instead of an fsync of each parent
        durable_dirs = self.fsync and self._fs_fd < 0
        member.final = final = f"{self._root}/{key}"
        folder = key.rpartition("/")[0]
        try:
            if folder not in self._dirs:
                member.created = self._make_dirs(folder, durable_dirs)
            if (
                replacing is None
                and self._links
                and not self.fsync
                and self._link_new(member, folder)
            ):
                if crashpoints.ENABLED:
                    crashpoints.reached("publish.after-rename")
                return
            if member.unflushed:  # (no row: what may be at the final name is no one's)
                if self._links:
                    digest = member.row["digest"].replace(":", "_")  # (a name's ``_``)
                    self._link_trace(member, f"{member.temp}.{digest}{UNFLUSHED}")
            else:
                if self._links:
                    self._link_trace(member, f"{member.temp}.pub")
                backup = f"{member.temp}.bak"
                try:
                    os.link(final, backup)
                    member.backup = backup
                except FileNotFoundError:
                    pass
            if replacing is not None and replacing != key and self._links:
                tmp, _, owner = member.temp.rpartition("/")
                member.intent = layout.link_intent(self.root, tmp, owner, replacing)
            if replacing is not None and crashpoints.ENABLED:
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
        except OSError:
            if member.backup is not None:
                layout.remove_quietly(member.backup)
                member.backup = None
            if member.trace is not None and member.trace != member.temp:
                layout.remove_quietly(member.trace)
                member.trace = None
            if member.intent is not None:
                layout.remove_quietly(member.intent)
                member.intent = None
            layout.remove_empty_dirs(member.created or [])
            raise

    def settle(self, placed: list[Staged]) -> None:
        """Make the new names durable (and the folders made for them): an fsync of
        each folder, or one syncfs for new folders or several folders."""
        if not self.fsync:
            return
        folders = {member.final.rpartition("/")[0] for member in placed}
        # removal intents (replaces that move an instance), and the traces and backups
        # of the files renamed over another (a replace, a file already there), are
        # durable before the COMMIT: the next start puts back what they replaced. A
        # new instance's trace is not (as for one linked into place): without it a
        # crash before the COMMIT leaves a file that ``check`` reports and
        # ``reindex`` adopts
        for m in placed:
            renamed_over = m.backup is not None or m.intent is not None or m.existing is not None
            trace = m.trace if renamed_over and m.trace != m.temp else None
            for name in (m.intent, m.backup, trace):
                if name is not None:
                    folders.add(name.rpartition("/")[0])
        created = any(member.created for member in placed)
        if self._fs_fd >= 0 and (created or (self._whole_fs and len(folders) > 1)):
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

    def flush_placed(self, placed: list[Staged]) -> bool:
        """After a COMMIT not yet durable (``publish.py``: members ``unflushed``): one
        syncfs makes the files, their names and the COMMIT durable; True. When it
        fails (or one failed before: see ``_syncfs``), each file (a failure sets its
        ``failed``) and each folder is fsynced on its own, and False says the index
        is still to be flushed (``OSError`` from a folder: none of them is known
        durable)."""
        try:
            if self._tainted:
                raise OSError(5, "a syncfs failed before: each file is flushed")
            self._syncfs()
        except OSError:
            pass
        else:
            for member in placed:
                close_member(member)
            return True
        folders = set()
        for member in placed:
            folders.add(member.final.rpartition("/")[0])
            folders.update(str(path.parent) for path in member.created or ())
            try:
                self.stats.flushes += 1
                os.fsync(member.fd)
            except OSError as exc:
                member.failed = exc  # (its descriptor stays open for withdraw)
        for folder in folders:
            self.stats.flushes += 1
            layout.fsync_dir(Path(folder))  # (raising: every descriptor stays open)
        for member in placed:
            if member.failed is None:
                close_member(member)
        return False

    def withdraw(self, member: Staged) -> bool:
        """Remove the file of a committed member that could not be flushed, if its
        final name still holds that very file (not another node's, renamed there
        since); True if it did (the caller then removes its row). The removal is
        flushed (its folder) before the row's removal commits: else a crash could
        keep the file, whose data did not reach the disk, without a row or a trace
        (``reindex`` would adopt it); when that flush fails, ``check`` reports it."""
        try:
            ours, there = os.fstat(member.fd), os.stat(member.final)
            if (ours.st_dev, ours.st_ino) != (there.st_dev, there.st_ino):
                return False
            os.unlink(member.final)
        except OSError:
            return False
        finally:
            close_member(member)
        if self.fsync:
            try:
                layout.fsync_dir(Path(member.final).parent)
            except OSError:
                pass
        return True

    def flush_keys(self, keys: list[str], index_file: Path | None = None) -> bool:
        """Make the stored files at ``keys`` durable, with their names: one syncfs
        through the descriptor of :meth:`watch_errors` (``OSError`` when it reports
        an error: not retried file by file, whose new descriptors would not see an
        error that the writing node saw first), or without syncfs an fsync of each
        and of its folders up to the root. True when the index needs no flush of
        its own after this: the one syncfs covered ``index_file`` too (on this
        file system), or this storage does not flush. (The writer's ``durable_seq``
        does not move: only its own descriptor's syncfs says its files are.)"""
        if not self.fsync:
            return True
        self.watch_errors()  # (opened now at the latest, and kept: see there)
        fd = self._watch_fd
        if fd >= 0:
            self.stats.flushes += 1
            layout.syncfs(fd)
            return index_file is not None and _same_fs(index_file, fd)
        folders: set[Path] = set()
        for key in keys:
            path = layout.resolve(self.root, key)
            layout.fsync_file(path)
            folders.update(layout.folders_up_to(self.root, path))
        for folder in folders:
            layout.fsync_dir(folder)
        return False

    def finish(self, placed: list[Staged], kept: frozenset[str] = frozenset()) -> None:
        """The final names are committed: the replaced version's names go, its
        removal intent only once it is gone, the trace last (see recovery.recover).
        A version moved away goes only while it is still the file its intent names
        and its key is not in ``kept`` (review36b #3: another node that stored the
        instance back there meanwhile lost its file)."""
        if len(self._dirs) > DIRS_LIMIT:
            self._dirs.clear()
        emptied: set[Path] = set()  # (flushed once each before any intent goes:
        for member in placed:  # review36c L2, one fsync per member under the lock)
            self._dirs.add(member.rel.rpartition("/")[0])
            old = member.existing
            if old is not None and old["path"] != member.rel and old["path"] not in kept:
                self._remove_file(old["path"], member.intent, emptied)
        for folder in emptied:
            with suppress(OSError):  # (as a crash would leave it: check() reports it)
                layout.fsync_dir(folder)
        for member in placed:
            if member.backup is not None:
                layout.remove_quietly(member.backup)
            if member.existing is not None and crashpoints.ENABLED:
                crashpoints.reached("publish.after-old-gone")
            for name in (member.intent, member.trace):
                if name is not None:
                    layout.remove_quietly(name)

    def undo(self, placed: list[Staged], *, in_doubt: bool = False) -> None:
        """Take back the renames of a batch that cannot be committed (the files go);
        ``in_doubt``: only close them (see ``storage.WritableStorage.undo``)."""
        for member in reversed(placed):
            close_member(member)  # (one placed before it was flushed is still open)
            if in_doubt:
                continue
            try:
                if not _same_file(member.final, member.trace or member.temp):
                    pass  # not ours any more (another node's, see publish.py)
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

    def discard(self, member: Staged) -> None:
        close_member(member)
        layout.remove_quietly(member.temp)
        if member.trace is not None:
            layout.remove_quietly(member.trace)
            member.trace = None

    def _link_new(self, member: Staged, folder: str) -> bool:
        """Place a new instance by a hard link from its temporary, which is then its
        trace (``fsync`` off only: no folder is flushed); False when something is at
        the final name already, or hard links do not work here (the caller renames
        instead)."""
        try:
            os.link(member.temp, member.final)
        except FileExistsError:
            return False
        except FileNotFoundError:
            if folder not in self._dirs:
                raise
            self._dirs.discard(folder)  # removed behind our back (a delete emptied it)
            member.created = self._make_dirs(folder, False)
            return self._link_new(member, folder)
        except OSError as exc:
            if exc.errno not in _NO_LINKS:
                raise
            self._links = False  # a file system without hard links
            return False
        member.trace = member.temp
        return True

    def _link_trace(self, member: Staged, trace: str) -> None:
        """Best effort: without a trace, a crash before the COMMIT leaves a file that
        ``check`` reports and ``reindex`` adopts (as before traces)."""
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

    def _syncfs(self) -> None:
        self.stats.flushes += 1
        upto = self.submitted()  # written before this syncfs begins: durable after it
        try:
            layout.syncfs(self._fs_fd)
        except OSError as exc:
            # Linux reports a writeback error once per descriptor: a later syncfs
            # through it succeeds without the lost data. So from now on no syncfs
            # stands for the files (``durable_seq``, ``stage``, ``flush_placed``:
            # each file is fsynced through its own descriptor, which reports it),
            # and what the journal holds no checkpoint makes obsolete: the next
            # start replays it
            self._tainted = True
            if self._journal is not None:
                self._journal.fail(f"a flush of the file system failed: {exc}")
            raise
        if not self._tainted:
            self.durable_seq = max(self.durable_seq, upto)

    def _remove_file(self, key: str, intent: str | None, emptied: set[Path]) -> None:
        """Remove a file the index no longer points to (after a replace moved it),
        if it is still the one ``intent`` names (when there is one); its folder into
        ``emptied`` (to flush) when durable."""
        try:
            path = layout.resolve(self.root, key)
            if intent is not None and not os.path.samefile(path, intent):
                return  # another file there now (the intent goes: it names no file)
            os.unlink(path)
            if self.fsync:
                emptied.add(path.parent)
        except (OSError, ValueError):
            pass  # check() reports it as unindexed


def _same_file(path: str, other: str) -> bool:
    try:
        return os.path.samefile(path, other)
    except OSError:
        return True  # (no trace to tell: the file at ``path`` is taken as ours)


def close_member(member: Staged) -> None:
    """Close the member's descriptor (if still open)."""
    if member.fd >= 0:
        with suppress(OSError):
            os.close(member.fd)
        member.fd = -1


def _quietly(action: Callable[..., object], *args: object) -> None:
    with suppress(OSError):
        action(*args)


def _same_fs(path: Path, fd: int) -> bool:
    """Whether ``path`` is on the file system of the open folder ``fd`` (one
    syncfs through ``fd`` makes it durable too)."""
    try:
        return os.stat(path).st_dev == os.fstat(fd).st_dev
    except OSError:
        return False
