"""What of a forwarding batch can be sent (``forwarding.py``): each entry's
instance as the index holds it, its file there and intact.

An instance the index no longer holds was deleted: *skipped*. One it holds whose
file is gone, or whose file is not the bytes stored (its indexed size and digest,
as Storage Commitment checks them: ``commitment.file_failure``), is archive
damage: *failed*, never sent (review101 M1, M2), and ``dicomstore requeue`` sends
it once the file is restored.
"""

from __future__ import annotations

from contextlib import closing
from typing import Any

from dicomstore.archive.commitment import file_failure
from dicomstore.archive.reader import ArchiveReader
from dicomstore.services.forward_queue import Entry
from dicomstore.services.retrieve import Selected

_KEYS = (
    "sop_instance_uid",
    "sop_class_uid",
    "transfer_syntax_uid",
    "path",
    "received_at",
    "file_size",
    "digest",
)
_SQL = f"SELECT {', '.join(_KEYS)} FROM instance WHERE sop_instance_uid IN ({{}})"

Found = list[tuple[Entry, Selected]]
Why = list[tuple[Entry, str]]


def sendable(reader: ArchiveReader, entries: list[Entry]) -> tuple[Found, Why, Why]:
    """The entries whose instance is in the index and on disk, intact, as what to
    send; those the index no longer holds (skipped); those whose file is gone or
    differs (failed), with why. A file that cannot be read now (descriptors, I/O) is
    sent as before: its read fails the batch, tried again later (review102 M3). One
    judged damaged is judged again on its row read anew: a replace or a delete
    committed meanwhile is no damage (review102 L1). Blocking."""
    rows = _rows(reader, [e.sop_instance_uid for e in entries])
    found, gone, damaged = _judge(reader, entries, rows)
    if damaged:
        again = _rows(reader, [e.sop_instance_uid for e, _why in damaged])
        changed = [
            e
            for e, _why in damaged
            if _place(again.get(e.sop_instance_uid)) != _place(rows.get(e.sop_instance_uid))
        ]
        if changed:
            more_found, more_gone, still = _judge(reader, changed, again)
            damaged = [(e, why) for e, why in damaged if e not in changed] + still
            found, gone = found + more_found, gone + more_gone
    return found, gone, damaged


def _rows(reader: ArchiveReader, uids: list[str]) -> dict[str, tuple[Any, ...]]:
    with closing(reader.connect()) as db:
        sql = _SQL.format(", ".join("?" for _ in uids))
        return {row[0]: row for row in db.execute(sql, uids)}


def _place(row: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
    return None if row is None else (row[3], row[6])  # (path, digest)


def _judge(
    reader: ArchiveReader, entries: list[Entry], rows: dict[str, tuple[Any, ...]]
) -> tuple[Found, Why, Why]:
    found: Found = []
    gone: Why = []
    damaged: Why = []
    for entry in entries:
        row = rows.get(entry.sop_instance_uid)
        if row is None:
            gone.append((entry, "not in the archive any more"))
            continue
        try:
            stored = reader.storage.exists(row[3])
        except ValueError:
            stored = False
        if not stored:
            why = f"archive damage: its file {row[3]} is missing (once restored: requeue)"
            damaged.append((entry, why))
            continue
        try:
            failure = file_failure(
                reader, dict(zip(_KEYS, row, strict=True)), unreadable_raises=True
            )
        except (LookupError, OSError):  # (no local file: sent as it reads; unreadable now)
            failure = None
        if failure is not None:
            damaged.append((entry, f"archive damage: its file {row[3]}: {failure[1]}"))
            continue
        found.append(
            (
                entry,
                Selected(
                    row[0], row[1], row[2], row[3], reader=reader, digest=row[6], file_size=row[5]
                ),
            )
        )
    return found, gone, damaged
