"""Deleting a study, series or instance: index rows and files, in a crash-safe order;
and the *removal intents* that make a crash between the two harmless.

Order (each step durable before the next)::

    settle intents             what an interrupted delete or replace left (below)
    BEGIN IMMEDIATE            the index write lock: no instance is published meanwhile
    select the rows            what is deleted is exactly what is indexed now
    intents                    a second name in .tmp for each file; fsync of .tmp
    delete rows, prune         instance rows, then series/study/patient left empty
    COMMIT                     from here on no door lists or serves the instances
    BEGIN IMMEDIATE, unlink    the files, under the lock (no store places a file
    ROLLBACK                   meanwhile), but not one stored again since the COMMIT
                               (indexed at its path again, or not the intent's inode)
    fsync of each folder
    drop the intents
    BEGIN IMMEDIATE, rmdir     empty folders, under the lock so that a concurrent
    ROLLBACK                   store never renames into a folder being removed

Flushes: 1 (.tmp) + SQLite's WAL fsync + 1 per folder emptied.

Rows go first: the index never names a missing file, so what QIDO, WADO and
the CLI list can always be fetched. A *removal intent* is a hard link in
``.tmp`` named ``<owner>=<the file's path, %-quoted>.rm``: "the file at this
path must go once the index no longer names it". :func:`settle_intents` acts
on them under the index write lock, so never in the middle of a delete or a
publish (both make their intents after BEGIN IMMEDIATE): a file still at its
path (the same inode as the intent) and not indexed is unlinked; an indexed
one (the delete or replace did not commit) stays; the intent goes. The next
start of the archive (``recovery.recover``) and the next ``delete`` settle
intents; ``publish.py`` makes one for the file a replace moves away from. A
running server's start-up never removes an intent it did not settle: one made
after its scan belongs to a delete still running, which drops it itself.

A crash between COMMIT and the unlinks without an intent (a file system
without hard links, a path too long to be named) leaves files the index does
not know: ``dicomstore check`` lists them as *not indexed*, and the same
``delete`` again removes those that are its own (:func:`leftovers`).

Uses the archive's own :class:`~dicomstore.archive.index.Index` writer methods
(``remove``, ``prune``), never an :class:`~dicomstore.archive.Archive`, whose
start-up would empty ``.tmp`` under a running server.
"""

from __future__ import annotations

import itertools
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicomstore.archive import crashpoints, layout, metacache, reserve
from dicomstore.archive.deferred import rollback_quietly
from dicomstore.archive.engine import DatabaseError, engine_for
from dicomstore.archive.filed import abandoned
from dicomstore.archive.index import Index
from dicomstore.archive.layout import intent_target, link_intent
from dicomstore.archive.reader import ArchiveReader, NotStoredError

_KEYWORDS = {
    "study": "StudyInstanceUID",
    "series": "SeriesInstanceUID",
    "instance": "SOPInstanceUID",
}


def pending_intents(root: Path) -> list[str]:
    """The names of the removal intents in ``root/.tmp`` now."""
    try:
        with os.scandir(root / layout.TMP_DIR) as entries:
            return [e.name for e in entries if intent_target(e.name) is not None]
    except FileNotFoundError:
        return []


def settle_intents(
    root: Path, index: Index, names: list[str] | None = None, *, fsync: bool = True
) -> list[Path]:
    """Act on the removal intents ``names`` (default: all in ``.tmp`` now) under the
    index write lock (see the module docstring); the files unlinked. Best effort:
    an intent that cannot be settled stays, for the next time."""
    tmp = root / layout.TMP_DIR
    names = pending_intents(root) if names is None else names
    if not names:
        return []
    removed: list[Path] = []
    done: list[Path] = []
    emptied: set[Path] = set()  # folders the deletes or replaces may have emptied
    with index.lock:
        index.begin()
        try:
            for name in names:
                link = tmp / name
                try:
                    path = layout.resolve(root, intent_target(name) or "")
                    if _same_file(path, link):
                        if not index.query({"path": _rel(root, path)}):
                            os.unlink(path)  # not indexed: the delete or replace committed
                            removed.append(path)
                            emptied.add(path.parent)
                    elif not path.exists():
                        emptied.add(path.parent)  # unlinked before the crash
                except ValueError:
                    pass  # names nothing in the archive
                except OSError:
                    continue  # stays, for the next time (check reports the file)
                done.append(link)
            try:
                for folder in {p.parent for p in removed} if fsync else ():
                    layout.fsync_dir(folder)
            except OSError:
                return removed  # the unlinks may not be durable: the intents stay
            for link in done:
                layout.remove_quietly(link)
            for folder in sorted(emptied, reverse=True):
                _rmdir_empty(root, folder)
        finally:
            index.rollback()
    return removed


def _same_file(path: Path, link: Path) -> bool:
    try:
        return os.path.samefile(path, link)
    except FileNotFoundError:
        return False


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _rmdir_empty(root: Path, folder: Path) -> None:
    """Remove ``folder`` and then its parent if empty (hold the index write lock)."""
    for candidate in (folder, folder.parent):
        if candidate == root or root not in candidate.parents:
            return
        try:
            os.rmdir(candidate)
        except OSError:
            return  # not empty, or gone


@dataclass
class Removal:
    """What a delete did."""

    level: str
    uid: str
    instances: int = 0
    bytes: int = 0
    files_removed: int = 0
    leftovers_removed: int = 0
    #: files of an interrupted delete or replace removed first (``finish_interrupted``)
    settled: int = 0
    #: instances of ``uid`` not among those confirmed (``remove(only=...)``): kept
    kept: int = 0
    problems: list[str] = field(default_factory=list)
    #: files of deleted rows that were gone already (the delete is complete all the
    #: same: review77 F13)
    gone: list[str] = field(default_factory=list)
    #: what the deleted rows belonged to (for the audit record): Study and Series
    #: Instance UIDs, (Patient ID, Issuer of Patient ID)
    studies: list[str] = field(default_factory=list)
    series: list[str] = field(default_factory=list)
    patients: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Progress:
    """What a :func:`remove` given it had deleted when it raised: ``removal`` is None
    until rows are deleted (their COMMIT) or files unlinked, then the
    :class:`Removal` being done (its rows' counts; ``files_removed`` so far)."""

    removal: Removal | None = None


def leftovers(root: Path, reader: ArchiveReader, level: str | None, uid: str) -> list[Path]:
    """Files of ``uid`` an interrupted delete left on disk, without index rows."""
    name = layout.safe_component(uid, "-")
    patterns = {
        "study": [f"{name}/*/*{layout.SUFFIX}"],
        "series": [f"*/{name}/*{layout.SUFFIX}"],
        "instance": [f"*/*/{name}{layout.SUFFIX}", f"*/*/{name}{layout.REPLACED}{layout.SUFFIX}"],
    }
    wanted = [level] if level else list(patterns)
    found = []
    for lvl in wanted:
        for pattern in patterns[lvl]:
            for path in sorted(root.glob(pattern)):
                if path.parts[len(root.parts)] == layout.TMP_DIR or not path.is_file():
                    continue
                if abandoned(root, path, reader):  # (its own, unindexed: review115 F1)
                    found.append(path)
    return found


def finish_interrupted(
    root: Path | str, *, fsync: bool = True, lock_timeout: float = 30.0, index: str | None = None
) -> int:
    """Settle the removal intents in ``root/.tmp`` (an interrupted delete or replace);
    the number of files removed. Safe while a server runs. ``index``: the
    archive's index when not the SQLite file in ``root`` (``engine.py``)."""
    root = Path(root).resolve()
    names = pending_intents(root)
    if not names:
        return 0
    db = Index(engine_for(root, index), durable=fsync, timeout=lock_timeout)
    try:
        return len(settle_intents(root, db, names, fsync=fsync))
    finally:
        db.close()


def remove(
    root: Path | str,
    uid: str,
    *,
    fsync: bool = True,
    lock_timeout: float = 30.0,
    index: str | None = None,
    only: frozenset[str] | None = None,
    progress: Progress | None = None,
) -> Removal:
    """Delete the study, series or instance ``uid`` (rows, then files), after
    settling what an interrupted delete left (``Removal.settled``); with ``only``,
    only those of its instances (the SOP Instance UIDs a user confirmed: those
    stored since are kept, ``Removal.kept``; review50 #6).

    On a disk with less than ``reserve.SIZE`` free, the archive's reserve file is
    freed first (``reserve.py``), and made again after if there is room.

    Raises :class:`NotStoredError` when nothing of ``uid`` is indexed or on disk. When
    it raises anything else, ``progress.removal`` says what was deleted (None: nothing).

    Neither audited nor logged: a door (the CLI's ``delete``, the Python API's
    ``dicomstore.query.remove``) calls it through ``services/deletion.py``, which is.
    """
    root = Path(root).resolve()
    reserve.release(root)  # (a disk full to the last byte: room for the index's log)
    try:
        return _remove(root, uid, fsync, lock_timeout, index, only, progress)
    finally:
        reserve.keep(root)


def _remove(
    root: Path,
    uid: str,
    fsync: bool,
    lock_timeout: float,
    index: str | None,
    only: frozenset[str] | None,
    progress: Progress | None,
) -> Removal:
    reader = ArchiveReader(root, index=index)
    progress = Progress() if progress is None else progress
    uid = layout.normalize_uid(uid.strip())
    settled = finish_interrupted(root, fsync=fsync, lock_timeout=lock_timeout, index=index)
    try:
        level, _ = reader.locate(uid)
    except NotStoredError as missing:
        found = _remove_leftovers(root, reader, uid, settled, fsync, index, lock_timeout, progress)
        if found is None:
            raise missing from None
        return found
    result = Removal(level, uid, settled=settled)
    db = Index(engine_for(root, index), durable=fsync, timeout=lock_timeout)
    try:
        rows, intents = _delete_rows(root, db, reader, level, uid, fsync, only, progress, result)
        metacache.forget(root, (row["sop_instance_uid"] for row in rows))
        files = []
        for row in rows:
            try:
                files.append(layout.resolve(root, row["path"]))
            except ValueError as exc:
                result.problems.append(str(exc))
        if _unlink_deleted(root, db, rows, intents, result, fsync):
            for link in intents.values():
                layout.remove_quietly(link)
        if crashpoints.ENABLED:
            crashpoints.reached("delete.after-intents-dropped")
        _remove_empty_dirs(root, {p.parent for p in files}, db)
    finally:
        db.close()
    return result


def _remove_leftovers(
    root: Path,
    reader: ArchiveReader,
    uid: str,
    settled: int,
    fsync: bool,
    index: str | None,
    lock_timeout: float,
    progress: Progress,
) -> Removal | None:
    """Files of ``uid`` without rows, found and unlinked under the index write lock:
    a node publishing them (renamed, not yet committed) holds it (``publish.py``)."""
    db = Index(engine_for(root, index), durable=fsync, timeout=lock_timeout)
    try:
        with db.lock:
            db.begin()
            try:
                files = leftovers(root, reader, None, uid)
                if not files:
                    return None
                result = progress.removal = Removal("files", uid, settled=settled)
                _unlink(root, files, {}, result, fsync)
                result.leftovers_removed = result.files_removed
            finally:
                db.rollback()
        _remove_empty_dirs(root, {p.parent for p in files}, db)
    finally:
        db.close()
    return result


def _delete_rows(
    root: Path,
    index: Index,
    reader: ArchiveReader,
    level: str,
    uid: str,
    fsync: bool,
    only: frozenset[str] | None,
    progress: Progress,
    result: Removal,
) -> tuple[list[dict[str, Any]], dict[Path, str]]:
    """Delete the rows under the write lock (those in ``only``, when given: the
    others are counted in ``result.kept``); the rows that were deleted, and the
    removal intents of their files (made and flushed before the COMMIT).
    ``progress.removal`` is ``result``, its counts those rows', as soon as the COMMIT
    returns (review63 L4: an interrupt after it, leaving the lock or at the crash point,
    was recorded ``failed``, 0 instances, the rows deleted); a COMMIT that raises leaves
    it None (``failed``: its answer lost, it may be done all the same)."""
    intents: dict[Path, str] = {}
    committing = False
    with index.lock:
        index.begin()
        try:
            # We hold the write lock: a new read sees exactly what is committed.
            rows = _rows_of(reader, level, uid)
            if only is not None:
                every = len(rows)
                rows = [row for row in rows if row["sop_instance_uid"] in only]
                result.kept = every - len(rows)
            _count(result, rows)
            intents = _link_intents(root, rows, fsync)
            if crashpoints.ENABLED:
                crashpoints.reached("delete.after-intent")
            for row in rows:
                index.remove(row["sop_instance_uid"])
            for series_uid, study_uid, patient_id in {
                (r["series_uid"], r["study_uid"], r["patient_id"]) for r in rows
            }:
                index.prune(series_uid, study_uid, patient_id)
            committing = True
            index.commit()
            progress.removal = result  # (committed: whatever is raised from here on)
        except BaseException:
            rollback_quietly(index)  # (the error told is the cause, not the rollback's)
            if not committing:  # (a COMMIT that failed may be done all the same, its
                # answer lost: the intents stay; the next delete or start keeps the files
                # still indexed and removes the others: review37 F5)
                for link in intents.values():
                    layout.remove_quietly(link)
            raise
    if crashpoints.ENABLED:
        crashpoints.reached("delete.after-commit")
    return rows, intents


def _count(result: Removal, rows: list[dict[str, Any]]) -> None:
    """``result``'s counts and UIDs: those of ``rows``, the rows to delete."""
    result.instances = len(rows)
    result.bytes = sum(r["file_size"] or 0 for r in rows)
    result.studies = sorted({r["study_uid"] for r in rows})
    result.series = sorted({r["series_uid"] for r in rows})
    result.patients = sorted({(r["patient_id"], r["issuer"] or "") for r in rows})


def _link_intents(root: Path, rows: list[dict[str, Any]], fsync: bool) -> dict[Path, str]:
    """A removal intent for each file of ``rows``, durable (one fsync of ``.tmp``).
    Names unique to this delete: a server may be writing to ``.tmp`` meanwhile."""
    tmp = str(root / layout.TMP_DIR)
    owner = f"del-{secrets.token_hex(6)}"
    intents = {}
    for n, row in zip(itertools.count(), rows):
        link = link_intent(root, tmp, f"{owner}-{n}", row["path"])
        if link is not None:
            intents[layout.resolve(root, row["path"])] = link
    if fsync and intents:
        try:
            layout.fsync_dir(Path(tmp))
        except OSError:
            pass  # the delete goes on; a crash may then leave files for check to report
    return intents


def _rows_of(reader: ArchiveReader, level: str, uid: str) -> list[dict[str, Any]]:
    return reader.search("instance", {_KEYWORDS[level]: uid})


#: Files a delete unlinks per turn of the index's write lock (stores wait meanwhile:
#: 200 unlinks are ~40 ms on a local disk, a second or so on slow network storage, far
#: from a store's lock timeout; 2000 could pass it there, review36c L3).
UNLINKS_PER_TURN = 200


def _unlink_deleted(
    root: Path,
    index: Index,
    rows: list[dict[str, Any]],
    intents: dict[Path, str],
    result: Removal,
    fsync: bool,
) -> bool:
    """Unlink the files of the deleted ``rows`` (their COMMIT done) under the index's
    write lock, so that no store places a file meanwhile: but not one stored again
    since the COMMIT (its row names the path again; or, with an intent, the file
    there is not the intent's), which was answered Success (review36b #1: it was
    unlinked by name). False when a folder could not be flushed (keep the intents)."""
    durable = True
    for first in range(0, len(rows), UNLINKS_PER_TURN):
        batch = rows[first : first + UNLINKS_PER_TURN]
        files = []
        with index.lock:
            try:
                found = index.begin([row["sop_instance_uid"] for row in batch])
            except DatabaseError as exc:  # (rows deleted: their intents settle them later)
                result.problems.append(f"files left for the next start or delete: {exc}")
                return False
            try:
                for row in batch:
                    again = found.get(row["sop_instance_uid"])
                    try:
                        path = layout.resolve(root, row["path"])
                    except ValueError:
                        continue  # (reported with the rows)
                    intent = intents.get(path)
                    replaced = intent is not None and os.path.lexists(path)
                    if (again is not None and again["path"] == row["path"]) or (
                        replaced and not _same_file(path, Path(str(intent)))
                    ):
                        continue  # stored again since: not ours to remove
                    files.append(path)
                durable = _unlink(root, files, intents, result, fsync=False) and durable
            finally:
                index.rollback()
        durable = _flush_folders({p.parent for p in files}, fsync) and durable
    return durable


def _unlink(
    root: Path, files: list[Path], intents: dict[Path, str], result: Removal, fsync: bool
) -> bool:
    """Unlink ``files``; False when a folder could not be flushed (keep the intents)."""
    folders = set()
    for path in files:
        try:
            os.unlink(path)
            result.files_removed += 1
            folders.add(path.parent)
            if crashpoints.ENABLED:
                crashpoints.reached("delete.after-unlink")
        except FileNotFoundError:
            intent = intents.get(path)
            if intent is not None and not os.path.lexists(intent):
                result.files_removed += 1  # another process settled our intent
                continue
            result.gone.append(f"{path.relative_to(root).as_posix()}: already gone")
        except OSError as exc:
            result.problems.append(f"{path}: {exc.strerror or exc}")
    return _flush_folders(folders, fsync)


def _flush_folders(folders: set[Path], fsync: bool) -> bool:
    """fsync each folder (with ``fsync``); False when one could not be flushed."""
    durable = True
    for folder in folders if fsync else ():
        try:
            layout.fsync_dir(folder)
        except OSError:
            durable = False
    return durable


def _remove_empty_dirs(root: Path, series_dirs: set[Path], index: Index) -> None:
    """Remove emptied series folders and then study folders, holding the index lock."""
    with index.lock:
        index.begin()
        try:
            for folder in sorted(series_dirs, reverse=True):
                _rmdir_empty(root, folder)
        finally:
            index.rollback()
