"""The durable log of study-complete events (``<archive>/.events/study-stable.jsonl``):
:class:`StableStudy` (one event, a JSON line), :class:`StableLog` (appended and
flushed; read, and parsed once per process as it grows), and the times the events,
the index's ``received_at`` and the forward queue hold (ISO 8601, UTC). The events
themselves are made by :mod:`dicomstore.services.stability`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from dicomstore.archive.reader import ArchiveReader

log = logging.getLogger("dicomstore.stable")

LOG_DIR = ".events"
LOG_NAME = "study-stable.jsonl"
EVENT = "study.stable"


@dataclass(frozen=True)
class StableStudy:
    """One study-complete event (a line of the event log)."""

    study_uid: str
    patient_id: str | None
    #: instances and series of the study in the archive when it became stable
    instances: int
    series: int
    #: arrival of the first and last instance of this burst (ISO 8601, UTC)
    first_received: str
    last_received: str
    stable_at: str
    #: the study's folder in the archive
    folder: str

    def as_dict(self) -> dict[str, Any]:
        return {"event": EVENT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StableStudy:
        fields = {k: v for k, v in data.items() if k != "event"}
        return cls(**fields)


def iso(when: float) -> str:
    """``when`` (epoch seconds) as the ISO 8601 text (UTC, microseconds) that the
    index's ``received_at``, the event log and the forward queue hold and compare."""
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="microseconds")


def epoch(text: str) -> float:
    """The epoch seconds of such a text; one without an offset is UTC, as every time
    the events hold and print (review49 #15: it was the local time zone's)."""
    when = datetime.fromisoformat(text)
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def shifted(text: str, seconds: float) -> str:
    """Such a text ``seconds`` later (earlier when negative)."""
    return iso(epoch(text) + seconds)


class StableLog:
    """The durable log of study-complete events (JSON lines, appended and flushed)."""

    def __init__(self, root: Path | str, *, fsync: bool = True) -> None:
        self.path = Path(root) / LOG_DIR / LOG_NAME
        self.fsync = fsync

    def append(self, event: StableStudy) -> None:
        """Add one event; durable when this returns (with ``fsync``)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(event.as_dict(), sort_keys=True, ensure_ascii=False) + "\n"
        with open(self.path, "ab+") as fp:
            if fp.seek(0, os.SEEK_END) > 0:
                fp.seek(-1, os.SEEK_END)
                if fp.read(1) != b"\n":  # a line cut by a crash: ours starts a new one
                    line = "\n" + line
            fp.write(line.encode("utf-8"))
            if self.fsync:
                fp.flush()
                os.fsync(fp.fileno())

    def read(self, since: str | None = None) -> Iterator[StableStudy]:
        """The events in order; with ``since`` (ISO 8601) those stable at or after it.
        A line that cannot be read (cut by a crash mid-write) is skipped."""
        if not self.path.is_file():
            return
        floor = epoch(since) if since else None
        skipped = 0
        with open(self.path, "rb") as fp:
            for line in fp:
                event = _parse(line)
                skipped += event is None and bool(line.strip())
                if event and (floor is None or epoch(event.stable_at) >= floor):
                    yield event
        if skipped:  # (review115 F10: `dicomstore events` skipped them unsaid)
            log.warning("%s: %d line(s) not a study event, skipped", self.path, skipped)

    def latest(self) -> Mapping[str, StableStudy]:
        """Per study, its last event. Parsed once per process and log: each call
        looks at the file and reads only the bytes appended since the last call (the
        log only grows); a line not yet ended is read again with the next call, a
        line cut by a crash is skipped, a log rewritten or replaced is read anew.
        The mapping returned is never changed afterwards. The file is opened before
        it is looked at: on NFS, opening revalidates what the client knows of it
        (close-to-open), so every node of a shared storage root sees the lines the
        events node appended and closed (a ``stat`` alone may be answered from a
        cache seconds old)."""
        return self._parsed().latest

    def before(self, event: StableStudy) -> StableStudy | None:
        """The event of ``event``'s study logged before it (None: its first), ``event``
        being its study's last one (the log's ``on_stable`` hooks get such events)."""
        parsed = self._parsed()
        if parsed.latest.get(event.study_uid) == event:
            return parsed.previous.get(event.study_uid)
        return parsed.latest.get(event.study_uid)

    def _parsed(self) -> _Parsed:
        try:
            with open(self.path, "rb") as fp, _PARSED_LOCK:
                return self._appended(fp)
        except FileNotFoundError:
            return _Parsed()

    def _appended(self, fp: BinaryIO) -> _Parsed:
        """:meth:`latest` of the open log ``fp`` (under the lock)."""
        stat = os.fstat(fp.fileno())
        stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        parsed = _PARSED.get(self.path)
        if parsed is not None and parsed.stamp == stamp:
            return parsed
        if parsed is None or parsed.stamp[0] != stat.st_ino or stat.st_size <= parsed.end:
            parsed = _Parsed()  # new, replaced, or rewritten in place
        fp.seek(parsed.end)
        appended = fp.read(max(stat.st_size - parsed.end, 0))
        lines = appended[: appended.rfind(b"\n") + 1]
        latest = dict(parsed.latest)  # copied: the mapping handed out stays as it was
        previous = parsed.previous
        unreadable = 0
        for line in lines.splitlines():
            event = _parse(line)
            unreadable += event is None
            if event:
                if event.study_uid in latest:
                    if previous is parsed.previous:
                        previous = dict(previous)  # (copied once, when it changes)
                    previous[event.study_uid] = latest[event.study_uid]
                latest[event.study_uid] = event
        if unreadable:  # (review77 F18: skipped without a word)
            log.warning(
                "%s: %d line(s) not a study event, skipped (after byte %d)",
                self.path,
                unreadable,
                parsed.end,
            )
        found = _Parsed(stamp, parsed.end + len(lines), latest, previous)
        _PARSED[self.path] = found
        return found

    def last_reported(self) -> dict[str, float]:
        """Per study, the arrival time of the last instance its last event covered."""
        return {uid: epoch(e.last_received) for uid, e in self.latest().items()}


def _parse(line: bytes) -> StableStudy | None:
    """One event of the log; None for a line that cannot be read (cut by a crash)."""
    try:
        return StableStudy.from_dict(json.loads(line))
    except (ValueError, TypeError):
        return None


@dataclass(frozen=True)
class _Parsed:
    """What :meth:`StableLog.latest` read of a log: up to ``end`` (the end of its
    last whole line), when the file had ``stamp`` (inode, size, mtime)."""

    stamp: tuple[int, int, int] = (-1, -1, -1)
    end: int = 0
    latest: dict[str, StableStudy] = field(default_factory=dict)
    #: per study, the event before its last one
    previous: dict[str, StableStudy] = field(default_factory=dict)


_PARSED: dict[Path, _Parsed] = {}
_PARSED_LOCK = threading.Lock()


def covered(event: StableStudy | None, newest: str | None) -> str | None:
    """``event.stable_at`` when ``event`` covers a study whose newest instance arrived
    at ``newest`` (ISO 8601; ``rebuild.BEFORE_ALL`` when a rebuild of the index made
    every instance it has: no arrival, review58 H1), else None: the study is stable
    since then."""
    if event is None or not newest or epoch(newest) > epoch(event.last_received):
        return None
    return event.stable_at


def reader_log(reader: ArchiveReader) -> StableLog:
    """The event log of the archive ``reader`` reads."""
    return StableLog(reader.root, fsync=False)
