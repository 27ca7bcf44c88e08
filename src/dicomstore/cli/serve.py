"""``dicomstore serve``: the Storage and Verification SCP, and DICOMweb beside it."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import sys
from dataclasses import MISSING
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from dicomstore.cli.http_options import (
    add_http_options,
    announce,
    http_security,
    https_context,
)
from dicomstore.cli.options import (
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    _add_common,
    _ae_address,
    _ae_title,
    _cannot_open,
    _count,
    _forward_rule,
    _http_url,
    _int,
    _pdu,
    _port,
    _positive,
    _seconds,
    _size,
    _timeouts,
    _transfer_syntax,
    add_index,
    log,
    tls_failed,
)
from dicomstore.services.server import ServerConfig

#: The server's defaults have one home, :class:`ServerConfig`; the options show them
#: (its plain defaults, read without making one: a transfer syntax list needs pydicom,
#: which a command such as ``echo`` never loads).
_D = SimpleNamespace(
    **{f.name: f.default for f in dataclasses.fields(ServerConfig) if f.default is not MISSING}
)


def add_parser(sub: Any) -> None:
    """The ``serve`` subcommand and its options (README: "dicomstore serve")."""
    s = sub.add_parser(
        "serve",
        help="run the Storage/Verification SCP",
        epilog="Every option can also be set in --server-config FILE (TOML, "
        "max-associations = 20) or as DICOMSTORE_MAX_ASSOCIATIONS=20; "
        "the command line wins over the environment, which wins over the file.",
    )
    s.add_argument(
        "--server-config",
        type=Path,
        metavar="FILE",
        help="TOML file of serve's options, named like the long options (README: Operations)",
    )
    s.add_argument(
        "--host",
        default=_D.host,
        help=f"address to listen on (default {_D.host}; 0.0.0.0 for all)",
    )
    s.add_argument("--port", type=_port, default=_D.port, help=f"TCP port (default {_D.port})")
    s.add_argument(
        "--aet", type=_ae_title, default=_D.ae_title, help=f"our AE title (default {_D.ae_title})"
    )
    s.add_argument(
        "--storage",
        type=Path,
        default=Path("dicomstore-data"),
        help="archive root (default ./dicomstore-data, created if missing)",
    )
    add_index(s)
    s.add_argument(
        "--max-associations",
        type=int,
        default=_D.max_associations,
        help="simultaneous associations; beyond, reject as transient "
        f"(default {_D.max_associations})",
    )
    s.add_argument(
        "--max-pdu",
        type=_pdu,
        default=_D.max_pdu,
        help=f"maximum P-DATA-TF length we receive, 0 = unlimited (default {_D.max_pdu})",
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
        "--move-destination",
        type=_ae_address,
        action="append",
        metavar="AET=HOST:PORT",
        help="a Storage SCP a C-MOVE may name by its AE title (repeatable; also "
        "[destinations] in the --config policy file; any other title gets A801)",
    )
    s.add_argument(
        "--commitment-scu",
        type=_ae_address,
        action="append",
        metavar="AET=HOST:PORT",
        help="where a Storage Commitment SCU takes its report when the association of "
        "its request has ended (repeatable; also [commitment_scus] in the --config "
        "policy file)",
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
        default=_D.max_ops,
        help=f"asynchronous operations window granted to senders (default {_D.max_ops})",
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
    ev = s.add_argument_group("study-complete events")
    ev.add_argument(
        "--stable-age",
        type=_seconds,
        default=_D.stable_age,
        metavar="SECONDS",
        help="a study is stable (complete) after this long without a new instance: "
        f"logged to <storage>/.events/study-stable.jsonl (default {_D.stable_age:g}; 0: off)",
    )
    ev.add_argument(
        "--on-stable-exec",
        metavar="COMMAND",
        help="run COMMAND (no shell) when a study is stable: {study}, {folder} and "
        "{patient} replaced, else the study UID and folder appended",
    )
    ev.add_argument(
        "--stable-webhook",
        type=_http_url,
        metavar="URL",
        help="POST each study-complete event to URL as JSON",
    )
    fw = s.add_argument_group("forwarding (README: Forwarding)")
    fw.add_argument(
        "--forward",
        type=_forward_rule,
        action="append",
        metavar="AET=HOST:PORT[;FILTER]",
        help="send each stored instance on to this Storage SCP, from a durable queue "
        "retried with backoff (repeatable); filters: ;calling=AET|AET ;modality=CT|MR "
        ";sop-class=UID|UID ;when=instance (default) or when=stable (each stable study)",
    )
    fw.add_argument(
        "--forward-retry-delay",
        type=_positive,
        default=_D.forward_retry_delay,
        metavar="SECONDS",
        help="first wait after a transient failure, doubled per attempt "
        f"(default {_D.forward_retry_delay:g})",
    )
    fw.add_argument(
        "--forward-retry-max",
        type=_positive,
        default=_D.forward_retry_max,
        metavar="SECONDS",
        help=f"longest wait between attempts (default {_D.forward_retry_max:g})",
    )
    lim = s.add_argument_group("limits")
    lim.add_argument(
        "--max-per-calling-aet",
        type=_count,
        default=_D.max_per_calling_ae,
        metavar="N",
        help="simultaneous associations per calling AE title (default: no limit)",
    )
    lim.add_argument(
        "--max-per-address",
        type=_count,
        default=_D.max_per_address,
        metavar="N",
        help="simultaneous associations per peer address (default: no limit)",
    )
    lim.add_argument(
        "--max-failed-admissions",
        type=_count,
        default=_D.max_failed_admissions,
        metavar="N",
        help="after N associations from one address refused by --config's policy within "
        "--failed-admission-window, refuse that address at once "
        f"(default {_D.max_failed_admissions}; 0: never)",
    )
    lim.add_argument(
        "--failed-admission-window",
        type=_positive,
        default=_D.failed_admission_window,
        metavar="SECONDS",
        help=f"the window of --max-failed-admissions (default {_D.failed_admission_window:g})",
    )
    lim.add_argument(
        "--max-instance-size",
        type=_size,
        default=_D.max_instance_bytes,
        metavar="SIZE",
        help="largest data set accepted, e.g. 4G; larger: A700 (default: no limit)",
    )
    lim.add_argument(
        "--min-free",
        type=_size,
        default=_D.min_free_bytes,
        metavar="SIZE",
        help="answer A700 before writing when less is free, e.g. 1G (default 0)",
    )
    lim.add_argument(
        "--max-commitment-references",
        type=_int(1),
        default=_D.max_commitment_references,
        metavar="N",
        help="most instances one Storage Commitment request may reference; more: 0213 "
        f"(default {_D.max_commitment_references})",
    )
    lim.add_argument(
        "--max-pending-commitments",
        type=_int(1),
        default=_D.max_pending_commitments,
        metavar="N",
        help="most Storage Commitment requests accepted and not yet reported; more: 0213 "
        f"(default {_D.max_pending_commitments})",
    )
    lim.add_argument(
        "--operation-timeout",
        type=_positive,
        metavar="S",
        help="seconds one incoming message may take (default 3600)",
    )
    add_http_options(s)
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


def _forward_problem(config: ServerConfig) -> str | None:
    """Why the forwarding options cannot work together, if they cannot."""
    from dicomstore.services.forward_rules import destinations_of

    try:
        destinations_of(config.forward)
    except ValueError as exc:
        return str(exc)
    if config.stable_age <= 0 and any(rule.when == "stable" for rule in config.forward):
        return "--forward ...;when=stable needs --stable-age above 0"
    if config.forward_retry_max < config.forward_retry_delay:
        return "--forward-retry-max is shorter than --forward-retry-delay"
    return None


def _open_archive(storage: Path, **options: Any) -> Any:
    """The archive at ``storage`` (created if missing), or ``None`` after one line
    on stderr saying why it cannot be opened."""
    from dicomstore.archive import Archive
    from dicomstore.archive.engine import DatabaseOrOSError
    from dicomstore.archive.index import SchemaError

    unusable: tuple[type[Exception], ...] = (SchemaError, ValueError, *DatabaseOrOSError)
    try:
        return Archive(storage, **options)
    except unusable as exc:
        _cannot_open(storage, exc)
        return None


async def run(args: argparse.Namespace) -> int:

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
        move_destinations=tuple(args.move_destination or ()),
        commitment_scus=tuple(args.commitment_scu or ()),
        max_commitment_references=args.max_commitment_references,
        max_pending_commitments=args.max_pending_commitments,
        stable_age=args.stable_age,
        on_stable_exec=args.on_stable_exec,
        stable_webhook=args.stable_webhook,
        forward=tuple(args.forward or ()),
        forward_retry_delay=args.forward_retry_delay,
        forward_retry_max=args.forward_retry_max,
    )
    problem = _forward_problem(config)
    if problem is not None:
        print(f"dicomstore: {problem}", file=sys.stderr)
        return EXIT_USAGE
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
    https = None
    if args.http_port is not None:  # (the HTTP stack is imported only when it serves)
        try:
            https = https_context(args)
        except (OSError, ValueError) as exc:
            return tls_failed(exc)
    elif args.http_tls_cert or args.http_tls_key:
        log.warning("--http-tls-cert/--http-tls-key without --http-port: no HTTP is served")
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
        index=args.index,
    )
    if archive is None:
        if audit is not None:
            audit.close()
        return EXIT_USAGE
    try:
        return await _serve(args, config, archive, gatekeeper, audit, https)
    finally:
        if audit is not None:
            audit.close()  # drains: every record of this run is on disk
        archive.close()


async def _serve(
    args: argparse.Namespace,
    config: Any,
    archive: Any,
    gatekeeper: Any,
    audit: Any,
    https: Any,
) -> int:
    """Serve until SIGINT/SIGTERM through the one lifecycle (``services.serving``),
    with the HTTP door beside the SCP."""
    from dicomstore.services.server import archive_commit_mode
    from dicomstore.services.serving import running

    listening = False
    metrics = None
    if args.http_port is not None:  # GET /metrics (README: Operations)
        from dicomstore.services.metrics import ServerMetrics

        metrics = ServerMetrics()
    try:
        async with running(
            archive,
            config,
            commit_in_thread=archive_commit_mode(archive.fsync),
            gatekeeper=gatekeeper,
            audit=metrics.audit(audit) if metrics is not None else audit,
        ) as server:
            listening = True
            http = None
            if metrics is not None:
                metrics.watch(server)
                from dicomstore.http import HttpServer, build_app
                from dicomstore.http.limits import HttpLimits

                security = http_security(args, gatekeeper, audit)
                app = build_app(
                    archive,
                    ae_title=args.aet,
                    accept_unknown=args.accept_unknown_sop_classes,
                    base_url=args.http_base_url,
                    trust_forwarded=args.http_trust_forwarded,
                    store=server.store,  # STOW-RS: the same authorization, limits, audit, events
                    security=security,
                    limits=HttpLimits(max_body_bytes=args.http_max_body),
                    metrics=metrics,
                    ready=lambda: [] if server.listener.started else ["DICOM is not listening"],
                )
                http = HttpServer(app, args.http_host, args.http_port, ssl_context=https)
                try:
                    await http.start()
                except OSError as exc:
                    print(
                        f"dicomstore: cannot listen for HTTP on port {args.http_port}: "
                        f"{exc.strerror}",
                        file=sys.stderr,
                    )
                    await server.close(grace=0)
                    return EXIT_UNREACHABLE
                announce(security, args.http_host, http.url)
            log.info("storing into %s", args.storage.resolve())
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            try:
                await stop.wait()
            finally:
                if http is not None:
                    await http.close()
    except OSError as exc:
        if listening:
            raise
        print(
            f"dicomstore: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr
        )
        return EXIT_UNREACHABLE
    return EXIT_OK
