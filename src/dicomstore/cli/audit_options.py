"""The audit log's options (``dicomstore.audit``, PS3.15 A.5): ``--audit-log FILE`` and
how it is rotated, shared by every command that writes audit records (``serve``,
``get --storage``, ``delete``: the same file, the same rotation), and the log they
open."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from dicomstore.audit import DEFAULT_KEEP, DEFAULT_MAX_BYTES, AuditLog
from dicomstore.cli.logs import refuse
from dicomstore.cli.options import EXIT_FAILED, EXIT_OK, _count, _size


def add_audit_log(parser: Any, *, rotates: bool = True) -> None:
    """``--audit-log FILE``, and for the server (``rotates``) ``--audit-log-max-size
    SIZE``, ``--audit-log-keep N``: a command that adds records to the server's file
    (``get --storage``, ``delete``) never rotates it (review59 L1: by its own defaults
    it rotated a file the server leaves to logrotate); the server's next write does."""
    parser.add_argument(
        "--audit-log",
        type=Path,
        metavar="FILE",
        help="append one JSON line per audited event (associations, stored instances, "
        "queries, retrievals, commitments, HTTP reads, deletes; README: Security)"
        + ("" if rotates else "; the server's file: never rotated by this command"),
    )
    if not rotates:
        return
    parser.add_argument(
        "--audit-log-max-size",
        type=_size,
        default=DEFAULT_MAX_BYTES,
        metavar="SIZE",
        help="rotate the audit log when it would grow beyond SIZE: FILE becomes FILE.1, "
        "FILE.1 FILE.2 ... (default 64M; 0: never, e.g. for logrotate)",
    )
    parser.add_argument(
        "--audit-log-keep",
        type=_count,
        default=DEFAULT_KEEP,
        metavar="N",
        help="rotated files of the audit log to keep: older ones are deleted, with a "
        "WARNING (default 0: keep every one, no record is ever deleted)",
    )


def open_audit_log(args: argparse.Namespace) -> Any:
    """The audit log at ``args.audit_log`` (``dicomstore.audit.AuditLog``), rotated as
    ``args`` say, or ``None`` after one line on stderr saying why it cannot be opened."""
    try:
        max_bytes = getattr(args, "audit_log_max_size", 0)  # (0: never rotated here)
        return AuditLog(
            args.audit_log, max_bytes=max_bytes, keep=getattr(args, "audit_log_keep", 0)
        )
    except OSError as exc:
        refuse(f"cannot open the audit log (--audit-log) {args.audit_log}: {exc.strerror}")
        return None


def close_audit_log(audit: AuditLog) -> bool:
    """Close ``audit`` (every record written); False after an ERROR line saying how
    many records could not be written (its disk still full), not a traceback."""
    try:
        audit.close()
        return True
    except OSError as exc:
        logging.getLogger("dicomstore.audit").error("%s", exc.strerror or exc)
        return False


def audited_exit(code: int, audit: AuditLog | None) -> int:
    """The exit code of a command that ran with ``audit`` (closed): ``code``, but 1
    for one that ended well whose audit trail is not whole (records dropped while
    it ran, or not written at the close: ERROR lines said so then), as ``delete``
    fails when its record cannot be written."""
    if code == EXIT_OK and audit is not None and not audit.complete:
        return EXIT_FAILED
    return code
