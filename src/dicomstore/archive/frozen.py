"""Reading an archive where nothing may be written: a read-only copy (a ZFS or LVM
snapshot, backup media) or ``dicomstore check --read-only`` (review58 L6).

:func:`unwritable` says why ``check`` cannot write an archive (a read-only file
system, ``statvfs``'s ``ST_RDONLY``, which stops root too; a folder or the index
not writable by this user): ``check`` then looks without settling anything.

:class:`FrozenSqliteEngine` reads a SQLite index (WAL) without writing a byte
beside it. A read-only connection (``mode=ro``, ``ArchiveReader``'s) needs the
``-shm`` of a WAL database, and makes it when it is not there: on a read-only
medium that fails ("unable to open database file"), elsewhere it is a write. So:

- no ``-wal``, or an empty one (a server stopped cleanly): every commit is in the
  database file, read with ``immutable=1`` (no locks, no ``-shm``);
- a ``-wal`` with frames (a snapshot of a running server: committed transactions
  are in it, which ``immutable=1`` would not see) and its ``-shm`` on a read-only
  medium: ``mode=ro`` (SQLite reads a read-only ``-shm`` from memory);
- otherwise: the database and its WAL copied into a temporary folder (outside the
  archive, gone at :meth:`FrozenSqliteEngine.close`), read there.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

from dicomstore.archive import layout
from dicomstore.archive.engine import Engine, SqliteEngine, engine_for, is_postgresql


def unwritable(root: Path, index: str | None = None) -> str | None:
    """Why ``check`` cannot write the archive at ``root`` (``None``: it can): its
    folder, its ``.tmp`` or its SQLite index (the file and its folder, where the WAL
    goes) on a read-only file system, or not writable by this user."""
    places = [root, root / layout.TMP_DIR]
    if not is_postgresql(index):
        local = engine_for(root, index).local_file()
        if local is not None:
            places += [local.parent, local]
    for place in places:
        try:
            if read_only_medium(place):
                return f"{place} is on a read-only file system"
        except FileNotFoundError:
            continue
        if not os.access(place, os.W_OK):
            return f"{place} is not writable"
    return None


def read_only_medium(path: Path) -> bool:
    """Whether ``path`` is on a file system mounted read-only."""
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def frozen_engine(root: Path, index: str | None = None) -> Engine:
    """The index of the archive at ``root`` read without writing: a SQLite one through
    :class:`FrozenSqliteEngine`, a PostgreSQL one as it is (a server of its own);
    ``close()`` it after."""
    engine = engine_for(root, index)
    return FrozenSqliteEngine(engine.path) if isinstance(engine, SqliteEngine) else engine


class FrozenSqliteEngine(SqliteEngine):
    """The SQLite index at ``path``, read without writing anything beside it
    (module notes); it has no writer."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._uri: str | None = None
        self._copy: Path | None = None

    def writer(self, *, durable: bool, timeout: float) -> sqlite3.Connection:
        raise sqlite3.OperationalError(f"{self.where}: opened read-only")

    def reader(self, timeout: float) -> sqlite3.Connection:
        if self._uri is None:
            self._uri = self._choose(timeout)
        return sqlite3.connect(self._uri, uri=True, timeout=timeout, check_same_thread=False)

    def _choose(self, timeout: float) -> str:
        """How this index is read (module notes): the URI of every reader."""
        wal = Path(f"{self.path}-wal")
        if not wal.exists() or wal.stat().st_size == 0:
            return f"{self.path.as_uri()}?mode=ro&immutable=1"
        if Path(f"{self.path}-shm").exists() and read_only_medium(self.path.parent):
            uri = f"{self.path.as_uri()}?mode=ro"
            try:
                db = sqlite3.connect(uri, uri=True, timeout=timeout)
                try:
                    db.execute("PRAGMA user_version").fetchone()
                finally:
                    db.close()
                return uri
            except sqlite3.OperationalError:
                pass  # (a -shm SQLite cannot use read-only: the copy)
        self._copy = Path(tempfile.mkdtemp(prefix="dicomstore-check-"))
        copy = self._copy / self.path.name
        shutil.copyfile(self.path, copy)
        shutil.copyfile(wal, f"{copy}-wal")
        return f"{copy.as_uri()}?mode=ro"

    def close(self) -> None:
        """Remove the temporary copy, if one was made."""
        super().close()
        if self._copy is not None:
            shutil.rmtree(self._copy, ignore_errors=True)
            self._copy = None
