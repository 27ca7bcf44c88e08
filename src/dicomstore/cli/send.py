"""`dicomstore send HOST PORT PATH...`: the Storage SCU on the command line (PS3.4 B.2.1).

Paths are files, folders (recursive) or ``-`` (one path a line on stdin).
Exit codes: 0 every instance stored (Success or Warning) or already stored;
1 some stored, some not; 2 usage error, or no DICOM instance in the paths;
when none was stored: 3 unreachable, 4 rejected, 5 aborted, 6 timed out
(every failure had that one cause), else 7 (all failed, or mixed causes);
with --commit, 8 when every instance was stored but not every one is known
committed (PS3.4 J.3).
Non-DICOM files are listed and skipped; they do not change the exit code.
A file that cannot be read is listed and not sent: it counts as not stored.
Corrupt files (cut short) are listed and not sent: they count as not stored.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from dicomstore.aio import loops
from dicomstore.cli.allocator import keep_freed_memory
from dicomstore.cli.identity import IdentityError, user_identity
from dicomstore.cli.logs import LEVELS, add_log_format, one_line, setup_logging
from dicomstore.cli.options import (
    EXIT_ABORTED,
    EXIT_ALL_FAILED,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NOT_COMMITTED,
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_TIMEOUT,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    _int,
    _port,
    _positive,
    _seconds,
    _timeouts,
    add_loop,
    add_scu_parser,
    add_tls_client_options,
    tls_client_context,
    tls_failed,
)
from dicomstore.dimse import status as st
from dicomstore.services.scu_send import SendOptions, send
from dicomstore.services.storage_scu import PRIORITIES, Result

EXIT_BY_KIND = {
    "unreachable": EXIT_UNREACHABLE,
    "rejected": EXIT_REJECTED,
    "aborted": EXIT_ABORTED,
    "timeout": EXIT_TIMEOUT,
}

log = logging.getLogger("dicomstore.send")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``send`` subcommand (with its own ``--log-level``) to ``subparsers``."""

    p = add_scu_parser(
        subparsers,
        "send",
        "send DICOM files to a Storage SCP (Storage SCU)",
        __doc__.split("\n\n")[0],
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="file, folder, or - for stdin")
    p.add_argument(
        "--parallel", type=_int(1), default=1, help="associations in parallel (default 1)"
    )
    add_loop(p)
    p.add_argument(
        "--max-ops",
        type=_int(1, 65535),
        default=16,
        help="C-STOREs outstanding per association if the SCP grants a window (default 16)",
    )
    p.add_argument(
        "--convert",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="when the SCP accepts none of a file's transfer syntaxes, decompress or "
        "re-encode it to one it accepts (default); --no-convert reports it as not sent",
    )
    p.add_argument(
        "--retries", type=_int(0), default=3, help="retries of transient failures (default 3)"
    )
    p.add_argument(
        "--retry-delay", type=_seconds, default=1.0, help="first retry delay in s, doubling (1)"
    )
    p.add_argument("--report", type=Path, help="write one JSON line per instance to FILE")
    p.add_argument("--resume", type=Path, metavar="REPORT", help="skip what REPORT marks as stored")
    p.add_argument("--priority", choices=list(PRIORITIES), default="medium")
    c = p.add_argument_group("Storage Commitment (PS3.4 J.3)")
    c.add_argument(
        "--commit",
        action="store_true",
        help="after the C-STOREs, ask the SCP on the same association to commit to "
        "holding what it stored, and wait for its report (exit code 8 when not all are)",
    )
    c.add_argument(
        "--commit-timeout",
        type=_positive,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for each commitment report (default 60)",
    )
    c.add_argument(
        "--commit-listen",
        type=_port,
        metavar="PORT",
        help="release after the request and take the report on an association the SCP "
        "opens to this port (default: wait on the same association)",
    )
    p.add_argument(
        "--progress",
        choices=["auto", "on", "off"],
        default="auto",
        help="one-line progress on stderr (auto: when stderr is a terminal)",
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="one line per instance (default: failures and the summary only)",
    )
    p.add_argument("--log-level", default="info", choices=list(LEVELS))
    add_log_format(p)
    add_tls_client_options(p)
    return p


# -- report and resume ----------------------------------------------------------


def load_resume(path: Path) -> set[str]:
    """SOP Instance UIDs a previous report marks as stored (Success or Warning)."""
    done: set[str] = set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if row.get("outcome") in ("stored", "warning", "already-stored"):
                uid = row.get("sop_instance_uid")
                if uid:
                    done.add(uid)
    return done


# -- progress ---------------------------------------------------------------------


class Progress:
    """Carriage-return progress on a terminal; one log line per instance with
    ``verbose`` only (otherwise the summary says what went wrong)."""

    def __init__(self, stream: IO[str], enabled: bool, verbose: bool = False) -> None:
        self.stream, self.enabled, self.verbose = stream, enabled, verbose
        self.total = self.total_bytes = self.done = self.done_bytes = 0
        self.start = time.monotonic()
        self._shown = 0.0
        self._dirty = False

    def plan(self, count: int, nbytes: int) -> None:
        self.total, self.total_bytes = count, nbytes
        self.start = time.monotonic()

    def result(self, r: Result) -> None:
        if r.outcome not in ("skipped", "corrupt", "already-stored"):  # not in the plan
            self.done += 1
            self.done_bytes += r.bytes if r.stored else 0
        if self.verbose:
            quiet = r.outcome in ("stored", "already-stored") and not r.file_warning
            self.clear()
            log.log(logging.INFO if quiet else logging.WARNING, "%s", describe(r))
        self.show()

    def show(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._shown < 0.1):
            return
        self._shown = now
        elapsed = max(now - self.start, 1e-6)
        rate = self.done_bytes / elapsed
        left = max(self.total_bytes - self.done_bytes, 0)
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        self.stream.write(
            f"\r{self.done}/{self.total} instances  {self.done_bytes / 1e6:.1f}/"
            f"{self.total_bytes / 1e6:.1f} MB  {rate / 1e6:.1f} MB/s  ETA {eta}   "
        )
        self.stream.flush()
        self._dirty = True

    def clear(self) -> None:
        if self._dirty:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._dirty = False

    def close(self) -> None:
        self.show(force=True)
        self.clear()


def describe(r: Result) -> str:
    """One log line for a result."""
    what = r.path or r.sop_instance_uid or "?"
    if r.outcome in ("skipped", "already-stored", "not-sent", "corrupt"):
        return f"{r.outcome}: {what}" + (f": {r.reason}" if r.reason else "")
    text = f"{r.outcome}: {what}"
    if r.status is not None:
        text += f" [{r.status:04X} {st.describe(r.status)}]"
        if r.error_comment:
            text += f" {r.error_comment}"
    elif r.reason:
        text += f": {r.reason}"
    if r.converted:
        text += " (converted)"
    if r.file_warning:
        text += f" (file warning: {r.file_warning})"
    return text


# -- summary and exit code ----------------------------------------------------------


def _why(r: Result) -> str:
    """What the peer said of ``r``: the status and its Error Comment (the reason, where a
    status's own meaning may mislead: an A900 for a study filed under another patient,
    a B000 for a duplicate kept as it was), else what went wrong here."""
    if r.status is not None:
        said = f"{r.status:04X} {st.describe(r.status)}"
        return f"{said}: {r.error_comment}" if r.error_comment else said
    return r.reason or r.error_kind or "unknown"  # (the reason: review48 L3, 'rejected')


#: Kinds of answer the summary's count lines name (the rest: "and N other kinds").
SUMMARY_KINDS = 5


def summary(results: list[Result], seconds: float) -> list[str]:
    """The closing lines: sent, warnings by status, failed by status, skipped."""
    by: dict[str, list[Result]] = {}
    for r in results:
        by.setdefault(r.outcome, []).append(r)
    stored = by.get("stored", []) + by.get("warning", [])
    nbytes = sum(r.bytes for r in stored)
    converted = sum(r.converted for r in stored)
    lines = [
        f"sent {len(stored)} instance(s), {nbytes / 1e6:.1f} MB in {seconds:.2f} s "
        f"({nbytes / 1e6 / max(seconds, 1e-6):.1f} MB/s)"
        + (f", {converted} converted (--convert)" if converted else "")
    ]

    def counted(rs: Iterable[Result]) -> str:
        kinds = Counter(map(_why, rs)).most_common()
        text = ", ".join(f"{why} x{n}" for why, n in kinds[:SUMMARY_KINDS])
        more = len(kinds) - SUMMARY_KINDS
        return text + (f", and {more} other kind(s)" if more > 0 else "")

    if by.get("warning"):
        lines.append(f"  warnings: {len(by['warning'])} ({counted(by['warning'])})")
    if by.get("failed"):
        lines.append(f"  failed: {len(by['failed'])} ({counted(by['failed'])})")
    for r in by.get("failed", [])[:20]:
        lines.append(f"    {r.path or r.sop_instance_uid}: {_why(r)}")
    if by.get("not-sent"):
        lines.append(f"  not sent: {len(by['not-sent'])}")
    for r in by.get("not-sent", [])[:20]:
        lines.append(f"    {r.path or r.sop_instance_uid}: {r.reason}")
    if by.get("corrupt"):
        lines.append(f"  corrupt (not sent): {len(by['corrupt'])}")
    for r in by.get("corrupt", [])[:20]:
        lines.append(f"    {r.path}: {r.reason}")
    warned = [r for r in results if r.file_warning]
    if warned:
        lines.append(f"  file warnings (sent all the same): {len(warned)}")
    for r in warned[:20]:
        lines.append(f"    {r.path}: {r.file_warning}")
    if by.get("skipped"):
        lines.append(f"  skipped (not an instance to send): {len(by['skipped'])}")
    for r in by.get("skipped", [])[:20]:
        lines.append(f"    {r.path}: {r.reason}")
    if by.get("already-stored"):
        lines.append(f"  already stored (--resume): {len(by['already-stored'])}")
    asked = [r for r in results if r.commitment is not None]
    if asked:
        from dicomstore.services.commitment_scu import failure_reason_text  # (loads pydicom)

        committed = sum(r.commitment == "committed" for r in asked)
        lines.append(f"committed {committed} of {len(asked)} stored instance(s)")
        unknown = Counter(r.commitment_reason for r in asked if r.commitment == "unknown")
        for why, n in unknown.most_common(SUMMARY_KINDS):
            lines.append(f"  unknown: {n} ({why or 'no report'})")
        for r in [r for r in asked if r.commitment != "committed"][:20]:
            why = f", {failure_reason_text(r.failure_reason)}" if r.commitment == "failed" else ""
            lines.append(f"    {r.path or r.sop_instance_uid}: {r.commitment}{why}")
    return lines


def exit_code(results: list[Result]) -> int:
    """0 / 1 / 3-6 / 7 / 8 as in the module docstring."""
    if not any(r.outcome != "skipped" for r in results):
        return EXIT_USAGE
    attempted = [r for r in results if r.outcome not in ("skipped", "already-stored")]
    bad = [r for r in attempted if not r.stored]
    if not bad:
        uncommitted = any(r.commitment not in (None, "committed") for r in attempted)
        return EXIT_NOT_COMMITTED if uncommitted else EXIT_OK
    if len(bad) < len(attempted):
        return EXIT_FAILED
    kinds = {r.error_kind for r in bad}
    if len(kinds) == 1 and None not in kinds:
        return EXIT_BY_KIND[kinds.pop()]  # type: ignore[index]
    return EXIT_ALL_FAILED


# -- running ------------------------------------------------------------------------


def _commitment_line(r: Result) -> dict[str, Any]:
    """The report line saying whether an instance is committed (``send --commit``)."""
    return {
        "event": "commitment",
        "path": r.path,
        "sop_instance_uid": r.sop_instance_uid,
        "commitment": r.commitment,
        "failure_reason": r.failure_reason,
    }


def run(args: argparse.Namespace) -> int:
    """Run `dicomstore send` with parsed arguments; returns the exit code."""
    # (review112 L1: each try of an instance refused for a while, "..., retrying", is
    # -v's, or a --log-level below info's; without, the summary says how it ended)
    quiet = not args.verbose and args.log_level == "info"
    logging.getLogger("dicomstore.send").setLevel(logging.WARNING if quiet else logging.NOTSET)
    missing = [p for p in args.paths if p != "-" and not os.path.lexists(p)]
    if missing:  # (as storescu: a typo in a path sends nothing, not the rest)
        for path in missing:
            print(f"dicomstore: no such file or folder: {path}", file=sys.stderr)
        return EXIT_USAGE
    try:
        skip = load_resume(args.resume) if args.resume else set()
    except OSError as exc:
        print(f"dicomstore: cannot read {args.resume}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    report = None
    if args.report:
        same = args.resume is not None and args.resume.resolve() == args.report.resolve()
        try:
            report = open(args.report, "a" if same else "w", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            print(f"dicomstore: cannot write {args.report}: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
    enabled = args.progress == "on" or (args.progress == "auto" and sys.stderr.isatty())
    progress = Progress(sys.stderr, enabled, args.verbose)

    def on_result(r: Result) -> None:
        if report is not None:
            report.write(json.dumps(r.to_json()) + "\n")
            report.flush()
        progress.result(r)

    timeouts = _timeouts(args)
    options = SendOptions(
        called_ae=args.aec,
        calling_ae=args.aet,
        parallel=args.parallel,
        max_ops=args.max_ops,
        max_pdu=args.max_pdu,
        convert=args.convert,
        retries=args.retries,
        retry_delay=args.retry_delay,
        priority=PRIORITIES[args.priority],
        timeouts=timeouts,
        commit=args.commit or args.commit_listen is not None,
        commit_timeout=args.commit_timeout,
    )

    try:
        options.identity = user_identity(args)
    except IdentityError as exc:
        print(f"dicomstore: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        options.ssl = tls_client_context(args)
    except (OSError, ValueError) as exc:
        return tls_failed(exc)

    async def sending() -> list[Result]:
        go = send(
            args.host,
            args.port,
            args.paths,
            options=options,
            skip_uids=skip,
            on_plan=progress.plan,
            on_result=on_result,
        )
        if args.commit_listen is None:
            return await go
        from dicomstore.services.commitment_listener import ReportListener

        listener = ReportListener(args.commit_listen, ae_title=args.aet, timeouts=timeouts)
        try:
            await listener.start()
        except OSError:
            go.close()
            raise
        options.commit_listener = listener
        try:
            return await go
        finally:
            await listener.close()

    start = time.monotonic()
    try:
        results = loops.run(sending(), args.loop)
        if report is not None:  # each commitment, once known (PS3.4 J.3.3)
            for r in results:
                if r.commitment is not None:
                    report.write(json.dumps(_commitment_line(r)) + "\n")
    except OSError as exc:  # --commit-listen PORT cannot be bound
        if args.commit_listen is None:
            raise
        print(f"dicomstore: cannot listen on port {args.commit_listen}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE  # (README: 3, the server cannot listen; review48 L7)
    except KeyboardInterrupt:  # Ctrl-C: what was answered is in the report, flushed
        progress.close()
        where = f"; each answer so far is in {args.report}" if report is not None else ""
        print(
            f"dicomstore: interrupted after {progress.done} of {progress.total} instance(s){where}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    finally:
        progress.close()
        if report is not None:
            report.close()
    for line in summary(results, time.monotonic() - start):
        print(one_line(line))  # (the peer's Error Comments among them: review38scu #6)
    code = exit_code(results)
    if code == EXIT_USAGE:
        print("dicomstore: no DICOM instance to send in the given paths", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """``python -m dicomstore.cli.send HOST PORT PATH...`` (the same as `dicomstore send`)."""
    if argv is None:  # (the process is ours, as the console script's: allocator.py)
        keep_freed_memory()
    from dicomstore.cli import Parser

    parser = Parser(prog="dicomstore")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["send", *(sys.argv[1:] if argv is None else argv)])
    setup_logging(args.log_level, args.log_format)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
