"""``dicomstore check``, ``reindex``, ``requeue`` and ``conformance``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dicomstore.cli.options import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    _add_common,
    _cannot_open,
    add_index,
)
from dicomstore.cli.serve_options import add_relational_policy


def add_parsers(sub: Any) -> None:
    """The ``check``, ``reindex``, ``requeue`` and ``conformance`` subcommands."""
    c = sub.add_parser("check", help="verify the archive's files against its index")
    c.add_argument(
        "--storage",
        type=Path,
        default=Path("dicomstore-data"),
        help="archive root (default ./dicomstore-data)",
    )
    c.add_argument(
        "--read-only",
        action="store_true",
        help="write nothing (no lock, no settling of what a crash left: listed instead),"
        " as on a read-only copy, a snapshot or backup media, which is detected",
    )
    add_index(c)
    _add_common(c)
    r = sub.add_parser("reindex", help="rebuild the archive's index from its files")
    r.add_argument(
        "--storage",
        type=Path,
        default=Path("dicomstore-data"),
        help="archive root (default ./dicomstore-data)",
    )
    add_index(r)
    add_relational_policy(r)  # (the server's: for files the index did not hold)
    _add_common(r)
    q = sub.add_parser(
        "requeue",
        help="put the forwarding queue's failed entries back in line: the server sends"
        " them again within 30 s",
    )
    q.add_argument(
        "--storage",
        type=Path,
        default=Path("dicomstore-data"),
        help="archive root, whose .forward/queue.sqlite is the queue (default ./dicomstore-data)",
    )
    q.add_argument(
        "--destination",
        action="append",
        default=[],
        metavar="AET",
        help="only this destination's, by its AE title (or AET=HOST:PORT, as stats names it;"
        " repeatable; default every destination's)",
    )
    q.add_argument(
        "--drop",
        action="store_true",
        help="drop the entries still to send (pending, failed) of each --destination"
        " instead, sending none: a destination no --forward rule names any more",
    )
    add_index(q)  # (the queue is in --storage: taken as every archive command takes it)
    _add_common(q)
    cs = sub.add_parser(
        "conformance", help="print the DICOM Conformance Statement (PS3.2, Markdown)"
    )
    _add_common(cs)


def check_or_reindex(args: argparse.Namespace) -> int:
    """``check`` (after recovery when no server runs) and ``reindex`` (refused while
    one runs): ``archive.maintenance.run_check`` / ``run_reindex``."""
    from dicomstore.archive import maintenance
    from dicomstore.archive.engine import DatabaseOrOSError
    from dicomstore.archive.identity import StorageMismatchError
    from dicomstore.archive.index_health import is_damage
    from dicomstore.archive.recovery import ArchiveBusyError
    from dicomstore.archive.schema import SchemaError

    root = args.storage.resolve()
    left_out: list[str] = []
    damaged: list[str] = []
    try:
        if args.command == "reindex":
            count = maintenance.run_reindex(
                root,
                left_out,
                index=args.index,
                damaged=damaged,
                on_relational_mismatch=args.on_relational_mismatch,
            )
        else:
            from dicomstore.archive.frozen import unwritable

            checked: list[int] = []
            pending: list[str] = []
            why = "--read-only" if args.read_only else unwritable(root, args.index)
            if why is not None:
                print(f"read-only check ({why}): nothing is written, nothing settled")
            problems = maintenance.run_check(
                root, index=args.index, counted=checked, read_only=why is not None, pending=pending
            )
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
    except StorageMismatchError as exc:  # (review50 #3: it emptied the index)
        print(f"dicomstore: {args.command}: {exc}: nothing changed", file=sys.stderr)
        return EXIT_FAILED
    except DatabaseOrOSError as exc:
        _cannot_open(args.storage, exc)  # (a damaged index is a problem check found: 1,
        return EXIT_FAILED if is_damage(exc) else EXIT_USAGE  # review77 F17b; else 2)
    if args.command == "reindex":
        for line in left_out + damaged:
            print(line)
        # (each kind by its own name: review115 F6 called the missing and the
        # unreadable left out "damaged")
        kinds = [": damaged: ", ": missing: ", ": left out: cannot be read: "]
        counts = [sum(kind in line for line in damaged) for kind in kinds]
        out = len(left_out) + counts[2]
        print(
            f"reindexed {count} instances"
            + (f", {out} file(s) left out" if out else "")
            + (f", {counts[0]} damaged" if counts[0] else "")
            + (f", {counts[1]} missing" if counts[1] else "")
        )
        return EXIT_FAILED if damaged else EXIT_OK
    for line in problems + pending:
        print(line)
    how = " read-only" if why is not None else ""
    print(f"checked {sum(checked)} instance(s){how}: {len(problems)} problem(s)")  # (review45 L17)
    return EXIT_FAILED if problems else EXIT_OK


def requeue(args: argparse.Namespace) -> int:
    """``requeue``: ``services.forward_queue.requeue_failed``; one line per destination."""
    import sqlite3

    from dicomstore.services.forward_queue import (
        Configured,
        drop_entries,
        queue_status,
        requeue_failed,
    )

    if args.drop and not args.destination:
        print("dicomstore: requeue: --drop needs --destination AET", file=sys.stderr)
        return EXIT_USAGE
    # (review112 L4: stats names a destination AET=HOST:PORT; the queue knows its AET)
    args.destination = [dest.split("=", 1)[0] for dest in args.destination]
    if not args.storage.is_dir():  # (review113 L5: a path mistyped is no empty queue)
        print(f"dicomstore: requeue: no archive at {args.storage}", file=sys.stderr)
        return EXIT_FAILED
    try:
        known = {d["destination"] for d in queue_status(args.storage) or ()}  # (before)
        if args.drop:
            counts = drop_entries(args.storage, args.destination)
        else:
            counts = requeue_failed(args.storage, args.destination)
    except Configured as exc:
        print(f"dicomstore: requeue: {exc}: nothing dropped", file=sys.stderr)
        return EXIT_FAILED
    except (sqlite3.Error, OSError) as exc:
        where = f"the forwarding queue of {args.storage}"
        print(f"dicomstore: requeue: {where}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if counts is None:
        print(f"dicomstore: requeue: {args.storage} has no forwarding queue", file=sys.stderr)
        # (review112 I2: every destination's, of none, is nothing to do: no failure)
        return EXIT_FAILED if args.destination else EXIT_OK
    done = "entries dropped, not sent" if args.drop else "failed entries pending again"
    known |= set() if args.drop else set(counts)
    unknown = [dest for dest in args.destination or () if dest not in known]
    for dest in args.destination or sorted(counts):
        if dest not in unknown:  # (review77 F14: told done and unknown at once)
            print(f"{dest}: {counts.get(dest, 0)} {done}")
    if not counts and not args.destination:
        print("no failed entries")
    if unknown:  # (review45 L14: 'NOPE: 0 failed entries pending again', exit 0)
        names = ", ".join(unknown)
        print(
            f"dicomstore: requeue: no forwarding destination {names} in the queue", file=sys.stderr
        )
        return EXIT_FAILED
    return EXIT_OK
