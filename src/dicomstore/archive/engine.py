"""The index's engine: SQLite (the embedded default) or PostgreSQL (issue 17).

One home for what differs between the two; the SQL itself is shared
(``schema.py``, ``index.py``, ``query.py``):

``sqlite`` (no ``--index``, or ``sqlite:`` / a path)
    The file ``index.sqlite`` in the archive root (or the file named), WAL,
    one writer connection, read-only reader connections (``mode=ro``). The
    schema version is ``PRAGMA user_version``; ``BEGIN IMMEDIATE`` takes the
    write lock.
``postgresql://user@host:port/db`` (psycopg 3, the ``postgresql`` extra; ``postgres.py``)
    The tables in the database's current schema (``search_path``, e.g.
    ``?options=-csearch_path%3Darchive1``), made on first use with the one row
    of ``dicomstore_index`` that holds the schema version and a *generation*.
    ``begin`` locks that row by stamping a new generation on it (``UPDATE``),
    so writers take turns as SQLite's do (across processes too). Round trips
    are what a batch waits on, with the lock held (other nodes wait): a batch
    costs two, in libpq's pipeline mode — BEGIN, the lock, the count of
    rewrites and the lookup of its instances (``begin``'s ``then``); then the
    statements whose results nobody reads (``later``: the instance rows) and
    the COMMIT (``commit``). ``?``
    placeholders become ``%s`` (once per statement text, cached); ``durable=False`` is
    ``synchronous_commit=off``; readers are autocommit connections with
    ``default_transaction_read_only``, kept open for the next reader when closed
    (a few, for a minute: a connection costs milliseconds).

:data:`DatabaseError` and :data:`IntegrityError` are the exception classes of
both drivers: callers catch them instead of ``sqlite3.Error``.
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from dicomstore.archive import layout
from dicomstore.archive.turns import Turns


class PostgresError(Exception):
    """An error of a PostgreSQL index (psycopg's error is its ``__cause__``; psycopg
    is imported only when a PostgreSQL index is opened: it loads asyncio);
    :attr:`cause`: what went wrong in a few words, without where (the URL)."""

    def __init__(self, message: str, cause: str = "") -> None:
        super().__init__(message)
        self.cause = cause or message


class PostgresIntegrityError(PostgresError):
    """A constraint of a PostgreSQL index failed."""


class PostgresOperationalError(PostgresError):
    """A PostgreSQL index is unreachable, busy or locked."""


def error_cause(exc: BaseException) -> str:
    """What an index or file error says went wrong, for an Error Comment or an HTTP
    reason: its first line, without the index's URL (a peer is not told where the
    index is: review36b #6; the log line has the whole message)."""
    if isinstance(exc, PostgresError):
        return exc.cause
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def unavailable(exc: BaseException) -> str:
    """The Error Comment of an answer the index could not give (its cause, never
    where it is), whole: the log line keeps it so (review50 #11: it was cut to 64
    characters here, 'connection to server at...'), the DIMSE encoder cuts it to
    an LO's 64 between words for the peer."""
    return f"index unavailable: {error_cause(exc)}"


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
        from dicomstore.archive.postgres import PostgresEngine  # (psycopg: only then)

        return PostgresEngine(text)
    problem = index_problem(text)
    if problem is not None:
        raise ValueError(f"--index: {problem}")
    return SqliteEngine(Path(text.removeprefix("sqlite:").removeprefix("//")))


def index_problem(index: str) -> str | None:
    """Why ``index`` names no index this dicomstore can open (None: it does): neither a
    ``postgresql://`` URL nor a SQLite file, or a URL without psycopg 3 installed. The
    command line checks it as it parses (review77 F6: a traceback in the archive
    commands)."""
    if is_postgresql(index):
        import importlib.util

        if importlib.util.find_spec("psycopg") is None:
            return "a PostgreSQL index needs psycopg 3: pip install 'dicomstore[postgresql]'"
        return None
    if "://" in index and not index.startswith("sqlite:"):
        shown = without_password(index)  # (review52 L7: the password was shown whole)
        return f"not a postgresql:// URL nor a SQLite file: {shown!r}"
    return None


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


class IndexNotBuilt(Exception):
    """An index a node would make while others write is not made (why, and how)."""


#: The most instance rows SQLite indexes while other nodes store: the build holds
#: the write lock about 1 s per 1,000,000 rows, and a store waits 5 s for it at most.
SQLITE_BUILD_MAX_ROWS = 3_000_000


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

    def local_file(self) -> Path | None:
        """The file the index is in (its WAL beside it); None for a server's."""
        return None

    def table_names(self, db: Any) -> set[str]:
        raise NotImplementedError

    def ddl(self, script: str) -> str:
        """``schema.SCHEMA`` / ``INDEXES`` in this engine's words."""
        return script

    def create(self, db: Any, script: str, version: int | None) -> None:
        """Run ``script`` (statements separated by ``;``) in one transaction,
        recording ``version`` when given."""
        raise NotImplementedError

    def build_index(self, db: Any, statement: str) -> bool:
        """Make one index (``CREATE INDEX IF NOT EXISTS name ON table``, on a connection
        of its own) while other connections write, unless it is there and usable: True
        when made now; :class:`IndexNotBuilt` when this engine would not."""
        raise NotImplementedError

    def begin(self, db: Any, then: Sequence[Statement] = ()) -> list[Any]:
        """Open the write transaction, holding the write lock; the cursors of
        ``then``, the first statements under the lock (each sees every COMMIT
        made before the lock was taken: ``parentcache.py`` rests on it)."""
        raise NotImplementedError

    def later(self, db: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """(In a write transaction.) Run ``sql`` once for each of ``rows``, whose
        results nobody reads: now, or with the next statement that is sent (an
        error may then show there, or at :meth:`commit`)."""
        if len(rows) == 1:
            db.execute(sql, rows[0])
        else:
            db.executemany(sql, rows)

    def commit(self, db: Any) -> None:
        """COMMIT the write transaction."""
        db.execute("COMMIT")

    def rollback(self, db: Any) -> None:
        """ROLLBACK the write transaction, if one is open."""
        if self.in_transaction(db):
            db.execute("ROLLBACK")

    def defer_flushes(self, db: Any) -> bool:
        """Make ``db``'s COMMITs durable only when :meth:`flush` is called; False
        when this engine cannot (its COMMITs stay durable)."""
        return False

    def flush(self, db: Any) -> None:
        """Make every COMMIT so far durable (after :meth:`defer_flushes`)."""

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

    def lost(self, db: Any) -> bool:
        """Whether ``db``'s session is gone (a server ended it): a new connection is
        needed. A SQLite file has no session to lose."""
        return False


class SqliteEngine(Engine):
    """The SQLite file at ``path``."""

    dialect = "sqlite"
    returning = sqlite3.sqlite_version_info >= (3, 35)

    def __init__(self, path: Path) -> None:
        self.path = path.resolve()
        self.where = str(self.path)
        self._turns = Turns(self.where)
        self._timeout = 5.0

    def exists(self) -> bool:
        return self.path.is_file()

    def build_index(self, db: Any, statement: str) -> bool:
        """In one transaction: writers wait (:data:`SQLITE_BUILD_MAX_ROWS` at most)."""
        words = statement.split()
        name, table = words[5], words[7]
        if name in self.index_names(db):
            return False
        (rows,) = db.execute(f"SELECT MAX(rowid) FROM {table}").fetchone()  # (~ the count)
        if (rows or 0) > SQLITE_BUILD_MAX_ROWS:
            raise IndexNotBuilt(
                f"{name} not made: {rows} rows, other nodes' stores would wait for it past"
                f" their lock timeout; make it while no node runs: sqlite3 {self.path}"
                f" '{statement.strip()}'"
            )
        self.create(db, self.ddl(statement), None)
        return True

    def writer(self, *, durable: bool, timeout: float) -> sqlite3.Connection:
        self._timeout = timeout  # (the turn's wait: begin)
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

    def local_file(self) -> Path | None:
        return self.path

    def table_names(self, db: Any) -> set[str]:
        return {
            name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }

    def defer_flushes(self, db: Any) -> bool:
        # a COMMIT writes the WAL, without the fdatasync of synchronous=FULL; the
        # checkpoints still flush the WAL before they write the database
        db.execute("PRAGMA synchronous=NORMAL")
        return True

    def flush(self, db: Any) -> None:
        # what synchronous=FULL does at each COMMIT: an fdatasync of the WAL
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # (checkpointed and gone: its frames are in the flushed database)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def create(self, db: Any, script: str, version: int | None) -> None:
        stamp = f"PRAGMA user_version={version};" if version is not None else ""
        db.executescript(f"BEGIN; {script} {stamp} COMMIT;")

    def begin(self, db: Any, then: Sequence[Statement] = ()) -> list[Any]:
        # the writer's turn first (turns.py), held until the COMMIT or ROLLBACK
        late = not self._turns.take(self._timeout) and self._turns.usable
        try:
            if late:  # the turn's wait took the timeout: SQLite's lock, free or not
                (waits,) = db.execute("PRAGMA busy_timeout").fetchone()
                db.execute("PRAGMA busy_timeout = 0")
                try:
                    db.execute("BEGIN IMMEDIATE")
                finally:
                    db.execute(f"PRAGMA busy_timeout = {int(waits)}")
            else:
                db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._turns.give()
            raise
        try:  # (a write transaction reads the newest COMMIT)
            return [db.execute(*statement) for statement in then]
        except BaseException:
            self.rollback(db)
            raise

    def commit(self, db: Any) -> None:
        try:
            db.execute("COMMIT")
        finally:
            try:
                ended = not db.in_transaction  # (else the ROLLBACK that follows gives it)
            except sqlite3.Error:  # (a closed connection: its transaction is gone)
                ended = True
            if ended:
                self._turns.give()

    def rollback(self, db: Any) -> None:
        try:
            super().rollback(db)
        finally:
            self._turns.give()

    def in_transaction(self, db: Any) -> bool:
        return bool(db.in_transaction)

    def close(self) -> None:
        self._turns.close()


#: Query parameters of a libpq URL that hold a secret (masked wherever it is shown).
_SECRETS = re.compile(r"(?i)(^|&)((?:ssl)?password|sslkey|passfile)=[^&]*")


def without_password(url: str) -> str:
    """``url`` with its password masked: the userinfo's, and a ``password=`` (or
    ``sslpassword=``) query parameter's (review50 #4: that one was shown whole)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    query = _SECRETS.sub(lambda m: f"{m.group(1)}{m.group(2)}=***", parts.query)
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # (nothing to mask: as given, not as urlunsplit rewrites it)
    return urlunsplit(parts._replace(netloc=netloc, query=query))
