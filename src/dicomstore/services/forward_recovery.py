"""Forwarding's queueing from the archive index (issue 16): recovery, and stable studies.

Recovery, before the server listens: what the index holds from shortly before
the queue's ``observed`` watermark, and the stable events logged that the
queue has not seen, are queued again (an entry already there is kept), so that
an instance acknowledged just before a crash is forwarded all the same. A rule
applies to what is stored while it is configured: one added to the
configuration does not send the archive's past. A study that becomes stable is
queued from the index the same way (:func:`add_study`). An instance a rebuild of
the index from the files made (``archive/rebuild.py``: a restore, an index lost)
is never queued again (review58 H1: its arrival time was the file's, the whole
archive went again, to a rule added since too); one stored after it is, whatever
the clock of the node that stored it (review59 M2).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

from dicomstore.archive.reader import ArchiveReader
from dicomstore.archive.rebuild import arrivals_only
from dicomstore.services.forward_queue import ForwardQueue, Queued, queue_path
from dicomstore.services.forward_rules import ForwardRule, entries_for
from dicomstore.services.stable_log import StableLog, StableStudy, epoch, shifted

log = logging.getLogger("dicomstore.forward")

#: Seconds before the ``observed`` watermark that recovery looks again: longer than
#: an index commit takes after its ``received_at`` is set.
SLACK = 60.0
#: What a queue lost or moved aside leaves to the operator (review122 F3).
UNSENT = "what it still had to send is not sent: send that with `dicomstore send`"
#: The columns of an index row the rules and the queue need.
_ROW = (
    "SELECT i.sop_instance_uid, i.received_at, i.calling_ae, se.modality, i.sop_class_uid,"
    " st.study_uid FROM instance i JOIN series se ON se.series_pk = i.series_pk"
    " JOIN study st ON st.study_pk = se.study_pk"
)
COLUMNS = ("sop_instance_uid", "received_at", "calling_ae", "modality", "sop_class_uid")

#: (destination, trigger) -> since when the rule has been configured (ISO)
Since = dict[tuple[str, str], str]


def damaged(root: Path | str, exc: Exception) -> OSError:
    """sqlite3's ``exc`` as an ``OSError`` naming the queue's file (review115 F3), and
    what moving it aside costs."""
    why = f"{exc} (the forwarding queue: moved aside, a new one starts; {UNSENT})"
    return OSError(errno.EIO, why, str(queue_path(root)))


def recover(
    reader: ArchiveReader,
    queue: ForwardQueue,
    rules: Sequence[ForwardRule],
    since: Since,
    now: str,
    batch: int,
) -> int:
    """Queue again what a crash or a stop may have left out (module notes), a
    transaction per ``batch`` rows; the number of entries added. Blocking."""
    added = 0
    observed = queue.watermark("observed")
    if observed is None:  # a new queue: nothing stored before it is forwarded
        queue.set_watermark("observed", now)
        with closing(reader.connect()) as db:
            held = db.execute("SELECT 1 FROM instance LIMIT 1").fetchone() is not None
        if held:  # (review122 F3: a damaged queue moved aside lost its pending unsaid)
            log.warning(
                "a new forwarding queue: what the archive holds already is not forwarded"
                " (if a queue was lost or moved aside, %s)",
                UNSENT,
            )
    elif any(rule.when == "instance" for rule in rules):
        with closing(reader.connect()) as db:
            arrival = arrivals_only(reader.engine, db)
            sql = f"{_ROW} WHERE i.received_at >= ? AND {arrival}"
            cursor = db.execute(sql, (shifted(observed, -SLACK),))
            added = _add_rows(queue, rules, since, _rows(cursor), "instance", batch)
    return added + recover_stable(reader, queue, rules, since)


def recover_stable(
    reader: ArchiveReader, queue: ForwardQueue, rules: Sequence[ForwardRule], since: Since
) -> int:
    """Queue the studies of the stable events logged that the queue has not seen, for
    the ``when=stable`` rules configured then; the number of entries added."""
    floors = [at for (_d, when), at in since.items() if when == "stable"]
    if not floors:
        return 0
    added, floor = 0, min(epoch(at) for at in floors)
    before: dict[str, StableStudy] = {}  # (per study, its event before)
    for event in StableLog(reader.root).read():
        seen = epoch(event.stable_at) < floor or queue.stable_seen(event.study_uid, event.stable_at)
        if not seen:
            added += add_study(reader, queue, rules, since, event, before.get(event.study_uid))
        before[event.study_uid] = event
    return added


def _add_rows(
    queue: ForwardQueue,
    rules: Sequence[ForwardRule],
    since: Since,
    rows: Iterable[dict[str, Any]],
    when: str,
    batch: int,
) -> int:
    """Queue, for the rules of trigger ``when``, the instances of ``rows`` that they
    match (and that arrived since the rule is configured), a transaction per
    ``batch`` rows; the number added."""
    added = 0
    chunk: list[Queued] = []
    for row in rows:
        chunk.extend(entries_for(rules, since, row, when))
        if len(chunk) >= batch:
            added += sum(queue.add(chunk).values())
            chunk = []
    if chunk:
        added += sum(queue.add(chunk).values())
    return added


def add_study(
    reader: ArchiveReader,
    queue: ForwardQueue,
    rules: Sequence[ForwardRule],
    since: Since,
    event: StableStudy,
    before: StableStudy | None,
) -> int:
    """Queue the instances of a stable study for the ``when=stable`` rules: those its
    event ``before`` (of the same study, if any) did not cover, the instances that
    arrived after it (review49 #6: every instance was, and a late one after the queue
    forgot what it sent, an hour on, sent the whole study again); never those the
    index was rebuilt with (module notes). Blocking."""
    items: list[Queued] = []
    floor = ""
    if before is not None:  # (covered: arrived by its last one, +1 ms of rounding)
        floor = shifted(before.last_received, 0.001)
    with closing(reader.connect()) as db:
        arrival = arrivals_only(reader.engine, db)
        sql = f"{_ROW} WHERE st.study_uid = ? AND i.received_at > ? AND {arrival}"
        cursor = db.execute(sql, (event.study_uid, floor))
        for row in _rows(cursor):
            items.extend(entries_for(rules, since, row, "stable", event.stable_at))
    added = queue.add(items, stable=(event.study_uid, event.stable_at))
    for ae, n in added.items():
        log.info("forward to %s: study %s stable, %d instance(s) queued", ae, event.study_uid, n)
    return sum(added.values())


def _rows(cursor: Any) -> Iterator[dict[str, Any]]:
    for values in cursor:
        yield dict(zip((*COLUMNS, "study_uid"), values, strict=True))
