"""`dicomstore move` and `dicomstore get`: the Q/R MOVE and GET SCUs (PS3.4 C.4.2.2, C.4.3.2).

``move`` asks the SCP to send what the keys name to a destination AE (``--dest``);
``get`` has it sent back on the same association and stores it into a folder of
PS3.10 files (``-od DIR``) or an archive (``--storage DIR``, through the store
service ``dicomstore serve`` uses). The keys are those of ``find`` (``-k``, ``-L``,
``-P``/``-S``). At the end: the final status and the Completed, Failed and
Warning sub-operation counts, with the Failed SOP Instance UID List (``--json``:
one object). Exit codes: 0 every sub-operation completed (0000); 1 some or all
failed (B000, A702) or a failure status (A801 unknown destination, A900, C000,
0122, 0124 ...); 2 usage; 3-6 as for echo; 130 interrupted (Ctrl-C sends a
C-CANCEL-RQ).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

from dicomstore.cli.audit_options import (
    add_audit_log,
    audited_exit,
    close_audit_log,
    open_audit_log,
)
from dicomstore.cli.find import add_query_options, query_keys
from dicomstore.cli.logs import one_line
from dicomstore.cli.options import (
    EXIT_ABORTED,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CancelOnInterrupt,
    _add_common,
    _ae_title,
    add_index,
    add_scu_parser,
    add_tls_client_options,
    open_archive,
    open_association,
)
from dicomstore.cli.serve_options import (
    add_archive_policies,
    add_store_limits,
    archive_policies,
)

COMMANDS = ("move", "get")


def add_parsers(sub: Any) -> None:
    """The ``move`` and ``get`` subcommands."""
    summary = __doc__.split("\n\n")[1].replace("\n", " ")
    move = add_scu_parser(sub, "move", "have a Q/R SCP send to an AE (C-MOVE SCU)", summary)
    move.add_argument(
        "--dest", required=True, type=_ae_title, metavar="AET", help="the Move Destination"
    )
    get = add_scu_parser(sub, "get", "retrieve from a Q/R SCP (C-GET SCU)", summary)
    into = get.add_mutually_exclusive_group()
    into.add_argument("-od", "--output-dir", type=Path, metavar="DIR", help="PS3.10 files here")
    into.add_argument("--storage", type=Path, metavar="DIR", help="an archive (as serve's)")
    add_index(get)
    policies = get.add_argument_group(
        "with --storage: the archive's policies, limits and audit, as serve's (give the"
        " server's; DICOMSTORE_* set them as for serve)"
    )
    add_archive_policies(policies)
    add_store_limits(policies)
    add_audit_log(policies, rotates=False)
    get.add_argument(
        "--sop-class",
        action="append",
        metavar="UID",
        help="a Storage SOP Class to receive (repeatable; default: the common ones)",
    )
    for p in (move, get):
        add_query_options(p)
        p.add_argument("--json", action="store_true", help="the result as one JSON object")
        add_tls_client_options(p)
        _add_common(p)


def _print(args: argparse.Namespace, result: Any, what: str) -> int:
    from dicomstore.services.retrieve_scu import describe

    if args.json:
        print(json.dumps(result.to_json()))
    elif result.status is not None:
        # (the peer's text on one line each: review38scu #6)
        comment = f": {one_line(result.error_comment)}" if result.error_comment else ""
        print(f"{what}: {result.status:04X} {describe(result.status)}{comment}")
        print(f"completed {result.completed}, failed {result.failed}, warning {result.warning}")
        for uid in result.failed_uids:
            print(f"  failed: {one_line(uid)}")
        here = result.received
        if here is not None and (here.failed or here.warning or result.contradicted):
            print(
                f"received here: stored {here.completed}, failed {here.failed},"
                f" warning {here.warning}"
            )
            for uid in here.failed_uids:
                print(f"  not stored here: {one_line(uid)}")
    else:  # (no final response: the association ended first)
        counts = f"completed {result.completed}, failed {result.failed}, warning {result.warning}"
        print(f"{what}: no final response; so far {counts}")
        here = result.received
        if here is not None:
            print(f"received here: stored {here.completed}, failed {here.failed}")
    if result.contradicted:
        print(
            f"dicomstore: the SCP said 0000 (no failures), but {_failures(result)}:"
            " not every sub-operation completed",
            file=sys.stderr,
        )
    unsent = result.failed - (result.received.failed if result.received is not None else 0)
    if what == "C-GET" and unsent > 0 and not args.json:  # (review48 L4: no hint)
        print(
            f"dicomstore: the SCP failed {unsent} sub-operation(s) without sending them"
            " (its log says why: a file it cannot read, say); one cause is ours: a C-GET"
            " SCP sends on this association, only in the SOP classes and transfer"
            " syntaxes accepted for it; one that does not convert fails an instance stored"
            " otherwise (Big Endian, a compression or SOP class not proposed: --sop-class);"
            " move to a Storage SCP has no such limit",
            file=sys.stderr,
        )
    nothing = not (result.completed or result.failed or result.warning)
    if result.ok and nothing and not args.json:  # (0000: standard, yet worth a word)
        print(f"dicomstore: {what}: no instance matched the keys", file=sys.stderr)
    if result.ok:
        return EXIT_OK
    return EXIT_FAILED


def _failures(result: Any) -> str:
    """What contradicts a final 0000: the SCP's counts, our own answers."""
    said = []
    if result.failed or result.warning:
        said.append(f"it counted {result.failed} failed and {result.warning} warning")
    here = result.received
    if here is not None and (here.failed or here.warning):
        said.append(f"we answered {here.failed} with a failure and {here.warning} with a warning")
    return " and ".join(said)


async def run(args: argparse.Namespace) -> int:
    """Run ``move`` or ``get``; the exit code."""
    from dicomstore.errors import AssociationAborted
    from dicomstore.services import retrieve_scu as r
    from dicomstore.services.storage_scu import PRIORITIES

    try:
        _given, keys = query_keys(args)
    except ValueError as exc:
        print(f"dicomstore: {exc}", file=sys.stderr)
        return EXIT_USAGE
    model, priority = args.model or "study", PRIORITIES[args.priority]
    held = contextlib.ExitStack()  # (get: the archive and the audit log it opened)
    audit = None
    if args.command == "move":
        assoc = await open_association(args, r.move_contexts(model))
        retrieve = r.move(assoc, keys, args.dest, model=model, priority=priority)
        what = f"C-MOVE to {args.dest}"
    else:
        if args.output_dir is None and args.storage is None:
            print("dicomstore: get stores into -od DIR or --storage DIR", file=sys.stderr)
            return EXIT_USAGE
        handler, audit = _store(args, held)
        if handler is None:
            held.close()
            return EXIT_FAILED
        classes = args.sop_class or r.GET_STORAGE_CLASSES
        contexts, roles = r.get_contexts(model, sop_classes=classes)
        try:
            assoc = await open_association(args, contexts, roles=roles)
            received = r.receive_into(assoc, _service(handler, args, audit))
        except BaseException:
            held.close()
            raise
        retrieve = r.get(assoc, keys, model=model, priority=priority, received=received)
        what = "C-GET"
    try:
        async with CancelOnInterrupt(retrieve.cancel, assoc.abort) as ctrl_c:
            try:
                result = await retrieve.run()
            except AssociationAborted as exc:
                _print(args, retrieve.result, what)  # (the counts so far: review48 M2)
                if not ctrl_c.interrupted:
                    print(f"dicomstore: {one_line(str(exc))}", file=sys.stderr)
                    return EXIT_ABORTED
                print("dicomstore: aborted", file=sys.stderr)
                return EXIT_INTERRUPTED
        await assoc.release()
    finally:
        held.close()
    code = _print(args, result, what)
    if ctrl_c.interrupted:
        print("dicomstore: cancelled", file=sys.stderr)
        return EXIT_INTERRUPTED
    return audited_exit(code, audit)


def _store(args: argparse.Namespace, held: contextlib.ExitStack) -> tuple[Any, Any]:
    """The store handler of ``get``: a folder, or an archive opened as ``serve`` opens
    it, with the policies given (review54 F1), and the audit log (``--audit-log``,
    None), each closed with ``held``; ``(None, None)`` after one line saying why not."""
    audit = None
    if args.audit_log is not None:  # (the server's file: appends from both, flock'd)
        audit = open_audit_log(args)
        if audit is None:
            return None, None
        held.callback(close_audit_log, audit)
    if args.output_dir is not None:
        from dicomstore.services.folder_store import FolderStore

        try:
            return FolderStore(args.output_dir), audit
        except OSError as exc:  # (a folder of files, not an archive)
            why = exc.strerror or exc
            print(f"dicomstore: cannot store into {args.output_dir}: {why}", file=sys.stderr)
            return None, None
    archive = open_archive(args.storage, index=args.index, **archive_policies(args))
    if archive is None:
        return None, None
    held.enter_context(closing(archive))
    return archive, audit


def _service(handler: Any, args: argparse.Namespace, audit: Any) -> Any:
    from dicomstore.services.storage import StoreLimits, StoreService

    limits = StoreLimits(args.max_instance_size, args.min_free)
    return StoreService(handler, limits=limits, audit=audit)
