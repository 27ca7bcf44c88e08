"""The index: SQLite (WAL) with the patient / study / series / instance hierarchy.

This is the "access method" PS3.4 B.1.2 Note 1 asks of the medium: it finds
an instance by the attributes a query filters on (PS3.4 C.6.1 study root keys)
and records what was stored — file path, size, transfer syntax, digest,
received-at and calling AE.

The SQL is plain enough to run on PostgreSQL too: ``CREATE ... IF NOT
EXISTS``, ``INSERT ... ON CONFLICT (...) DO UPDATE`` with ``excluded``,
``COALESCE``; only the PRAGMAs and the ``?`` placeholders are SQLite's.
Missing keys are stored as ``''`` (a Patient ID, Study or Series Instance UID
absent from the data set), so instances lacking them share one row.

One writer connection, guarded by :attr:`Index.lock` (callers hold it around
``begin`` … ``commit``); every read opens its own read-only connection, which
WAL lets proceed while the writer writes.

The writer remembers the patient, study and series rows it knows to be stored
(as stored, after ``COALESCE``), so storing one more instance of a known
series costs one ``INSERT`` (:meth:`Index.put_many`, several instances per
statement). Rows learnt in a transaction count only once it commits. Another
connection's commit (a ``delete`` from the CLI, a ``reindex``) is seen by
``PRAGMA data_version`` at the next :meth:`Index.begin` and empties the cache.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS patient (
    patient_id TEXT PRIMARY KEY,
    patient_name TEXT,
    birth_date TEXT,
    sex TEXT
);
CREATE TABLE IF NOT EXISTS study (
    study_uid TEXT PRIMARY KEY,
    patient_id TEXT NOT NULL REFERENCES patient (patient_id),
    study_date TEXT,
    study_time TEXT,
    study_description TEXT,
    accession_number TEXT,
    referring_physician TEXT,
    study_id TEXT
);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL REFERENCES study (study_uid),
    modality TEXT,
    body_part TEXT,
    series_number INTEGER,
    series_description TEXT
);
CREATE TABLE IF NOT EXISTS instance (
    sop_instance_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL REFERENCES series (series_uid),
    sop_class_uid TEXT NOT NULL,
    instance_number INTEGER,
    transfer_syntax_uid TEXT NOT NULL,
    file_size BIGINT NOT NULL,
    digest TEXT NOT NULL,
    received_at TEXT NOT NULL,
    calling_ae TEXT,
    called_ae TEXT,
    path TEXT NOT NULL UNIQUE
);
CREATE INDEX IF NOT EXISTS patient_name_idx ON patient (patient_name);
CREATE INDEX IF NOT EXISTS study_patient_idx ON study (patient_id);
CREATE INDEX IF NOT EXISTS study_date_idx ON study (study_date);
CREATE INDEX IF NOT EXISTS study_accession_idx ON study (accession_number);
CREATE INDEX IF NOT EXISTS series_study_idx ON series (study_uid);
CREATE INDEX IF NOT EXISTS series_modality_idx ON series (modality);
CREATE INDEX IF NOT EXISTS instance_series_idx ON instance (series_uid);
CREATE INDEX IF NOT EXISTS instance_class_idx ON instance (sop_class_uid);
"""

#: Columns of each table, in insertion order (the first one is the key).
TABLES: dict[str, tuple[str, ...]] = {
    "patient": ("patient_id", "patient_name", "birth_date", "sex"),
    "study": (
        "study_uid",
        "patient_id",
        "study_date",
        "study_time",
        "study_description",
        "accession_number",
        "referring_physician",
        "study_id",
    ),
    "series": (
        "series_uid",
        "study_uid",
        "modality",
        "body_part",
        "series_number",
        "series_description",
    ),
    "instance": (
        "sop_instance_uid",
        "series_uid",
        "sop_class_uid",
        "instance_number",
        "transfer_syntax_uid",
        "file_size",
        "digest",
        "received_at",
        "calling_ae",
        "called_ae",
        "path",
    ),
}
_ALIAS = {"patient": "p", "study": "st", "series": "se", "instance": "i"}
#: Every key of a row as returned by queries -> its qualified column.
ROW_COLUMNS: dict[str, str] = {}
for _table, _columns in TABLES.items():
    for _column in _columns:
        ROW_COLUMNS.setdefault(_column, f"{_ALIAS[_table]}.{_column}")
#: Keys that may never be NULL in a row (missing ones are stored as '').
KEYS = ("patient_id", "study_uid", "series_uid")

_SELECT = (
    "SELECT " + ", ".join(ROW_COLUMNS.values()) + " FROM instance i"
    " JOIN series se ON se.series_uid = i.series_uid"
    " JOIN study st ON st.study_uid = se.study_uid"
    " JOIN patient p ON p.patient_id = st.patient_id"
)
_ORDER = " ORDER BY st.study_uid, se.series_uid, i.instance_number, i.sop_instance_uid"
_SELECT_ONE = f"{_SELECT} WHERE i.sop_instance_uid = ?"
_KEYS = list(ROW_COLUMNS)


def _upsert(table: str, *, replace: bool, returning: bool = False) -> str:
    """INSERT … ON CONFLICT (key) DO UPDATE, keeping known values unless ``replace``;
    ``returning``: the row as stored afterwards (``RETURNING``, SQLite ≥ 3.35, PostgreSQL)."""
    key, *rest = TABLES[table]
    names = ", ".join(TABLES[table])
    marks = ", ".join("?" for _ in TABLES[table])
    if replace:
        sets = ", ".join(f"{c} = excluded.{c}" for c in rest)
    else:
        sets = ", ".join(f"{c} = COALESCE(excluded.{c}, {table}.{c})" for c in rest)
    sql = f"INSERT INTO {table} ({names}) VALUES ({marks}) ON CONFLICT ({key}) DO UPDATE SET {sets}"
    return sql + (f" RETURNING {names}" if returning else "")


_UPSERTS = {t: _upsert(t, replace=t == "instance") for t in TABLES}
#: The tables above ``instance``, whose rows the writer caches.
PARENTS = ("patient", "study", "series")
_INSTANCE = TABLES["instance"]
_RETURNING = sqlite3.sqlite_version_info >= (3, 35)
_UPSERTS_RETURNING = {t: _upsert(t, replace=False, returning=True) for t in PARENTS}
_SELECT_ROW = {
    t: f"SELECT {', '.join(TABLES[t])} FROM {t} WHERE {TABLES[t][0]} = ?" for t in PARENTS
}
#: Cached parent rows per table before the cache is emptied (memory bound).
CACHE_LIMIT = 50_000


def clean_text(value: Any) -> Any:
    """A string SQLite can store (lone surrogates escaped), other values unchanged."""
    if isinstance(value, str) and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


class Index:
    """The SQLite index at ``path``; created (schema and indexes) when absent."""

    def __init__(self, path: Path, *, durable: bool = True, timeout: float = 5.0) -> None:
        self.path = path.resolve()
        self.timeout = timeout
        self.lock = threading.RLock()
        self._db = sqlite3.connect(
            self.path, timeout=timeout, isolation_level=None, check_same_thread=False
        )
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._db.execute("PRAGMA foreign_keys=ON")
            (version,) = self._db.execute("PRAGMA user_version").fetchone()
            if version < SCHEMA_VERSION:
                script = f"BEGIN; {SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;"
                self._db.executescript(script)
        except BaseException:
            self._db.close()
            raise
        # parent rows known to be stored, and those written by the open transaction
        self._known: dict[str, dict[Any, tuple[Any, ...]]] = {t: {} for t in PARENTS}
        self._added: dict[str, dict[Any, tuple[Any, ...]]] = {t: {} for t in PARENTS}
        self._data_version: int | None = None

    # -- the writer (hold self.lock) -------------------------------------------------

    def begin(self) -> None:
        """Start a write transaction, taking the database write lock now."""
        self._db.execute("BEGIN IMMEDIATE")
        for added in self._added.values():
            added.clear()
        (version,) = self._db.execute("PRAGMA data_version").fetchone()
        if version != self._data_version:  # another connection committed: forget
            self.forget()
            self._data_version = version

    def commit(self) -> None:
        """Make the transaction durable (one WAL fsync with synchronous=FULL)."""
        self._db.execute("COMMIT")
        for table, added in self._added.items():
            known = self._known[table]
            if len(known) + len(added) > CACHE_LIMIT:
                known.clear()
            known.update(added)
            added.clear()

    def rollback(self) -> None:
        """Abandon the transaction, if one is open."""
        for added in self._added.values():
            added.clear()
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def forget(self) -> None:
        """Empty the cache of parent rows (they are looked up again when needed)."""
        for table in PARENTS:
            self._known[table].clear()
            self._added[table].clear()

    def find(self, sop_instance_uid: str) -> dict[str, Any] | None:
        """The row of an instance as the writer sees it (inside its transaction)."""
        rows = _select(self._db, {"sop_instance_uid": sop_instance_uid})
        return rows[0] if rows else None

    def find_many(self, sop_instance_uids: list[str]) -> dict[str, dict[str, Any]]:
        """The rows of those instances that are stored, by SOP Instance UID (one query)."""
        if not sop_instance_uids:
            return {}
        given = {clean_text(u): u for u in sop_instance_uids}  # as stored -> as given
        if len(given) == 1:
            sql = _SELECT_ONE
        else:
            sql = f"{_SELECT} WHERE i.sop_instance_uid IN ({', '.join('?' for _ in given)})"
        rows = (dict(zip(_KEYS, row, strict=True)) for row in self._db.execute(sql, list(given)))
        return {given[row["sop_instance_uid"]]: row for row in rows}

    def put(self, row: dict[str, Any]) -> dict[str, Any]:
        """Insert or replace the instance ``row`` and update its patient/study/series;
        the row as :meth:`find` would now return it."""
        return self.put_many([row])[0]

    def put_many(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """:meth:`put` for several instances: a parent row is written only when it
        is new or gains values, the instance rows with one statement."""
        params, result = [], []
        for row in rows:
            values = dict(row)
            for key, value in row.items():
                if value.__class__ is str and not value.isascii():
                    values[key] = clean_text(value)
            for key in KEYS:
                values[key] = values.get(key) or ""
            full: dict[str, Any] = {}
            for table in PARENTS:
                columns = TABLES[table]
                stored = self._put_parent(table, tuple([values.get(c) for c in columns]))
                full.update(zip(columns, stored, strict=True))
            own = [values.get(c) for c in _INSTANCE]
            full.update(zip(_INSTANCE, own, strict=True))
            params.append(own)
            result.append({key: full[key] for key in ROW_COLUMNS})
        if len(params) == 1:
            self._db.execute(_UPSERTS["instance"], params[0])
        else:
            self._db.executemany(_UPSERTS["instance"], params)
        return result

    def _put_parent(self, table: str, new: tuple[Any, ...]) -> tuple[Any, ...]:
        """Upsert one patient/study/series row unless the cache says it is stored
        already with these values; the row as stored (``COALESCE`` applied)."""
        key = new[0]
        known = self._added[table].get(key)
        if known is None:
            known = self._known[table].get(key)
        if known == new:
            return known  # (the usual case: one more instance of a known series)
        if known is None:
            if _RETURNING:
                stored = tuple(self._db.execute(_UPSERTS_RETURNING[table], new).fetchall()[0])
            else:
                self._db.execute(_UPSERTS[table], new)
                stored = tuple(self._db.execute(_SELECT_ROW[table], (key,)).fetchall()[0])
        elif any(n is not None and n != k for n, k in zip(new, known, strict=True)):
            self._db.execute(_UPSERTS[table], new)
            stored = tuple(k if n is None else n for n, k in zip(new, known, strict=True))
        else:
            stored = known
        self._added[table][key] = stored
        return stored

    def remove(self, sop_instance_uid: str) -> None:
        """Delete an instance row (its series/study/patient stay; see :meth:`prune`)."""
        self._db.execute("DELETE FROM instance WHERE sop_instance_uid = ?", (sop_instance_uid,))

    def prune(self, series_uid: str, study_uid: str, patient_id: str) -> None:
        """Delete the series, study and patient rows left without instances."""
        for table, key in (("series", series_uid), ("study", study_uid), ("patient", patient_id)):
            self._known[table].pop(key, None)
            self._added[table].pop(key, None)
        self._db.execute(
            "DELETE FROM series WHERE series_uid = ? AND NOT EXISTS"
            " (SELECT 1 FROM instance WHERE instance.series_uid = series.series_uid)",
            (series_uid,),
        )
        self._db.execute(
            "DELETE FROM study WHERE study_uid = ? AND NOT EXISTS"
            " (SELECT 1 FROM series WHERE series.study_uid = study.study_uid)",
            (study_uid,),
        )
        self._db.execute(
            "DELETE FROM patient WHERE patient_id = ? AND NOT EXISTS"
            " (SELECT 1 FROM study WHERE study.patient_id = patient.patient_id)",
            (patient_id,),
        )

    def clear(self) -> None:
        """Delete every row (for a rebuild)."""
        self.forget()
        for table in reversed(TABLES):
            self._db.execute(f"DELETE FROM {table}")

    def close(self) -> None:
        """Close the writer connection."""
        self._db.close()

    # -- readers (any thread, never blocking the writer) -----------------------------

    def reader(self) -> sqlite3.Connection:
        """A new read-only connection."""
        return sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, timeout=self.timeout)

    def query(self, filters: dict[str, Any]) -> list[dict[str, Any]]:
        """Rows matching every ``key=value`` (``None`` matches NULL)."""
        db = self.reader()
        try:
            return _select(db, filters)
        finally:
            db.close()

    def paths(self) -> Iterable[tuple[str, str, int, str]]:
        """(sop_instance_uid, path, file_size, digest) of every instance."""
        db = self.reader()
        try:
            yield from db.execute("SELECT sop_instance_uid, path, file_size, digest FROM instance")
        finally:
            db.close()


def _select(db: sqlite3.Connection, filters: dict[str, Any]) -> list[dict[str, Any]]:
    clauses, params = [], []
    for key, value in filters.items():
        if key not in ROW_COLUMNS:
            raise TypeError(f"unknown filter {key!r}; use one of {', '.join(ROW_COLUMNS)}")
        if value is None:
            clauses.append(f"{ROW_COLUMNS[key]} IS NULL")
        else:
            clauses.append(f"{ROW_COLUMNS[key]} = ?")
            params.append(clean_text(value))
    sql = _SELECT + (" WHERE " + " AND ".join(clauses) if clauses else "") + _ORDER
    keys = list(ROW_COLUMNS)
    return [dict(zip(keys, row, strict=True)) for row in db.execute(sql, params)]
