"""What an archive's start-up tells the operator, and what it refuses (review58 M4, M7).

a new archive
    a storage path that does not exist yet, or a SQLite index that does not, and
    no stored instance: one INFO, ``creating a new archive at PATH`` (a stale
    unit's ``--storage``, or a share not mounted, is seen in the log rather than as
    an empty archive).
an index lost
    the storage holds stored instances and the index none: the index was lost
    (its file too: removed between runs), or a new one was made (an ``--index`` to
    another file or database). A stored instance is a file ``reindex`` indexes
    (:func:`~dicomstore.archive.filed.filed_by_archive`: named and filed where
    the archive files the instance its own UIDs name; looked for only when the
    index holds no instance, with a few ``scandir`` calls and the header of a file
    so named); another ``.dcm`` file (an export folder, ``lost+found``) is not one,
    since ``reindex`` leaves it out (review59 M4: it refused every start, the
    remedy named doing nothing). A server refuses to start
    (:class:`UnindexedStorageError`, one line naming the file found and
    ``dicomstore reindex``) rather than serve an empty archive; the Python API that
    opens an archive to rebuild its index (``Archive(root).reindex()``) is told by a
    WARNING.
an older schema
    :func:`rebuild_older`: the index rebuilt from the files, an INFO before (it
    reads every file's header: hours for a large archive) and after (how many, how
    long), and a WARNING for each file left out, as ``dicomstore reindex`` prints
    them (``check`` reports them as not indexed).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from dicomstore.archive import layout
from dicomstore.archive.engine import Engine
from dicomstore.archive.filed import filed_by_archive
from dicomstore.archive.index import Index
from dicomstore.archive.maintenance import reindex_archive
from dicomstore.archive.schema import SCHEMA_VERSION

log = logging.getLogger("dicomstore.archive")


class UnindexedStorageError(ValueError):
    """The storage holds stored instances and its index none: refused by a server."""


def is_new(root: Path, engine: Engine) -> bool:
    """(Before the archive is opened.) Whether opening it creates it: no storage
    folder, or no SQLite index file."""
    index = engine.local_file()
    return not root.is_dir() or (index is not None and not index.exists())


def opened(root: Path, index: Index, *, new: bool, refuse: bool, hint: str) -> None:
    """Say what was opened (module notes): raise :class:`UnindexedStorageError` when
    ``refuse`` and the index lost (else a WARNING), or say a ``new`` archive is made.
    ``hint``: the command that indexes the files again."""
    if index.rebuild is not None or index.holds_instances():
        return
    stored = stored_file(root)
    if stored is None:
        if new:
            log.info("creating a new archive at %s", root)
        return
    said = (
        f"{root} holds stored instances ({stored.relative_to(root).as_posix()} ...) but its index"
        f" {index.where} holds none (lost, or a new one): {hint} indexes them again"
    )
    if refuse:
        raise UnindexedStorageError(said)
    log.warning("%s", said)


def forget_new_index(engine: Engine) -> None:
    """The SQLite index a refused start made (:class:`UnindexedStorageError`) removed:
    left, the archive commands took the storage for an empty archive (exit 0) where
    they said "no archive" before (review77 F9). It holds no instance: it was made
    by this start, and the start was refused because it holds none."""
    index = engine.local_file()
    if index is None:
        return
    for suffix in ("", "-wal", "-shm", "-writer"):
        try:
            os.unlink(f"{index}{suffix}")
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("the index %s made by a refused start not removed: %s", index, exc)


def lost_index(root: Path, said: str, other_index: bool = False) -> str:
    """``said`` (no archive: no index), with the index lost and its remedy when the
    storage ``root`` holds stored instances (review112 I1: ``check`` and ``ls`` said
    "no archive" of a storage full of instances, where ``serve`` named ``reindex``);
    ``other_index``: an ``--index`` given (not named: its URL may hold a password)."""
    try:
        stored = stored_file(root) if root.is_dir() else None
    except OSError:
        stored = None
    if stored is None:
        return said
    return (
        f"{said}, though it holds stored instances ({stored.relative_to(root).as_posix()}"
        f" ...): the index was lost? `dicomstore reindex --storage {root}`"
        f"{' with its --index' if other_index else ''} indexes them again"
    )


def stored_file(root: Path) -> Path | None:
    """A stored instance (:func:`filed_by_archive`) where the archive files them
    (``<study>/<series>/``), if there is one; the first found (study folders: not
    hidden, ``.tmp``)."""
    for study in _folders(root, hidden=False):
        for series in _folders(study, hidden=True):
            with os.scandir(series) as entries:
                for entry in entries:
                    found = Path(entry.path)
                    if (
                        entry.name.endswith(layout.SUFFIX)
                        and entry.is_file()
                        and filed_by_archive(root, found)
                    ):
                        return found
    return None


def _folders(folder: Path, *, hidden: bool) -> list[Path]:
    try:
        with os.scandir(folder) as entries:
            return [
                Path(e.path)
                for e in entries
                if (hidden or not e.name.startswith(".")) and e.is_dir(follow_symlinks=False)
            ]
    except (FileNotFoundError, NotADirectoryError):
        return []


def rebuild_older(root: Path, index: Index, *, on_relational_mismatch: str) -> int:
    """Fill the tables an older schema's index was made anew with (``Index.rebuild``)
    from the files, told in the log (module notes); the number of instances indexed."""
    log.info(
        "index %s: schema %d is older than %d: rebuilding it from the files (every"
        " file's header is read before the archive opens)",
        index.where,
        index.rebuilt_from,
        SCHEMA_VERSION,
    )
    started = time.monotonic()
    left_out: list[str] = []
    count = reindex_archive(
        root,
        index,
        left_out,
        on_relational_mismatch=on_relational_mismatch,
        arrivals=index.rebuild,
    )
    for line in left_out:
        log.warning("index rebuild: %s", line)
    log.info(
        "index rebuilt from the files: %d instance(s) in %.1f s%s",
        count,
        time.monotonic() - started,
        f", {len(left_out)} file(s) left out (`dicomstore check` lists them as not indexed)"
        if left_out
        else "",
    )
    return count
