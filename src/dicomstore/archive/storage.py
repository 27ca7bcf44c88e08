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
:class:`WritableStorage` is what the writers need: so far the temporaries
(``create``, ``write``, ``abort``), through which ``ingest.py`` streams each
instance (for files: ``<root>/.tmp/node-*/<name>``, one ``os.write`` per
fragment). The rest of the write side is still the file system's own, inside
the archive and nowhere else: ``publish.py`` makes the temporary durable and
gives it its key (hard-link traces, fsync/syncfs, renames, folder flushes,
``.bak``, removal intents), ``recovery.py``, ``removal.py`` and
``maintenance.py`` settle, delete, check and reindex. A second storage takes
those steps behind methods of this interface, in this order (the publisher
keeps the index logic: duplicate policy, relations, BEGIN/COMMIT):
``stage(batch)`` (trace and flush: the files' data durable); ``place(member,
key, replacing)`` (``.bak``/intent, rename); ``settle(placed)`` (the folder
flushes); after the COMMIT ``finish(placed)`` (old version, intents, traces
go), or ``undo(placed)``; ``recover()`` at start-up.

What an object store (S3 and the like) would implement, and how the
guarantees of ``publish.py`` map onto it:

``create`` (write a temporary stream)
    A multipart upload to a temporary key (``.tmp/<node>/<name>``), fragment
    after fragment buffered to the part size (5 MiB minimum): memory stays
    bounded, nothing is visible under a final key. ``abort`` is
    AbortMultipartUpload (and a bucket lifecycle rule for uploads a dead node
    left, as start-up empties ``.tmp`` today).
flush the files (fsync, syncfs)
    CompleteMultipartUpload: S3 acknowledges a PUT only once the object is
    durable, so the "data durable before its name" step is the completion.
trace, rename, ``.bak``
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
flush the folders
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

On the C-STORE hot path a temporary costs the calls and nothing more: the same
system calls as before (one ``open``, one ``write`` per fragment; ``strace -c``
of a server receiving 500 instances counts the same), no object per instance.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from dicomstore.archive import layout


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


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


class FileStorage:
    """The local file system under ``root``: the key is the path relative to it.

    :class:`WritableStorage`: a temporary is a file created in ``.tmp`` and
    written with one ``os.write`` per call. The rest of the write side works on
    the same files directly (see the module docstring).
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

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


def dicom_files(root: Path) -> Iterator[Path]:
    """Every ``*.dcm`` file under ``root`` except the temporaries (in name order)."""
    for folder, dirs, files in os.walk(root):
        if Path(folder) == root:
            dirs[:] = [d for d in dirs if d != layout.TMP_DIR]
        dirs.sort()
        for name in sorted(files):
            if name.endswith(layout.SUFFIX):
                yield Path(folder, name)
