"""Keeping files and index in agreement: ``check`` finds where they differ,
``reindex`` rebuilds the index from the files (headers read up to the Pixel Data).
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from dicomstore.archive import digests as data_digests
from dicomstore.archive import layout, nodes, rebuild
from dicomstore.archive.checked import file_meta_differs
from dicomstore.archive.dicomfile import dataset_offset, encoding_of
from dicomstore.archive.engine import engine_for
from dicomstore.archive.filed import header_row
from dicomstore.archive.identity import check_storage
from dicomstore.archive.index import Index
from dicomstore.archive.layout import dicom_files
from dicomstore.archive.nesting import judged, scanned
from dicomstore.archive.reindex_rows import DAMAGED, keep_records, put_judged
from dicomstore.archive.scan import PREFIX_SIZE
from dicomstore.archive.schema import Arrivals
from dicomstore.framing import file_meta

log = logging.getLogger("dicomstore.archive")


def check_archive(root: Path, index: Index, *, digests: bool = True) -> list[str]:
    """Problems, one line each: indexed files missing, resized or altered
    (digest, when ``digests``), ``.dcm`` files the index does not know, and
    instances the index files under another study or series than their file's
    (which is named after the data set's own UIDs)."""
    return [line for _, line in _problems(root, index, digests)]


class Listing(Protocol):
    """What :func:`_problems` reads of an index: the writer's ``Index``, or an
    ``ArchiveReader`` (``check`` of an archive it cannot write: ``readonly_check.py``)."""

    def paths(self) -> Iterable[tuple[str, str, int, str, str]]: ...

    def filing(self) -> Iterable[tuple[str, str, str, str]]: ...


def _problems(
    root: Path, index: Listing, digests: bool, counted: list[int] | None = None
) -> list[tuple[str | None, str]]:
    """:func:`check_archive`'s lines, each with the path it is about (``None``:
    about the filing of an instance in the index); ``counted`` gets how many indexed
    instances were examined. The one home of what ``check`` finds, whether it may
    write (:func:`run_check`) or not (``readonly_check.run_read_only``)."""
    problems: list[tuple[str | None, str]] = []
    indexed: set[Path] = set()
    for uid, relpath, size, digest, syntax in index.paths():
        try:
            path = layout.resolve(root, relpath)
        except ValueError:
            problems.append((None, f"{uid}: indexed path {relpath!r} is outside the archive"))
            continue
        indexed.add(path)
        problem = _examine(path, relpath, (uid, size, digest, syntax), digests)
        if problem is not None:
            problems.append((relpath, problem))
    if counted is not None:
        counted.append(len(indexed))
    for path in dicom_files(root):
        if path not in indexed:
            relpath = path.relative_to(root).as_posix()
            problems.append((relpath, f"{relpath}: not indexed"))
    # the file's place comes from its own header: the index must file it there too
    for uid, relpath, study, series in index.filing():
        if not layout.is_place(relpath, study, series, uid):
            problems.append((None, f"{relpath}: indexed under study {study}, series {series}"))
    return problems


def _examine(
    path: Path, relpath: str, indexed: tuple[str, int, str, str], digests: bool
) -> str | None:
    """What is wrong with the file of one indexed instance (``indexed``: its SOP
    Instance UID, file size, digest and transfer syntax; ``None``: nothing)."""
    uid, size, digest, syntax = indexed
    try:
        actual = path.stat().st_size
        if actual != size:
            return f"{relpath}: size {actual}, indexed {size}"
        if digests and not data_digests.matches(digest, path):
            return f"{relpath}: content differs from the indexed digest"
        # (the meta, which the digest does not cover: as retrieval judges it)
        wrong = file_meta_differs(path, {"transfer_syntax_uid": syntax}) if digests else None
        if wrong is not None:
            return f"{relpath}: {wrong}"
        refused = misframed(path) if digests else None
        if refused is not None:
            return f"{relpath}: refused if received now: {refused}"
    except FileNotFoundError:
        return f"{relpath}: missing (SOP Instance {uid})"
    except Exception as exc:  # unreadable file, broken meta
        return f"{relpath}: cannot be read: {exc}"
    return None


def misframed(path: Path) -> str | None:
    """Why a stored file would be refused if it were received now (C000, every door:
    ``nesting.judged``, as ``Ingest._check`` judges it): an element readers frame each
    their own way (an unknown VR, an undefined length where none may be: review80),
    nesting too deep, elements after the Pixel Data out of order. An archive may
    hold such files from before they were refused, indexed as one reader read them;
    ``check`` (with digests: it reads every file anyway) names them. ``None``: it
    frames one way for every reader."""
    with open(path, "rb") as fp:
        start = dataset_offset(fp)
        fp.seek(0)
        head = fp.read(start + _HEAD)
    found = file_meta(head[:start])
    meta = found[1] if found is not None else {}
    syntax = meta.get(0x0010, b"").rstrip(b"\0 ").decode("ascii", "replace")
    size, encoding = path.stat().st_size - start, encoding_of(syntax)
    scan = scanned(head[start:], size, encoding)  # (as the ingest judges it: review85 F1)
    refused = judged(str(path), start, size, encoding, head[start:], scan)
    return None if refused is None else str(refused)


#: The first data set bytes :func:`misframed` reads at once (the walk reads on by itself).
_HEAD = PREFIX_SIZE


def _recheck(
    root: Path, index: Index, problems: list[tuple[str | None, str]], digests: bool
) -> list[str]:
    """The problems found beside running nodes, looked at again under the index
    write lock (:data:`RECHECK_HELD` a hold): a node publishing, replacing or
    deleting meanwhile made some of them (a file renamed into place before its
    COMMIT, a row replaced after the
    file was read). Under the lock no publish is half done; a file still without
    a row but with a second name (a removal intent: its delete or replace has
    committed and is unlinking it) is on its way out, not a problem."""
    lines = []
    dead: list[set[tuple[int, int]]] = []  # (nodes.dead_files, read once if needed)
    for at in range(0, len(problems), RECHECK_HELD):  # (review50 #7: the lock held over
        with index.lock:  # them all, every node's stores waited, then got A700)
            index.begin()
            try:
                for relpath, line in problems[at : at + RECHECK_HELD]:
                    found = _again(root, index, relpath, digests, dead) if relpath else line
                    if found is not None:
                        lines.append(found)
            finally:
                index.rollback()
    return lines


#: Problems looked at again per hold of the index write lock (nodes store between).
RECHECK_HELD = 20


def _again(
    root: Path, index: Index, relpath: str, digests: bool, dead: list[set[tuple[int, int]]]
) -> str | None:
    """One problem looked at again (:func:`_recheck`): its line, or None if gone. A
    file without a row with a second name is on its way out, unless that name is
    in a dead node's folder (``dead``: its trace; the next start settles it)."""
    path = layout.resolve(root, relpath)
    rows = index.query({"path": relpath})
    if rows:
        row = rows[0]
        indexed = (row["sop_instance_uid"], row["file_size"], row["digest"])
        return _examine(path, relpath, (*indexed, row["transfer_syntax_uid"]), digests)
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None  # deleted meanwhile
    if stat.st_nlink == 1:
        return f"{relpath}: not indexed"
    if not dead:
        dead.append(nodes.dead_files(root))
    if (stat.st_dev, stat.st_ino) in dead[0]:
        return f"{relpath}: not indexed (a node that died left it: the next start settles it)"
    return None


def read_row(root: Path, path: Path) -> dict[str, Any]:
    """The index row of a stored file, read from its meta and header."""
    from pydicom.filereader import read_file_meta_info  # (reindex, check: not to serve)

    meta = read_file_meta_info(path)
    transfer_syntax = str(meta.get("TransferSyntaxUID", ""))
    stat = path.stat()
    with open(path, "rb") as fp:
        row, offset = header_row(fp, stat.st_size, transfer_syntax)
        digest, _ = data_digests.of_data_set(fp, offset)
    row.update(
        transfer_syntax_uid=layout.normalize_uid(transfer_syntax),
        file_size=stat.st_size,
        digest=digest,
        received_at=datetime.fromtimestamp(stat.st_mtime, UTC).isoformat(timespec="microseconds"),
        calling_ae=str(meta.get("SourceApplicationEntityTitle", "")).strip() or None,
        called_ae=str(meta.get("ReceivingApplicationEntityTitle", "")).strip() or None,
        path=path.relative_to(root).as_posix(),
    )
    return row


def reindex_archive(
    root: Path,
    index: Index,
    left_out: list[str] | None = None,
    damaged: list[str] | None = None,
    *,
    on_relational_mismatch: str = "reject",
    arrivals: Arrivals | None = None,
) -> int:
    """Replace the index by what the files say; the number of instances indexed.

    Each instance keeps the arrival (``received_at``) the index had, and each
    patient, study and series the attributes (``rebuild.Kept``); the others'
    arrival is their file's modification time, and they are put in the order of
    arrival, so that the latest received gives its parents' attributes (review58
    H2); the rows so made up are flagged, no arrivals (review58 H1, review59 M2:
    ``rebuild.py``). ``arrivals``: the index's tables were made
    anew from an older schema, whose rows said that of each instance
    (``schema.create_or_migrate``). Two files with one SOP
    Instance UID (a replace or delete a crash interrupted, where nothing
    settled it, or a copy put in by hand): the one the index names now wins
    if it is among them, else the most recently written (modification time,
    then the later path); a replaced version is never brought back. The
    others, unreadable files, and files not where the archive files their
    instance (``layout.is_place`` of their own UIDs: put in by hand) are
    left out (``check`` then lists them as not indexed) and told in
    ``left_out``, one line each. A file the index held whose data set no longer
    matches the size and digest recorded when it was stored (damaged since) keeps
    the index's whole record, so that ``check`` goes on reporting it (review45 H2: the
    record of what was acknowledged was replaced by the damaged bytes' digest,
    silently; review98 R3: by the damaged header's patient, or dropped when it named
    another series), and is told in ``damaged``. With ``on_relational_mismatch`` "reject",
    a file the index did not hold whose series or study the others file elsewhere is
    left out (``reindex_rows.put_judged``).
    """
    told = left_out if left_out is not None else []
    recorded = {uid: (path, size, digest) for uid, path, size, digest, _ts in index.paths()}
    at_path = {path: uid for uid, (path, _size, _digest) in recorded.items()}
    kept = rebuild.kept(index) if arrivals is None else rebuild.Kept(arrivals)
    chosen: dict[str, dict[str, Any]] = {}
    unreadable: dict[str, str] = {}  # path -> why
    for path in dicom_files(root):
        relpath = path.relative_to(root).as_posix()
        try:
            row = read_row(root, path)
        except Exception as exc:  # reported by check() as not indexed (or kept: below)
            unreadable[relpath] = _unreadable(exc)
            continue
        held = at_path.get(relpath)
        if held is not None and not _as_recorded(root, row, *recorded[held][1:]):
            # damaged since it was stored: its header may say another patient, study,
            # series or instance; the index's record of what was acknowledged is kept
            # whole (keep_records: review98 R3, it was moved, or dropped as misplaced)
            unreadable[relpath] = DAMAGED
            continue
        uid = row["sop_instance_uid"]
        if not layout.is_place(relpath, row["study_uid"], row["series_uid"], uid):
            place = layout.instance_relstr(row["study_uid"], row["series_uid"], uid)
            told.append(
                f"{relpath}: left out: not where the archive files its instance ({place}):"
                " move it there, or store it with `dicomstore send`"
            )
            continue
        other = chosen.setdefault(uid, row)
        if other is row:
            continue
        indexed = recorded.get(uid, (None,))[0]
        keep, drop = (other, row) if _wins(other, row, indexed) else (row, other)
        chosen[uid] = keep
        why = "the indexed one" if indexed == keep["path"] else "the latest written"
        told.append(
            f"{drop['path']}: left out: SOP Instance {uid} is also in {keep['path']} ({why})"
        )
    for relpath, why in unreadable.items():  # (its record wins over another copy)
        uid = at_path.get(relpath, "")
        copy = chosen.pop(uid, None) if why == DAMAGED else None
        if copy is not None:
            told.append(
                f"{copy['path']}: left out: SOP Instance {uid} is indexed in {relpath}"
                " (damaged: its record is kept)"
            )
    keep_records(root, index, recorded, chosen, unreadable, told, damaged)
    kept.apply(chosen.values(), datetime.now(UTC).isoformat(timespec="microseconds"))
    with index.lock, index.without_deadline():  # (a COMMIT of every row: long)
        index.begin()
        try:
            index.clear()
            judge = on_relational_mismatch == "reject"
            count = put_judged(index, chosen, recorded if judge else None, told)
            index.commit()
        except BaseException:
            index.rollback()
            raise
    return count


def _unreadable(exc: Exception) -> str:
    """Why a file could not be read, in our words (not pydicom's 'Use force=True')."""
    from pydicom.errors import InvalidDicomError

    if isinstance(exc, InvalidDicomError):
        return "not a PS3.10 file (no 'DICM' prefix and File Meta Information)"
    return str(exc)


def _as_recorded(root: Path, row: dict[str, Any], size: int, digest: str) -> bool:
    """Whether the file ``row`` was read from still has the ``size`` and ``digest`` the
    index recorded (a digest of another algorithm: the file is read again with it)."""
    if row["file_size"] != size:
        return False
    try:
        return data_digests.same(digest, row["digest"], layout.resolve(root, row["path"]))
    except Exception:  # (unreadable since: not as recorded)
        return False


def _wins(a: dict[str, Any], b: dict[str, Any], indexed: str | None) -> bool:
    """Whether ``a`` rather than ``b`` (one SOP Instance) is the version to index."""
    if indexed in (a["path"], b["path"]):
        return bool(a["path"] == indexed)
    return bool((a["received_at"], a["path"]) > (b["received_at"], b["path"]))


def run_check(
    root: Path,
    *,
    fsync: bool = True,
    index: str | None = None,
    counted: list[int] | None = None,
    read_only: bool | None = None,
    pending: list[str] | None = None,
) -> list[str]:
    """``dicomstore check``. ``read_only`` (``None``: when ``frozen.unwritable`` says
    the archive cannot be written: a snapshot, backup media): nothing is written,
    nothing settled; what a start would settle goes to ``pending``, one line each
    (``readonly_check.run_read_only``, review58 L6). Otherwise: refused when ``root`` is
    not the index's storage (``identity.check_storage``, looking only); with no archive
    open on ``root`` elsewhere, first settle what a crash left (``recovery.recover``, as
    the next start would), so that a clean check means a clean start; with servers
    running (nodes, on this host or others: the flock of ``.tmp`` or the database's lock
    says so) check as is, then look again under the index write lock at what seemed
    wrong (:func:`_recheck`): what a node was doing at that moment is not reported. The
    digests are read without the lock, so nodes are never held up for long. A SQLite
    index SQLite finds damaged (``index_health.quick_check``) is the first problem, with
    its remedy; nothing is settled into it then (review58 M3)."""
    from dicomstore.archive.index_health import quick_check, reindex_command
    from dicomstore.archive.recovery import ArchiveBusyError, hold, recover

    if read_only is None:
        from dicomstore.archive.frozen import unwritable

        read_only = unwritable(root, index) is not None
    if read_only:
        from dicomstore.archive.readonly_check import run_read_only

        return run_read_only(root, index=index, counted=counted, pending=pending)
    db = Index(engine_for(root, index), durable=fsync)
    try:  # (another storage's files: every one reported, or recovered, against this index)
        check_storage(root, db, give=False)
        damage = quick_check(db, most=5)
        if damage:
            return damaged_lines(root, db, db.where, damage, reindex_command(root, index), counted)
        (root / layout.TMP_DIR).mkdir(exist_ok=True)
        alone = False
        try:
            fd = hold(root, exclusive=True)
        except ArchiveBusyError:
            pass
        else:
            try:
                if db.hold(exclusive=True):  # (no node on another host either)
                    alone = True
                    try:
                        recover(root, db, fsync=fsync)
                    finally:
                        db.release(exclusive=True)
            finally:
                os.close(fd)
        problems = _problems(root, db, True, counted)
        if alone or not problems:
            return [line for _, line in problems]
        return _recheck(root, db, problems, True)
    finally:
        db.close()


def damaged_lines(
    root: Path, index: Listing, where: str, damage: list[str], mend: str, counted: list[int] | None
) -> list[str]:
    """:func:`run_check` of a damaged index (at ``where``): the damage and its remedy,
    then the problems found in what can still be read of it (none when nothing can)."""
    line = (
        f"{where}: damaged (SQLite's quick_check: {'; '.join(damage)}): {mend} builds"
        " a new index from the files, the damaged one kept aside"
    )
    try:
        return [line] + [text for _, text in _problems(root, index, True, counted)]
    except sqlite3.DatabaseError:
        return [line]


def _set_aside(path: Path, exc: BaseException) -> None:
    """A damaged SQLite index (and its WAL) renamed beside itself, kept, so that
    reindex builds a new one from the files (README: "rebuilds the index")."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for suffix in ("", "-wal", "-shm"):
        old = path.with_name(path.name + suffix)
        if old.exists():
            old.rename(path.with_name(f"{path.name}.damaged-{stamp}{suffix}"))
    log.warning(
        "%s is damaged (%s): kept as %s.damaged-%s; a new one is built", path, exc, path.name, stamp
    )


def run_reindex(
    root: Path,
    left_out: list[str],
    *,
    fsync: bool = True,
    index: str | None = None,
    damaged: list[str] | None = None,
    on_relational_mismatch: str = "reject",
) -> int:
    """``dicomstore reindex``: refused (:class:`~dicomstore.archive.recovery.ArchiveBusyError`)
    while an archive is open on ``root`` elsewhere (a server, a node on any host:
    its stores would race the rebuild); else what a crash left is settled first (``recover``),
    then :func:`reindex_archive`. A server cannot start meanwhile."""
    from dicomstore.archive.recovery import ArchiveBusyError, hold, recover

    (root / layout.TMP_DIR).mkdir(parents=True, exist_ok=True)
    fd = hold(root, exclusive=True)

    def rebuild() -> int:
        db = Index(engine_for(root, index), durable=fsync, migrate=True)
        try:
            check_storage(root, db)  # (else the index is emptied: review50 #3)
            if not db.hold(exclusive=True):  # a node on another host (PostgreSQL)
                raise ArchiveBusyError(errno.EBUSY, "in use by a server or another archive")
            recover(root, db, fsync=fsync)
            policy = on_relational_mismatch
            return reindex_archive(root, db, left_out, damaged, on_relational_mismatch=policy)
        finally:
            db.close()

    try:
        try:
            return rebuild()
        except sqlite3.DatabaseError as exc:
            code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
            if index is not None or code not in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
                raise  # (not a damaged SQLite file: locked, full, a constraint, PostgreSQL)
            _set_aside(root / "index.sqlite", exc)  # damaged, wherever it showed
            left_out.clear()
            return rebuild()
    finally:
        os.close(fd)
