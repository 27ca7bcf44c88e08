"""Storage Commitment, the archive's side (PS3.4 J.3): does the archive hold each
referenced instance, and a durable record of each request until it is reported.

:func:`verify` answers one request: an instance is committed when the index
holds it under the same SOP Class, its file is present with the indexed size
and its data set hashes to the indexed digest (the bytes acknowledged at
C-STORE). Otherwise it fails with a Failure Reason of PS3.4 J.3.3.1.1:

- 0112 *No such object instance*: not in the index, or its file is gone;
- 0119 *Class / Instance conflict*: held under another SOP Class;
- 0110 *Processing failure*: its file differs from what was stored (size or
  digest), or cannot be read.

:class:`CommitmentJournal` keeps each accepted request on disk
(``<root>/.commitments/<transaction>.json``, written atomically and flushed
before the N-ACTION is answered) until its N-EVENT-REPORT has been
acknowledged, so that a restart reports what it had promised to (J.3.3: the
SCP "shall" send the report, on a later association if need be).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dicomstore.archive import layout
from dicomstore.archive.maintenance import data_set_digest
from dicomstore.archive.reader import ArchiveReader, NotStoredError

JOURNAL_DIR = ".commitments"

#: Failure Reasons (0008,1197), PS3.4 J.3.3.1.1
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
REFERENCED_SOP_CLASS_NOT_SUPPORTED = 0x0122
DUPLICATE_TRANSACTION_UID = 0x0131


@dataclass(frozen=True)
class Reference:
    """One item of the Referenced SOP Sequence (0008,1199)."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class Verdict:
    """Committed (``failure_reason`` None) or not, and why (for the operator)."""

    reference: Reference
    failure_reason: int | None = None
    why: str = ""

    @property
    def committed(self) -> bool:
        return self.failure_reason is None


def verify_one(reader: ArchiveReader, ref: Reference) -> Verdict:
    """The verdict on one referenced instance (module notes)."""
    try:
        row = reader.instance(ref.sop_instance_uid)
    except (NotStoredError, ValueError):
        return Verdict(ref, NO_SUCH_OBJECT_INSTANCE, "not in the archive")
    if row["sop_class_uid"] != layout.normalize_uid(ref.sop_class_uid):
        return Verdict(ref, CLASS_INSTANCE_CONFLICT, f"stored as {row['sop_class_uid']}")
    try:
        path = reader.path(row)
        size = path.stat().st_size
        if size != row["file_size"]:
            return Verdict(ref, PROCESSING_FAILURE, f"file size {size}, stored {row['file_size']}")
        if data_set_digest(path) != row["digest"]:
            return Verdict(ref, PROCESSING_FAILURE, "file content differs from what was stored")
    except FileNotFoundError:
        return Verdict(ref, NO_SUCH_OBJECT_INSTANCE, "its file is missing")
    except (OSError, ValueError) as exc:  # unreadable file, broken meta, bad path
        return Verdict(ref, PROCESSING_FAILURE, f"its file cannot be read: {exc}")
    return Verdict(ref)


def verify(reader: ArchiveReader, refs: Iterable[Reference]) -> list[Verdict]:
    """The verdicts on every referenced instance, in order."""
    return [verify_one(reader, ref) for ref in refs]


@dataclass
class CommitmentRequest:
    """One accepted N-ACTION (Request Storage Commitment), kept until reported."""

    transaction_uid: str
    references: list[Reference]
    #: who asked: calling AE title, address (for a report on a new association)
    calling_ae: str
    address: str = ""
    received_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CommitmentRequest:
        data: dict[str, Any] = json.loads(text)
        data["references"] = [Reference(**r) for r in data["references"]]
        return cls(**data)


_TRANSACTION = re.compile(r"[0-9.]{1,64}", re.ASCII)


class DuplicateTransaction(Exception):
    """A request with this Transaction UID is already pending (J.3.3.1.1: 0131)."""


class CommitmentJournal:
    """Pending commitment requests of one archive (module notes)."""

    def __init__(self, root: Path | str, *, fsync: bool = True) -> None:
        self.folder = Path(root) / JOURNAL_DIR
        self.fsync = fsync

    def _path(self, transaction_uid: str) -> Path:
        if not _TRANSACTION.fullmatch(transaction_uid):
            raise ValueError(f"not a Transaction UID: {transaction_uid[:70]!r}")
        return self.folder / f"{transaction_uid}.json"

    def add(self, request: CommitmentRequest) -> None:
        """Record ``request`` durably; :class:`DuplicateTransaction` if pending."""
        final = self._path(request.transaction_uid)
        if final.exists():
            raise DuplicateTransaction(request.transaction_uid)
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = final.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as fp:
            fp.write(request.to_json())
            if self.fsync:
                fp.flush()
                os.fsync(fp.fileno())
        os.replace(tmp, final)
        if self.fsync:
            layout.fsync_dir(self.folder)

    def done(self, transaction_uid: str) -> None:
        """Forget a request once its report was acknowledged."""
        self._path(transaction_uid).unlink(missing_ok=True)
        if self.fsync and self.folder.is_dir():
            layout.fsync_dir(self.folder)

    def pending(self) -> Iterator[CommitmentRequest]:
        """Requests not yet reported, oldest first (unreadable files skipped)."""
        if not self.folder.is_dir():
            return
        read: list[tuple[int, CommitmentRequest]] = []
        for path in self.folder.glob("*.json"):
            try:
                when = path.stat().st_mtime_ns
                read.append((when, CommitmentRequest.from_json(path.read_text("utf-8"))))
            except (OSError, ValueError, TypeError, KeyError):
                continue  # reported and removed meanwhile, or not ours
        read.sort(key=lambda entry: entry[0])
        yield from (request for _when, request in read)
