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

Several nodes on one storage root (issue 17): a node's journal (``node=True``)
holds an exclusive flock(2) on the file of each request it accepted, taken
before the file has its name, until the report is acknowledged or the node
ends. At start a node takes (:meth:`~CommitmentJournal.take`) the requests whose
lock it can get: those of an earlier run or of a node that died (the kernel
lets go of a dead process's locks), never those a live node is reporting.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicomstore.archive import layout, nodes

if TYPE_CHECKING:
    from dicomstore.archive.reader import ArchiveReader

JOURNAL_DIR = ".commitments"

#: Failure Reasons (0008,1197), PS3.4 J.3.3.1.1
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
REFERENCED_SOP_CLASS_NOT_SUPPORTED = 0x0122
DUPLICATE_TRANSACTION_UID = 0x0131
#: The verdict's words for an indexed instance whose file is gone.
MISSING = "its file is missing"


@dataclass(frozen=True, slots=True)
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


def verify_one(
    reader: ArchiveReader,
    ref: Reference,
    row: dict[str, Any] | None,
    files: dict[str, tuple[int, str] | None] | None = None,
) -> Verdict:
    """The verdict on one referenced instance whose index row is ``row`` (module notes);
    ``files``: the verdicts on the files checked already, by key (each file is read
    once, then its verdict is reused)."""
    if row is None:
        return Verdict(ref, NO_SUCH_OBJECT_INSTANCE, "not in the archive")
    if row["sop_class_uid"] != layout.normalize_uid(ref.sop_class_uid):
        return Verdict(ref, CLASS_INSTANCE_CONFLICT, f"stored as {row['sop_class_uid']}")
    files = {} if files is None else files
    key = str(row["path"])
    if key not in files:
        files[key] = _file_failure(reader, row)
    failure = files[key]
    return Verdict(ref) if failure is None else Verdict(ref, *failure)


def _file_failure(reader: ArchiveReader, row: dict[str, Any]) -> tuple[int, str] | None:
    """Why the file of the instance ``row`` is not what was stored (Failure Reason, in
    words), or None: present, with the indexed size and digest."""
    # (here, not at the top: a sender making References loads no reader nor pydicom)
    from dicomstore.archive import digests
    from dicomstore.archive.dicomfile import HeaderError

    try:
        path = reader.path(row)
        size = path.stat().st_size
        if size != row["file_size"]:
            return PROCESSING_FAILURE, f"file size {size}, stored {row['file_size']}"
        if not digests.matches(row["digest"], path):
            return PROCESSING_FAILURE, "file content differs from what was stored"
    except FileNotFoundError:
        return NO_SUCH_OBJECT_INSTANCE, MISSING
    except (OSError, ValueError, HeaderError) as exc:  # unreadable, broken meta, bad path
        return PROCESSING_FAILURE, f"its file cannot be read: {exc}"
    return None


def verify(reader: ArchiveReader, refs: Iterable[Reference]) -> list[Verdict]:
    """The verdicts on every referenced instance, in order; those found committed
    are made durable first (``ArchiveReader.make_durable``: one may be committed
    before its flush), else they are not. Each distinct file is read (hashed) once
    per request, however many references name it (review53 #4: 1000 references to
    one 200 MiB instance read it 1000 times, 26 s)."""
    refs = list(refs)
    rows = reader.instance_rows(list(dict.fromkeys(ref.sop_instance_uid for ref in refs)))
    files: dict[str, tuple[int, str] | None] = {}
    verdicts = [verify_one(reader, ref, rows.get(_key(ref)), files) for ref in refs]
    verdicts = _looked_again(reader, verdicts, rows)
    found = list(dict.fromkeys(v.reference.sop_instance_uid for v in verdicts if v.committed))
    try:
        reader.make_durable(found)
    except OSError as exc:
        why = f"it cannot be made durable: {exc}"
        return [
            Verdict(v.reference, PROCESSING_FAILURE, why) if v.committed else v for v in verdicts
        ]
    return verdicts


def _key(ref: Reference) -> str:
    return layout.normalize_uid(ref.sop_instance_uid.strip())


def _looked_again(
    reader: ArchiveReader, verdicts: list[Verdict], rows: dict[str, dict[str, Any]]
) -> list[Verdict]:
    """The verdicts on files gone or unlike their row judged again on the rows now,
    where those changed since they were read (review88 F6: a replace committed
    meanwhile removes the file the row read before named; it was 0112 and "archive
    damage" for an instance stored all along). Unchanged rows keep their verdict, as
    ``check`` judges under the index lock."""
    doubt = [
        _key(v.reference)
        for v in verdicts
        if v.why == MISSING or v.failure_reason == PROCESSING_FAILURE
    ]
    if not doubt:
        return verdicts
    now = reader.instance_rows(list(dict.fromkeys(doubt)))
    moved = {uid for uid in doubt if _place(rows.get(uid)) != _place(now.get(uid))}
    files: dict[str, tuple[int, str] | None] = {}
    return [
        verify_one(reader, v.reference, now.get(_key(v.reference)), files)
        if _key(v.reference) in moved
        else v
        for v in verdicts
    ]


def _place(row: dict[str, Any] | None) -> tuple[Any, Any] | None:
    return None if row is None else (row["path"], row["digest"])


#: Damaged instances named one by one in the log, per report.
NAMED_DAMAGED = 20


def log_failures(log: logging.Logger, transaction_uid: str, verdicts: list[Verdict]) -> None:
    """A WARNING when references are not committed (their reasons, counted), and one
    per instance whose file is gone or differs from what was stored: damage to the
    archive the operator must see (review49 #5: only the requester was told)."""
    failed = [v for v in verdicts if not v.committed]
    if not failed:
        return
    kinds = Counter(f"{v.failure_reason:04X} {v.why.split(':')[0]}" for v in failed)
    log.warning(
        "storage commitment %s: %d of %d not committed: %s",
        transaction_uid,
        len(failed),
        len(verdicts),
        ", ".join(f"{why} x{n}" for why, n in kinds.most_common(5)),
    )
    damaged = [v for v in failed if v.failure_reason == PROCESSING_FAILURE or v.why == MISSING]
    for v in damaged[:NAMED_DAMAGED]:
        log.warning("archive damage: instance %s: %s", v.reference.sop_instance_uid, v.why)


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
        """The journal's text: the same as of ``dataclasses.asdict``, a third of its
        time (0.23 s for 65,535 references: it copies deeply)."""
        names = [f.name for f in fields(Reference)]
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["references"] = [{n: getattr(r, n) for n in names} for r in self.references]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CommitmentRequest:
        data: dict[str, Any] = json.loads(text)
        data["references"] = [Reference(**r) for r in data["references"]]
        return cls(**data)


_TRANSACTION = re.compile(r"[0-9.]{1,64}", re.ASCII)


def _locked(path: Path) -> int | None:
    """A descriptor of the request at ``path`` holding its lock (a node reports what
    it holds), or None when a live node holds it; ``FileNotFoundError`` when it went."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return fd


class DuplicateTransaction(Exception):
    """A request with this Transaction UID is already pending (J.3.3.1.1: 0131)."""


class CommitmentJournal:
    """Pending commitment requests of one archive (module notes)."""

    def __init__(self, root: Path | str, *, fsync: bool = True, node: bool = False) -> None:
        self.folder = Path(root) / JOURNAL_DIR
        self.fsync = fsync
        #: a node's journal holds the lock of each request it reports (module notes)
        self.node = node
        self._held: dict[str, int] = {}

    def _path(self, transaction_uid: str) -> Path:
        if not _TRANSACTION.fullmatch(transaction_uid):
            raise ValueError(f"not a Transaction UID: {transaction_uid[:70]!r}")
        return self.folder / f"{transaction_uid}.json"

    def add(self, request: CommitmentRequest) -> None:
        """Record ``request`` durably; :class:`DuplicateTransaction` if pending: held
        by a node, or, outside a node, at all. One no live node holds (its node
        died) is replaced (review88 F3: the requester asking again on another node
        got 0115 for good), its lock taken meanwhile (review90 N2: a node taking it
        over at that moment reported it too)."""
        final = self._path(request.transaction_uid)
        old = self._claim(final)
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f"{final.stem}.{os.getpid()}.tmp")  # (two nodes at once)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            if self.node:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # (before anyone can see it)
            data = memoryview(request.to_json().encode("utf-8"))
            while data:
                data = data[os.write(fd, data) :]
            if self.fsync:
                os.fsync(fd)
            os.replace(tmp, final)
        except BaseException:
            os.close(fd)
            layout.remove_quietly(tmp)
            raise
        finally:
            if old is not None:
                os.close(old)
        if self.node:
            self._held[request.transaction_uid] = fd
        else:
            os.close(fd)
        if self.fsync:
            layout.fsync_dir(self.folder)

    def _claim(self, path: Path) -> int | None:
        """The lock of the request at ``path`` (its descriptor, to close once it is
        replaced), None when there is none; :class:`DuplicateTransaction` when a live
        node holds it, or, outside a node, when there is one."""
        if not self.node:
            if path.exists():
                raise DuplicateTransaction(path.stem)
            return None
        try:
            fd = _locked(path)
        except FileNotFoundError:
            return None
        if fd is None:
            raise DuplicateTransaction(path.stem)
        return fd

    def done(self, transaction_uid: str) -> None:
        """Forget a request once its report was acknowledged (its file, unless another
        node replaced it since: review90 N2)."""
        path = self._path(transaction_uid)
        fd = self._held.pop(transaction_uid, None)
        try:
            if fd is None or os.fstat(fd).st_ino == os.stat(path).st_ino:
                path.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        finally:
            if fd is not None:
                os.close(fd)
        if self.fsync and self.folder.is_dir():
            layout.fsync_dir(self.folder)

    def unheld(self) -> bool:
        """Whether a request waits that no live node holds (its node died: this one's
        own are held), without reading any (``serving.py`` looks every 30 s)."""
        if not self.folder.is_dir():
            return False
        return any(not nodes.locked_by_another(p) for p in self.folder.glob("*.json"))

    def take(self) -> list[CommitmentRequest]:
        """The pending requests no live node holds, oldest first, held from now on
        by this (node's) journal (module notes)."""
        taken = []
        for path, request in self._read():
            tx = request.transaction_uid
            if tx in self._held:
                continue
            try:
                fd = _locked(path)
            except FileNotFoundError:
                continue  # reported meanwhile
            if fd is None:
                continue  # a live node reports it
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino  # (not reported meanwhile)
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            self._held[tx] = fd
            taken.append(request)
        return taken

    def close(self) -> None:
        """Let go of the requests held (they stay pending, for the next start)."""
        held, self._held = self._held, {}
        for fd in held.values():
            os.close(fd)

    def pending(self) -> Iterator[CommitmentRequest]:
        """Requests not yet reported, oldest first (unreadable files skipped)."""
        for _path, request in self._read():
            yield request

    def _read(self) -> list[tuple[Path, CommitmentRequest]]:
        if not self.folder.is_dir():
            return []
        read: list[tuple[int, Path, CommitmentRequest]] = []
        for path in self.folder.glob("*.json"):
            try:
                when = path.stat().st_mtime_ns
                read.append((when, path, CommitmentRequest.from_json(path.read_text("utf-8"))))
            except (OSError, ValueError, TypeError, KeyError):
                continue  # reported and removed meanwhile, or not ours
        read.sort(key=lambda entry: entry[0])
        return [(path, request) for _when, path, request in read]
