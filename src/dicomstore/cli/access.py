"""The access commands (PS3.4 B.1.2 Note 1): ls, show, export, stats, delete.

Wired into ``dicomstore`` by ``cli/__init__.py`` (``add_parsers(subparsers)``, then
``run(args)``); also runs alone as ``python -m dicomstore.cli.access``.
Exit codes: 0 success, 1 not found or failed, 2 usage error (bad option or
filter, or ``delete`` refused without confirmation). ``delete`` is ``delete.py``.
"""

from __future__ import annotations

import argparse
import atexit
import errno
import json
import os
import secrets
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dicomstore import uids
from dicomstore.cli.logs import LEVELS, add_log_format
from dicomstore.cli.options import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    add_index,
    silence_stdout,
)
from dicomstore.cli.tables import table
from dicomstore.sizes import human_size

COMMANDS = ("ls", "show", "export", "stats", "delete")
_LEVEL_NAMES = {"patients": "patient", "studies": "study", "series": "series"}
_LEVEL_NAMES["instances"] = "instance"
#: option -> DICOM keyword it filters on
_FILTERS = {
    "patient_id": "PatientID",
    "patient_name": "PatientName",
    "study_date": "StudyDate",
    "modality": "Modality",
    "accession": "AccessionNumber",
    "study_uid": "StudyInstanceUID",
    "series_uid": "SeriesInstanceUID",
    "sop_uid": "SOPInstanceUID",
    "sender": "SourceApplicationEntityTitle",
}


def _storage(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage",
        type=Path,
        default=Path("dicomstore-data"),
        help="archive root (default ./dicomstore-data)",
    )
    add_index(p)
    p.add_argument("--log-level", default="warning", choices=list(LEVELS))
    add_log_format(p)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ls, show, export, stats and delete to the ``dicomstore`` subcommands."""
    ls = sub.add_parser("ls", help="list patients, studies, series or instances")
    ls.add_argument("level", nargs="?", default="studies", choices=list(_LEVEL_NAMES))
    _storage(ls)
    for option, keyword in _FILTERS.items():
        hint = {"study_date": "DATE or range A-B", "patient_name": "PATTERN (* ?)"}.get(
            option, "VALUE"
        )
        ls.add_argument(
            f"--{option.replace('_', '-')}",
            metavar=hint.split()[0],
            help=f"match {keyword} ({hint})",
        )
    ls.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="match any indexed attribute by keyword or tag (repeatable)",
    )
    ls.add_argument("--limit", type=int, help="at most N rows")
    ls.add_argument("--offset", type=int, default=0, help="skip N rows")
    ls.add_argument("--json", action="store_true", help="JSON rows for scripts")

    show = sub.add_parser("show", help="the header of an instance, or a study/series summary")
    show.add_argument("uid", help="a Study, Series or SOP Instance UID")
    _storage(show)
    show.add_argument("--json", action="store_true", help="JSON (index row, DICOM JSON header)")

    export = sub.add_parser("export", help="copy a study, series or instance out as PS3.10 files")
    export.add_argument("uid", help="a Study, Series or SOP Instance UID")
    export.add_argument("dest", type=Path, metavar="DIR", help="destination folder (created)")
    _storage(export)
    export.add_argument(
        "--flat", action="store_true", help="DIR/<SOP UID>.dcm, no study/series folders"
    )

    stats = sub.add_parser(
        "stats",
        help="counts and bytes: total, per sender, per day, per modality; the forwarding"
        " queue per destination",
    )
    _storage(stats)
    stats.add_argument("--json", action="store_true", help="JSON for scripts")

    from dicomstore.cli import delete  # (its own module: the audit record, --patient-id)

    delete.add_parser(sub)


def run(args: argparse.Namespace) -> int:
    """Run one access command; print one line on error; the exit code."""
    # (the archive, and pydicom with it, only now: `dicomstore send` never needs them)
    from dicomstore.archive.engine import DatabaseOrOSError
    from dicomstore.archive.query import QueryError
    from dicomstore.archive.reader import ArchiveNotFoundError, NotStoredError
    from dicomstore.archive.schema import SchemaError
    from dicomstore.cli import delete

    try:
        return {"ls": _ls, "show": _show, "export": _export, "stats": _stats, "delete": delete.run}[
            args.command
        ](args)
    except (UsageError, QueryError) as exc:
        return _error(str(exc), EXIT_USAGE)
    except (ArchiveNotFoundError, SchemaError) as exc:
        return _error(str(exc), EXIT_FAILED)
    except NotStoredError as exc:
        return _error(str(exc), EXIT_FAILED)
    except BrokenPipeError:  # `... | head`: the reader is gone, nothing to say
        silence_stdout()
        return EXIT_FAILED
    except DatabaseOrOSError as exc:  # named: what, where (review35b F9)
        where = getattr(exc, "filename", None)
        what = getattr(exc, "strerror", None) or exc
        if where is None and not isinstance(exc, OSError):  # (the index's own errors)
            storage = getattr(args, "storage", None)
            if getattr(args, "index", None):
                where = "the index"  # (a URL may hold a password: not printed)
            elif storage is not None:
                where = Path(storage) / "index.sqlite"
        return _error(f"{where}: {what}" if where else f"{what}", EXIT_FAILED)


def _reader(args: argparse.Namespace) -> Any:
    """The archive read; one that cannot be written (a read-only snapshot, backup
    media, another user's) read as ``check`` reads it, writing nothing beside its
    SQLite index (review100 W5: 'attempt to write a readonly database')."""
    from dicomstore.archive import frozen
    from dicomstore.archive.engine import is_postgresql
    from dicomstore.archive.reader import ArchiveReader

    if is_postgresql(args.index) or not frozen.unwritable(args.storage, args.index):
        return ArchiveReader(args.storage, index=args.index)
    engine = frozen.frozen_engine(args.storage, args.index)
    atexit.register(engine.close)  # (a copy it may have made of the index: removed)
    return ArchiveReader(args.storage, index=engine)


def _error(message: str, code: int) -> int:
    print(f"dicomstore: {message}", file=sys.stderr)
    return code


_COLUMNS: dict[str, list[tuple[str, Any]]] = {
    "patient": [
        ("PATIENT ID", "patient_id"),
        ("NAME", "patient_name"),
        ("BIRTH", "birth_date"),
        ("SEX", "sex"),
        ("STUDIES", "n_studies"),
        ("SERIES", "n_series"),
        ("INSTANCES", "n_instances"),
        ("SIZE", lambda r: human_size(r["size"])),
    ],
    "study": [
        ("STUDY UID", "study_uid"),
        ("DATE", "study_date"),
        ("PATIENT ID", "patient_id"),
        ("NAME", "patient_name"),
        ("ACCESSION", "accession_number"),
        ("MODALITIES", lambda r: ",".join(r["modalities"])),
        ("SERIES", "n_series"),
        ("INSTANCES", "n_instances"),
        ("SIZE", lambda r: human_size(r["size"])),
        ("STABLE", lambda r: "yes" if r.get("stable_at") else "no"),
        ("DESCRIPTION", "study_description"),
    ],
    "series": [
        ("SERIES UID", "series_uid"),
        ("STUDY UID", "study_uid"),
        ("NUMBER", "series_number"),
        ("MODALITY", "modality"),
        ("INSTANCES", "n_instances"),
        ("SIZE", lambda r: human_size(r["size"])),
        ("DESCRIPTION", "series_description"),
    ],
    "instance": [
        ("SOP INSTANCE UID", "sop_instance_uid"),
        ("SERIES UID", "series_uid"),
        ("NUMBER", "instance_number"),
        ("SOP CLASS", lambda r: uids.uid_name(r["sop_class_uid"])),
        ("SIZE", lambda r: human_size(r["file_size"])),
        ("RECEIVED", lambda r: (r["received_at"] or "")[:19].replace("T", " ")),
        ("FROM", "calling_ae"),
    ],
}
_RIGHT = {"STUDIES", "SERIES", "INSTANCES", "SIZE", "NUMBER"}


def _print_rows(level: str, rows: list[dict[str, Any]]) -> None:
    columns = _COLUMNS[level]
    names = [name for name, _ in columns]
    if "PATIENT ID" in names and any(r.get("issuer") for r in rows):  # (review83 F5: a
        at = names.index("PATIENT ID") + 1  # patient is its ID and issuer)
        columns = [*columns[:at], ("ISSUER", lambda r: r.get("issuer") or ""), *columns[at:]]
    values = [[(get(r) if callable(get) else r[get]) for _, get in columns] for r in rows]
    headers = [name for name, _ in columns]
    right = {n for n, name in enumerate(headers) if name in _RIGHT}
    print(table(headers, values, right))


def _filters(args: argparse.Namespace) -> dict[str, str]:
    filters = {kw: getattr(args, opt) for opt, kw in _FILTERS.items() if getattr(args, opt)}
    for item in args.filter:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--filter wants KEY=VALUE, not {item!r}")
        filters[key.strip()] = value
    return filters


def _ls(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 0 or args.offset < 0:
        raise UsageError("--limit and --offset must not be negative")
    level = _LEVEL_NAMES[args.level]
    reader = _reader(args)
    rows = reader.search(level, _filters(args), limit=args.limit, offset=args.offset)
    if level == "study":  # study-complete events (services/stability.py)
        from dicomstore.services.stable_search import stable_states

        states = stable_states(reader, [r["study_uid"] for r in rows])
        for row in rows:
            row["stable_at"] = states.get(row["study_uid"])
    if args.json:
        print(json.dumps(rows, indent=1, ensure_ascii=False))
    else:
        _print_rows(level, rows)
    return EXIT_OK


def _show(args: argparse.Namespace) -> int:
    reader = _reader(args)
    level, row = reader.locate(args.uid)
    if level == "instance":
        return _show_instance(reader, row, as_json=args.json)
    below = "series" if level == "study" else "instance"
    key = "StudyInstanceUID" if level == "study" else "SeriesInstanceUID"
    summary = reader.search(level, {key: row[f"{level}_uid"]}, limit=1)[0]
    children = reader.search(below, {key: row[f"{level}_uid"]})
    if args.json:
        many = "series" if below == "series" else "instances"  # (review83 F6: "instance")
        print(json.dumps({"level": level, "row": summary, many: children}, indent=1))
        return EXIT_OK
    skip = {"modalities", "sop_classes"}
    for name, value in summary.items():
        if name not in skip:
            print(f"{name + ':':22} {'' if value is None else value}")
    if level == "study":
        print(f"{'modalities:':22} {', '.join(summary['modalities'])}")
    print()
    _print_rows(below, children)
    return EXIT_OK


#: How deep nested sequences are shown, and how many elements at most (as the browse
#: page's bounds: a hostile instance's header stays bounded in time and memory).
SHOW_DEPTH, SHOW_ELEMENTS = 32, 100_000


def _show_instance(reader: Any, row: dict[str, Any], *, as_json: bool) -> int:
    """An instance's header, its long values left unread (review38mem: ``show`` read
    every value before the pixels, a 2 GiB Encapsulated Document included): in text,
    shown by their length as on the browse page; in DICOM JSON, Pixel Data and binary
    values over 64 KiB as a BulkDataURI relative to a DICOMweb base (PS3.18 F.2.6), as
    WADO-RS metadata gives them."""
    from dicomstore.http.header_text import SHOWN_VALUE, header_text

    size = reader.storage.size(str(row["path"]))  # (review77 F11: a cut header shown, 0)
    damaged = size != row["file_size"]
    if damaged:
        print(
            f"dicomstore: {row['path']}: damaged ({size} bytes, {row['file_size']} indexed;"
            " `dicomstore check`): what is shown is what is left of it",
            file=sys.stderr,
        )
    if as_json:
        from dicomstore.http.instancejson import read_metadata

        url = (
            f"studies/{row['study_uid']}/series/{row['series_uid']}"
            f"/instances/{row['sop_instance_uid']}/bulkdata/"
        )
        header = read_metadata(
            reader.storage,
            str(row["path"]),
            str(row["transfer_syntax_uid"]),
            lambda tag: f"{url}{tag:08X}",
            max_depth=SHOW_DEPTH,
        )
        print(json.dumps({"level": "instance", "row": row, "header": header}, indent=1))
        return EXIT_FAILED if damaged else EXIT_OK
    ds = reader.dataset(row, stop_before_pixels=True, defer_size=SHOWN_VALUE)
    size, sender = human_size(row["file_size"]), row["calling_ae"] or "-"
    print(f"# {reader.where(row)}  ({size}, received {row['received_at']} from {sender})")
    print(f"# transfer syntax {uids.uid_name(row['transfer_syntax_uid'])}")
    for part in (getattr(ds, "file_meta", None), ds):  # the File Meta Information first
        if part is not None:
            print(header_text(part, max_depth=SHOW_DEPTH, max_elements=SHOW_ELEMENTS))
            print()
    return EXIT_FAILED if damaged else EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from dicomstore.archive import layout

    reader = _reader(args)
    level, _ = reader.locate(args.uid)
    key = {"study": "StudyInstanceUID", "series": "SeriesInstanceUID"}.get(level, "SOPInstanceUID")
    rows = reader.instances(**{key: layout.normalize_uid(args.uid.strip())})
    count = size = 0
    problems: list[str] = []
    try:
        for row in rows:
            rel = Path(layout.copy_name(row))  # (not its key: a replace's may be .r.dcm)
            target = args.dest / (rel.name if args.flat else rel)
            target.parent.mkdir(parents=True, exist_ok=True)  # (fails naming DIR: review35b F9)
            try:
                copied = _copy(reader, row, target)
            except OSError as exc:  # (gone: the others are exported all the same)
                if exc.errno in _DEST_FULL:
                    problems.append(f"stopped: {args.dest}: {exc.strerror}")
                    break  # (review100 W1: one line each for every other instance)
                if isinstance(exc, FileNotFoundError):  # (review115 F7: as README says)
                    uid = row["sop_instance_uid"]
                    gone = f"archive damage: instance {uid}: its file is gone"
                    problems.append(f"{row['path']}: not exported: {gone}")
                    continue
                problems.append(f"{row['path']}: not exported: {exc.strerror or exc}")
                continue
            if copied != row["file_size"]:  # (damaged since: no copy that looks whole)
                problems.append(
                    f"{row['path']}: not exported: damaged ({copied} bytes, {row['file_size']}"
                    " indexed; `dicomstore check`)"
                )
                continue
            count += 1
            size += copied
    except KeyboardInterrupt:  # (the copy under way is removed: _copy)
        print(
            f"dicomstore: interrupted: {count} of {len(rows)} instance(s) exported to"
            f" {args.dest}, each whole",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    print(f"exported {count} instance(s), {human_size(size)}, of {level} {args.uid} to {args.dest}")
    for line in problems:  # (review77 F3, F4: a cut copy exported silently; the first
        print(f"dicomstore: {line}", file=sys.stderr)  # file gone ended the export)
    return EXIT_FAILED if problems else EXIT_OK


#: A destination out of room or read-only: the export stops (every other copy would
#: fail alike).
_DEST_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def _copy(reader: Any, row: dict[str, Any], target: Path) -> int:
    """The stored bytes of ``row`` into file ``target``, read through its indexed size
    and digest (``ArchiveReader.open_checked``: a copy damaged since it was stored is
    an OSError, ``archive damage``, never exported); how many. Into a ``.part`` file
    named ``target`` only once whole and of the indexed size (review100 W1: a disk full
    or a Ctrl-C left empty and cut files under their final names, which pydicom read
    without error); the part removed on any failure."""
    part = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
    try:
        with reader.open_checked(row) as source, open(part, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
            copied = out.tell()
        if copied == row["file_size"]:
            os.replace(part, target)
        return copied
    finally:
        part.unlink(missing_ok=True)


def _stats(args: argparse.Namespace) -> int:
    import sqlite3

    from dicomstore.services.forward_queue import queue_status
    from dicomstore.services.forward_recovery import damaged

    stats = _reader(args).stats()
    try:
        forwarding = queue_status(args.storage)
    except sqlite3.DatabaseError as exc:
        raise damaged(args.storage, exc) from exc
    if forwarding is not None:
        stats["forwarding"] = forwarding
    if args.json:
        print(json.dumps(stats, indent=1))
        return EXIT_OK
    t = stats["totals"]
    print(
        table(
            ["LEVEL", "COUNT"],
            [[k, t[k]] for k in ("patients", "studies", "series", "instances")],
            {1},
        )
    )
    print(f"{t['bytes']} bytes ({human_size(t['bytes'])})")
    for title, key in (("SENDER", "senders"), ("DAY (UTC)", "days"), ("MODALITY", "modalities")):
        print()
        rows = [[g["key"] or "-", g["instances"], human_size(g["bytes"])] for g in stats[key]]
        print(table([title, "INSTANCES", "SIZE"], rows, {1, 2}))
    if forwarding:
        print()
        print(forward_table(forwarding))
    return EXIT_OK


def forward_table(destinations: Sequence[dict[str, Any]]) -> str:
    """The forwarding queue per destination (``services/forward_queue.queue_status``)."""
    rows = [
        [
            (f"{d['destination']}={d['address']}" if d["address"] else d["destination"])
            + ("" if d.get("configured", True) else " (not configured)"),
            d["pending"],
            d["sent"],
            d["failed"],
            d["skipped"],
            _when(d["oldest_pending"]),
            _recent_error(d),
        ]
        for d in destinations
    ]
    headers = ["FORWARD TO", "PENDING", "SENT", "FAILED", "SKIPPED", "OLDEST PENDING", "LAST ERROR"]
    return table(headers, rows, {1, 2, 3, 4})


def _recent_error(d: dict[str, Any]) -> str:
    """The destination's last error, unless an instance was sent since."""
    if not d["last_error"] or (d["last_sent_at"] or 0) > (d["last_error_at"] or 0):
        return "-"
    return str(d["last_error"])


def _when(epoch: float | None) -> str:
    """An epoch time as ISO 8601 UTC to the second ("-" for none)."""
    if epoch is None:
        return "-"
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def main(argv: list[str] | None = None) -> int:
    """``python -m dicomstore.cli.access COMMAND ...``."""
    from dicomstore.cli import Parser

    parser = Parser(prog="dicomstore", description=__doc__.splitlines()[0])
    add_parsers(parser.add_subparsers(dest="command", required=True))
    from dicomstore.cli.settings import SettingsError, parse

    try:
        args = parse(parser, argv)  # DICOMSTORE_STORAGE, as `dicomstore ls` reads it
    except SettingsError as exc:
        print(f"dicomstore: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
