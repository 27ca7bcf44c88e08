"""The index's health while a node serves it (review58 M2, M3, M4), and how to mend it.

lost
    The SQLite file removed (``rm index.sqlite*``) or replaced while a server
    runs: its writer goes on committing into the unlinked inode, and every store
    was answered Success into a file no one will open again. :class:`IndexHealth`
    compares the file at the index's path with the one opened (``st_dev``,
    ``st_ino``) before a batch takes the index, at most once every
    :data:`WATCH_EVERY` seconds (one ``stat`` a second, not one per instance:
    issue 13); once it differs, every batch is refused with
    :class:`IndexLostError` (A700, "index unavailable") until a restart, and one
    ERROR names the remedy.
damaged
    SQLite says ``SQLITE_CORRUPT`` / ``SQLITE_NOTADB`` (pages overwritten: "database
    disk image is malformed"). ``dicomstore check`` runs :func:`quick_check`
    (``PRAGMA quick_check``: every page's structure, O(size of the index)). A
    server does not at start: 0.7 s warm, 7.8 s from a cold cache for an index of
    1 M instances (527 MiB), and ten times that for ten times the archive, before
    the port opens. It learns of damage when a store meets it, or the read of
    the studies to wait for at start (``services/stability.py``, review77 F8)
    (:meth:`IndexHealth.failed`: one ERROR naming the remedy, and readiness says
    so until a restart). PostgreSQL has no analogue to run: its pages carry
    checksums when the cluster has them (``initdb --data-checksums``) and damage is
    an error of the statement that meets it; the ``amcheck`` extension is the
    database administrator's tool.

The remedy of both: :func:`reindex_command`, which sets a damaged SQLite file
aside and builds a new index from the files (``maintenance.run_reindex``).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path
from time import monotonic
from typing import TYPE_CHECKING

from dicomstore.archive.engine import Engine, is_postgresql, without_password
from dicomstore.archive.index import Index

if TYPE_CHECKING:
    from dicomstore.archive.reader import ArchiveReader

log = logging.getLogger("dicomstore.archive")

#: Seconds between two looks at the index file's identity (``stat``) by the writer.
WATCH_EVERY = 1.0
#: SQLite's primary result codes of a damaged file.
_DAMAGE = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


class IndexLostError(sqlite3.OperationalError):
    """The index file was removed or replaced while the server ran: its writer would
    commit into a file no one opens again. (No path in the message: it becomes the
    Error Comment a peer reads, review36b #6; the log names it.)"""


def reindex_command(root: Path, index: str | None = None) -> str:
    """The command that builds the index of ``root`` anew from its files."""
    where = ""
    if index:
        shown = without_password(index) if is_postgresql(index) else index
        where = f" --index {shown}"
    return f"`dicomstore reindex --storage {root}{where}`"


def is_damage(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite saying its file is damaged (not busy, full, locked)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.DatabaseError) and code is not None and code & 0xFF in _DAMAGE


def quick_check(index: Index | ArchiveReader, most: int = 10) -> list[str]:
    """What ``PRAGMA quick_check`` finds wrong with a SQLite index (at most ``most``
    lines; none: sound, or a PostgreSQL index, see the module notes), read through
    the writer's ``Index`` or an ``ArchiveReader`` (``check`` read-only). A file
    SQLite cannot read at all is damage too."""
    if index.engine.dialect != "sqlite":
        return []
    try:
        db = index.reader() if isinstance(index, Index) else index.connect()
        try:
            rows = db.execute(f"PRAGMA quick_check({int(most)})").fetchall()
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        if not is_damage(exc):
            raise
        return [str(exc)]
    found = [line for (text,) in rows for line in str(text).splitlines()]
    return [] if found == ["ok"] else [line for line in found if not line.startswith("***")]


class IndexHealth:
    """What the writer of a node knows of its index: lost (the file at its path is
    not the one opened), damaged (a store met SQLite's corruption). ``hint``: the
    command that mends it (:func:`reindex_command`), for the log."""

    def __init__(self, engine: Engine, hint: str) -> None:
        self.hint = hint
        self._path = engine.local_file()
        self._identity = _identity(self._path) if self._path is not None else None
        self._next = monotonic() + WATCH_EVERY
        self._said = threading.Lock()  # (the ERROR once, from whichever thread)
        #: why the index is lost (None: it is not), or damaged
        self.lost: str | None = None
        self.damaged: str | None = None

    def watch(self) -> None:
        """(Before a batch takes the index.) Raise :class:`IndexLostError` when the
        index is lost; looks at the file at most every :data:`WATCH_EVERY` seconds."""
        if self.lost is None:
            if self._identity is None or monotonic() < self._next:
                return
            self._next = monotonic() + WATCH_EVERY
            if not self.look():
                return
        raise IndexLostError("its file was removed or replaced: restart after a reindex")

    def look(self) -> bool:
        """Whether the index is lost, looking now (readiness); the first time it is
        found so, one ERROR."""
        if self.lost is None and self._path is not None and self._identity is not None:
            try:
                now = _identity(self._path)
            except OSError:  # (cannot tell now: a store or a read says what is wrong)
                return False
            if now != self._identity:
                why = "removed" if now is None else "replaced by another file"
                self._say(
                    "lost",
                    f"the index {self._path} was {why} while the server ran: every store"
                    " is refused (A700) from now on (it would go into a file no one opens"
                    f" again); stop the server, run {self.hint} to index the stored files"
                    " again, then start it",
                )
        return self.lost is not None

    def failed(self, exc: BaseException) -> None:
        """A batch failed with ``exc``: SQLite's damage is remembered (and logged once)."""
        if self.damaged is None and is_damage(exc):
            self._say(
                "damaged",
                f"the index {self._path} is damaged ({exc}): the stores and queries that"
                f" meet the damage fail; stop the server, run {self.hint} (it keeps the"
                " damaged file aside and builds a new index from the files), then start it",
            )

    def problems(self) -> list[str]:
        """Why no store can succeed, one line each, for anyone to read (readiness: no
        path in them; the log says more)."""
        said = []
        if self.look():
            said.append("the archive index file was removed while the server ran (see the log)")
        if self.damaged is not None:
            said.append("the archive index is damaged (see the log)")
        return said

    def _say(self, what: str, message: str) -> None:
        """``what`` (``lost``, ``damaged``) found: remembered, and one ERROR."""
        with self._said:
            if getattr(self, what) is not None:
                return
            setattr(self, what, message)
        log.error("%s", message)


def _identity(path: Path) -> tuple[int, int] | None:
    """The file at ``path`` (None: there is none); raises other ``OSError``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino
