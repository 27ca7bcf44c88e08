"""The index: SQLite (WAL) with the patient / study / series / instance hierarchy.

This is the "access method" PS3.4 B.1.2 Note 1 asks of the medium: it finds
an instance by the attributes a query filters on (PS3.4 C.6.1 study root keys)
and records what was stored — file path, size, transfer syntax, digest,
received-at and calling AE.

The SQL runs on SQLite and PostgreSQL alike: ``CREATE ... IF NOT
EXISTS``, ``INSERT ... ON CONFLICT (...) DO UPDATE`` with ``excluded``,
``COALESCE``; what differs (PRAGMAs, placeholders, the write lock, change
detection) is in ``engine.py``.
A missing Patient ID or Issuer of Patient ID is stored as ``''``; the ingest
refuses data sets without a Study or Series Instance UID (PS3.4 B.1.1), so
only ``reindex`` of older files meets an empty one. Levels are linked by
surrogate keys (``*_pk``, never returned to readers): a series row is one
Series Instance UID *in one study*, a study row one Study Instance UID *of one
patient*, so no instance is listed under a study or patient it does not
belong to, whatever UIDs senders reuse (:meth:`Index.conflict` lets the
archive refuse such reuse, PS3.4 B.2.3 A900).

One writer connection, guarded by :attr:`Index.lock` (callers hold it around
``begin`` … ``commit``); every read opens its own read-only connection, which
WAL lets proceed while the writer writes.

The writer remembers the patient, study and series rows it knows to be stored
(as stored, after ``COALESCE``), so storing one more instance of a known
series costs one ``INSERT`` (:meth:`Index.put_many`, several instances per
statement). Rows learnt in a transaction count only once it commits. The cache
outlives other connections' commits that only add instances; one that rewrote
(a ``delete`` from the CLI, a replace, a patient's values changed, a
``reindex``) is seen at the next :meth:`Index.begin` and empties it: the count
of rewrites, ``parentcache.py``, which says why that is safe.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Generator, Iterable
from contextlib import AbstractContextManager, closing
from pathlib import Path
from typing import Any

from dicomstore.archive.engine import (
    Connection,
    DatabaseError,
    Engine,
    OperationalError,
    PostgresOperationalError,
    SqliteEngine,
    dialect_of,
    order_by,
)
from dicomstore.archive.fields import clean_text
from dicomstore.archive.parentcache import READ_REWRITES, ParentCache
from dicomstore.archive.pg_deadline import without_deadline
from dicomstore.archive.schema import (
    ATTRS,
    FROM_JOIN,
    INSTANCE_COLUMNS,
    KEYS,
    NATURAL_KEY,
    ORDER_ROWS,
    PARENTS,
    PK,
    ROW_COLUMNS,
    ROW_KEYS,
    SELECT_ONE,
    SELECT_ROWS,
    SERIES_ELSEWHERE,
    STUDY_ELSEWHERE,
    TABLES,
    UPSERT_INSTANCE,
    Arrivals,
    create_or_migrate,
    patient_key,
)

#: The values :meth:`Index.conflict` compares.
_CONFLICT_KEYS = (*KEYS, "sop_instance_uid")


log = logging.getLogger("dicomstore.archive")


class Index:
    """The index of ``engine`` (a SQLite file's path, or an :class:`Engine`);
    created (schema and indexes) when absent.

    An index of an older schema raises :class:`SchemaError` unless ``migrate``:
    then its tables are dropped and made anew, and :attr:`rebuild` (not None; its
    version :attr:`rebuilt_from`) tells the owner (``Archive``) to fill them from the
    files (``reindex``); one whose
    tables are the current ones (``schema.SAME_TABLES``) is only stamped current.
    """

    def __init__(
        self,
        engine: Path | Engine,
        *,
        durable: bool = True,
        timeout: float = 5.0,
        migrate: bool = False,
    ) -> None:
        self.engine = engine if isinstance(engine, Engine) else SqliteEngine(engine)
        #: where the index is (a path or a URL), for messages
        self.where = self.engine.where
        self.timeout = timeout
        self.lock = threading.RLock()
        #: the tables were made anew from an older schema: fill them from the files
        #: (what its rows said of each instance's arrival, ``schema.create_or_migrate``)
        self.rebuild: Arrivals | None = None
        #: the older schema version those tables were made anew from (0: none)
        self.rebuilt_from = 0
        self.durable = durable
        self._deferring = False  # (defer_flushes)
        #: the archive lock this writer's session holds (``hold``): None, shared or exclusive
        self._held: bool | None = None
        self._db: Any = self.engine.writer(durable=durable, timeout=timeout)
        try:
            older = self.engine.version(self._db)
            self.rebuild = create_or_migrate(self.engine, self._db, self.where, migrate=migrate)
            self.rebuilt_from = older if self.rebuild is not None else 0
        except BaseException:
            self._db.close()
            raise
        # parent rows known to be stored, hierarchy checks passed (see conflict)
        self._cache = ParentCache(returning=self.engine.returning)

    def hold(self, *, exclusive: bool) -> bool:
        """Take the archive's lock in the database, without waiting (``Engine.hold``):
        shared by each node for its life, exclusive for ``reindex`` (both let go
        with the session); False when the other kind holds it."""
        held = self.engine.hold(self._db, exclusive=exclusive)
        if held:
            self._held = exclusive
        return held

    def release(self, *, exclusive: bool) -> None:
        """Let go of what :meth:`hold` took."""
        self.engine.release(self._db, exclusive=exclusive)
        self._held = None

    def keep_held(self) -> None:
        """PostgreSQL: a writer's session gone while idle (a server restart) made anew
        with the archive's lock now, not at the next store (review50 #13)."""
        if self._held is None or self.engine.dialect == "sqlite":
            return
        with self.lock:
            try:
                self._db.execute("SELECT 1")
            except OperationalError:
                if not self.engine.lost(self._db):
                    raise
                self._reconnect()

    def _reconnect(self) -> None:
        """A new session for the writer, whose session is gone (a PostgreSQL server
        restarted, or ended it): the archive's lock taken again, the cache emptied."""
        old, self._db = self._db, self.engine.writer(durable=self.durable, timeout=self.timeout)
        try:
            old.close()
        except DatabaseError:
            pass
        if self._held is not None and not self.engine.hold(self._db, exclusive=self._held):
            raise PostgresOperationalError(  # (only a server's session is lost)
                f"index {self.where}: its session was lost, and a reindex holds it now"
            )
        log.warning("index %s: the writer's session was lost; connected again", self.where)
        self.forget()

    # -- the writer (hold self.lock) -------------------------------------------------

    def begin(self, find: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """Start a write transaction, taking the database write lock now; the rows
        of the instances ``find`` names, read under the lock (:meth:`find_many`;
        PostgreSQL: in the same round trip), with the count of rewrites that says
        whether the cache still holds (``parentcache.py``)."""
        query = _find_query(find) if find else None
        then = [READ_REWRITES, query[:2]] if query else [READ_REWRITES]
        try:
            cursors = self.engine.begin(self._db, then)
        except OperationalError:
            if not self.engine.lost(self._db):
                raise
            # (nothing of this transaction was done on a session that is gone)
            self._reconnect()
            cursors = self.engine.begin(self._db, then)
        self._cache.begin(cursors[0].fetchone()[0])
        return _found(cursors[1], query[2]) if query else {}

    def commit(self, *, flush: bool = True) -> None:
        """Make the transaction durable (one WAL fsync with synchronous=FULL); after
        :meth:`defer_flushes`, ``flush=False`` leaves that to :meth:`flush`."""
        self.engine.commit(self._db)
        self._cache.commit()
        if flush and self._deferring:
            self.engine.flush(self._db)

    def defer_flushes(self) -> bool:
        """Let ``commit(flush=False)`` leave the COMMIT to :meth:`flush` (False: the
        engine cannot, every COMMIT is durable: a server's)."""
        self._deferring = self.durable and self.engine.defer_flushes(self._db)
        return self._deferring

    def flush(self) -> None:
        """Make every COMMIT so far durable (``Engine.flush``)."""
        self.engine.flush(self._db)

    def unflushed(self, batch: str, uids: list[str]) -> None:
        """Record ``batch``'s instances as committed before their flush (``publish.py``)."""
        sql = "INSERT INTO unflushed (batch, sop_instance_uid) VALUES (?, ?)"
        self._db.executemany(sql, [(batch, uid) for uid in uids])

    def conflicted(self, rows: list[dict[str, Any]], at: str) -> None:
        """Record (in the open transaction) that another data set was sent under each
        of these instances' UIDs at ``at``, the stored copy kept (``schema.CONFLICTS``)."""
        sql = (
            "INSERT INTO conflict (sop_instance_uid, sent_at, calling_ae) VALUES (?, ?, ?)"
            " ON CONFLICT (sop_instance_uid) DO UPDATE SET sent_at = excluded.sent_at,"
            " calling_ae = excluded.calling_ae"
        )
        values = [(r["sop_instance_uid"], at, r.get("calling_ae")) for r in rows]
        self._db.executemany(sql, values)

    def resolved(self, uids: list[str]) -> None:
        """Strike these instances, stored anew (in the open transaction), off
        :meth:`conflicted`: no clock compared (review102 H1)."""
        marks = ", ".join("?" for _ in uids)
        self._db.execute(f"DELETE FROM conflict WHERE sop_instance_uid IN ({marks})", uids)

    def flushed(self, batches: list[str]) -> None:
        """Strike ``batches`` off :meth:`unflushed` (in the open transaction)."""
        self._db.executemany("DELETE FROM unflushed WHERE batch = ?", [(b,) for b in batches])

    def unflushed_keys(self, uids: list[str]) -> list[str]:
        """The keys of those of these instances listed :meth:`unflushed`."""
        return unflushed_keys(self._db, uids)

    def unflushed_batches(self) -> list[tuple[str, str]]:
        """(batch, SOP Instance UID) of each instance recorded :meth:`unflushed`."""
        return list(self._db.execute("SELECT batch, sop_instance_uid FROM unflushed"))

    def rollback(self) -> None:
        """Abandon the transaction, if one is open."""
        self._cache.rollback()
        self.engine.rollback(self._db)

    def forget(self) -> None:
        """Empty the cache of parent rows (they are looked up again when needed)."""
        self._cache.forget()

    def find(self, sop_instance_uid: str) -> dict[str, Any] | None:
        """The row of an instance as the writer sees it (inside its transaction)."""
        rows = _select(self._db, {"sop_instance_uid": sop_instance_uid})
        return rows[0] if rows else None

    def find_many(self, sop_instance_uids: list[str]) -> dict[str, dict[str, Any]]:
        """The rows of those instances that are stored, by SOP Instance UID (one query)."""
        if not sop_instance_uids:
            return {}
        sql, params, given = _find_query(sop_instance_uids)
        return _found(self._db.execute(sql, params), given)

    def conflict(self, row: dict[str, Any], *, replacing: bool = False) -> tuple[str, Any] | None:
        """Where the index files ``row``'s series or study elsewhere (PS3.3 hierarchy:
        a series belongs to one study, a study to one patient), as the writer sees it:
        ``("series", other Study Instance UID)``, ``("study", (Patient ID, Issuer))``
        or ``None``. Instances with ``row``'s SOP Instance UID do not count
        (``replacing``: one is stored, and is being replaced).

        A check passed is remembered (not for a replace: its answer holds for that
        instance only), so the next instance of the series costs two dict lookups."""
        related = self._cache.related
        if not replacing:  # the usual case first: a series already checked, as given
            # (a check passed holds values as stored; a value that is not as stored,
            # a lone surrogate, never equals one, and is looked at below)
            known = related.get(row.get("series_uid") or "")
            if known is not None and known == (row.get("study_uid") or "", patient_key(row)):
                return None
        values = {k: row.get(k) or "" for k in _CONFLICT_KEYS}
        if not all(v.isascii() for v in values.values()):  # (rare: clean_text is slower)
            values = {k: clean_text(v) for k, v in values.items()}
        patient = patient_key(values)
        pid, issuer, scope = patient
        series, study = values["series_uid"], values["study_uid"]
        if not replacing and related.get(series) == (study, patient):
            return None
        sop = values["sop_instance_uid"]
        found = self._db.execute(
            SERIES_ELSEWHERE, (values["series_uid"], values["study_uid"], sop)
        ).fetchone()
        if found is not None:
            return "series", found[0]
        found = self._db.execute(
            STUDY_ELSEWHERE, (values["study_uid"], pid, issuer, scope, sop)
        ).fetchone()
        if found is not None:
            return "study", (found[0], found[1])
        if not replacing:
            self._cache.checked(series, study, patient)
        return None

    def put(self, row: dict[str, Any]) -> dict[str, Any]:
        """Insert or replace the instance ``row`` and update its patient/study/series;
        the row as :meth:`find` would now return it."""
        return self.put_many([row])[0]

    def put_many(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """:meth:`put` for several instances: a parent row is written only when it
        is new or gains values, the instance rows with one statement."""
        params, result = [], []
        cache, db = self._cache, self._db
        for row in rows:
            values = dict(row)
            for key, value in row.items():
                if value.__class__ is str and not value.isascii():
                    values[key] = clean_text(value)
            for key in KEYS:
                values[key] = values.get(key) or ""
            patient = patient_key(values)
            values["scope"] = patient[2]
            if cache.related:  # a check passed: backed by this row, or contradicted
                cache.filing(values["series_uid"], values["study_uid"], patient)
            get = values.get  # (map over it: no frame per comprehension, per instance)
            for table in PARENTS:
                attrs = ATTRS[table]
                natural = tuple(map(get, NATURAL_KEY[table]))
                pk, stored = cache.file(db, table, natural, tuple(map(get, attrs)))
                values[PK[table]] = pk
                values.update(zip(attrs, stored, strict=True))  # (as stored: COALESCE)
            own = list(map(get, INSTANCE_COLUMNS))
            params.append(own)
            result.append(dict(zip(ROW_COLUMNS, map(get, ROW_COLUMNS), strict=True)))
        self.engine.later(self._db, UPSERT_INSTANCE, params)
        return result

    def remove(self, sop_instance_uid: str) -> None:
        """Delete an instance row (its series/study/patient stay; see :meth:`prune`):
        a rewrite (``parentcache.py``)."""
        self._cache.rewrite(self._db)
        self._db.execute("DELETE FROM instance WHERE sop_instance_uid = ?", (sop_instance_uid,))

    def prune(self, series_uid: str, study_uid: str, patient_id: str) -> None:
        """Delete the series, study and patient rows with these UIDs / Patient ID that
        are left without instances (whichever study or patient they are filed under):
        a rewrite (``parentcache.py``)."""
        self._cache.rewrite(self._db)
        self._db.execute(
            "DELETE FROM series WHERE series_uid = ? AND NOT EXISTS"
            " (SELECT 1 FROM instance WHERE instance.series_pk = series.series_pk)",
            (series_uid,),
        )
        self._db.execute(
            "DELETE FROM study WHERE study_uid = ? AND NOT EXISTS"
            " (SELECT 1 FROM series WHERE series.study_pk = study.study_pk)",
            (study_uid,),
        )
        self._db.execute(
            "DELETE FROM patient WHERE patient_id = ? AND NOT EXISTS"
            " (SELECT 1 FROM study WHERE study.patient_pk = patient.patient_pk)",
            (patient_id or "",),
        )

    def without_deadline(self) -> AbstractContextManager[None]:
        """The writer's statements may take long meanwhile (``pg_deadline``)."""
        return without_deadline(self._db)

    def clear(self) -> None:
        """Delete every row (for a rebuild): a rewrite (``parentcache.py``)."""
        self._cache.rewrite(self._db)
        for table in ("unflushed", *reversed(TABLES)):
            self._db.execute(f"DELETE FROM {table}")

    def close(self) -> None:
        """Close the writer connection (and the readers kept)."""
        self._db.close()
        self.engine.close()

    # -- readers (any thread, never blocking the writer) -----------------------------

    def reader(self) -> Connection:
        """A new read-only connection."""
        return self.engine.reader(self.timeout)  # type: ignore[no-any-return]

    def query(self, filters: dict[str, Any]) -> list[dict[str, Any]]:
        """Rows matching every ``key=value`` (``None`` matches NULL)."""
        db = self.reader()
        try:
            return _select(db, filters)
        finally:
            db.close()

    def filing(self) -> Iterable[tuple[str, str, str, str]]:
        """(sop_instance_uid, path, study_uid, series_uid) of every instance: the
        study and series the index files it under, beside where its file is."""
        return every(self.reader, FILING)

    def holds_instances(self) -> bool:
        """Whether any instance is indexed."""
        with closing(every(self.reader, "SELECT 1 FROM instance LIMIT 1")) as rows:
            return next(rows, None) is not None

    def paths(self) -> Iterable[tuple[str, str, int, str, str]]:
        """(sop_instance_uid, path, file_size, digest, transfer_syntax_uid) of every
        instance."""
        return every(self.reader, PATHS)


#: (sop_instance_uid, path, file_size, digest, transfer_syntax_uid) of every instance
#: (``Index.paths``).
PATHS = "SELECT sop_instance_uid, path, file_size, digest, transfer_syntax_uid FROM instance"
#: (sop_instance_uid, path, study_uid, series_uid) of every instance (``Index.filing``).
FILING = "SELECT i.sop_instance_uid, i.path, st.study_uid, se.series_uid" + FROM_JOIN


def every(connect: Callable[[], Connection], sql: str) -> Generator[Any, None, None]:
    """The rows of ``sql``, read through a connection of their own (``connect``: a
    read-only one, the writer's :meth:`Index.reader` or ``ArchiveReader.connect``)
    as they are taken."""
    db = connect()
    try:
        yield from db.execute(sql)
    finally:
        db.close()


def _select(db: Connection, filters: dict[str, Any]) -> list[dict[str, Any]]:
    clauses, params = [], []
    for key, value in filters.items():
        if key not in ROW_COLUMNS:
            raise TypeError(f"unknown filter {key!r}; use one of {', '.join(ROW_COLUMNS)}")
        if value is None:
            clauses.append(f"{ROW_COLUMNS[key]} IS NULL")
        else:
            clauses.append(f"{ROW_COLUMNS[key]} = ?")
            params.append(clean_text(value))
    sql = SELECT_ROWS + (" WHERE " + " AND ".join(clauses) if clauses else "")
    sql += " ORDER BY " + order_by(ORDER_ROWS, dialect_of(db))
    keys = list(ROW_COLUMNS)
    return [dict(zip(keys, row, strict=True)) for row in db.execute(sql, params)]


def _find_query(sop_instance_uids: list[str]) -> tuple[str, list[str], dict[str, str]]:
    """The statement of :meth:`Index.find_many`, its parameters, and the UIDs as
    stored -> as given."""
    given = {clean_text(u): u for u in sop_instance_uids}
    if len(given) == 1:
        sql = SELECT_ONE
    else:
        sql = f"{SELECT_ROWS} WHERE i.sop_instance_uid IN ({', '.join('?' for _ in given)})"
    return sql, list(given), given


def _found(cursor: Any, given: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The rows ``cursor`` of :func:`_find_query` gives, by SOP Instance UID as given."""
    rows = (dict(zip(ROW_KEYS, row, strict=True)) for row in cursor)
    return {given[row["sop_instance_uid"]]: row for row in rows}


def unflushed_keys(db: Connection, uids: list[str]) -> list[str]:
    """The keys (paths) of those of ``uids`` whose batch is listed
    :meth:`Index.unflushed`: committed, perhaps not yet flushed (``publish.py``),
    so that what an answer rests on is flushed first."""
    marks = ", ".join("?" for _ in uids)
    sql = (
        "SELECT i.path FROM unflushed u JOIN instance i"
        f" ON i.sop_instance_uid = u.sop_instance_uid WHERE u.sop_instance_uid IN ({marks})"
    )
    return [key for (key,) in db.execute(sql, uids)]
