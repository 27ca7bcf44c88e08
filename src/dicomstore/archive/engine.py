"""The index's engine: SQLite (the embedded default) or PostgreSQL (issue 17).

One home for what differs between the two; the SQL itself is shared
(``schema.py``, ``index.py``, ``query.py``):

``sqlite`` (no ``--index``, or ``sqlite:`` / a path)
    The file ``index.sqlite`` in the archive root (or the file named), WAL,
    one writer connection, read-only reader connections (``mode=ro``). The
    schema version is ``PRAGMA user_version``; ``BEGIN IMMEDIATE`` takes the
    write lock; ``PRAGMA data_version`` tells the writer's cache that another
    connection committed.
``postgresql://user@host:port/db`` (psycopg 3, the ``postgresql`` extra)
    The tables in the database's current schema (``search_path``, e.g.
    ``?options=-csearch_path%3Darchive1``), made on first use with the one row
    of ``dicomstore_index`` that holds the schema version and a *generation*.
    ``begin`` locks that row (``SELECT ... FOR UPDATE``), so writers take turns
    as SQLite's do (across processes too), and reads the generation under the
    lock; every write transaction stamps a new one before its COMMIT, so the
    writer's cache (parent rows, hierarchy checks passed) is emptied whenever
    another connection has committed since, as SQLite's ``data_version`` tells.
    Round trips are what a batch waits on, with the lock held (other nodes
    wait): a batch costs two, in libpq's pipeline mode — BEGIN, the lock and
    the lookup of its instances (``begin``'s ``then``); then the statements
    whose results nobody reads (``later``: the instance rows), the new
    generation and the COMMIT (``commit``). ``?`` placeholders become ``%s``
    (once per statement text, cached); ``durable=False`` is
    ``synchronous_commit=off``; readers are autocommit connections with
    ``default_transaction_read_only``, kept open for the next reader when closed
    (a few, for a minute: a connection costs milliseconds).

:data:`DatabaseError` and :data:`IntegrityError` are the exception classes of
both drivers: callers catch them instead of ``sqlite3.Error``.
"""

from __future__ import annotations

import functools
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from dicomstore.archive import layout


class PostgresError(Exception):
    """An error of a PostgreSQL index (psycopg's error is its ``__cause__``; psycopg
    is imported only when a PostgreSQL index is opened: it loads asyncio)."""


class PostgresIntegrityError(PostgresError):
    """A constraint of a PostgreSQL index failed."""


class PostgresOperationalError(PostgresError):
    """A PostgreSQL index is unreachable, busy or locked."""


#: Exceptions of any index engine (``except DatabaseError``).
DatabaseError: tuple[type[Exception], ...] = (sqlite3.Error, PostgresError)
#: The database is unavailable, busy or locked (a transient condition).
OperationalError: tuple[type[Exception], ...] = (
    sqlite3.OperationalError,
    PostgresOperationalError,
)
#: A constraint failed (a parent row the writer's cache believed in is gone).
IntegrityError: tuple[type[Exception], ...] = (sqlite3.IntegrityError, PostgresIntegrityError)

#: An index or a file system error (what the doors answer as "unavailable").
DatabaseOrOSError: tuple[type[Exception], ...] = (OSError, *DatabaseError)

_SCHEMES = ("postgresql", "postgres")

#: PostgreSQL readers kept open for the next (a few: the HTTP server's threads),
#: and for how long.
IDLE_READERS = 4
IDLE_SECONDS = 60.0

#: One SQL statement (``?`` placeholders) and its parameters.
Statement = tuple[str, Sequence[Any]]


class Connection(Protocol):
    """What the callers use of a connection: ``sqlite3.Connection``, :class:`PgConnection`."""

    def execute(self, sql: str, parameters: Any = (), /) -> Any: ...

    def close(self) -> None: ...


def size_sum(column: str) -> str:
    """SQL of the sum of ``column`` (file sizes) as an integer, 0 for none: PostgreSQL's
    SUM of BIGINT is NUMERIC."""
    return f"CAST(COALESCE(SUM({column}), 0) AS BIGINT)"


def is_postgresql(index: str | None) -> bool:
    """Whether ``index`` names a PostgreSQL database."""
    return bool(index) and urlsplit(str(index)).scheme in _SCHEMES


def engine_for(root: Path | str, index: str | Path | Engine | None = None) -> Engine:
    """The engine of the archive at ``root``: ``index`` is ``None`` (the SQLite file
    in the root), a ``postgresql://`` URL, or a SQLite file (``sqlite:PATH`` or a path)."""
    if isinstance(index, Engine):
        return index
    if index is None:
        index = default_index(Path(root))
    if index is None or str(index) in ("", "sqlite", "sqlite:"):
        return SqliteEngine(Path(root) / layout.INDEX_FILE)
    text = str(index)
    if is_postgresql(text):
        return PostgresEngine(text)
    if text.startswith("sqlite:"):
        text = text.removeprefix("sqlite:").removeprefix("//")
    elif "://" in text:
        raise ValueError(f"--index: not a postgresql:// URL nor a SQLite file: {text!r}")
    return SqliteEngine(Path(text))


def default_index(root: Path) -> str | None:
    """The index of an archive opened without one: ``None``, the SQLite file in its
    root. (The tests replace this to run the same archive tests on PostgreSQL.)"""
    return None


def dialect_of(db: Any) -> str:
    """``"sqlite"`` or ``"postgresql"``: the SQL dialect a connection speaks."""
    return getattr(db, "dialect", "sqlite")


def order_by(terms: str, dialect: str) -> str:
    """``a, b DESC`` with NULLs placed as SQLite places them (the smallest value):
    PostgreSQL places them last in ascending order unless told."""
    if dialect == "sqlite":
        return terms
    out = []
    for term in terms.split(","):
        term = term.strip()
        out.append(f"{term} NULLS LAST" if term.endswith(" DESC") else f"{term} NULLS FIRST")
    return ", ".join(out)


class Engine:
    """Opens connections to one index and knows its engine's ways."""

    dialect = "sqlite"
    #: ``INSERT ... RETURNING`` is available
    returning = True
    #: where the index is, for messages (a path, or a URL without its password)
    where = ""

    def exists(self) -> bool:
        raise NotImplementedError

    def writer(self, *, durable: bool, timeout: float) -> Any:
        raise NotImplementedError

    def reader(self, timeout: float) -> Any:
        raise NotImplementedError

    def version(self, db: Any) -> int:
        """The schema version recorded in the index (0: none yet)."""
        raise NotImplementedError

    def index_names(self, db: Any) -> set[str]:
        raise NotImplementedError

    def ddl(self, script: str) -> str:
        """``schema.SCHEMA`` / ``INDEXES`` in this engine's words."""
        return script

    def create(self, db: Any, script: str, version: int | None) -> None:
        """Run ``script`` (statements separated by ``;``) in one transaction,
        recording ``version`` when given."""
        raise NotImplementedError

    def begin(self, db: Any, then: Statement | None = None) -> tuple[Any, Any]:
        """Open the write transaction, holding the write lock; a token that
        changes when another connection has committed (see :meth:`Index.begin`),
        and the cursor of ``then``, the first statement under the lock (None)."""
        raise NotImplementedError

    def later(self, db: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """(In a write transaction.) Run ``sql`` once for each of ``rows``, whose
        results nobody reads: now, or with the next statement that is sent (an
        error may then show there, or at :meth:`commit`)."""
        if len(rows) == 1:
            db.execute(sql, rows[0])
        else:
            db.executemany(sql, rows)

    def commit(self, db: Any, token: Any) -> Any:
        """COMMIT the write transaction ``begin`` returned ``token`` for, recording
        that this connection wrote; the token it will see next."""
        db.execute("COMMIT")
        return token

    def in_transaction(self, db: Any) -> bool:
        raise NotImplementedError

    def hold(self, db: Any, *, exclusive: bool) -> bool:
        """Take the archive's lock for ``db``'s session, without waiting: shared by
        each node, exclusive for ``reindex`` (and the recovering ``check``); False
        when the other kind holds it. SQLite: always True (one host: the flock of
        ``recovery.hold`` says it)."""
        return True

    def release(self, db: Any, *, exclusive: bool) -> None:
        """Let go of what :meth:`hold` took."""

    def close(self) -> None:
        """Close the connections it keeps (none: SQLite's)."""


class SqliteEngine(Engine):
    """The SQLite file at ``path``."""

    dialect = "sqlite"
    returning = sqlite3.sqlite_version_info >= (3, 35)

    def __init__(self, path: Path) -> None:
        self.path = path.resolve()
        self.where = str(self.path)

    def exists(self) -> bool:
        return self.path.is_file()

    def writer(self, *, durable: bool, timeout: float) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path, timeout=timeout, isolation_level=None, check_same_thread=False
        )
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            db.execute("PRAGMA foreign_keys=ON")
        except BaseException:
            db.close()
            raise
        return db

    def reader(self, timeout: float) -> sqlite3.Connection:
        uri = f"{self.path.as_uri()}?mode=ro"
        return sqlite3.connect(uri, uri=True, timeout=timeout, check_same_thread=False)

    def version(self, db: Any) -> int:
        return int(db.execute("PRAGMA user_version").fetchone()[0])

    def index_names(self, db: Any) -> set[str]:
        return {
            name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        }

    def create(self, db: Any, script: str, version: int | None) -> None:
        stamp = f"PRAGMA user_version={version};" if version is not None else ""
        db.executescript(f"BEGIN; {script} {stamp} COMMIT;")

    def begin(self, db: Any, then: Statement | None = None) -> tuple[Any, Any]:
        db.execute("BEGIN IMMEDIATE")
        try:
            token = db.execute("PRAGMA data_version").fetchone()[0]
            return token, None if then is None else db.execute(*then)
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def in_transaction(self, db: Any) -> bool:
        return bool(db.in_transaction)


#: The row that records the schema version and the generation (PostgreSQL).
_META = (
    "CREATE TABLE IF NOT EXISTS dicomstore_index ("
    " one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),"
    " schema_version INTEGER NOT NULL, generation BIGINT NOT NULL DEFAULT 0)"
)


#: A reader's session.
_READ_ONLY = "-c default_transaction_read_only=on"

#: The index write lock, and the generation under it.
_LOCKING = "SELECT generation FROM dicomstore_index FOR UPDATE"

#: The first key of the archive's advisory lock (``"dcst"``), the second is the schema's.
_LOCK_CLASS = 0x64637374


class PostgresEngine(Engine):
    """The tables in the current schema of the PostgreSQL database at ``url``."""

    dialect = "postgresql"
    returning = True

    def __init__(self, url: str) -> None:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise ValueError(
                "a PostgreSQL index needs psycopg 3: pip install 'dicomstore[postgresql]'"
            ) from None
        self.url = url
        self.where = _without_password(url)
        #: readers given back (see :meth:`reader`)
        self._readers = _Readers(functools.partial(_connect, url, self.where, _READ_ONLY))
        weakref.finalize(self, self._readers.close)

    def _connect(self, timeout: float, options: str = "") -> PgConnection:
        return _connect(self.url, self.where, options, timeout)

    def close(self) -> None:
        self._readers.close()

    def exists(self) -> bool:
        with closing(self._connect(5.0)) as db:
            found = db.execute("SELECT to_regclass('dicomstore_index') IS NOT NULL").fetchone()
            return bool(found[0])

    def writer(self, *, durable: bool, timeout: float) -> PgConnection:
        db = self._connect(timeout)
        try:
            db.execute("SELECT set_config('lock_timeout', ?, false)", (f"{int(timeout * 1000)}",))
            if not durable:
                db.execute("SET synchronous_commit = off")
        except BaseException:
            db.close()
            raise
        return db

    def reader(self, timeout: float) -> PgConnection:
        return self._readers.take(timeout)

    def version(self, db: Any) -> int:
        (present,) = db.execute("SELECT to_regclass('dicomstore_index') IS NOT NULL").fetchone()
        if not present:
            return 0
        row = db.execute("SELECT schema_version FROM dicomstore_index").fetchone()
        return 0 if row is None else int(row[0])

    def index_names(self, db: Any) -> set[str]:
        sql = "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
        return {name for (name,) in db.execute(sql)}

    def ddl(self, script: str) -> str:
        out = _pg_ddl(script)
        if "study_date_idx" in script:  # the indexes: and the one of the study order
            out += _PG_STUDY_ORDER
        return out

    def create(self, db: Any, script: str, version: int | None) -> None:
        db.execute("BEGIN")
        try:
            db.execute(_META)
            # one maker at a time: the others wait here, then find the tables made
            db.execute("LOCK TABLE dicomstore_index IN EXCLUSIVE MODE")
            if version is not None and self.version(db) != version:
                for statement in script.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(
                    "INSERT INTO dicomstore_index (schema_version) VALUES (?) ON CONFLICT (one)"
                    " DO UPDATE SET schema_version = excluded.schema_version,"
                    " generation = dicomstore_index.generation + 1",
                    (version,),
                )
            elif version is None:
                for statement in script.split(";"):
                    if statement.strip():
                        db.execute(statement)
            db.execute("COMMIT")
        except BaseException:
            if self.in_transaction(db):
                db.execute("ROLLBACK")
            raise

    def begin(self, db: Any, then: Statement | None = None) -> tuple[Any, Any]:
        statements: list[Statement] = [("BEGIN", ()), (_LOCKING, ())]
        try:  # (one round trip, ``then`` too)
            cursors = db.pipelined([*statements, *([then] if then else [])])
            token = cursors[1].fetchone()[0]
        except BaseException:
            if self.in_transaction(db):
                db.execute("ROLLBACK")
            raise
        return token, cursors[2] if then else None

    def later(self, db: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        db.pending.extend((sql, row) for row in rows)

    def commit(self, db: Any, token: Any) -> Any:
        # the statements put off, the new generation and the COMMIT: one round trip
        db.pipelined([("UPDATE dicomstore_index SET generation = ?", (token + 1,)), ("COMMIT", ())])
        return token + 1

    def hold(self, db: Any, *, exclusive: bool) -> bool:
        # a session advisory lock, one per schema: nodes on any host share it; the
        # server lets go when the session ends (a node killed with SIGKILL too)
        kind = "" if exclusive else "_shared"
        sql = f"SELECT pg_try_advisory_lock{kind}(?, hashtext(current_schema()))"
        return bool(db.execute(sql, (_LOCK_CLASS,)).fetchone()[0])

    def release(self, db: Any, *, exclusive: bool) -> None:
        kind = "" if exclusive else "_shared"
        sql = f"SELECT pg_advisory_unlock{kind}(?, hashtext(current_schema()))"
        db.execute(sql, (_LOCK_CLASS,))

    def in_transaction(self, db: Any) -> bool:
        from psycopg.pq import TransactionStatus

        return bool(db.conn.info.transaction_status != TransactionStatus.IDLE)


class PgConnection:
    """A psycopg connection that takes the shared SQL as written (``?`` placeholders)."""

    dialect = "postgresql"

    def __init__(self, conn: Any) -> None:
        import psycopg

        self.conn = conn
        self._errors = psycopg.Error  # (translated into DatabaseError)
        #: statements whose results nobody reads, sent with the next one
        #: (``PostgresEngine.later``); a ROLLBACK drops them
        self.pending: list[Statement] = []
        #: (a reader) what :meth:`close` gives it back to (``PostgresEngine.reader``)
        self.give_back: Callable[[PgConnection], None] | None = None
        #: (a reader kept idle, until its first answer) a new session for it
        self.reconnect: Callable[[], Any] | None = None

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Any:
        if self.pending:
            if sql == "ROLLBACK":
                self.pending.clear()
            else:
                return self.pipelined([(sql, parameters)])[-1]
        try:
            cursor = self.conn.execute(_placeholders(sql), parameters)
        except self._errors as exc:
            if self._reconnected():
                return self.execute(sql, parameters)
            raise _translated(exc) from exc
        self.reconnect = None
        return cursor

    def pipelined(self, statements: list[Statement]) -> list[Any]:
        """The pending statements and then ``statements``, sent together and
        answered together (libpq's pipeline mode: one round trip); the cursors
        of ``statements``."""
        pending, self.pending = self.pending, []
        try:
            with self.conn.pipeline():
                for sql, parameters in pending:
                    self.conn.execute(_placeholders(sql), parameters)
                cursors = [self.conn.execute(_placeholders(q), p) for q, p in statements]
            return cursors
        except self._errors as exc:
            raise _translated(exc) from exc

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        try:
            with self.conn.cursor() as cursor:
                cursor.executemany(_placeholders(sql), rows)
        except self._errors as exc:
            raise _translated(exc) from exc

    def stream(self, sql: str, parameters: Sequence[Any] = ()) -> Iterator[Any]:
        """Rows one by one from the server (not all held in memory)."""
        try:
            with self.conn.cursor() as cursor:
                for row in cursor.stream(_placeholders(sql), parameters):
                    self.reconnect = None
                    yield row
        except self._errors as exc:
            if self._reconnected():
                yield from self.stream(sql, parameters)
                return
            raise _translated(exc) from exc

    def _reconnected(self) -> bool:
        """A reader kept idle whose session is gone (the server restarted, or ended
        it) before its first answer: connected anew, once."""
        if self.reconnect is None or not self.conn.broken:
            return False
        connect, self.reconnect = self.reconnect, None
        self.conn.close()
        self.conn = connect()
        return True

    def idle(self) -> bool:
        """Open, and no transaction or result in progress: fit for another reader."""
        from psycopg.pq import TransactionStatus

        return not self.conn.closed and self.conn.info.transaction_status == TransactionStatus.IDLE

    def close(self) -> None:
        """Close it, or give a reader back to its engine's idle ones."""
        if self.give_back is not None:
            self.give_back(self)
        else:
            self.conn.close()

    def discard(self) -> None:
        self.conn.close()


def _connect(url: str, where: str, options: str, timeout: float) -> PgConnection:
    """A new autocommit session (``options`` after the URL's own, e.g. its search_path)."""
    import psycopg

    params: dict[str, Any] = dict(psycopg.conninfo.conninfo_to_dict(url))
    if options:
        params["options"] = f"{params.get('options') or ''} {options}".strip()
    params.setdefault("connect_timeout", max(1, round(timeout)))
    try:
        return PgConnection(psycopg.connect(autocommit=True, **params))
    except psycopg.Error as exc:  # (libpq's message has several lines)
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        raise PostgresOperationalError(f"index {where}: {lines[0]}") from exc


class _Readers:
    """Readers of one index kept open for the next: a connection costs a few
    milliseconds (a fork of the server, its authentication). A few are kept, for a
    while; one whose session ended meanwhile (a server restart) connects anew
    before its first answer (``PgConnection._reconnected``). (It refers to no
    engine: the engine's finalizer closes them when it goes.)"""

    def __init__(self, connect: Callable[[float], PgConnection]) -> None:
        self._connect = connect
        self._idle: list[tuple[float, PgConnection]] = []  # most recent last
        self._lock = threading.Lock()

    def take(self, timeout: float) -> PgConnection:
        now = time.monotonic()
        with self._lock:
            while self._idle:
                since, db = self._idle.pop()
                if now - since < IDLE_SECONDS and db.idle():
                    db.reconnect = lambda: self._connect(timeout).conn
                    return db
                db.discard()
        db = self._connect(timeout)
        db.give_back = self._give_back
        return db

    def _give_back(self, db: PgConnection) -> None:
        db.reconnect = None
        with self._lock:
            if db.idle() and len(self._idle) < IDLE_READERS:
                self._idle.append((time.monotonic(), db))
                return
        db.discard()

    def __len__(self) -> int:
        return len(self._idle)

    def close(self) -> None:
        """Close those kept (the ones taken close when given back)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for _, db in idle:
            db.discard()


def _translated(exc: Exception) -> PostgresError:
    """psycopg's error as one of :data:`DatabaseError`."""
    import psycopg

    if isinstance(exc, psycopg.IntegrityError):
        return PostgresIntegrityError(str(exc))
    if isinstance(exc, psycopg.OperationalError):
        return PostgresOperationalError(str(exc))
    return PostgresError(str(exc))


@functools.lru_cache(maxsize=4096)
def _placeholders(sql: str) -> str:
    """``?`` as psycopg's ``%s`` (a literal ``%`` doubled); the shared SQL has no
    ``?`` or ``%`` inside string literals."""
    return sql.replace("%", "%%").replace("?", "%s")


#: The order of study results (``query._ORDER``) as an index: PostgreSQL places NULLs
#: as SQLite does only when told (:func:`order_by`), and then no index of one column
#: serves the order: a search with a ``limit`` and no narrowing key sorted every study
#: (86 ms at 111,111 studies; 7 ms with it). SQLite walks ``study_date_idx`` instead.
_PG_STUDY_ORDER = """
CREATE INDEX IF NOT EXISTS study_order_idx ON study (study_date DESC NULLS LAST,
    study_time DESC NULLS LAST, study_uid NULLS FIRST, study_pk NULLS FIRST);
"""


def _pg_ddl(script: str) -> str:
    """SQLite's DDL as PostgreSQL's: 64-bit integers, identity keys, text compared
    byte by byte (``COLLATE "C"``, as SQLite's BINARY: the same order, and LIKE
    prefixes use the indexes), ``COLLATE NOCASE`` as ``lower()``."""
    script = script.replace(
        "INTEGER PRIMARY KEY", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
    )
    script = re.sub(r"\bINTEGER\b", "BIGINT", script)
    script = re.sub(r"\bTEXT\b", 'TEXT COLLATE "C"', script)
    return re.sub(r"\((\w+) COLLATE NOCASE\)", r"((lower(\1)))", script)


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
