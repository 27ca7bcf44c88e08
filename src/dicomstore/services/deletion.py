"""The audited removal: the one home of "every deletion is recorded", which every
door goes through (``dicomstore delete``, ``cli/delete.py``; the Python API,
``dicomstore.query.remove`` = :func:`remove`).

Each removal (rows and files: ``archive/removal.py``) is one INFO line on the
``dicomstore.delete`` logger and, given an audit log, one record, ``"event":
"delete"``, after PS3.15 A.5.3.8 *DICOM Study Deleted* (EV 110105, action D) for a
study, and A.5.3.6 *DICOM Instances Accessed* with action D (EV 110103) for a series
or an instance: who (the OS user running the process, and the user sudo was run
by), what (the UIDs, the patient, the counts), the outcome, and the door
(``service``: ``dicomstore delete`` or ``dicomstore.query.remove``). For example
(one line)::

    {"time": "...", "event": "delete", "audit_event": "DICOM Study Deleted",
     "event_id": "110105", "event_action": "D", "service": "dicomstore delete",
     "user": "alice", "sudo_user": null, "host": "pacs1", "pid": 4242,
     "storage": "/data/archive", "selected_by": "uid", "level": "study", "uid": "1.2.3",
     "patient_id": "PID1", "issuer_of_patient_id": null,
     "study_instance_uids": ["1.2.3"], "series_instance_uids": ["1.2.3.1", "1.2.3.2"],
     "sop_instance_uid": null, "instances": 120, "bytes": 63963136,
     "files_removed": 120, "kept": 0,
     "outcome": "deleted", "problems": []}

``outcome`` is ``deleted``, ``incomplete`` (rows deleted, some files not, or the
removal raised after deleting rows or files: see ``problems``, the counts are of what
was deleted) or ``failed`` (it raised having deleted nothing: the error in
``problems``; a COMMIT whose answer was lost may be done all the same). An interrupted
removal (a ``BaseException``: Ctrl-C, a cancellation) is recorded and logged too.
The audit log is opened before anything is deleted: one that cannot be opened, or an
``AuditLog`` passed in closed, deletes nothing (:class:`AuditLogUnavailableError`).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicomstore.archive import removal
from dicomstore.archive.removal import Removal as Removal  # (the doors take these from here:
from dicomstore.archive.removal import finish_interrupted as finish_interrupted  # pyproject)
from dicomstore.audit import AuditLog

if TYPE_CHECKING:
    from dicomstore.archive.reader import ArchiveReader

STUDY_DELETED = ("DICOM Study Deleted", "110105")  # PS3.15 A.5.3.8
INSTANCES_ACCESSED = ("DICOM Instances Accessed", "110103")  # PS3.15 A.5.3.6, action D
#: the audit log of a removal not given one (the server's file), as for the CLI
AUDIT_LOG_ENV = "DICOMSTORE_AUDIT_LOG"
#: ``service`` of the records of the Python API's removals
API_SERVICE = "dicomstore.query.remove"

log = logging.getLogger("dicomstore.delete")


class AuditLogUnavailableError(OSError):
    """The audit log of a removal cannot be opened, or was passed closed: nothing was
    deleted."""


class AuditRecordNotWrittenError(OSError):
    """The removal was done (``removal``: what it deleted), but its audit record could
    not be written. Not to be retried as a failed removal: a retry finds nothing
    (``NotStoredError``)."""

    def __init__(self, code: int | None, message: str, result: removal.Removal) -> None:
        super().__init__(code, message)
        self.removal = result


def remove(
    root: Path | str,
    uid: str,
    *,
    audit_log: AuditLog | Path | str | None = None,
    fsync: bool = True,
    lock_timeout: float = 30.0,
    index: str | None = None,
    only: frozenset[str] | None = None,
) -> removal.Removal:
    """Delete the study, series or instance ``uid`` of the archive at ``root``
    (``archive.removal.remove``: rows, then files), audited and logged (module
    docstring). ``audit_log``: an open :class:`~dicomstore.audit.AuditLog` (left
    open), or the path of one (default ``$DICOMSTORE_AUDIT_LOG``; none, or ``""``:
    no record, the INFO line only), opened before the removal (not when there is
    nothing to delete) and never rotated here (the server rotates it).

    Raises :class:`AuditLogUnavailableError` (nothing deleted) when the audit log
    cannot be opened or is closed, ``NotStoredError`` when nothing of ``uid`` is there, and
    :class:`AuditRecordNotWrittenError` (an ``OSError``; its ``removal``: what was
    deleted) when the removal was done but its record could not be written.
    """
    from dicomstore.archive import layout

    if audit_log is None:
        audit_log = os.environ.get(AUDIT_LOG_ENV)
    if audit_log == "":
        audit_log = None  # (as the empty variable: none, review61 L4)
    uid = layout.normalize_uid(uid.strip())
    target, _ = target_of(reader_for_delete(root, index), uid)  # (before the audit log)
    owned: AuditLog | None = None  # (opened here from a path: closed here)
    if isinstance(audit_log, AuditLog) or audit_log is None:
        audit = audit_log
    else:  # (before the removal: nothing it could not record)
        audit = owned = _open(Path(audit_log))
    try:
        result = audited_removal(
            root,
            uid,
            target,
            audit,
            "uid",
            service=API_SERVICE,
            fsync=fsync,
            lock_timeout=lock_timeout,
            index=index,
            only=only,
        )
    except BaseException:
        if owned is not None:
            _close_quietly(owned)
        raise
    if owned is not None:
        try:
            owned.close()
        except OSError as exc:  # (the record could not be written)
            raise _not_recorded(result, exc.errno, exc.strerror or str(exc)) from exc
    return result


def reader_for_delete(root: Path | str, index: str | None) -> ArchiveReader:
    """The archive's reader for a delete (the CLI's, :func:`remove`): on a nearly full
    disk the reserve file is freed first (``archive/reserve.py``), before the index is
    opened (after a clean stop SQLite must create its -wal and -shm: review89 N1)."""
    from dicomstore.archive import reserve
    from dicomstore.archive.reader import ArchiveReader

    reserve.release(Path(root).resolve())
    return ArchiveReader(root, index=index)


def target_of(reader: Any, uid: str) -> tuple[dict[str, Any], list[Path]]:
    """What a removal of ``uid`` (normalized) takes: its index row with its ``level``, or
    ``{"level": "files"}`` and the files left of it without rows (an interrupted
    delete); ``NotStoredError`` when there is neither."""
    from dicomstore.archive.reader import NotStoredError

    try:
        level, row = reader.locate(uid)
    except NotStoredError:
        files = removal.leftovers(reader.root, reader, None, uid)
        if not files:
            raise
        return {"level": "files"}, files
    return {**row, "level": level}, []


def _not_recorded(
    result: removal.Removal, code: int | None, why: str
) -> AuditRecordNotWrittenError:
    return AuditRecordNotWrittenError(
        code,
        f"{result.level} {result.uid} was deleted, but its audit record not written: {why}",
        result,
    )


def _open(path: Path) -> AuditLog:
    try:
        return AuditLog(path, max_bytes=0, keep=0)
    except OSError as exc:
        raise AuditLogUnavailableError(
            exc.errno, f"cannot open the audit log {path}: {exc.strerror}; nothing deleted"
        ) from exc


def _close_quietly(audit: AuditLog) -> None:
    try:
        audit.close()
    except OSError as exc:  # (the error told is the removal's; this one names the log)
        log.error("%s", exc.strerror or exc)


def audited_removal(
    root: Path | str,
    uid: str,
    target: dict[str, Any],
    audit: AuditLog | None,
    selected_by: str,
    *,
    service: str,
    fsync: bool = True,
    lock_timeout: float = 30.0,
    index: str | None = None,
    only: frozenset[str] | None = None,
) -> removal.Removal:
    """``removal.remove`` of ``uid`` (``target``: its index row and level, or just
    ``{"level": "files"}``), recorded in ``audit`` (if any) and logged, failed or not
    (a ``NotStoredError``: nothing was there, nothing to record), interrupted too (a
    ``BaseException``: recorded, logged, raised). One that raised after deleting rows
    or files is ``incomplete``, with the counts of what it deleted."""
    from dicomstore.archive.reader import NotStoredError

    if audit is not None and audit.closed:  # (a record it could not take: review61 L1)
        raise AuditLogUnavailableError(
            errno.EBADF, f"the audit log {audit.path} is closed; nothing deleted"
        )
    progress = removal.Progress()
    try:
        result = removal.remove(
            root,
            uid,
            fsync=fsync,
            lock_timeout=lock_timeout,
            index=index,
            only=only,
            progress=progress,
        )
    except NotStoredError:
        raise
    except BaseException as exc:  # (Ctrl-C, a cancellation: recorded all the same)
        done, error = progress.removal, str(exc) or type(exc).__name__
        record = deletion_record(root, uid, target, done, selected_by, service, error=error)
        _record_failure(audit, record, done, error)
        raise
    record = deletion_record(root, uid, target, result, selected_by, service)
    log.info(
        "deleted %s %s of patient %s: %d instance(s), %d bytes (user %s)%s",
        result.level,
        uid,
        record["patient_id"] or "-",
        result.instances,
        result.bytes,
        record["user"],
        f"; {len(result.problems)} problem(s)" if result.problems else "",
    )
    if audit is not None:
        try:
            audit.delete(record)
        except ValueError as exc:  # (closed meanwhile, by another thread)
            raise _not_recorded(result, errno.EBADF, f"the audit log {audit.path} {exc}") from exc
    return result


def _record_failure(
    audit: AuditLog | None, record: dict[str, Any], done: removal.Removal | None, error: str
) -> None:
    """Log and record (``record``) a removal that raised ``error``, having deleted
    ``done`` (None: nothing); a record that cannot be queued is logged (the error told
    is the removal's)."""
    if done is None:
        log.error(
            "delete of %s %s failed: %s (user %s)",
            record["level"],
            record["uid"],
            error,
            record["user"],
        )
    else:  # (review100 W8: one whose every file was removed was called incomplete)
        whole = done.files_removed + len(done.gone) >= done.instances
        log.error(
            "delete of %s %s interrupted (%s), %s: %d instance(s), %d bytes deleted,"
            " %d file(s) removed (user %s)",
            done.level,
            record["uid"],
            error,
            "every file removed" if whole else "incomplete: the next delete or start ends it",
            done.instances,
            done.bytes,
            done.files_removed,
            record["user"],
        )
    if audit is not None:
        try:
            audit.delete(record)
        except ValueError as closed:  # (closed meanwhile, by another thread)
            log.error("audit log %s: %s: this record not written", audit.path, closed)


def deletion_record(
    root: Path | str,
    uid: str,
    target: dict[str, Any],
    result: removal.Removal | None,
    selected_by: str,
    service: str,
    *,
    error: str | None = None,
) -> dict[str, Any]:
    """The audit record of one removal (module docstring); ``result`` None when it
    failed with ``error`` having deleted nothing; ``result`` and ``error`` when it
    raised ``error`` having deleted ``result`` (``incomplete``)."""
    level = result.level if result is not None else target["level"]
    name, event_id = STUDY_DELETED if level == "study" else INSTANCES_ACCESSED
    patient_id: str | None
    issuer: str | None
    if result is not None and len(result.patients) == 1:
        patient_id, issuer = result.patients[0]
    else:
        patient_id, issuer = target.get("patient_id"), target.get("issuer")
    if result is not None and result.studies:
        studies, series = result.studies, result.series
    else:
        studies = [target["study_uid"]] if target.get("study_uid") else []
        series = [target["series_uid"]] if target.get("series_uid") else []
    if result is None:
        outcome, problems = "failed", [error or "failed"]
    else:
        problems = list(result.problems) + ([error] if error is not None else [])
        outcome = "incomplete" if problems else "deleted"
        problems += result.gone  # (told, the delete complete all the same)
    return {
        "event": "delete",
        "audit_event": name,
        "event_id": event_id,
        "event_action": "D",
        "service": service,
        "user": os_user(),
        "sudo_user": os.environ.get("SUDO_USER") or None,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "storage": str(Path(root).resolve()),
        "selected_by": selected_by,
        "level": level,
        "uid": uid,
        "patient_id": patient_id or None,
        "issuer_of_patient_id": issuer or None,
        "study_instance_uids": studies,
        "series_instance_uids": series,
        "sop_instance_uid": uid if level == "instance" else None,
        "instances": result.instances if result is not None else 0,
        "bytes": result.bytes if result is not None else 0,
        "files_removed": result.files_removed if result is not None else 0,
        "kept": result.kept if result is not None else 0,
        "outcome": outcome,
        "problems": problems,
    }


def os_user() -> str:
    """The name of the user this process runs as (its real uid's, not ``$USER``)."""
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())
