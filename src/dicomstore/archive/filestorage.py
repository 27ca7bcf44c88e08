"""The local file system behind the storage interfaces (``storage.py``): the key is
the path under the root.

:class:`FileStorage` reads by path, writes the temporaries in ``.tmp`` (one
``os.write`` per call), and publishes a batch with the steps of its base,
``filepublish.FilePublishing``; start-up recovery is ``recovery.recover``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from dicomstore.archive import layout
from dicomstore.archive.commit import CommitStats, Staged
from dicomstore.archive.filejournal import FileJournaling
from dicomstore.archive.filepublish import FilePublishing
from dicomstore.archive.index import Index
from dicomstore.archive.journal import Journal

_CREATE = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


class FileStorage(FilePublishing, FileJournaling):
    """The local file system under ``root``: the key is the path relative to it.

    :class:`WritableStorage`: a temporary is a file created in ``.tmp`` and
    written with one ``os.write`` per call; a batch is published with the steps
    and flushes of ``publish.py`` (its docstring has the crash points).
    ``fsync=False`` makes no step durable (tests, scratch archives); ``syncfs``:
    ``None`` uses it where it can be trusted, ``False`` never (each file
    fsynced, e.g. on a file system shared with heavy unrelated writers).
    """

    def __init__(self, root: Path | str, *, fsync: bool = True, syncfs: bool | None = None) -> None:
        if syncfs and not layout.SYNCFS_AVAILABLE:
            raise ValueError("syncfs needs Linux 5.8 or later")
        self.root = Path(root)
        self._root = str(self.root)
        # the write side (start)
        self.fsync = fsync
        self._use_syncfs = syncfs
        self.stats = CommitStats()
        #: the number of instances submitted so far (``GroupCommit.submitted``)
        self.submitted: Callable[[], int] = _none_yet
        #: how many instances had been submitted (``Staged.seq``) when the last
        #: successful syncfs began: their data was durable when it returned
        self.durable_seq = 0
        self._fs_fd = -1  # for syncfs
        self._watch_fd = -1  # for a reader's syncfs (watch_errors)
        self._whole_fs = False  # the batch being published is flushed with syncfs
        self._dirs: set[str] = set()  # folders (relative) known to exist
        self._links = True  # hard links work here
        self._journal: Journal | None = None  # (use_journal)
        self._tainted = False  # (a syncfs failed: FilePublishing._syncfs)

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
        for path in layout.dicom_files(folder):
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
        return layout.free_bytes(self.root)

    def scratch(self) -> Path | None:
        folder = self.root / layout.TMP_DIR
        return folder if folder.is_dir() else None

    # -- WritableStorage: temporaries (the C-STORE hot path: no more than the calls) ----

    def create(self, temp: str) -> int:
        return os.open(temp, _CREATE, 0o644)

    def write(
        self, handle: int, data: bytes | bytearray | memoryview, *more: bytes | memoryview
    ) -> None:
        if more:  # (one writev: no copy joins them)
            parts = [memoryview(data), *(memoryview(part) for part in more)]
            written = os.writev(handle, parts)
            total = sum(part.nbytes for part in parts)
            if written < total:  # short write: rare for regular files
                data = b"".join(parts)[written:]
            else:
                return
        written = os.write(handle, data)
        if written < len(data):  # short write: rare for regular files
            view = memoryview(data)[written:]
            while view:
                view = view[os.write(handle, view) :]

    def writeback(self, handle: int) -> None:
        layout.start_writeback(handle)

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

    def settle_doubt(self, index: Index, placed: list[Staged]) -> None:
        """``recovery.settle_placed``."""
        from dicomstore.archive.recovery import settle_placed  # (it imports this module)

        settle_placed(self.root, index, placed, fsync=self.fsync)


def _none_yet() -> int:
    return 0
