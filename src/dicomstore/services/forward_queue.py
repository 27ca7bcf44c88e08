"""The durable forwarding queue: ``<archive>/.forward/queue.sqlite`` (issue 16).

SQLite rather than JSON lines: an entry changes state many times, the sender takes the
*due* entries of one destination a batch at a time (an index, ``LIMIT``: memory
independent of the queue's length), ``dicomstore stats`` reads it while the server
writes (WAL); a log would need its own compaction and index to do as much.

An entry is one instance for one destination, from one store: its key is
(destination, SOP Instance UID, the index row's ``received_at``), so a store
queued twice (by the store observer and again by recovery, by an instance rule
and a ``when=stable`` rule to the same destination) is one entry, while the same
instance stored again later is a new one. States: ``pending`` (with
``attempts`` and ``next_attempt``), then ``sent``, ``failed`` (a permanent
failure: the destination's status and Error Comment are kept; or its file gone
from the archive) or ``skipped`` (not in the index any more when its turn came). Sent
and skipped entries are pruned after a while (``keep_done`` seconds); the counts of
each state per destination stay in ``total``. A damaged file is named:
``forward_recovery.damaged``.

Durability: ``synchronous=NORMAL`` (no fsync per commit). The archive index is
the record of what was stored, and the queue can be rebuilt from it: the
``observed`` watermark is the newest ``received_at`` the queue has seen, and
``Forwarding.open`` queues again, after a restart, what the index holds from shortly
before it (entries already there are kept by their key). A commit lost to a power cut
rolls the queue back to an earlier, consistent state: at worst an instance is
sent twice (forwarding is at least once, as every store-and-forward is).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicomstore.archive.nodes import ServiceLock

QUEUE_DIR = ".forward"
QUEUE_NAME = "queue.sqlite"
STATES = ("pending", "sent", "failed", "skipped")

SCHEMA = """
CREATE TABLE IF NOT EXISTS entry (
    id INTEGER PRIMARY KEY,
    destination TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    received_at TEXT NOT NULL,
    study_uid TEXT,
    state TEXT NOT NULL DEFAULT 'pending',
    queued_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    done_at REAL,
    status TEXT,
    reason TEXT,
    UNIQUE (destination, sop_instance_uid, received_at)
);
CREATE INDEX IF NOT EXISTS entry_due ON entry (destination, state, next_attempt);
CREATE TABLE IF NOT EXISTS total (
    destination TEXT NOT NULL,
    state TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (destination, state)
);
CREATE TABLE IF NOT EXISTS peer (
    destination TEXT PRIMARY KEY,
    address TEXT,
    last_error TEXT,
    last_error_at REAL,
    last_sent_at REAL
);
CREATE TABLE IF NOT EXISTS watermark (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rule_since (
    destination TEXT NOT NULL,
    trigger TEXT NOT NULL,
    since TEXT NOT NULL,
    PRIMARY KEY (destination, trigger)
);
CREATE TABLE IF NOT EXISTS stable_seen (
    study_uid TEXT NOT NULL,
    stable_at TEXT NOT NULL,
    PRIMARY KEY (study_uid, stable_at)
);
"""


def queue_path(root: Path | str) -> Path:
    """Where the queue of the archive at ``root`` lives."""
    return Path(root) / QUEUE_DIR / QUEUE_NAME


@dataclass(frozen=True, slots=True)
class Entry:
    """One instance to send to one destination."""

    id: int
    destination: str
    sop_instance_uid: str
    received_at: str
    attempts: int


@dataclass(frozen=True, slots=True)
class Queued:
    """What to add: an instance (its store's ``received_at``) for a destination."""

    destination: str
    sop_instance_uid: str
    received_at: str
    study_uid: str | None = None


@dataclass(frozen=True, slots=True)
class Settled:
    """What became of an entry: ``state`` (pending: tried again at ``next_attempt``)."""

    id: int
    state: str
    attempts: int
    next_attempt: float = 0.0
    status: int | None = None
    reason: str | None = None


def _failed_for_good(o: Settled) -> str:
    """A destination's last error, from an entry that failed for good (review45 M9)."""
    said = " ".join(x for x in (None if o.status is None else f"{o.status:04X}", o.reason) if x)
    return f"failed for good: {said or 'no reason given'}"


@dataclass(frozen=True, slots=True)
class Pending:
    """A destination's pending entries: how many, and when the oldest was queued."""

    count: int
    oldest: float | None


class ForwardQueue:
    """The queue's one writer (the server); every method blocks: call it in a worker
    thread. One connection, serialized by a lock."""

    def __init__(self, root: Path | str, *, clock: Any = time.time) -> None:
        self.path = queue_path(root)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- watermarks and rules ----------------------------------------------------------

    def watermark(self, name: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM watermark WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def set_watermark(self, name: str, value: str) -> None:
        with self._lock, self._transaction():
            self._raise_watermark(name, value)

    def configure(self, pairs: Iterable[tuple[str, str]], now: str) -> dict[tuple[str, str], str]:
        """The (destination, trigger) pairs of the rules configured now: since when
        each has been (``now`` for a new one); pairs no longer configured are
        forgotten, so that a rule added again starts afresh."""
        wanted = set(pairs)
        with self._lock, self._transaction():
            known = {
                (d, t): since
                for d, t, since in self._db.execute(
                    "SELECT destination, trigger, since FROM rule_since"
                )
            }
            for pair in set(known) - wanted:
                self._db.execute(
                    "DELETE FROM rule_since WHERE destination = ? AND trigger = ?", pair
                )
            for pair in wanted - set(known):
                self._db.execute("INSERT INTO rule_since VALUES (?, ?, ?)", (*pair, now))
                known[pair] = now
        return {pair: known[pair] for pair in wanted}

    def peers(self, addresses: dict[str, str]) -> None:
        """Note each destination's address (for ``dicomstore stats``)."""
        with self._lock, self._transaction():
            for dest, address in addresses.items():
                self._db.execute(
                    "INSERT INTO peer (destination, address) VALUES (?, ?)"
                    " ON CONFLICT (destination) DO UPDATE SET address = excluded.address",
                    (dest, address),
                )

    def stable_seen(self, study_uid: str, stable_at: str) -> bool:
        with self._lock:
            sql = "SELECT 1 FROM stable_seen WHERE study_uid = ? AND stable_at = ?"
            return self._db.execute(sql, (study_uid, stable_at)).fetchone() is not None

    # -- adding ----------------------------------------------------------------------

    def add(
        self,
        items: Sequence[Queued],
        *,
        observed: str | None = None,
        stable: tuple[str, str] | None = None,
    ) -> dict[str, int]:
        """Add entries (those already there are kept), in one transaction with the
        ``observed`` watermark raised and the ``stable`` (study, stable_at) event
        marked seen; the number added per destination."""
        now = self.clock()
        added: dict[str, int] = {}
        with self._lock, self._transaction():
            for item in items:
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO entry (destination, sop_instance_uid, received_at,"
                    " study_uid, queued_at, next_attempt) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        item.destination,
                        item.sop_instance_uid,
                        item.received_at,
                        item.study_uid,
                        now,
                        now,
                    ),
                )
                if cur.rowcount:
                    added[item.destination] = added.get(item.destination, 0) + 1
            if observed is not None:
                self._raise_watermark("observed", observed)
            if stable is not None:
                self._db.execute("INSERT OR IGNORE INTO stable_seen VALUES (?, ?)", stable)
        return added

    # -- sending ---------------------------------------------------------------------

    def due(self, destination: str, now: float, limit: int) -> list[Entry]:
        """At most ``limit`` pending entries of ``destination`` due by ``now``, the
        longest due first, then those tried fewer times (review88 F1: an instance the
        destination keeps refusing, first of each batch, held back every later one)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, destination, sop_instance_uid, received_at, attempts FROM entry"
                " WHERE destination = ? AND state = 'pending' AND next_attempt <= ?"
                " ORDER BY next_attempt, attempts, id LIMIT ?",
                (destination, now, limit),
            ).fetchall()
        return [Entry(*row) for row in rows]

    def next_due(self, destination: str) -> float | None:
        """When the next pending entry of ``destination`` is due (None: none pending)."""
        with self._lock:
            (when,) = self._db.execute(
                "SELECT MIN(next_attempt) FROM entry WHERE destination = ? AND state = 'pending'",
                (destination,),
            ).fetchone()
        return when

    def settle(
        self,
        destination: str,
        outcomes: Sequence[Settled],
        *,
        error: str | None = None,
        keep_done: float = 3600.0,
    ) -> Pending:
        """Record what became of entries of ``destination`` (and the destination's
        last error, if any), prune sent and skipped entries done over ``keep_done``
        seconds ago; the destination's pending entries now."""
        now = self.clock()
        with self._lock, self._transaction():
            done: dict[str, int] = {}
            for o in outcomes:
                status = None if o.status is None else f"{o.status:04X}"
                finished = None if o.state == "pending" else now
                self._db.execute(
                    "UPDATE entry SET state = ?, attempts = ?, next_attempt = ?, done_at = ?,"
                    " status = COALESCE(?, status), reason = COALESCE(?, reason) WHERE id = ?",
                    (o.state, o.attempts, o.next_attempt, finished, status, o.reason, o.id),
                )
                if o.state != "pending":
                    done[o.state] = done.get(o.state, 0) + 1
            for state, n in done.items():
                self._db.execute(
                    "INSERT INTO total VALUES (?, ?, ?) ON CONFLICT (destination, state)"
                    " DO UPDATE SET n = n + excluded.n",
                    (destination, state, n),
                )
            self._db.execute("INSERT OR IGNORE INTO peer (destination) VALUES (?)", (destination,))
            failed = [o for o in outcomes if o.state == "failed"]
            if error is None and failed:  # (the last error is also one that failed entries for
                error = _failed_for_good(failed[-1])  # good: stats showed an older one)
            if error is not None:
                self._db.execute(
                    "UPDATE peer SET last_error = ?, last_error_at = ? WHERE destination = ?",
                    (error, now, destination),
                )
            if done.get("sent"):
                self._db.execute(
                    "UPDATE peer SET last_sent_at = ? WHERE destination = ?", (now, destination)
                )
            self._db.execute(
                "DELETE FROM entry WHERE destination = ? AND state IN ('sent', 'skipped')"
                " AND done_at < ?",
                (destination, now - keep_done),
            )
            return self._pending(destination)

    def unconfigured(self) -> dict[str, int]:
        """Pending entries of destinations no rule names now (review49 #8): kept, and
        sent only if one is configured again."""
        with self._lock:
            return dict(
                self._db.execute(
                    "SELECT destination, COUNT(*) FROM entry WHERE state = 'pending' AND"
                    " destination NOT IN (SELECT destination FROM rule_since)"
                    " GROUP BY destination"
                )
            )

    def pending(self, destination: str) -> Pending:
        with self._lock:
            return self._pending(destination)

    # -- inside --------------------------------------------------------------------------

    def _pending(self, destination: str) -> Pending:
        count, oldest = self._db.execute(
            "SELECT COUNT(*), MIN(queued_at) FROM entry WHERE destination = ?"
            " AND state = 'pending'",
            (destination,),
        ).fetchone()
        return Pending(count, oldest)

    def _raise_watermark(self, name: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO watermark VALUES (?, ?) ON CONFLICT (name)"
            " DO UPDATE SET value = MAX(value, excluded.value)",
            (name, value),
        )

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an exception)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *rest: object) -> None:
        self.db.execute("ROLLBACK" if kind is not None else "COMMIT")


def queue_status(root: Path | str, *, timeout: float = 5.0) -> list[dict[str, Any]] | None:
    """Per destination of the queue of the archive at ``root`` (read-only; None when
    there is no queue): ``pending``, ``sent``, ``failed``, ``skipped``,
    ``oldest_pending`` (epoch seconds), ``address``, ``last_error``,
    ``last_error_at``, ``last_sent_at``, ``configured`` (a rule named it at start)."""
    path = queue_path(root)
    if not path.is_file():
        return None
    uri = f"{path.resolve().as_uri()}?mode=ro"  # (a relative --storage: review35b F2)
    with closing(sqlite3.connect(uri, uri=True, timeout=timeout)) as db:
        found: dict[str, dict[str, Any]] = {}

        def of(dest: str) -> dict[str, Any]:
            return found.setdefault(
                dest,
                {
                    "destination": dest,
                    "address": None,
                    **{state: 0 for state in STATES},
                    "oldest_pending": None,
                    "last_error": None,
                    "last_error_at": None,
                    "last_sent_at": None,
                },
            )

        for dest, address, error, error_at, sent_at in db.execute(
            "SELECT destination, address, last_error, last_error_at, last_sent_at FROM peer"
        ):
            of(dest).update(
                address=address, last_error=error, last_error_at=error_at, last_sent_at=sent_at
            )
        for dest, state, n in db.execute("SELECT destination, state, n FROM total"):
            of(dest)[state] = n
        for dest, count, oldest in db.execute(
            "SELECT destination, COUNT(*), MIN(queued_at) FROM entry WHERE state = 'pending'"
            " GROUP BY destination"
        ):
            of(dest).update(pending=count, oldest_pending=oldest)
        configured = {d for (d,) in db.execute("SELECT DISTINCT destination FROM rule_since")}
        for dest, row in found.items():
            row["configured"] = dest in configured  # (at the server's last start)
    return [found[dest] for dest in sorted(found)]


def requeue_failed(
    root: Path | str,
    destinations: Sequence[str] = (),
    *,
    timeout: float = 5.0,
    clock: Any = time.time,
) -> dict[str, int] | None:
    """The *failed* entries of ``destinations`` (all when empty) pending again, due now,
    their attempts counted from 0 (``dicomstore requeue``: a destination's trouble that
    its status called permanent, review36a #9); how many per destination, None when
    there is no queue. Safe while the server runs (one transaction; the sender looks
    for due entries at least every ``forwarding.IDLE_LOOK`` seconds)."""
    path = queue_path(root)
    if not path.is_file():
        return None
    where, args = "state = 'failed'", list(destinations)
    if destinations:
        where += f" AND destination IN ({', '.join('?' * len(destinations))})"
    db = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    with closing(db), _Transaction(db):
        counts = dict(
            db.execute(
                f"SELECT destination, COUNT(*) FROM entry WHERE {where} GROUP BY destination",
                args,
            ).fetchall()
        )
        db.execute(
            "UPDATE entry SET state = 'pending', attempts = 0, next_attempt = ?,"
            f" queued_at = ?, done_at = NULL WHERE {where}",  # (queued now: review37 F4)
            [now := clock(), now, *args],
        )
        for dest, n in counts.items():
            db.execute(
                "UPDATE total SET n = MAX(n - ?, 0) WHERE destination = ? AND state = 'failed'",
                (n, dest),
            )
    return counts


class Configured(ValueError):
    """Entries to drop of a destination a rule configures (:func:`drop_entries`)."""


def drop_entries(
    root: Path | str, destinations: Sequence[str], *, timeout: float = 5.0
) -> dict[str, int] | None:
    """The entries still to send (pending, failed) of ``destinations`` dropped, none
    sent (``dicomstore requeue --drop``: a destination removed from the rules keeps
    its entries, which it would get if it came back; review49 #8); how many per
    destination, None when there is no queue. While a node forwards, only those of
    destinations no rule of its names (no sender runs for them: review51 #3, a
    start without any rule never forwards, nor changes the rules recorded);
    :class:`Configured` names the others."""
    path = queue_path(root)
    if not path.is_file():
        return None
    running = ServiceLock(root, "forward").held_elsewhere()
    db = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    with closing(db), _Transaction(db):
        rules = db.execute("SELECT DISTINCT destination FROM rule_since") if running else ()
        configured = {d for (d,) in rules}
        named = [dest for dest in destinations if dest in configured]
        if named:
            raise Configured(
                f"{', '.join(named)}: the node forwarding now has a --forward rule for it:"
                " restart it without that rule first (or use requeue without --drop)"
            )
        counts: dict[str, int] = {}
        for dest in destinations:
            failed = db.execute(
                "DELETE FROM entry WHERE destination = ? AND state = 'failed'", (dest,)
            ).rowcount
            pending = db.execute(
                "DELETE FROM entry WHERE destination = ? AND state = 'pending'", (dest,)
            ).rowcount
            db.execute(
                "UPDATE total SET n = MAX(n - ?, 0) WHERE destination = ? AND state = 'failed'",
                (failed, dest),
            )
            counts[dest] = failed + pending
    return counts
