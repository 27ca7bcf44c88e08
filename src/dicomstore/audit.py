"""The audit trail: one JSON line per audited event (an association, an instance
stored, a query, a retrieval, a commitment, an HTTP read, a delete: PS3.15 A.5.3).

``dicomstore serve --audit-log FILE`` gives the server an :class:`AuditLog`
(:class:`dicomstore.services.admission.AuditSink`).  Each record is the dict
the server builds (see ``AcceptorAssociation._audit_association`` and
``StorageSCP.finish``) with a UTC ``"time"`` first, for example::

    {"time": "2025-01-02T03:04:05.678901Z", "event": "association",
     "peer": "10.1.2.3", "calling_ae": "MODALITY1", "called_ae": "DICOMSTORE",
     "tls_subject": null, "user": "alice", "contexts_accepted": ["1.2.840..."],
     "outcome": "released", "stored": 12, "failed": 0}
    {"time": "...", "event": "instance", "calling_ae": "MODALITY1",
     "sop_class_uid": "...", "sop_instance_uid": "...", "study_instance_uid": "...",
     "bytes": 524416, "digest": "...", "status": "0000", "error_comment": null}

(each on one line: ``jq`` reads the file as it is, e.g.
``jq -r 'select(.event=="instance") | .sop_instance_uid' audit.jsonl``).

Refusals.  Of the associations refused from one address with one outcome, the
first few of each minute are records, the rest are counted and said in one
``"suppressed"`` record (:mod:`dicomstore.audit_refusals`): written when the next
record comes after the minute, by the writer thread when it ends, or at close.

Durability.  The event loop only serializes the record and appends the line
to a queue.  A background thread takes everything queued, writes it, then
flushes and fsyncs once for the whole batch (group commit), and loops.
:meth:`AuditLog.close` drains the queue, so nothing is lost on a clean stop.
A crash (or power cut) loses at most the records queued or written since the
last fsync: the batch in flight, typically a few milliseconds' worth.

When the file cannot be written (disk full).  The error is logged once (ERROR),
the lines stay in memory and the thread retries every ``retry_seconds`` (1 s)
whether or not more records come (the retry rewrites the whole batch, so after
a failure a record may appear more than once, never not at all); the first batch
written again logs ``audit log FILE writable again: N records written`` (INFO).  The
callers never wait: storing goes on while the audit trail cannot be written.
What waits in memory is bounded by ``max_held`` bytes of lines (32 MiB): beyond
it a record is dropped, counted (:attr:`AuditLog.dropped`), logged at ERROR when
the first is dropped and, with their number, once lines are written again.
:meth:`close` raises if the lines held still cannot be written.

Rotation.  When the next line would take the file beyond ``max_bytes`` (64 MiB;
0: never, e.g. for logrotate), the file is fsynced and renamed, and a fresh
``path`` follows: ``path`` becomes ``path.1``, ``path.1`` becomes ``path.2`` ...
(every ``path.<n>`` there is moved up one).  No record is ever deleted by default
(``keep=0``: every rotated file is kept); with ``keep=N`` the files beyond
``path.<N>`` are deleted, each rotation that does so logging a WARNING that names
them.  A file renamed away by someone else (logrotate's ``create``) is noticed at
the next batch, which opens a new ``path`` (see ``_follow``); logrotate's own
numbered files are moved up with ours at our next rotation.

Several processes.  The processes of ``serve --workers`` each have their own
AuditLog on the same file (and ``get --storage``, ``delete`` theirs).  Each batch
is written (one ``write`` of whole lines, ``O_APPEND``), rotated if need be, and
fsynced under an exclusive ``flock(2)`` on ``<path>.lock``, so lines never
interleave, the size a rotation is decided by is the file's own (every writer's
lines), and one writer rotates at a time; a writer whose file was rotated by
another opens the new one at its next batch.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dicomstore.audit_refusals import RefusalDigest

log = logging.getLogger("dicomstore.audit")

DEFAULT_MAX_BYTES = 64 * 2**20
#: rotated files kept: 0 keeps every one (the writer deletes no record)
DEFAULT_KEEP = 0
#: bytes of lines waiting to be written, at most, before records are dropped
DEFAULT_MAX_HELD = 32 * 2**20
RETRY_SECONDS = 1.0


def utc_now() -> str:
    """The current time as ISO 8601 UTC with microseconds and a ``Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class AuditLog:
    """An append-only JSON Lines audit trail, fsynced in batches by a thread."""

    def __init__(
        self,
        path: Path | str,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        keep: int = DEFAULT_KEEP,
        retry_seconds: float = RETRY_SECONDS,
        max_held: int = DEFAULT_MAX_HELD,
    ) -> None:
        if max_bytes < 0 or keep < 0 or not retry_seconds > 0 or max_held <= 0:
            raise ValueError("max_bytes and keep must be >= 0, retry_seconds and max_held > 0")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self.retry_seconds = retry_seconds
        self.max_held = max_held
        self._fd = self._open()  # fails here, in the caller, if the path is wrong
        self._size = os.fstat(self._fd).st_size
        lock = f"{self.path}.lock"  # (the writers of this file take turns on it)
        try:
            self._lock_fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError:
            os.close(self._fd)
            raise
        self._cond = threading.Condition()
        self._queue: list[bytes] = []
        self._queued = 0  # lines ever queued
        self._durable = 0  # lines ever fsynced
        self._held = 0  # bytes of lines queued or being written, not yet durable
        self.dropped = 0  # records ever dropped (more than max_held waited)
        self._dropping = 0  # records dropped since lines were last written
        self._closing = False
        self._closed = False
        self._refusals = RefusalDigest()
        self.error: OSError | None = None  # the last write error, while it lasts
        #: batches whose write failed (each retried): ``dicomstore_audit_write_errors_total``
        self.write_errors = 0
        self._thread = threading.Thread(target=self._run, name="dicomstore-audit", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    # -- the AuditSink protocol (called on the event loop: only queue)

    def association(self, record: dict[str, Any]) -> None:
        """An association ended; a refused one past the first few of its peer in a
        while is counted instead (:mod:`dicomstore.audit_refusals`, review113 I2)."""
        with self._cond:
            records = self._refusals.admit(record, time.monotonic(), utc_now())
            self._cond.notify_all()  # (the writer's wait for the next summary may change)
        for one in records:
            self.write(one, "association")

    def instance(self, record: dict[str, Any]) -> None:
        self.write(record, "instance")

    def query(self, record: dict[str, Any]) -> None:
        """A C-FIND answered (``services/query_scp.py``, PS3.15 A.5.3.10 *Query*)."""
        self.write(record, "query")

    def retrieve(self, record: dict[str, Any]) -> None:
        """A C-MOVE answered (``services/retrieve_scp.py``, PS3.15 A.5.3.7 *DICOM
        Instances Transferred*)."""
        self.write(record, "retrieve")

    def commitment(self, record: dict[str, Any]) -> None:
        """A Storage Commitment request answered, or its report sent
        (``services/commitment_scp.py``, ``commitment_reports.py``, PS3.4 J.3)."""
        self.write(record, "commitment")

    def delete(self, record: dict[str, Any]) -> None:
        """A study, series or instance deleted (``services/deletion.py``, PS3.15 A.5.3.8
        *DICOM Study Deleted*, or A.5.3.6 *DICOM Instances Accessed* with action D)."""
        self.write(record, "delete")

    def write(self, record: dict[str, Any], event: str | None = None) -> None:
        """Queue one record; ``event`` fills in an ``"event"`` key it lacks. Dropped
        (counted, logged) while more than ``max_held`` bytes wait to be written."""
        line = _line(record, event)
        with self._cond:
            if self._closing:
                raise ValueError("audit log is closed")
            first, held = self._enqueue(line), self._held
        if first:
            log.error(
                "audit log %s: %d bytes of records wait to be written: records are dropped"
                " until they are (their number is logged then)",
                self.path,
                held,
            )

    def _enqueue(self, line: bytes) -> bool:
        """Queue ``line`` (under the lock), or drop it when too much waits: whether it
        is the first dropped since lines were last written."""
        if self._held and self._held + len(line) > self.max_held:
            self.dropped += 1
            self._dropping += 1
            return self._dropping == 1
        self._queue.append(line)
        self._queued += 1
        self._held += len(line)
        self._cond.notify_all()
        return False

    def _enqueue_summaries(self, every: bool = False) -> None:
        """Queue the ``suppressed`` records due (under the lock; ``every``: all)."""
        for record in self._refusals.due(time.monotonic(), every=every):
            self._enqueue(_line(record, None))

    # -- waiting and closing (not on the event loop)

    @property
    def closed(self) -> bool:
        """Closed (or closing): :meth:`write` raises ``ValueError``."""
        with self._cond:
            return self._closing

    @property
    def complete(self) -> bool:
        """Every record given so far is on disk: none dropped (more than ``max_held``
        waited), none still waiting (after :meth:`close`: none left unwritten)."""
        with self._cond:
            return self.dropped == 0 and self._durable >= self._queued

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record queued so far is on disk; False on timeout."""
        with self._cond:
            target = self._queued
            return self._cond.wait_for(
                lambda: self._durable >= target or self._closed, timeout=timeout
            ) and (self._durable >= target)

    def close(self) -> None:
        """Write and fsync everything queued, stop the thread, close the file."""
        with self._cond:
            if self._closing:
                already = True
            else:
                already = False
                self._enqueue_summaries(every=True)  # (the refusals counted so far)
                self._closing = True
                self._cond.notify_all()
        self._thread.join()
        if already:
            return
        atexit.unregister(self.close)
        for fd in (self._fd, self._lock_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._lock_fd = -1
        if self.error is not None:
            lost = self._queued - self._durable
            raise OSError(
                self.error.errno, f"audit log {self.path}: {lost} records not written: {self.error}"
            )

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the writer thread

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def _run(self) -> None:
        pending: list[bytes] = []  # taken from the queue, not yet durable
        while True:
            with self._cond:
                while not self._queue and not pending and not self._closing:
                    due = self._refusals.next_due(time.monotonic())
                    self._cond.wait(due)
                    if due is not None:
                        self._enqueue_summaries()
                pending += self._queue
                self._queue = []
                closing = self._closing
            if not pending:
                break  # (closing, and all written)
            try:
                self._write_batch(pending)
            except OSError as exc:
                self._failed(exc, closing)
                if closing:
                    break
                with self._cond:  # again after retry_seconds (at once when closing),
                    # new records or not (review58 L1: they waited for the next one)
                    self._cond.wait_for(lambda: self._closing, timeout=self.retry_seconds)
                continue
            self._written(pending)
            pending = []
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _failed(self, exc: OSError, closing: bool) -> None:
        self.write_errors += 1
        if self.error is None or closing:
            log.error("cannot write the audit log %s: %s", self.path, exc)
        self.error = exc

    def _written(self, lines: list[bytes]) -> None:
        """``lines`` are durable: say so if the file was not writable, or records were
        dropped, until now (before a flush waiting for them returns); count them."""
        recovered = self.error is not None
        with self._cond:
            dropped, self._dropping = self._dropping, 0
        if recovered:
            log.info("audit log %s writable again: %d records written", self.path, len(lines))
        if dropped:
            log.error(
                "audit log %s: %d records dropped: more than %d bytes waited to be written",
                self.path,
                dropped,
                self.max_held,
            )
        with self._cond:
            self._durable += len(lines)
            self._held -= sum(len(line) for line in lines)
            self.error = None
            self._cond.notify_all()

    def _write_batch(self, lines: list[bytes]) -> None:
        """Write ``lines`` (rotating as needed) and fsync; on error none count as written.

        A partial batch may have reached the file before an error; the retry
        writes it again, so a record can appear more than once but is never missing.
        Under the writers' lock (module docstring: several processes).
        """
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            self._follow()
            self._write_rotating(lines)
            os.fsync(self._fd)
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _follow(self) -> None:
        """Write to the file now at ``path`` (another writer may have rotated ours
        away, or logrotate renamed it; a rotation of our own may have failed
        half-way), at its true size."""
        if self._fd >= 0:
            mine = os.fstat(self._fd)
            try:
                there = os.stat(self.path)
            except FileNotFoundError:
                there = None
            if there is not None and (there.st_ino, there.st_dev) == (mine.st_ino, mine.st_dev):
                self._size = mine.st_size
                return
            os.close(self._fd)
            self._fd = -1
        self._fd = self._open()
        self._size = os.fstat(self._fd).st_size

    def _write_rotating(self, lines: list[bytes]) -> None:
        chunk: list[bytes] = []
        size = self._size
        for line in lines:
            if self.max_bytes and size > 0 and size + len(line) > self.max_bytes:
                self._write(chunk)
                chunk = []
                self._rotate()
                size = 0
            chunk.append(line)
            size += len(line)
        self._write(chunk)

    def _write(self, chunk: list[bytes]) -> None:
        if not chunk:
            return
        data = memoryview(b"".join(chunk))
        while data:
            written = os.write(self._fd, data)
            self._size += written
            data = data[written:]

    def _rotate(self) -> None:
        """``path`` becomes ``path.1``, every ``path.<n>`` ``path.<n+1>`` (highest
        first: a crash half-way leaves a gap, never two files out of order); with
        ``keep``, those beyond ``path.<keep>`` are deleted, with a WARNING."""
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1  # never write to a stale descriptor number
        name = str(self.path)
        numbers = rotated_numbers(self.path)
        for n in numbers:
            os.replace(f"{name}.{n}", f"{name}.{n + 1}")
        os.replace(name, f"{name}.1")
        self._fd = self._open()
        self._size = 0
        if self.keep:
            self._drop_beyond_keep([f"{name}.{n + 1}" for n in numbers if n + 1 > self.keep])
        _fsync_dir(self.path.parent)

    def _drop_beyond_keep(self, beyond: list[str]) -> None:
        """Delete the rotated files ``beyond`` the ``keep`` newest, saying so (WARNING);
        one that cannot be is left for the next rotation (the batch goes on)."""
        deleted = []
        for old in beyond:  # (the oldest first)
            try:
                os.unlink(old)
                deleted.append(Path(old).name)
            except OSError as exc:
                log.warning("audit log: cannot delete %s: %s", old, exc)
        if deleted:
            log.warning(
                "audit log %s rotated: deleted %d file(s) of its oldest records, beyond"
                " the %d kept (--audit-log-keep): %s",
                self.path,
                len(deleted),
                self.keep,
                ", ".join(deleted),
            )


def _line(record: dict[str, Any], event: str | None) -> bytes:
    """``record`` as its line: ``"time"`` first, then ``"event"`` (``event`` when it
    has none), then its own keys."""
    entry: dict[str, Any] = {"time": utc_now()}
    if event is not None and "event" not in record:
        entry["event"] = event
    entry.update((k, v) for k, v in record.items() if k != "time")
    return json.dumps(entry, default=str, separators=(",", ":")).encode("ascii") + b"\n"


def rotated_numbers(path: Path) -> list[int]:
    """The ``n`` of each ``path.<n>`` there is, highest first."""
    prefix = f"{path.name}."
    found = []
    with os.scandir(path.parent if str(path.parent) else ".") as entries:
        for entry in entries:
            suffix = entry.name[len(prefix) :]
            ours = suffix.isascii() and suffix.isdigit() and suffix[0] != "0"  # (not FILE.01)
            if entry.name.startswith(prefix) and ours:
                found.append(int(suffix))
    return sorted(found, reverse=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory if str(directory) else ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
