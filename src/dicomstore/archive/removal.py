"""Deleting a study, series or instance: index rows and files, in a crash-safe order.

Order (each step durable before the next)::

    BEGIN IMMEDIATE            the index write lock: no instance is published meanwhile
    select the rows            what is deleted is exactly what is indexed now
    delete rows, prune         instance rows, then series/study/patient left empty
    COMMIT                     from here on no door lists or serves the instances
    unlink the files           fsync of each folder
    BEGIN IMMEDIATE, rmdir     empty folders, under the lock so that a concurrent
    ROLLBACK                   store never renames into a folder being removed

Rows go first: the index never names a missing file, so what QIDO, WADO and
the CLI list can always be fetched. A crash between COMMIT and the unlinks
leaves files the index does not know: ``dicomstore check`` lists them as *not
indexed*, and running the same ``delete`` again removes them (a UID without
rows is looked for on disk, see :func:`leftovers`). ``reindex`` would instead
bring them back.

Uses the archive's own :class:`~dicomstore.archive.index.Index` writer methods
(``remove``, ``prune``), never an :class:`~dicomstore.archive.Archive`, whose
start-up would empty ``.tmp`` under a running server.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicomstore.archive import layout
from dicomstore.archive.index import Index
from dicomstore.archive.reader import ArchiveReader, NotStoredError

_KEYWORDS = {
    "study": "StudyInstanceUID",
    "series": "SeriesInstanceUID",
    "instance": "SOPInstanceUID",
}


@dataclass
class Removal:
    """What a delete did."""

    level: str
    uid: str
    instances: int = 0
    bytes: int = 0
    files_removed: int = 0
    leftovers_removed: int = 0
    problems: list[str] = field(default_factory=list)


def leftovers(root: Path, reader: ArchiveReader, level: str | None, uid: str) -> list[Path]:
    """Files of ``uid`` left on disk without index rows (an interrupted delete)."""
    name = layout.safe_component(uid, "-")
    patterns = {
        "study": [f"{name}/*/*{layout.SUFFIX}"],
        "series": [f"*/{name}/*{layout.SUFFIX}"],
        "instance": [f"*/*/{name}{layout.SUFFIX}"],
    }
    wanted = [level] if level else list(patterns)
    found = []
    for lvl in wanted:
        for pattern in patterns[lvl]:
            for path in sorted(root.glob(pattern)):
                if path.parts[len(root.parts)] == layout.TMP_DIR or not path.is_file():
                    continue
                if not reader.has_path(path.relative_to(root).as_posix()):
                    found.append(path)
    return found


def remove(
    root: Path | str, uid: str, *, fsync: bool = True, lock_timeout: float = 30.0
) -> Removal:
    """Delete the study, series or instance ``uid`` (rows, then files).

    Raises :class:`NotStoredError` when nothing of ``uid`` is indexed or on disk.
    """
    root = Path(root).resolve()
    reader = ArchiveReader(root)
    uid = layout.normalize_uid(uid.strip())
    try:
        level, _ = reader.locate(uid)
    except NotStoredError:
        files = leftovers(root, reader, None, uid)
        if not files:
            raise
        result = Removal("files", uid)
        _unlink(root, files, result, fsync)
        result.leftovers_removed = result.files_removed
        _remove_empty_dirs(root, {p.parent for p in files}, None, lock_timeout)
        return result
    result = Removal(level, uid)
    index = Index(root / layout.INDEX_FILE, durable=fsync, timeout=lock_timeout)
    try:
        rows = _delete_rows(index, reader, level, uid)
        result.instances = len(rows)
        result.bytes = sum(r["file_size"] or 0 for r in rows)
        files = []
        for row in rows:
            try:
                files.append(layout.resolve(root, row["path"]))
            except ValueError as exc:
                result.problems.append(str(exc))
        _unlink(root, files, result, fsync)
        _remove_empty_dirs(root, {p.parent for p in files}, index, lock_timeout)
    finally:
        index.close()
    return result


def _delete_rows(index: Index, reader: ArchiveReader, level: str, uid: str) -> list[dict[str, Any]]:
    """Delete the rows under the write lock; the rows that were deleted."""
    with index.lock:
        index.begin()
        try:
            # We hold the write lock: a new read sees exactly what is committed.
            rows = _rows_of(reader, level, uid)
            for row in rows:
                index.remove(row["sop_instance_uid"])
            for series_uid, study_uid, patient_id in {
                (r["series_uid"], r["study_uid"], r["patient_id"]) for r in rows
            }:
                index.prune(series_uid, study_uid, patient_id)
            index.commit()
        except BaseException:
            index.rollback()
            raise
    return rows


def _rows_of(reader: ArchiveReader, level: str, uid: str) -> list[dict[str, Any]]:
    return reader.instances(**{_KEYWORDS[level]: uid})


def _unlink(root: Path, files: list[Path], result: Removal, fsync: bool) -> None:
    folders = set()
    for path in files:
        try:
            os.unlink(path)
            result.files_removed += 1
            folders.add(path.parent)
        except FileNotFoundError:
            result.problems.append(f"{path.relative_to(root).as_posix()}: already gone")
        except OSError as exc:
            result.problems.append(f"{path}: {exc.strerror or exc}")
    if fsync:
        for folder in folders:
            try:
                layout.fsync_dir(folder)
            except OSError:
                pass


def _remove_empty_dirs(
    root: Path, series_dirs: set[Path], index: Index | None, lock_timeout: float
) -> None:
    """Remove emptied series folders and then study folders, holding the index lock."""
    own = index is None
    if index is None:
        index = Index(root / layout.INDEX_FILE, timeout=lock_timeout)
    try:
        with index.lock:
            index.begin()
            try:
                for folder in sorted(series_dirs, reverse=True):
                    for candidate in (folder, folder.parent):
                        if candidate == root or root not in candidate.parents:
                            continue
                        try:
                            os.rmdir(candidate)
                        except OSError:
                            break  # not empty, or gone
            finally:
                index.rollback()
    finally:
        if own:
            index.close()
