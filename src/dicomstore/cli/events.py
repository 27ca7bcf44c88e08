"""``dicomstore events``: the study-complete events of an archive, listed or
replayed (issue 16; ``services/stability.py`` writes them)."""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from dicomstore.cli.options import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    _add_common,
    _http_url,
    add_index,
)


def add_parser(sub: Any) -> None:
    """The ``events`` subcommand."""
    e = sub.add_parser(
        "events",
        help="list the study-complete events of an archive, or replay them",
        description="List the study-complete events that `dicomstore serve` logged "
        "(<storage>/.events/study-stable.jsonl), oldest first; with --exec or "
        "--webhook, run them again as serve would.",
    )
    e.add_argument(
        "--storage",
        type=Path,
        default=Path("dicomstore-data"),
        help="archive root (default ./dicomstore-data)",
    )
    add_index(e)  # (a replay skips the studies the index no longer holds: deleted)
    e.add_argument(
        "--since",
        metavar="ISO8601",
        help="only events stable at or after this (UTC without an offset)",
    )
    e.add_argument("--study", metavar="UID", help="only the events of this study")
    e.add_argument("--json", action="store_true", help="one JSON object per line")
    e.add_argument("--exec", metavar="COMMAND", help="run COMMAND for each, as --on-stable-exec")
    e.add_argument("--webhook", type=_http_url, metavar="URL", help="POST each to URL as JSON")
    _add_common(e)


def run(args: argparse.Namespace) -> int:
    """List or replay; exit 1 when a replayed command or POST failed."""
    from datetime import datetime

    from dicomstore.services.stability import post_event, run_command
    from dicomstore.services.stable_log import StableLog

    if args.since:
        try:
            datetime.fromisoformat(args.since)
        except ValueError:
            print(f"dicomstore: --since: not an ISO 8601 time: {args.since!r}", file=sys.stderr)
            return EXIT_USAGE
    if not args.storage.is_dir():
        print(f"dicomstore: no archive at {args.storage}", file=sys.stderr)
        return EXIT_FAILED
    events = [
        e
        for e in StableLog(args.storage).read(args.since)
        if args.study is None or e.study_uid == args.study
    ]
    try:
        present = _present(args) if args.exec or args.webhook else None
    except _unreadable() as exc:
        print(
            f"dicomstore: cannot replay: no index to tell deleted studies: {exc}", file=sys.stderr
        )
        return EXIT_FAILED
    failed = skipped = 0
    for event in events:
        if args.json:
            print(json.dumps(event.as_dict(), ensure_ascii=False))
        else:
            print(
                f"{event.stable_at}  {event.study_uid}  {event.instances} instance(s)"
                f"  {event.series} series  {event.folder}"
            )
        if present is not None and not present(event.study_uid):
            skipped += 1
            print(
                f"dicomstore: not replayed: study {event.study_uid} is no longer in the archive"
                " (deleted)",
                file=sys.stderr if args.json else sys.stdout,
            )
            continue
        if args.exec:
            code = asyncio.run(run_command(shlex.split(args.exec), event))
            failed += code != 0
        if args.webhook:
            status = asyncio.run(post_event(args.webhook, event))
            failed += status is None or status >= 300
    if not args.json:
        print(
            f"{len(events)} event(s)"
            + (f", {skipped} not replayed (studies deleted)" if skipped else "")
            + (f", {failed} replay(s) failed" if failed else "")
        )
    return EXIT_FAILED if failed else EXIT_OK


def _unreadable() -> tuple[type[Exception], ...]:
    from dicomstore.archive.reader import UNREADABLE

    return UNREADABLE


def _present(args: argparse.Namespace) -> Any:
    """Whether the archive's index holds a study now (review58 M5: a replay ran the
    command of a deleted study), asked once per study."""
    from dicomstore.archive.reader import ArchiveReader

    reader = ArchiveReader(args.storage, index=args.index)
    known: dict[str, bool] = {}

    def present(study_uid: str) -> bool:
        if study_uid not in known:
            known[study_uid] = reader.count("study", {"StudyInstanceUID": study_uid}) > 0
        return known[study_uid]

    return present
