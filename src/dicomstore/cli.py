"""The `dicomstore` command line: serve, echo, send, check, reindex.

Exit codes (echo and send): 0 success, 1 failure reported by the peer (or
partial failure for send), 2 usage error, 3 connection refused or
unreachable, 4 association rejected, 5 association aborted, 6 timed out,
7 (send) nothing stored, for failure statuses or mixed causes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

from dicomstore import uids
from dicomstore.aio.association import Timeouts
from dicomstore.errors import (
    AssociationAborted,
    AssociationError,
    AssociationRejected,
    DimseTimeout,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_REJECTED = 4
EXIT_ABORTED = 5
EXIT_TIMEOUT = 6

log = logging.getLogger("dicomstore")


def _ae_title(value: str) -> str:
    text = value.strip()
    if not 0 < len(text) <= 16 or not text.isascii() or "\\" in text or not text.isprintable():
        raise argparse.ArgumentTypeError(f"not a valid AE title (1-16 ASCII characters): {value!r}")
    return text


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 0-65535: {port}")
    return port


def _pdu(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if n != 0 and not 4096 <= n <= 2**32 - 1:
        raise argparse.ArgumentTypeError("maximum PDU must be 0 (unlimited) or 4096 .. 4294967295")
    return n


def _positive(value: str) -> float:
    try:
        n = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return n


def _count(value: str) -> int:
    """A whole number >= 0 (0 usually meaning "no limit")."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return n


def _size(value: str) -> int:
    """A byte count with an optional K/M/G/T suffix (powers of 1024)."""
    text = value.strip().upper().removesuffix("B")
    scale = 1
    if text and text[-1] in "KMGT":
        scale = 1024 ** ("KMGT".index(text[-1]) + 1)
        text = text[:-1]
    try:
        n = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {value!r} (e.g. 512M, 4G)") from None
    if n < 0:
        raise argparse.ArgumentTypeError("a size cannot be negative")
    return int(n * scale)


def _transfer_syntax(value: str) -> str:
    aliases = {
        "explicit": uids.EXPLICIT_VR_LE,
        "implicit": uids.IMPLICIT_VR_LE,
        "big": uids.EXPLICIT_VR_BE,
        "deflated": uids.DEFLATED_EXPLICIT_VR_LE,
    }
    uid = aliases.get(value.lower(), value)
    if uid not in uids.transfer_syntaxes():
        raise argparse.ArgumentTypeError(f"unknown transfer syntax: {value!r}")
    return uid


def add_tls_client_options(p: argparse.ArgumentParser) -> None:
    """TLS options of the SCU commands (echo, send): PS3.15 B.9."""
    g = p.add_argument_group("TLS")
    g.add_argument("--tls", action="store_true", help="connect with TLS (1.2 or newer)")
    g.add_argument(
        "--tls-ca",
        type=Path,
        metavar="PEM",
        help="CA certificate(s) to verify the server (default: system store)",
    )
    g.add_argument("--tls-cert", type=Path, metavar="PEM", help="our client certificate")
    g.add_argument("--tls-key", type=Path, metavar="PEM", help="our client private key")
    g.add_argument(
        "--tls-no-verify",
        action="store_true",
        help="do not verify the server's certificate (testing only)",
    )


def tls_failed(exc: Exception) -> int:
    """One line for TLS options that cannot be used (a file missing or not usable);
    the usage exit code."""
    print(f"dicomstore: cannot set up TLS: {exc}", file=sys.stderr)
    return EXIT_USAGE


def tls_client_context(args: argparse.Namespace):
    """The SSL context the SCU options ask for, or None without --tls."""
    if not (args.tls or args.tls_ca or args.tls_cert):
        return None
    from dicomstore.tls import client_context

    return client_context(args.tls_ca, args.tls_cert, args.tls_key, verify=not args.tls_no_verify)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity",
    )


def _timeouts(args: argparse.Namespace) -> Timeouts:
    t = Timeouts()
    if getattr(args, "acse_timeout", None):
        t.acse = args.acse_timeout
    if getattr(args, "artim_timeout", None):
        t.artim = args.artim_timeout
    if getattr(args, "dimse_timeout", None):
        t.dimse = args.dimse_timeout
    if getattr(args, "idle_timeout", None):
        t.network = args.idle_timeout
    if getattr(args, "operation_timeout", None):
        t.operation = args.operation_timeout
    return t


def build_parser() -> argparse.ArgumentParser:
    """All subcommands and options (documented in the README)."""
    parser = argparse.ArgumentParser(prog="dicomstore", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the Storage/Verification SCP")
    s.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)",
    )
    s.add_argument("--port", type=_port, default=11112, help="TCP port (default 11112)")
    s.add_argument(
        "--aet", type=_ae_title, default="DICOMSTORE", help="our AE title (default DICOMSTORE)"
    )
    s.add_argument(
        "--storage",
        type=Path,
        default=Path("dicomstore-data"),
        help="archive root (default ./dicomstore-data, created if missing)",
    )
    s.add_argument(
        "--max-associations",
        type=int,
        default=50,
        help="simultaneous associations; beyond, reject as transient (default 50)",
    )
    s.add_argument(
        "--max-pdu",
        type=_pdu,
        default=1024 * 1024,
        help="maximum P-DATA-TF length we receive, 0 = unlimited (default 1048576)",
    )
    s.add_argument(
        "--require-called-aet",
        action="store_true",
        help="reject associations whose called AE title is not --aet",
    )
    s.add_argument(
        "--allow-calling-aet",
        type=_ae_title,
        action="append",
        metavar="AET",
        help="accept only these calling AE titles (repeatable; default: any)",
    )
    s.add_argument(
        "--store-aet",
        type=_ae_title,
        action="append",
        metavar="AET",
        help="only these calling AE titles may C-STORE, others get 0124 (repeatable)",
    )
    s.add_argument(
        "--accept-unknown-sop-classes",
        action="store_true",
        help="also accept private or newer SOP classes as storage",
    )
    s.add_argument(
        "--transfer-syntax",
        type=_transfer_syntax,
        action="append",
        metavar="TS",
        help="accepted transfer syntaxes in order of preference (repeatable; UID or "
        "explicit/implicit/big/deflated; default: every known, uncompressed "
        "first)",
    )
    s.add_argument(
        "--transfer-syntax-order",
        choices=["ours", "proposed"],
        default="ours",
        help="of a context's proposed transfer syntaxes that we accept, take the first of "
        "ours (default: uncompressed first) or the first the sender proposed (keeps "
        "what a modality sends compressed)",
    )
    s.add_argument(
        "--fsync",
        choices=["on", "off"],
        default="on",
        help="flush every instance to disk before Success (default on)",
    )
    s.add_argument(
        "--on-duplicate",
        choices=["keep", "replace", "reject"],
        default="keep",
        help="an already stored SOP Instance UID arrives again (default keep)",
    )
    s.add_argument(
        "--on-class-mismatch",
        choices=["reject", "tolerate"],
        default="reject",
        help="the data set's SOP Class UID differs from the command's: refuse (A900, "
        "default) or store as sent and answer B007",
    )
    s.add_argument(
        "--on-relational-mismatch",
        choices=["reject", "accept"],
        default="reject",
        help="the data set's Series UID is filed under another study, or its Study UID "
        "under another patient: refuse (A900, default) or store it under its own study "
        "and patient",
    )
    s.add_argument(
        "--trailing-padding",
        choices=["keep", "discard"],
        default="keep",
        help="a data set ending with Data Set Trailing Padding (FFFC,FFFC): store it as "
        "sent (default) or without the padding and answer B006",
    )
    s.add_argument(
        "--max-ops",
        type=int,
        default=16,
        help="asynchronous operations window granted to senders (default 16)",
    )
    t = s.add_argument_group("TLS")
    t.add_argument("--tls-cert", type=Path, metavar="PEM", help="our certificate: enables TLS")
    t.add_argument("--tls-key", type=Path, metavar="PEM", help="our private key")
    t.add_argument(
        "--tls-ca", type=Path, metavar="PEM", help="CA certificate(s) client certificates chain to"
    )
    t.add_argument(
        "--tls-require-client-cert",
        action="store_true",
        help="refuse clients without a certificate signed by --tls-ca",
    )
    s.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="policy file (TOML): known peers, what they may do, users, JWT keys",
    )
    s.add_argument(
        "--audit-log",
        type=Path,
        metavar="FILE",
        help="append one JSON line per association and per stored instance",
    )
    lim = s.add_argument_group("limits")
    lim.add_argument(
        "--max-per-calling-aet",
        type=_count,
        default=0,
        metavar="N",
        help="simultaneous associations per calling AE title (default: no limit)",
    )
    lim.add_argument(
        "--max-per-address",
        type=_count,
        default=0,
        metavar="N",
        help="simultaneous associations per peer address (default: no limit)",
    )
    lim.add_argument(
        "--max-failed-admissions",
        type=_count,
        default=10,
        metavar="N",
        help="after N associations from one address refused by --config's policy within "
        "--failed-admission-window, refuse that address at once (default 10; 0: never)",
    )
    lim.add_argument(
        "--failed-admission-window",
        type=_positive,
        default=60.0,
        metavar="SECONDS",
        help="the window of --max-failed-admissions (default 60)",
    )
    lim.add_argument(
        "--max-instance-size",
        type=_size,
        default=0,
        metavar="SIZE",
        help="largest data set accepted, e.g. 4G; larger: A700 (default: no limit)",
    )
    lim.add_argument(
        "--min-free",
        type=_size,
        default=0,
        metavar="SIZE",
        help="answer A700 before writing when less is free, e.g. 1G (default 0)",
    )
    lim.add_argument(
        "--operation-timeout",
        type=_positive,
        metavar="S",
        help="seconds one incoming message may take (default 3600)",
    )
    h = s.add_argument_group("DICOMweb and browse page (PS3.18)")
    h.add_argument("--http-port", type=_port, help="serve DICOMweb and the browse page here")
    h.add_argument("--http-host", help="address for HTTP (default: --host)")
    s.add_argument("--acse-timeout", type=_positive, help="seconds (default 30)")
    s.add_argument(
        "--artim-timeout",
        type=_positive,
        help="seconds to wait for an association request or a close (default 30)",
    )
    s.add_argument(
        "--idle-timeout",
        type=_positive,
        help="seconds an association may stay silent (default 600)",
    )
    _add_common(s)

    e = sub.add_parser("echo", help="C-ECHO a DICOM peer (Verification SCU)")
    e.add_argument("host")
    e.add_argument("port", type=_port)
    e.add_argument("--aet", type=_ae_title, default="DICOMSTORE", help="our (calling) AE title")
    e.add_argument("--aec", type=_ae_title, default="ANY-SCP", help="the peer's (called) AE title")
    e.add_argument("--max-pdu", type=_pdu, default=1024 * 1024)
    e.add_argument("--repeat", type=int, default=1, help="number of C-ECHOs (default 1)")
    e.add_argument("--acse-timeout", type=_positive, help="seconds (default 30)")
    e.add_argument("--dimse-timeout", type=_positive, help="seconds (default unlimited)")
    add_tls_client_options(e)
    _add_common(e)

    from dicomstore import cli_access, cli_send

    cli_send.add_parser(sub)
    cli_access.add_parsers(sub)

    c = sub.add_parser("check", help="verify the archive's files against its index")
    c.add_argument("--storage", type=Path, default=Path("dicomstore-data"))
    _add_common(c)
    r = sub.add_parser("reindex", help="rebuild the archive's index from its files")
    r.add_argument("--storage", type=Path, default=Path("dicomstore-data"))
    _add_common(r)
    cs = sub.add_parser(
        "conformance", help="print the DICOM Conformance Statement (PS3.2, Markdown)"
    )
    _add_common(cs)
    return parser


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _open_archive(storage: Path, **options: Any) -> Any:
    """The archive at ``storage`` (created if missing), or ``None`` after one line
    on stderr saying why it cannot be opened."""
    import sqlite3

    from dicomstore.archive import Archive
    from dicomstore.archive.index import SchemaError

    try:
        return Archive(storage, **options)
    except (OSError, sqlite3.Error, SchemaError) as exc:
        _cannot_open(storage, exc)
        return None


def _cannot_open(storage: Path, exc: BaseException) -> None:
    why = getattr(exc, "strerror", None) or str(exc)
    where = getattr(exc, "filename", None) or storage
    print(f"dicomstore: cannot open the archive {storage}: {where}: {why}", file=sys.stderr)


async def _serve(args: argparse.Namespace) -> int:
    from dicomstore.services.server import WHEN_BUSY, Server, ServerConfig

    fsync = args.fsync == "on"
    config = ServerConfig(
        ae_title=args.aet,
        host=args.host,
        port=args.port,
        max_associations=args.max_associations,
        max_pdu=args.max_pdu,
        require_called_aet=args.require_called_aet,
        allowed_calling_aets=frozenset(args.allow_calling_aet) if args.allow_calling_aet else None,
        store_aets=frozenset(args.store_aet) if args.store_aet else None,
        accept_unknown=args.accept_unknown_sop_classes,
        max_ops=args.max_ops,
        timeouts=_timeouts(args),
        max_per_calling_ae=args.max_per_calling_aet,
        max_per_address=args.max_per_address,
        max_failed_admissions=args.max_failed_admissions,
        failed_admission_window=args.failed_admission_window,
        max_instance_bytes=args.max_instance_size,
        min_free_bytes=args.min_free,
        prefer_proposed_transfer_syntax=args.transfer_syntax_order == "proposed",
    )
    if args.transfer_syntax:
        config.transfer_syntaxes = tuple(args.transfer_syntax)
    if args.tls_cert or args.tls_key:
        from dicomstore.tls import server_context

        if not (args.tls_cert and args.tls_key):
            print("dicomstore: --tls-cert and --tls-key go together", file=sys.stderr)
            return EXIT_USAGE
        try:
            config.ssl = server_context(
                args.tls_cert,
                args.tls_key,
                args.tls_ca,
                require_client_cert=args.tls_require_client_cert,
            )
        except (OSError, ValueError) as exc:
            return tls_failed(exc)
    if not fsync:
        log.warning("--fsync off: acknowledged instances can be lost on a power cut or crash")
    gatekeeper = None
    if args.config is not None:
        from dicomstore.policy import Policy, PolicyError

        try:
            gatekeeper = Policy.load(args.config)
        except PolicyError as exc:
            print(f"dicomstore: {exc}", file=sys.stderr)
            return EXIT_USAGE
    audit = None
    if args.audit_log is not None:
        from dicomstore.audit import AuditLog

        try:
            audit = AuditLog(args.audit_log)
        except OSError as exc:
            print(f"dicomstore: cannot open {args.audit_log}: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
    archive = _open_archive(
        args.storage,
        fsync=fsync,
        on_duplicate=args.on_duplicate,
        on_class_mismatch=args.on_class_mismatch,
        trailing_padding=args.trailing_padding,
        on_relational_mismatch=args.on_relational_mismatch,
    )
    if archive is None:
        if audit is not None:
            audit.close()
        return EXIT_USAGE
    # Without fsync a commit is a few page-cache writes: cheaper inline than a thread hop;
    # with it, in a thread while others could be served meanwhile (services.server.WHEN_BUSY).
    in_thread = WHEN_BUSY if fsync else False
    server = Server(config, archive, commit_in_thread=in_thread, gatekeeper=gatekeeper, audit=audit)
    try:
        await server.start()
    except OSError as exc:
        print(
            f"dicomstore: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr
        )
        if audit is not None:
            audit.close()
        return EXIT_UNREACHABLE
    http = None
    if args.http_port is not None:
        from dicomstore.http import HttpServer, build_app

        app = build_app(
            archive,
            ae_title=args.aet,
            accept_unknown=args.accept_unknown_sop_classes,
            store=server.store,  # STOW-RS: the same authorization, limits, audit, events
        )
        http = HttpServer(app, args.http_host or args.host, args.http_port)
        try:
            await http.start()
        except OSError as exc:
            print(
                f"dicomstore: cannot listen for HTTP on port {args.http_port}: {exc.strerror}",
                file=sys.stderr,
            )
            await server.close(grace=0)
            return EXIT_UNREACHABLE
        log.info(
            "DICOMweb and browse page on http://%s:%d/", args.http_host or args.host, http.port
        )
    log.info("storing into %s", args.storage.resolve())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    serving = asyncio.create_task(server.serve_forever())
    await stop.wait()
    log.info("shutting down: finishing in-flight operations")
    if http is not None:
        await http.close()
    await server.close()
    serving.cancel()
    if audit is not None:
        audit.close()  # drains: every record of this run is on disk
    archive.close()
    return EXIT_OK


async def _echo(args: argparse.Namespace) -> int:
    from dicomstore.aio.client import associate
    from dicomstore.dimse import status as st

    assoc = await associate(
        args.host,
        args.port,
        called_ae=args.aec,
        calling_ae=args.aet,
        max_pdu=args.max_pdu,
        timeouts=_timeouts(args),
        ssl=tls_client_context(args),
    )
    try:
        for _ in range(args.repeat):
            rsp = await assoc.echo()
            if rsp.status != 0:
                print(
                    f"dicomstore: C-ECHO answered {rsp.status:#06x} ({st.describe(rsp.status)})",
                    file=sys.stderr,
                )
                return EXIT_FAILED
    finally:
        await assoc.release()
    print(f"C-ECHO to {args.aec}@{args.host}:{args.port}: success")
    return EXIT_OK


def run_client(coro) -> int:
    """Run a client coroutine; turn network failures into one line and an exit code."""
    from dicomstore.tls import TLSFileError

    try:
        return asyncio.run(coro)
    except TLSFileError as exc:
        return tls_failed(exc)
    except AssociationRejected as exc:
        print(f"dicomstore: {exc}", file=sys.stderr)
        return EXIT_REJECTED
    except AssociationAborted as exc:
        print(f"dicomstore: {exc}", file=sys.stderr)
        return EXIT_ABORTED
    except DimseTimeout as exc:
        print(f"dicomstore: timed out: {exc}", file=sys.stderr)
        return EXIT_TIMEOUT
    except AssociationError as exc:
        text = str(exc)
        print(f"dicomstore: {text}", file=sys.stderr)
        return EXIT_TIMEOUT if "timed out" in text or "within" in text else EXIT_FAILED
    except ssl.SSLError as exc:
        print(f"dicomstore: TLS failed: {exc.reason or exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ConnectionRefusedError:
        print("dicomstore: connection refused (is the server running?)", file=sys.stderr)
        return EXIT_UNREACHABLE
    except OSError as exc:
        print(f"dicomstore: cannot connect: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_UNREACHABLE


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `dicomstore` console script."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    if args.command == "serve":
        try:
            return asyncio.run(_serve(args))
        except KeyboardInterrupt:
            return EXIT_OK
    if args.command == "echo":
        return run_client(_echo(args))
    if args.command == "send":
        from dicomstore import cli_send

        return cli_send.run(args)
    if args.command == "conformance":
        from dicomstore.conformance import statement

        print(statement(), end="")
        return EXIT_OK
    from dicomstore import cli_access

    if args.command in cli_access.COMMANDS:
        return cli_access.run(args)
    if args.command in ("check", "reindex"):
        from dicomstore.archive.layout import INDEX_FILE

        # check needs an index to check against; reindex needs the files' folder
        needed = args.storage / INDEX_FILE if args.command == "check" else args.storage
        if not needed.exists():
            print(f"dicomstore: no archive at {args.storage} (no {needed.name})", file=sys.stderr)
            return EXIT_FAILED
        return _check_or_reindex(args)
    return EXIT_USAGE


def _check_or_reindex(args: argparse.Namespace) -> int:
    """``check`` (after recovery when no server runs) and ``reindex`` (refused while
    one runs): ``archive.maintenance.run_check`` / ``run_reindex``."""
    import sqlite3

    from dicomstore.archive import maintenance
    from dicomstore.archive.index import SchemaError
    from dicomstore.archive.recovery import ArchiveBusyError

    root = args.storage.resolve()
    left_out: list[str] = []
    try:
        if args.command == "reindex":
            count = maintenance.run_reindex(root, left_out)
        else:
            problems = maintenance.run_check(root)
    except ArchiveBusyError as exc:
        print(
            f"dicomstore: {args.command}: the archive {args.storage} is {exc.strerror}:"
            " stop the server first",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except SchemaError as exc:  # check of an index made by another version
        print(f"dicomstore: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (OSError, sqlite3.Error) as exc:
        _cannot_open(args.storage, exc)
        return EXIT_USAGE
    if args.command == "reindex":
        for line in left_out:
            print(line)
        print(
            f"reindexed {count} instances"
            + (f", {len(left_out)} file(s) left out" if left_out else "")
        )
        return EXIT_OK
    for problem in problems:
        print(problem)
    print(f"{len(problems)} problem(s)")
    return EXIT_FAILED if problems else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
