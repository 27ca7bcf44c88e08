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
    differs (failed), with why. Blocking."""
    rows: dict[str, tuple[Any, ...]] = {}
    uids = [e.sop_instance_uid for e in entries]
    with closing(reader.connect()) as db:
        for row in db.execute(_SQL.format(", ".join("?" for _ in uids)), uids):
            rows[row[0]] = row
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
            failure = file_failure(reader, dict(zip(_KEYS, row, strict=True)))
        except LookupError:  # (a storage without local files: sent as it reads)
            failure = None
        if failure is not None:
            damaged.append((entry, f"archive damage: its file {row[3]}: {failure[1]}"))
            continue
        found.append((entry, Selected(row[0], row[1], row[2], row[3], reader=reader)))
    return found, gone, damaged
