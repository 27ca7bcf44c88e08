"""`dicomstore find HOST PORT -k KEY[=VALUE]...`: the Q/R FIND SCU (PS3.4 C.4.1.2).

One C-FIND-RQ whose Identifier holds the keys (``-k``: a keyword or a tag
``GGGG,EEEE``; with a value it is matched, without one it is returned), each
match printed as it comes: a table (default) or one DICOM JSON object per line
(``--json``, PS3.18 F.2). Ctrl-C sends a C-CANCEL-RQ and waits for the final
response (a second Ctrl-C aborts). Exit codes: 0 the C-FIND completed (with or
without matches); 1 a failure status (its Error Comment printed), the peer
accepted no FIND context, or a match's Identifier was no data set (skipped);
2 usage (a bad key); 3-6 as for echo; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from dicomstore.cli.logs import one_line
from dicomstore.cli.options import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CancelOnInterrupt,
    _add_common,
    add_scu_parser,
    add_tls_client_options,
    open_association,
)
from dicomstore.cli.tables import line, widths

if TYPE_CHECKING:  # (pydicom loads when find runs, not for every command's parser)
    from pydicom.dataset import Dataset

#: Rows read before the table's column widths are fixed (later rows stream).
TABLE_SAMPLE = 100
#: Seconds to wait for the final response once a C-CANCEL-RQ is sent.
CANCEL_WAIT = 10.0
LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
_NUMERIC_VRS = frozenset(("IS", "DS", "US", "SS", "UL", "SL", "FL", "FD"))
#: Keys of the Identifier not shown as columns: Query/Retrieve Level, Specific Character Set.
_NOT_SHOWN = frozenset((0x00080052, 0x00080005))


def add_parser(sub: Any) -> None:
    """The ``find`` subcommand."""
    p = add_scu_parser(sub, "find", "query a Q/R SCP (C-FIND SCU)", __doc__.split("\n\n")[0])
    add_query_options(p)
    p.add_argument("--json", action="store_true", help="one DICOM JSON object per match")
    add_tls_client_options(p)
    _add_common(p)


def add_query_options(p: argparse.ArgumentParser) -> None:
    """The Identifier's options (find, move, get): model, level, keys; priority."""
    model = p.add_mutually_exclusive_group()
    model.add_argument(
        "-P",
        "--patient-root",
        dest="model",
        action="store_const",
        const="patient",
        help="Patient Root information model",
    )
    model.add_argument(
        "-S",
        "--study-root",
        dest="model",
        action="store_const",
        const="study",
        help="Study Root information model (default)",
    )
    p.add_argument(
        "-L",
        "--level",
        type=str.upper,
        choices=LEVELS,
        help="Query/Retrieve Level (default STUDY, or the QueryRetrieveLevel key)",
    )
    p.add_argument(
        "-k",
        "--key",
        action="append",
        metavar="KEY[=VALUE]",
        help="a key by keyword or tag (0010,0010): matched with a value, returned"
        " without one (repeatable)",
    )
    p.add_argument("--priority", choices=["low", "medium", "high"], default="medium")


def query_keys(args: argparse.Namespace) -> tuple[dict[str | int, str], list[Any]]:
    """The keys of :func:`add_query_options` as given, and the Identifier's elements
    (level STUDY unless told); ValueError for a bad key."""
    from dicomstore.services.query_identifier import QUERY_RETRIEVE_LEVEL
    from dicomstore.services.query_scu import identifier_keys

    given = parse_keys(args.key or [])
    level = args.level or (None if QUERY_RETRIEVE_LEVEL in given else "STUDY")
    return given, identifier_keys(given, level)


def parse_keys(texts: list[str]) -> dict[str | int, str]:
    """``KEY[=VALUE]`` texts as keys (a later one wins, as with findscu's ``-k``)."""
    from dicomstore.services.query_scu import key_tag

    keys: dict[str | int, str] = {}
    for text in texts:
        name, _, value = text.partition("=")
        keys[name.strip() if "[" in name else key_tag(name)] = value  # (a sequence path)
    return keys


def _cell(ds: Dataset, tag: int) -> str:
    if tag not in ds:
        return ""
    elem = ds[tag]
    if elem.VR == "SQ":
        return f"({len(elem.value)} items)" if elem.value else ""
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return one_line("\\".join(str(v) for v in value))
    return one_line(str(value))  # (the peer's text: no escape sequence, no forged row)


class Printer:
    """Matches on stdout: a table whose widths come from the first rows, or JSON lines."""

    def __init__(self, columns: list[tuple[int, str]], as_json: bool) -> None:
        from pydicom.datadict import keyword_for_tag

        self.tags = [tag for tag, _vr in columns]
        self.headers = [keyword_for_tag(tag) or f"{tag:08X}" for tag in self.tags]
        self.right = {n for n, (_tag, vr) in enumerate(columns) if vr in _NUMERIC_VRS}
        self.as_json = as_json
        self.rows: list[list[str]] | None = []
        self.sizes: list[int] = []
        self.count = 0

    def match(self, ds: Dataset) -> None:
        self.count += 1
        if self.as_json:
            print(json.dumps(ds.to_json_dict(), ensure_ascii=False), flush=True)
            return
        row = [_cell(ds, tag) for tag in self.tags]
        if self.rows is None:
            print(line(row, self.sizes, self.right), flush=True)
            return
        self.rows.append(row)
        if len(self.rows) >= TABLE_SAMPLE:
            self._flush()

    def _flush(self) -> None:
        if self.rows is None:
            return
        rows, self.rows = self.rows, None
        self.sizes = widths(self.headers, rows)
        print(line(self.headers, self.sizes, self.right))
        for row in rows:
            print(line(row, self.sizes, self.right))
        sys.stdout.flush()

    def close(self, summary: bool = True) -> None:
        """The rows still held, and (``summary``) how many matched."""
        if self.as_json:
            return
        if self.count:
            self._flush()
        if summary:
            print(f"({self.count} match{'es' if self.count != 1 else ''})", flush=True)


async def run(args: argparse.Namespace) -> int:
    from dicomstore.errors import AssociationAborted
    from dicomstore.services.query_identifier import QUERY_RETRIEVE_LEVEL, UNIQUE_KEY
    from dicomstore.services.query_scu import FindFailed, find, find_contexts, key_tag
    from dicomstore.services.storage_scu import PRIORITIES

    model = args.model or "study"
    try:
        given, keys = query_keys(args)
    except ValueError as exc:
        print(f"dicomstore: {exc}", file=sys.stderr)
        return EXIT_USAGE
    vrs = {tag: vr for tag, vr, _value in keys}
    level_value = next(v for t, _vr, v in keys if t == QUERY_RETRIEVE_LEVEL)
    unique = UNIQUE_KEY[level_value.decode().strip()]
    tops = [key_tag(t.partition("[")[0]) if isinstance(t, str) else t for t in given]
    shown = [unique] + [t for t in dict.fromkeys(tops) if t != unique]  # (a path: its sequence)
    printer = Printer([(t, vrs[t]) for t in shown if t in vrs and t not in _NOT_SHOWN], args.json)

    assoc = await open_association(args, find_contexts(model))
    query = find(assoc, keys, model=model, priority=PRIORITIES[args.priority])
    async with CancelOnInterrupt(query.cancel, assoc.abort, CANCEL_WAIT) as ctrl_c:
        try:
            async for match in query:
                printer.match(match)
        except FindFailed as exc:
            printer.close(summary=False)
            print(f"dicomstore: {one_line(str(exc))}", file=sys.stderr)
            await assoc.release()
            return EXIT_INTERRUPTED if ctrl_c.interrupted else EXIT_FAILED
        except AssociationAborted:
            printer.close(summary=False)  # (what arrived before: review38scu #5)
            if not ctrl_c.interrupted:
                raise
            print(f"dicomstore: aborted after {printer.count} match(es)", file=sys.stderr)
            return EXIT_INTERRUPTED
        except BaseException:  # (a timeout ...: what arrived before is printed)
            printer.close(summary=False)
            raise
    printer.close()
    await assoc.release()
    if query.warnings:
        print(
            f"dicomstore: {query.warnings} match(es) answered FF01: the SCP did not"
            " match some optional keys",
            file=sys.stderr,
        )
    if ctrl_c.interrupted:
        how = "cancelled" if query.cancelled else "interrupted"
        print(f"dicomstore: {how} after {printer.count} match(es)", file=sys.stderr)
        return EXIT_INTERRUPTED
    if query.malformed:
        print(
            f"dicomstore: {query.malformed} match(es) skipped: their Identifier is not a"
            " data set (the log says why)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK
