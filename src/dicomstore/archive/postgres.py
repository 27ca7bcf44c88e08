"""The index on PostgreSQL (issue 17): :class:`PostgresEngine`, the connection
that takes the shared SQL as written, and the readers kept for the next. What
differs from SQLite, and why, is told in ``engine.py``'s docstring; psycopg 3
is imported only when a PostgreSQL index is opened.
"""

from __future__ import annotations

import functools
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing
from typing import Any

from dicomstore.archive import pg_deadline
from dicomstore.archive.engine import (
    Engine,
    PostgresError,
    PostgresIntegrityError,
    PostgresOperationalError,
    Statement,
    error_cause,
    without_password,
)
from dicomstore.archive.pg_deadline import WATCH

#: PostgreSQL readers kept open for the next (a few: the HTTP server's threads),
#: and for how long.
IDLE_READERS = 4
IDLE_SECONDS = 60.0

#: The row that records the schema version and the generation (PostgreSQL).
_META = (
    "CREATE TABLE IF NOT EXISTS dicomstore_index ("
    " one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),"
    " schema_version INTEGER NOT NULL, generation BIGINT NOT NULL DEFAULT 0)"
)


#: A reader's session.
_READ_ONLY = "-c default_transaction_read_only=on"

#: The index write lock: the UPDATE locks the row as ``SELECT ... FOR UPDATE`` would
#: (and stamps a new generation on it: others see it with the COMMIT). A statement
#: after it (READ COMMITTED) takes its snapshot once the lock is held, so it sees
#: the previous holder's COMMIT.
_LOCKING = "UPDATE dicomstore_index SET generation = generation + 1"

#: The first key of the archive's advisory lock (``"dcst"``), the second is the schema's.
_LOCK_CLASS = 0x64637374
#: The key class of the transaction lock the makers of the tables take turns on.
_MAKER_CLASS = _LOCK_CLASS + 1


#: Seconds a concurrent index build waits for older transactions at most.
BUILD_LOCK_WAIT = 60.0


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
        self.where = without_password(url)
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
            # a writer whose host is gone holds the index's lock until the server
            # notices: its own keepalives on this session's socket (about 30 s); one
            # frozen in a transaction, until this timeout ends it (review36b #5)
            settings = dict(SERVER_KEEPALIVES, idle_in_transaction_session_timeout=IDLE_MS)
            if db.conn.info.server_version < 120000:  # (no tcp_user_timeout before 12)
                del settings["tcp_user_timeout"]
            calls = ", ".join("set_config(?, ?, false)" for _ in settings)
            db.execute(f"SELECT {calls}", [v for kv in settings.items() for v in kv])
            if not durable:
                db.execute("SET synchronous_commit = off")
        except BaseException:
            db.close()
            raise
        answer = pg_deadline.ANSWER_TIMEOUT
        db.deadline = None if answer is None else answer + timeout  # (after its lock's)
        return db

    def lost(self, db: Any) -> bool:
        return bool(db.lost)

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

    def table_names(self, db: Any) -> set[str]:
        sql = "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        return {name for (name,) in db.execute(sql)}

    def ddl(self, script: str) -> str:
        out = _pg_ddl(script)
        if "study_date_idx" in script:  # the indexes: and the one of the study order
            out += _PG_STUDY_ORDER
        return out

    def build_index(self, db: Any, statement: str) -> bool:
        """CONCURRENTLY: writers go on meanwhile. Its waits for older transactions (a
        backup's) are bounded (:data:`BUILD_LOCK_WAIT`); one a failed or interrupted
        build left invalid (every write updates it, no search uses it) is dropped and
        made again (review92 A1: it was taken as made)."""
        name = statement.split()[5]
        with pg_deadline.without_deadline(db):
            wait = f"{int(BUILD_LOCK_WAIT * 1000)}"
            db.execute("SELECT set_config('lock_timeout', ?, false)", (wait,))
            sql = "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(?)"
            row = db.execute(sql, (name,)).fetchone()
            if row is not None and row[0]:
                return False
            if row is not None:
                db.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
            ddl = self.ddl(statement).strip().rstrip(";")
            db.execute(ddl.replace("CREATE INDEX", "CREATE INDEX CONCURRENTLY", 1))
        return True

    def create(self, db: Any, script: str, version: int | None) -> None:
        with pg_deadline.without_deadline(db):  # (an index built on many rows: long)
            self._create(db, script, version)

    def _create(self, db: Any, script: str, version: int | None) -> None:
        db.execute("BEGIN")
        try:
            # one maker at a time: the others wait here (until this one commits), then
            # find the tables made; before the first CREATE TABLE IF NOT EXISTS, which
            # two sessions cannot run at once (review119 L1: the second failed on
            # pg_type's unique index, and its node did not start)
            db.execute("SELECT pg_advisory_xact_lock(?, hashtext(current_schema()))",
                       (_MAKER_CLASS,))  # fmt: skip
            db.execute(_META)
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

    def begin(self, db: Any, then: Sequence[Statement] = ()) -> list[Any]:
        statements: list[Statement] = [("BEGIN", ()), (_LOCKING, ())]
        try:  # (one round trip, ``then`` too)
            cursors: list[Any] = db.pipelined([*statements, *then])
        except BaseException:
            if self.in_transaction(db):
                db.execute("ROLLBACK")
            raise
        return cursors[2:]

    def later(self, db: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        db.pending.extend((sql, row) for row in rows)

    def commit(self, db: Any) -> None:
        # the statements put off and the COMMIT: one round trip
        db.pipelined([("COMMIT", ())])

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

    def __init__(self, conn: Any, where: str = "") -> None:
        import psycopg

        self.conn = conn
        self.where = where
        #: seconds a statement may wait for its answer (``pg_deadline``; None: no end)
        self.deadline: float | None = None
        #: the deadline passed and the session was cut: its failure is the caller's
        self.cut = False
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
        self._sent()
        try:
            cursor = self.conn.execute(_placeholders(sql), parameters)
        except self._errors as exc:
            if self._reconnected():
                return self.execute(sql, parameters)
            raise _translated(exc) from exc
        finally:
            WATCH.end(self)
        self.reconnect = None
        return cursor

    def _sent(self) -> None:
        if self.deadline is not None:
            WATCH.begin(self, self.deadline)

    def pipelined(self, statements: list[Statement]) -> list[Any]:
        """The pending statements and then ``statements``, sent together and
        answered together (libpq's pipeline mode: one round trip); the cursors
        of ``statements``."""
        pending, self.pending = self.pending, []
        self._sent()
        try:
            with self.conn.pipeline():
                for sql, parameters in pending:
                    self.conn.execute(_placeholders(sql), parameters)
                cursors = [self.conn.execute(_placeholders(q), p) for q, p in statements]
            return cursors
        except self._errors as exc:
            raise _translated(exc) from exc
        finally:
            WATCH.end(self)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._sent()
        try:
            with self.conn.cursor() as cursor:
                cursor.executemany(_placeholders(sql), rows)
        except self._errors as exc:
            raise _translated(exc) from exc
        finally:
            WATCH.end(self)

    def stream(self, sql: str, parameters: Sequence[Any] = ()) -> Iterator[Any]:
        """Rows one by one from the server (not all held in memory)."""
        dropped = False  # (by the caller, before the last row)
        try:
            with self.conn.cursor() as cursor:
                self._sent()  # (the deadline runs while we wait for a row, not the caller)
                for row in cursor.stream(_placeholders(sql), parameters):
                    WATCH.end(self)
                    self.reconnect = None
                    try:
                        yield row
                    except GeneratorExit:  # (the rest drained as the cursor closes:
                        dropped = True  # within the deadline too, review37 F2)
                        self._sent()
                        raise
                    self._sent()
        except self._errors as exc:
            if dropped:  # (the caller wants no more: the session cut is discarded)
                return
            if self._reconnected():
                yield from self.stream(sql, parameters)
                return
            raise _translated(exc) from exc
        finally:
            WATCH.end(self)

    def _reconnected(self) -> bool:
        """A reader kept idle whose session is gone (the server restarted, or ended
        it) before its first answer: connected anew, once."""
        if self.reconnect is None or not self.lost or self.cut:
            return False
        connect, self.reconnect = self.reconnect, None
        self.conn.close()
        self.conn = connect()
        return True

    @property
    def lost(self) -> bool:
        """Its session is gone (the server ended it): only a new connection serves."""
        return bool(self.conn.broken or self.conn.closed)

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


#: How long a writer's session may sit in an open transaction sending nothing (ours
#: send their statements back to back, but for ``check``'s look again under the lock,
#: which reads files between them), in milliseconds.
IDLE_MS = "600000"


def _connect(url: str, where: str, options: str, timeout: float) -> PgConnection:
    """A new autocommit session (``options`` after the URL's own, e.g. its search_path)."""
    import psycopg

    params: dict[str, Any] = dict(psycopg.conninfo.conninfo_to_dict(url))
    if options:
        params["options"] = f"{params.get('options') or ''} {options}".strip()
    params.setdefault("connect_timeout", max(1, round(timeout)))
    # A server host or network that goes silent (no reset) is noticed within
    # seconds, not TCP's hours: its session's locks are freed, our calls fail
    # (review36b #5)
    for key, value in KEEPALIVES.items():
        params.setdefault(key, value)
    try:
        # prepare_threshold=None: no server-side prepared statements; psycopg would
        # count as prepared one whose PREPARE a failed pipeline dropped, and name it
        # for ever after (every store A700 until a restart: review36b #4)
        conn = psycopg.connect(autocommit=True, prepare_threshold=None, **params)
        return PgConnection(conn, where)
    except psycopg.Error as exc:  # (libpq's message has several lines)
        cause = error_cause(exc)
        raise PostgresOperationalError(f"index {where}: {cause}", cause) from exc


#: libpq's TCP settings of every session (a URL's own win): keepalive probes after
#: 10 s idle, every 5 s, 3 unanswered = gone; data unacknowledged for 30 s = gone.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}
#: The same on the server's side of a writer session's socket (its settings' names):
#: a node gone is noticed in ~30 s.
SERVER_KEEPALIVES = {
    (key if key == "tcp_user_timeout" else f"tcp_{key}"): str(value)
    for key, value in KEEPALIVES.items()
    if key != "keepalives"
}


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
        db.deadline = pg_deadline.ANSWER_TIMEOUT
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

    text = error_cause(exc)  # (libpq's CONTEXT and hint lines are for a DBA)
    if getattr(exc, "sqlstate", None) == "3F000":  # invalid schema name (review50 #12)
        text += ": the URL's search_path (options=-csearch_path=...) names no schema that exists"
    if isinstance(exc, psycopg.IntegrityError):
        return PostgresIntegrityError(text)
    if isinstance(exc, psycopg.OperationalError):
        if getattr(exc, "sqlstate", None) is None:  # (libpq's, not the server's: its
            text = f"connection lost: {text}"  # session broke; review50 #11)
        return PostgresOperationalError(text)
    return PostgresError(text)


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
