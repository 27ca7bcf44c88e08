"""``dicomstore serve``: the Storage and Verification SCP, and DICOMweb beside it
(its options: ``serve_options.py``)."""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from dicomstore.aio import loops
from dicomstore.cli import workers
from dicomstore.cli.audit_options import audited_exit, close_audit_log, open_audit_log
from dicomstore.cli.http_options import (
    announce,
    http_limits,
    http_security,
    https_context,
)
from dicomstore.cli.logs import refuse
from dicomstore.cli.options import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    _timeouts,
    log,
    open_archive,
    tls_failed,
)
from dicomstore.cli.serve_options import archive_policies
from dicomstore.services.server import ServerConfig


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


def _more_open_files() -> None:
    """Raise the soft limit of open files to the hard one (at most 65536): each
    association, pending Storage Commitment request (its journal file stays locked,
    ``commitment_reports.py``) and HTTP connection holds one, and 1024 is a common
    default."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ImportError, ValueError, OSError) as exc:  # (not on every platform)
        log.debug("open files limit unchanged: %s", exc)


async def run(args: argparse.Namespace) -> int:
    _more_open_files()
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
        max_pending_connections=args.max_pending_connections,
        max_failed_admissions=args.max_failed_admissions,
        failed_admission_window=args.failed_admission_window,
        max_failed_logins_per_user=args.max_failed_logins_per_user,
        max_instance_bytes=args.max_instance_size,
        min_free_bytes=args.min_free,
        prefer_proposed_transfer_syntax=args.transfer_syntax_order == "proposed",
        move_destinations=tuple(args.move_destination or ()),
        commitment_scus=tuple(args.commitment_scu or ()),
        max_commitment_references=args.max_commitment_references,
        max_pending_commitments=args.max_pending_commitments,
        shutdown_grace=args.shutdown_grace,
        stable_age=args.stable_age,
        on_stable_exec=args.on_stable_exec,
        stable_webhook=args.stable_webhook,
        forward=tuple(args.forward or ()),
        forward_retry_delay=args.forward_retry_delay,
        forward_retry_max=args.forward_retry_max,
        forward_max_attempts=args.forward_max_attempts,
    )
    problem = _forward_problem(config)
    if problem is not None:
        refuse(problem)
        return EXIT_USAGE
    config.share = workers.share(args)
    if args.transfer_syntax:
        config.transfer_syntaxes = tuple(args.transfer_syntax)
    if args.tls_cert or args.tls_key:
        from dicomstore.tls import server_context

        if not (args.tls_cert and args.tls_key):
            refuse("--tls-cert and --tls-key go together")
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
    elif args.tls_ca or args.tls_require_client_cert:  # (else plain TCP, unauthenticated)
        refuse(
            "--tls-ca and --tls-require-client-cert need --tls-cert and"
            " --tls-key: TLS is off without them"
        )
        return EXIT_USAGE
    # (the start-up warnings are the first process's: said once, not once per worker)
    first = getattr(args, "channel", None) is None
    https = None
    if args.http_port is not None:  # (the HTTP stack is imported only when it serves)
        try:
            https = https_context(args)
        except (OSError, ValueError) as exc:
            return tls_failed(exc)
    elif (args.http_tls_cert or args.http_tls_key) and first:  # (a worker serves none)
        log.warning("--http-tls-cert/--http-tls-key without --http-port: no HTTP is served")
    for warning in weakened(args, fsync) if first else ():
        log.warning("%s", warning)
    gatekeeper = None
    if args.config is not None:
        from dicomstore.policy import Policy, PolicyError
        from dicomstore.policy_tools import certificates_never_asked, pins_unknown_callers_pass

        try:
            gatekeeper = Policy.load(args.config)
        except PolicyError as exc:
            refuse(str(exc))
            return EXIT_USAGE
        asked = config.ssl is not None and args.tls_ca is not None
        for moot in (
            pins_unknown_callers_pass(gatekeeper),
            certificates_never_asked(gatekeeper, asked),
        ):
            if moot is not None and first:
                log.warning("%s: %s", args.config, moot)
    for warning in (cleartext(config, gatekeeper) + own_certificates(args)) if first else ():
        log.warning("%s", warning)
    busy = _ports_taken(args)
    if busy is not None:
        refuse(busy)
        return EXIT_UNREACHABLE
    audit = None
    if args.audit_log is not None:
        audit = open_audit_log(args)
        if audit is None:
            return EXIT_USAGE
    from dicomstore.archive import pg_deadline

    pg_deadline.ANSWER_TIMEOUT = args.index_answer_timeout or None  # (before any session)
    archive = open_archive(
        args.storage,
        fsync=fsync,
        syncfs=None if args.syncfs == "auto" else False,
        index=args.index,
        **archive_policies(args),
    )
    if archive is None:
        if audit is not None:
            audit.close()
        return EXIT_USAGE
    try:
        code = await _serve(args, config, archive, gatekeeper, audit, https)
    finally:
        if audit is not None:
            close_audit_log(audit)  # drains: every record of this run is on disk
        archive.close()
    code = audited_exit(code, audit)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # (stopped: nothing to say
        loop.add_signal_handler(sig, lambda: None)  # of a signal after it; review112 L2)
    if code == EXIT_OK:  # (the log's last line: review100 W9)
        log.info("stopped")
    return code


def _ports_taken(args: argparse.Namespace) -> str | None:
    """Why the DICOM or the HTTP port cannot be listened on, before the archive, the
    audit log or anything else is created (review100 W12); None when both can (a
    worker listens on neither: the first process hands it the connections)."""
    if getattr(args, "channel", None) is not None:
        return None
    from dicomstore.aio.listener import bound

    try:
        held = bound(args.host, args.port)
    except OSError as exc:
        return f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
    try:  # (held meanwhile: --http-port the DICOM port is in use too, review102 L3)
        if args.http_port is not None:
            from dicomstore.http.server import listening_socket  # (as HTTP binds: L2)

            try:
                listening_socket(args.http_host, args.http_port).close()
            except OSError as exc:
                where = f"{args.http_host}:{args.http_port}"
                return f"cannot listen for HTTP on {where}: {exc.strerror or exc}"
        return None
    finally:
        for sock in held:
            sock.close()


def _say_other_nodes(archive: Any) -> None:
    """The other live nodes of this archive, if any, in one INFO line (review58 L4: a
    second server started by mistake on one storage runs as a node beside the first,
    which is supported, and nothing said so)."""
    from dicomstore.archive import nodes

    mine = archive.tmp_dir.name
    others = sorted(name for name in nodes.alive(archive.root) if name != mine)
    if others:
        log.info(
            "%d other node(s) serve this archive now (node-<host>-<pid>-...): %s",
            len(others),
            ", ".join(others),
        )


def _stopping(sig: signal.Signals, stop: asyncio.Event) -> None:
    """A graceful stop, said in the log (review58 L2: a SIGHUP, a logrotate habit or a
    closed terminal, killed the server at once without a word; there is nothing to
    reload: the audit log follows a rename by itself)."""
    name = signal.Signals(sig).name
    if stop.is_set():  # (review100 W9: a second Ctrl-C went unsaid)
        log.info("%s again: already stopping (in-flight operations: --shutdown-grace)", name)
    else:
        log.info("%s: stopping gracefully", name)
    stop.set()


async def _serve(
    args: argparse.Namespace,
    config: Any,
    archive: Any,
    gatekeeper: Any,
    audit: Any,
    https: Any,
) -> int:
    """Serve until SIGINT/SIGTERM/SIGHUP through the one lifecycle (``services.serving``),
    with the HTTP door beside the SCP."""
    from dicomstore.archive.nodes import Held
    from dicomstore.services.server import archive_commit_mode
    from dicomstore.services.serving import running

    listening, workers_ok = False, True
    metrics = None
    # before the port opens: a SIGTERM as soon as it listens is a graceful stop too
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, _stopping, sig, stop)
    answering = getattr(args, "metrics_channel", None)  # (a worker: the first asks)
    if args.http_port is not None or answering is not None:  # GET /metrics (Operations)
        from dicomstore.services.metrics import ServerMetrics

        metrics = ServerMetrics()
        metrics.others = [asker.ask for asker in getattr(args, "metrics_asks", None) or ()]
    try:
        async with running(
            archive,
            config,
            commit_in_thread=archive_commit_mode(archive.commits_wait, archive.index_remote),
            gatekeeper=gatekeeper,
            audit=metrics.audit(audit) if metrics is not None else audit,
        ) as server:
            listening = True
            http = None
            if metrics is not None:
                metrics.watch(server)
                metrics.watch_archive(archive)
            if answering is not None:
                from dicomstore.aio import handoff

                assert metrics is not None
                answers = asyncio.create_task(handoff.answer(answering, metrics.exposition))
                answers.add_done_callback(lambda _t: answering.close())
            if args.http_port is not None:
                assert metrics is not None
                from dicomstore.http import HttpServer, build_app

                security = http_security(args, gatekeeper, audit, server.failed_admissions)
                app = build_app(
                    archive,
                    ae_title=args.aet,
                    accept_unknown=args.accept_unknown_sop_classes,
                    base_url=args.http_base_url,
                    trust_forwarded=args.http_trust_forwarded,
                    store=server.store,  # STOW-RS: the same authorization, limits, audit, events
                    security=security,
                    limits=http_limits(args),
                    metadata_cache_entries=args.metadata_cache_entries,
                    gzip=args.http_gzip,
                    metrics=metrics,
                    ready=lambda: [] if server.listener.started else ["DICOM is not listening"],
                )
                http = HttpServer(app, args.http_host, args.http_port, ssl_context=https)
                try:
                    await http.start()
                except OSError as exc:
                    refuse(
                        f"cannot listen for HTTP on {args.http_host}:{args.http_port}: "
                        f"{exc.strerror or exc}"
                    )
                    await server.close(grace=0)
                    return EXIT_UNREACHABLE
                announce(security, args.http_host, http.url)
            parent = workers.parent_gone()
            if parent is None:  # (a worker's siblings are no news)
                _say_other_nodes(archive)  # (before the line that ends the start's telling)
            short = server.store.short_of_space(archive.root) if args.min_free else None
            if short is not None:  # (a unit mistyped refuses every store: review100 W3)
                log.warning("%s: every store is refused A700 until space is freed", short)
            log.info("storing into %s (%s)", args.storage.resolve(), loops.kind(loop))
            pool = workers.start(args, server.port, config.share) if args.workers > 1 else None
            if parent is not None:  # (a worker: it ends with the first process)
                loop.add_reader(parent, stop.set)
            try:
                await stop.wait()
            finally:
                if pool is not None:
                    config.share.stopping = True
                    pool.cancel()
                    grace = config.shutdown_grace + 5
                    workers_ok = await asyncio.to_thread(pool.stop, grace)
                if http is not None:
                    await http.close()
    except Held as exc:  # another node of this storage root runs it (issue 17)
        refuse(str(exc))
        return EXIT_USAGE
    except OSError as exc:
        if listening:
            raise
        if exc.filename is not None:  # (a file of the archive's: review77 F0)
            refuse(f"cannot open the archive {args.storage}: {exc.filename}: {exc.strerror}")
            return EXIT_USAGE
        refuse(f"cannot listen on {args.host}:{args.port}: {exc.strerror}")
        return EXIT_UNREACHABLE
    return EXIT_OK if workers_ok else EXIT_FAILED


def cleartext(config: ServerConfig, gatekeeper: Any) -> list[str]:
    """What goes over plain TCP though the operator may think otherwise (review52 L4,
    L5; PS3.15 B.9): user identity secrets to a DICOM port without TLS on a host
    others reach, and what a TLS server sends (it always sends without)."""
    from dicomstore.tls import is_loopback

    said = []
    secrets = gatekeeper is not None and (gatekeeper.users or gatekeeper.jwt is not None)
    if secrets and config.ssl is None and not is_loopback(config.host):
        said.append(
            f"DICOM on {config.host} without --tls-cert: user identity passcodes and tokens"
            " travel in clear"
        )
    sends = [
        name
        for name, given in (
            ("C-MOVE sub-operations", config.move_destinations),
            ("--forward", config.forward),
            ("Storage Commitment reports", config.commitment_scus),
        )
        if given
    ]
    if config.ssl is not None and sends:
        said.append(f"--tls-cert is for what comes in: {', '.join(sends)} go out without TLS")
    return said


def own_certificates(args: Any) -> list[str]:
    """What is wrong with the dates of our certificates (DICOM's, HTTPS'), said at start."""
    from dicomstore.tls import validity_problem

    given = (("--tls-cert", args.tls_cert), ("--http-tls-cert", args.http_tls_cert))
    found = [validity_problem(path, option) for option, path in given if path is not None]
    return [said for said in found if said is not None]


def weakened(args: Any, fsync: bool) -> list[str]:
    """What the options given give up, said once at start (the operator chose it)."""
    said = []
    if not fsync:
        said.append("--fsync off: acknowledged instances can be lost on a power cut or crash")
    if args.max_pdu == 0:
        said.append(
            "--max-pdu 0: a P-DATA-TF of any length is taken and held whole while it"
            " arrives (one peer can make its association hold as much memory as it"
            " sends): for trusted peers only"
        )
    return said
