"""Where the bytes of the stored instances live: the storage interface of the archive.

The archive (``Archive``, ``ArchiveReader``) names each stored instance by a
*key*: the index's ``path`` column, ``<study>/<series>/<sop>.dcm``
(``layout.instance_relstr``, every component made safe). Everything above
the archive — services, HTTP, CLI — reads an instance through the archive's
API by its key (:meth:`ArchiveReader.open` a binary stream, or
:meth:`Storage.local_path` where the bytes are a local file and a zero-copy
path pays), never by building or opening a path of its own. So a store other
than the local file system can be added here without touching them (issue 17).

:class:`Storage` is what the readers of the archive need of where bytes live
(open, size, version, exists, list by prefix, delete, free space);
:class:`FileStorage` is the local file system, the only one so far.
:class:`WritableStorage` is what the writers need, in this order: ``create``
a temporary, ``write`` to it and ``abort`` it (``ingest.py`` streams each
instance so: for files ``<root>/.tmp/node-*/<name>``, one ``os.write`` per
fragment); then, one batch at a time, ``stage(batch)`` (trace and flush: the
bytes durable), ``place(member, key, replacing)`` (``.bak``/removal intent,
rename), ``settle(placed)`` (the folder flushes), and after the COMMIT
``finish(placed)`` (old version, intents, traces go), or ``undo(placed)``;
``discard(member)`` for one that is not placed; ``recover(index)`` at start-up,
before the first batch. ``publish.py`` keeps the index logic and the order
(duplicate policy, relations, BEGIN/COMMIT, the answers) and calls the storage
for every step on the bytes; :class:`FileStorage` does them with the
crash-safety and the flush counts that ``publish.py`` documents, and
``recover`` with ``recovery.recover``.

Still the file system's own, inside the archive and nowhere else (each works
on paths under the root, for a second storage to take over next): what
``recovery.recover`` does inside (traces adopted, ``.bak`` put back, ``.tmp``
emptied, by path), removal intents and deletes (``removal.py``: a delete's
intents, unlinks, folder flushes and folder removals; the intents' names are made
here, :func:`link_intent`), ``check`` and ``reindex`` (``maintenance.py``,
reading files by path), the ``.tmp`` holds and node folders
(``recovery.hold``, ``nodes.py``), and the two places where ``ingest.py``
reads or cuts its temporary by name (the header read with pydicom when the
prefix does not settle it, ``padding.py``).

What an object store (S3 and the like) would implement, and how the
guarantees of ``publish.py`` map onto it:

``create`` (write a temporary stream)
    A multipart upload to a temporary key (``.tmp/<node>/<name>``), fragment
    after fragment buffered to the part size (5 MiB minimum): memory stays
    bounded, nothing is visible under a final key. ``abort`` is
    AbortMultipartUpload (and a bucket lifecycle rule for uploads a dead node
    left, as start-up empties ``.tmp`` today).
``stage`` (trace, flush the files: fsync, syncfs)
    CompleteMultipartUpload: S3 acknowledges a PUT only once the object is
    durable, so the "data durable before its name" step is the completion.
``place`` (rename, ``.bak``), the traces
    There is no rename: publishing is a server-side copy to the final key
    (or, better, uploading to the final key directly and writing the index
    row last, since an object is invisible until complete). The crash-safety
    the hard-link trace gives — "a file at its final name without a row is
    adopted or taken back at the next start" — becomes an *intent log*: a
    small object ``.tmp/<node>/<name>.pub`` naming the key and the version it
    published, written (conditional put, ``If-None-Match: *``) before the
    final put and deleted after the COMMIT; recovery lists ``.tmp/`` by
    prefix and settles each intent as ``recovery.recover`` settles traces. A
    replace keeps the old version by the bucket's versioning (the ``.bak``:
    the version id to restore) instead of a second name.
put-if-absent
    Two nodes storing the same instance take turns under the index write
    lock already (``publish.py``), so the final put needs no condition; a
    conditional put (``If-Match`` the ETag read under the lock) would detect a
    node that lost its database session between its put and its COMMIT (the
    race ``publish.py`` leaves).
``settle`` (flush the folders)
    Nothing: an object store has no folders, a completed put is durable.
removal intents (``removal.py``)
    The same intent objects in ``.tmp/`` (``<owner>=<key>.rm``), settled by
    listing the prefix; an unlink is a DeleteObject.
:meth:`Storage.keys` (``check``, ``reindex``, ``delete``'s leftovers)
    ListObjectsV2 by prefix (paginated: the iterator streams).
:meth:`Storage.open`
    A GET with ``Range`` requests on ``seek`` (a readable, seekable stream);
    :meth:`Storage.local_path` returns ``None``, so the readers stream instead
    of ``sendfile``/``mmap`` (the metadata encoder then reads the object).
:meth:`Storage.version`
    The ETag (it changes whenever the bytes do: the metadata cache's key).
:meth:`Storage.free_space`
    ``None`` (no quota to report) or a configured quota less the bucket size.

On the C-STORE hot path the interface costs the method calls and nothing more:
``strace -c`` of a server receiving 500 instances counts the same system calls
as when ``ingest.py`` and ``publish.py`` made them themselves.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol, runtime_checkable
from urllib.parse import quote, unquote

from dicomstore.archive import crashpoints, layout
from dicomstore.archive.commit import CommitStats, Staged
from dicomstore.archive.index import Index

#: Batches at least this large are flushed with syncfs (when available).
SYNCFS_MIN_BATCH = 2
#: Folders remembered as existing before the memory starts again.
DIRS_LIMIT = 100_000
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK}
#: The suffix of a removal intent's name in ``.tmp`` (``removal.py``).
INTENT = ".rm"
_NAME_MAX = 255


@runtime_checkable
class Storage(Protocol):
    """Where the archive's bytes live, by key (``<study>/<series>/<sop>.dcm``).

    Every method raises ``OSError`` for an I/O failure (``FileNotFoundError``
    for a key with no object) and ``ValueError`` for a key that is not one of
    the archive's (``..``, absolute, empty).
    """

    def open(self, key: str) -> BinaryIO:
        """The bytes at ``key``: a readable, seekable binary stream (close it)."""
        ...

    def local_path(self, key: str) -> Path | None:
        """The local file holding ``key``'s bytes (or the folder of a key prefix such as
        ``<study>/``), for zero-copy readers (``sendfile``, ``mmap``) and for people;
        ``None`` when the bytes are not a local file."""
        ...

    def size(self, key: str) -> int:
        """The number of bytes at ``key``."""
        ...

    def version(self, key: str) -> str:
        """A token that changes whenever the bytes at ``key`` change (a cache key)."""
        ...

    def exists(self, key: str) -> bool:
        """True when something is stored at ``key``."""
        ...

    def keys(self, prefix: str = "") -> Iterator[str]:
        """The keys of stored instances under ``prefix`` (``""``: all; ``"<study>/"``:
        a study's), one by one, temporaries left out; no order promised."""
        ...

    def delete(self, key: str) -> bool:
        """Remove the bytes at ``key``; False when there were none."""
        ...

    def free_space(self) -> int | None:
        """Bytes still available for new instances (``None``: no limit known)."""
        ...


@runtime_checkable
class WritableStorage(Storage, Protocol):
    """What the archive's writers need of where bytes live, step by step (see the
    module docstring for the order and what a second storage would do).

    A *temporary* is named by ``temp``, a name in the writing node's folder of
    temporaries (``<root>/.tmp/node-*/<name>`` for files); its *handle* is what
    :meth:`create` returned (a descriptor for files), ``-1`` once closed.
    """

    def create(self, temp: str) -> int:
        """A new, empty temporary (never one that exists); its handle."""
        ...

    def write(self, handle: int, data: bytes | bytearray | memoryview) -> None:
        """Append all of ``data`` to the temporary."""
        ...

    def abort(self, handle: int, temp: str) -> None:
        """Drop a temporary: closed (unless ``handle`` is ``-1``), its bytes gone (one
        gone already is no error)."""
        ...

    def recover(self, index: Index, *, fsync: bool) -> int:
        """At start-up, before anything is published: settle what a crash left of
        publications (adopted into ``index``, taken back) and removals; the number
        of instances adopted."""
        ...

    # -- publishing a batch, one batch at a time (``publish.py`` has the order) --------

    def start(
        self,
        *,
        fsync: bool,
        syncfs: bool | None,
        stats: CommitStats,
        submitted: Callable[[], int],
    ) -> None:
        """Get ready to publish (once, before the first batch): ``fsync`` makes every
        step durable before the next; ``stats.flushes`` counts the flushes;
        ``submitted()`` is the number of instances submitted so far
        (``GroupCommit.submitted``)."""
        ...

    def close(self) -> None:
        """Let go of what :meth:`start` took (when no batch runs)."""
        ...

    def stage(self, batch: list[Staged]) -> list[Staged]:
        """Make the bytes of the batch's temporaries durable (each closed); the members
        whose bytes are, ``batch`` itself when all are (the others have ``failed``
        set, and are still to be :meth:`discard`-ed)."""
        ...

    def place(self, member: Staged, key: str, replacing: str | None) -> None:
        """Give a staged temporary its ``key`` (``member.rel``; ``member.final`` is set
        to the local name), keeping what was at ``key`` until :meth:`finish` or
        :meth:`undo`, and marking the key of the version it replaces
        (``replacing``, when it is another key) for removal after the COMMIT.
        Raises ``OSError`` (the member's own steps taken back)."""
        ...

    def settle(self, placed: list[Staged]) -> None:
        """Make the new keys of the placed members durable (before the COMMIT)."""
        ...

    def finish(self, placed: list[Staged]) -> None:
        """After the COMMIT: the replaced versions and what kept them go."""
        ...

    def undo(self, placed: list[Staged]) -> None:
        """Take back the placements of a batch that cannot be committed (best effort)."""
        ...

    def discard(self, member: Staged) -> None:
        """Drop a member that will not be placed (its temporary and trace go)."""
        ...


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


class FileStorage:
    """The local file system under ``root``: the key is the path relative to it.

    :class:`WritableStorage`: a temporary is a file created in ``.tmp`` and
    written with one ``os.write`` per call; a batch is published with the steps
    and flushes of ``publish.py`` (its docstring has the crash points). ``syncfs``
    (:meth:`start`): ``None`` uses it where it can be trusted, ``False`` never
    (each file fsynced, e.g. on a file system shared with heavy unrelated
    writers).
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._root = str(self.root)
        # the write side (start)
        self.fsync = True
        self.stats = CommitStats()
        #: the number of instances submitted so far (``GroupCommit.submitted``)
        self.submitted: Callable[[], int] = _none_yet
        #: how many instances had been submitted (``Staged.seq``) when the last
        #: successful syncfs began: their data was durable when it returned
        self.durable_seq = 0
        self._fs_fd = -1  # for syncfs
        self._whole_fs = False  # the batch being published is flushed with syncfs
        self._dirs: set[str] = set()  # folders (relative) known to exist
        self._links = True  # hard links work here

    def __repr__(self) -> str:
        return f"FileStorage({str(self.root)!r})"

    def path(self, key: str) -> Path:
        """The file of ``key`` (``ValueError`` for a key outside the root)."""
        return layout.resolve(self.root, key)

    # -- Storage ----------------------------------------------------------------------

    def open(self, key: str) -> BinaryIO:
        return open(self.path(key), "rb")  # noqa: SIM115 - the caller closes it

    def local_path(self, key: str) -> Path | None:
        return self.path(key)

    def size(self, key: str) -> int:
        return os.stat(self.path(key)).st_size

    def version(self, key: str) -> str:
        st = os.stat(self.path(key))
        return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def keys(self, prefix: str = "") -> Iterator[str]:
        parts = prefix.split("/")[:-1]
        if ".." in parts or prefix.startswith("/"):
            raise ValueError(f"not a key prefix of the archive: {prefix!r}")
        if parts[:1] == [layout.TMP_DIR]:
            return
        folder = self.root.joinpath(*parts)
        for path in dicom_files(folder):
            key = path.relative_to(self.root).as_posix()
            if key.startswith(prefix):
                yield key

    def delete(self, key: str) -> bool:
        try:
            os.unlink(self.path(key))
        except FileNotFoundError:
            return False
        return True

    def free_space(self) -> int | None:
        return shutil.disk_usage(self.root).free

    # -- WritableStorage: temporaries (the C-STORE hot path: no more than the calls) ----

    def create(self, temp: str) -> int:
        return os.open(temp, _CREATE, 0o644)

    def write(self, handle: int, data: bytes | bytearray | memoryview) -> None:
        written = os.write(handle, data)
        if written < len(data):  # short write: rare for regular files
            view = memoryview(data)[written:]
            while view:
                view = view[os.write(handle, view) :]

    def abort(self, handle: int, temp: str) -> None:
        if handle >= 0:
            try:
                os.close(handle)
            except OSError:
                pass
        layout.remove_quietly(temp)

    def recover(self, index: Index, *, fsync: bool) -> int:
        """``recovery.recover``: the traces and removal intents in ``.tmp`` and in the
        folders of dead nodes."""
        from dicomstore.archive.recovery import recover  # (it imports this module)

        return recover(self.root, index, fsync=fsync)

    # -- WritableStorage: publishing (publish.py has the order and the crash points) ---

    def start(
        self,
        *,
        fsync: bool,
        syncfs: bool | None,
        stats: CommitStats,
        submitted: Callable[[], int],
    ) -> None:
        if syncfs and not layout.SYNCFS_AVAILABLE:
            raise ValueError("syncfs needs Linux 5.8 or later")
        self.fsync = fsync
        self.stats = stats
        self.submitted = submitted
        if fsync and (layout.SYNCFS_AVAILABLE if syncfs is None else syncfs):
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
            self._fs_fd = os.open(self.root / layout.TMP_DIR, flags)

    def close(self) -> None:
        """Release the descriptor used for syncfs (call when no batch runs)."""
        if self._fs_fd >= 0:
            os.close(self._fs_fd)
            self._fs_fd = -1

    def stage(self, batch: list[Staged]) -> list[Staged]:
        """Trace each file (a second name in ``.tmp``, see ``recovery.recover``), then
        make the data of the files durable: one syncfs for a batch, else an fsync each.
        """
        self._whole_fs = whole_fs = self._fs_fd >= 0 and len(batch) >= SYNCFS_MIN_BATCH
        if self._links:  # (without fsync too: a node killed keeps its page cache)
            for member in batch:
                self._link_trace(member)  # before the flush, which covers it too
            if crashpoints.ENABLED:
                crashpoints.reached("publish.after-trace")
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
                member.failed = exc
            else:
                _close(member)
                live.append(member)
        return live

    def place(self, member: Staged, key: str, replacing: str | None) -> None:
        """Rename one file to its final name (``OSError``: taken back).

        The file has a second name in ``.tmp`` by now, its *trace* (made
        before the flush), kept until after the COMMIT: a crash in between
        leaves it there, and the next start adopts the file it names
        (``recovery.recover``). A file already at the final name (replace, or a
        crash's leftover) is kept as a link in ``.tmp`` until the COMMIT, and
        restored if the batch fails. The file of a replaced instance stored at
        another name gets a removal intent (``removal.py``), flushed with the
        folders: after the COMMIT it says that file must go.
        """
        # with syncfs, new folders are made durable by the one syncfs of settle
        # instead of an fsync of each parent
        durable_dirs = self.fsync and self._fs_fd < 0
        member.final = final = f"{self._root}/{key}"
        folder = key.rpartition("/")[0]
        try:
            if folder not in self._dirs:
                member.created = self._make_dirs(folder, durable_dirs)
            backup = f"{member.temp}.bak"
            try:
                os.link(final, backup)
                member.backup = backup
            except FileNotFoundError:
                pass
            if replacing is not None and replacing != key and self.fsync and self._links:
                tmp, _, owner = member.temp.rpartition("/")
                member.intent = link_intent(self.root, tmp, owner, replacing)
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
        # removal intents (replaces that move an instance) are durable before the COMMIT
        folders.update(m.intent.rpartition("/")[0] for m in placed if m.intent is not None)
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

    def finish(self, placed: list[Staged]) -> None:
        """The final names are committed: the replaced version's names go, its
        removal intent only once it is gone, the trace last (see recovery.recover)."""
        if len(self._dirs) > DIRS_LIMIT:
            self._dirs.clear()
        for member in placed:
            self._dirs.add(member.rel.rpartition("/")[0])
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

    def undo(self, placed: list[Staged]) -> None:
        """Take back the renames of a batch that cannot be committed (the files go)."""
        for member in reversed(placed):
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
        _close(member)
        layout.remove_quietly(member.temp)
        if member.trace is not None:
            layout.remove_quietly(member.trace)
            member.trace = None

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

    def _syncfs(self) -> None:
        self.stats.flushes += 1
        upto = self.submitted()  # written before this syncfs begins: durable after it
        layout.syncfs(self._fs_fd)
        self.durable_seq = max(self.durable_seq, upto)

    def _remove_file(self, key: str) -> None:
        """Remove a file the index no longer points to (after a replace moved it)."""
        try:
            path = layout.resolve(self.root, key)
            os.unlink(path)
            if self.fsync:
                layout.fsync_dir(path.parent)
        except (OSError, ValueError):
            pass  # check() reports it as unindexed


def _none_yet() -> int:
    return 0


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


def _quietly(action: Callable[..., object], *args: object) -> None:
    try:
        action(*args)
    except OSError:
        pass


def link_intent(root: Path, tmp: str, owner: str, relpath: str) -> str | None:
    """Give the file at ``relpath`` a removal intent in ``tmp`` (not yet durable:
    the caller flushes ``tmp``); its path, or ``None`` when it could not be made
    (no hard links, a name too long, the file gone): the caller goes on without.

    ``owner`` makes the name unique among the processes writing to ``tmp``.
    """
    name = f"{owner}={quote(relpath, safe='', errors='surrogateescape')}{INTENT}"
    if len(os.fsencode(name)) > _NAME_MAX:
        return None
    link = f"{tmp}/{name}"
    try:
        os.link(layout.resolve(root, relpath), link)
    except (OSError, ValueError):
        return None
    return link


def intent_target(name: str) -> str | None:
    """The archive path a removal intent's name stands for (``None``: not one)."""
    if not name.endswith(INTENT) or "=" not in name:
        return None
    return unquote(name[: -len(INTENT)].partition("=")[2], errors="surrogateescape")


def dicom_files(root: Path) -> Iterator[Path]:
    """Every ``*.dcm`` file under ``root`` except the temporaries (in name order)."""
    for folder, dirs, files in os.walk(root):
        if Path(folder) == root:
            dirs[:] = [d for d in dirs if d != layout.TMP_DIR]
        dirs.sort()
        for name in sorted(files):
            if name.endswith(layout.SUFFIX):
                yield Path(folder, name)
