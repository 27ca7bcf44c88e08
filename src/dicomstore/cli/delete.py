"""``dicomstore delete``: a study, series or instance, or every study of a patient,
removed (rows and files: ``archive/removal.py``) after confirmation, each removal
audited and logged.

With ``--audit-log FILE`` (or ``DICOMSTORE_AUDIT_LOG``: the server's file, appended
to under its lock) each removal is one record, ``"event": "delete"``, ``"service":
"dicomstore delete"``, and every removal one INFO line on the ``dicomstore.delete``
logger: both made by the audited removal every door goes through
(``services/deletion.py``, where the record is described), as the Python API's
``dicomstore.query.remove`` does.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dicomstore.cli.access import _storage
from dicomstore.cli.audit_options import add_audit_log, close_audit_log, open_audit_log
from dicomstore.cli.options import EXIT_FAILED, EXIT_OK, EXIT_USAGE, UsageError
from dicomstore.sizes import human_size

SERVICE = "dicomstore delete"  # (the audit records' ``service``)
_KEYWORDS = {"study": "StudyInstanceUID", "series": "SeriesInstanceUID"}


def add_parser(sub: Any) -> None:
    """The ``delete`` subcommand."""
    delete = sub.add_parser(
        "delete",
        help="delete a study, series or instance, or every study of a patient (rows and files)",
    )
    delete.add_argument("uid", nargs="?", help="a Study, Series or SOP Instance UID")
    delete.add_argument(
        "--patient-id",
        metavar="ID",
        help="instead of a UID: every study of the patient with this Patient ID (exactly)",
    )
    delete.add_argument(
        "--issuer",
        metavar="ISSUER",
        help="with --patient-id: the patient's Issuer of Patient ID ('' for none), needed"
        " when patients of several issuers have the ID",
    )
    _storage(delete)
    add_audit_log(delete, rotates=False)
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    delete.set_defaults(log_level="info")  # (each removal is an INFO line)


def run(args: argparse.Namespace) -> int:
    """Delete what ``args`` name, after confirmation; the exit code."""
    from dicomstore.services.deletion import finish_interrupted, reader_for_delete

    if (args.uid is None) == (args.patient_id is None):
        raise UsageError("give the UID to delete or --patient-id, one of them")
    if args.issuer is not None and args.patient_id is None:
        raise UsageError("--issuer goes with --patient-id")
    if args.patient_id is not None and not args.patient_id.strip():
        raise UsageError("--patient-id: an empty Patient ID names no one patient")
    reader = reader_for_delete(args.storage, args.index)
    settled = finish_interrupted(reader.root, index=args.index)  # (an interrupted delete's)
    if settled:
        print(f"removed {settled} file(s) an interrupted delete or replace left")
    audit = None
    if args.audit_log is not None:  # (opened first: no deletion it could not record)
        audit = open_audit_log(args)
        if audit is None:
            return EXIT_USAGE
    try:
        if args.patient_id is not None:
            code = _delete_patient(args, reader, audit)
        else:
            code = _delete_uid(args, reader, audit)
    finally:
        if audit is not None and not close_audit_log(audit):
            code = EXIT_FAILED
    return code


def _confirmed(args: argparse.Namespace, counted: str) -> bool:
    """``--yes``, or yes at the prompt (refused without a terminal)."""
    if args.yes:
        return True
    if not sys.stdin.isatty():
        raise UsageError("refusing to delete without confirmation: not a terminal (use --yes)")
    answer = input(f"Delete {counted}? [y/N] ").strip().lower()
    if answer in ("y", "yes"):
        return True
    print("not deleted")
    return False


def _delete_uid(args: argparse.Namespace, reader: Any, audit: Any) -> int:
    """A study, series or instance (or the files left of one without rows)."""
    from dicomstore.archive import layout
    from dicomstore.services.deletion import target_of

    uid = layout.normalize_uid(args.uid.strip())
    only = None  # (--yes: all it holds when it is removed)
    target, files = target_of(reader, uid)
    level = target["level"]
    if level == "files":
        what = counted = f"{len(files)} file(s) of {uid} left without index rows"
    else:
        who = f"{target['patient_name'] or '?'} ({target['patient_id']})"
        what = counted = f"{level} {uid} of {who}"
        if not args.yes:  # what is confirmed is what goes: those counted (review50 #6)
            rows = reader.search("instance", {_KEYWORDS.get(level, "SOPInstanceUID"): uid})
            only, size = _counted(rows)
            counted = f"{what}: {len(rows)} instance(s), {human_size(size)}"
    if not _confirmed(args, counted):
        return EXIT_FAILED
    result = _remove(args, uid, target, only, audit, "uid")
    for problem in result.problems + result.gone:  # (gone: no failure, review77 F13)
        print(f"dicomstore: {problem}", file=sys.stderr)
    if result.level != "files":
        counted = f"{what}: {result.instances} instance(s), {human_size(result.bytes)}"
    since = f"; {result.kept} instance(s) stored since the count kept" if result.kept else ""
    print(f"deleted {counted}{since}")
    return EXIT_FAILED if result.problems else EXIT_OK


def _delete_patient(args: argparse.Namespace, reader: Any, audit: Any) -> int:
    """Every study of the patient ``--patient-id`` (``--issuer``), one removal each."""
    from dicomstore.archive.reader import NotStoredError

    patient_id = args.patient_id.strip()
    studies = patient_studies(reader, patient_id, args.issuer)
    issuer = studies[0]["issuer"] or ""
    who = f"patient {patient_id}" + (f" (issuer {issuer})" if issuer else "")
    name = studies[0]["patient_name"] or "?"
    confirmed: dict[str, frozenset[str]] = {}
    counted = f"{who}, {name}: {len(studies)} study(ies)"
    if not args.yes:  # (what is confirmed is what goes: those counted)
        size = 0
        for study in studies:
            rows = _patients_own(reader, study["study_uid"], patient_id, issuer)
            confirmed[study["study_uid"]], study_size = _counted(rows)
            size += study_size
        n = sum(len(sops) for sops in confirmed.values())
        counted += f", {n} instance(s), {human_size(size)}"
    if not _confirmed(args, counted):
        return EXIT_FAILED
    failed = deleted = instances = size = 0
    for study in studies:
        uid = study["study_uid"]
        only = confirmed.get(uid)
        if only is None:  # (--yes: the patient's own instances of it now)
            only, _size = _counted(_patients_own(reader, uid, patient_id, issuer))
        try:
            result = _remove(args, uid, {**study, "level": "study"}, only, audit, "patient")
        except NotStoredError:
            print(f"study {uid}: no longer in the archive (deleted meanwhile)")
            continue
        for problem in result.problems + result.gone:
            print(f"dicomstore: {problem}", file=sys.stderr)
        failed += bool(result.problems)
        deleted += 1
        instances += result.instances
        size += result.bytes
        since = (
            f"; {result.kept} instance(s) kept (another patient's under this Study UID, or"
            " stored since the count)"
            if result.kept
            else ""
        )
        size_text = human_size(result.bytes)
        print(f"deleted study {uid}: {result.instances} instance(s), {size_text}{since}")
    print(
        f"deleted {who}, {name}: {deleted} study(ies), {instances} instance(s), {human_size(size)}"
    )
    try:
        later = patient_studies(reader, patient_id, issuer)
    except NotStoredError:
        later = []
    if later:
        print(
            f"kept {len(later)} study(ies) of the patient holding instances stored since the"
            " count: " + ", ".join(s["study_uid"] for s in later)
        )
    return EXIT_FAILED if failed else EXIT_OK


def _counted(rows: list[dict[str, Any]]) -> tuple[frozenset[str], int]:
    """The SOP Instance UIDs of instance ``rows`` (what a removal is limited to: those
    confirmed) and their bytes."""
    return frozenset(r["sop_instance_uid"] for r in rows), sum(r["file_size"] or 0 for r in rows)


def _patients_own(
    reader: Any, study_uid: str, patient_id: str, issuer: str
) -> list[dict[str, Any]]:
    """The instance rows of ``study_uid`` filed under this patient: with
    ``--on-relational-mismatch accept`` (or files a reindex took in as they were) one
    Study Instance UID may hold another patient's instances too, which are not this
    patient's to delete (review59 H1: they were deleted, unnamed in the audit)."""
    rows = reader.search("instance", {"StudyInstanceUID": study_uid})
    return [r for r in rows if r["patient_id"] == patient_id and (r["issuer"] or "") == issuer]


def patient_studies(reader: Any, patient_id: str, issuer: str | None) -> list[dict[str, Any]]:
    """The study rows of the patient with exactly this Patient ID (no wildcard: ``*``
    and ``?`` are the ID's own characters) and Issuer of Patient ID (None: any, when
    only one issuer's patient has the ID). Raises ``UsageError`` when patients of
    several issuers have it, ``NotStoredError`` when none."""
    from dicomstore.archive.reader import NotStoredError

    rows = [
        r
        for r in reader.search("study", {"PatientID": patient_id})
        if r["patient_id"] == patient_id
    ]
    issuers = sorted({r["issuer"] or "" for r in rows})
    if issuer is not None:
        rows = [r for r in rows if (r["issuer"] or "") == issuer]
    elif len(issuers) > 1:
        named = ", ".join(repr(i) if i else "none" for i in issuers)
        raise UsageError(
            f"Patient ID {patient_id} is held by {len(issuers)} patients (issuers {named}):"
            " choose one with --issuer ('' for none)"
        )
    if not rows:
        of = f" (issuer {issuer!r})" if issuer else ""
        raise NotStoredError(f"no patient {patient_id}{of} in the archive")
    return rows


def _remove(
    args: argparse.Namespace,
    uid: str,
    target: dict[str, Any],
    only: frozenset[str] | None,
    audit: Any,
    selected_by: str,
) -> Any:
    """The audited removal of ``uid`` (``services/deletion.py``: ``target`` its index
    row and level), recorded in ``audit`` and logged, failed or not."""
    from dicomstore.services.deletion import audited_removal

    return audited_removal(
        args.storage, uid, target, audit, selected_by, service=SERVICE, index=args.index, only=only
    )
