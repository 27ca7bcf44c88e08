"""A rebuildable cache of what is derived from each stored instance (WADO-RS metadata).

One SQLite file, ``<archive>/.cache/metadata.sqlite`` (:data:`CACHE_FILE`), beside
the index and never part of it: a row per SOP Instance UID holding a ``key`` (what
the value was made from: the caller's encoder version and options, the instance's
digest and its file's identity) and the value (opaque bytes, zlib-compressed).

Nothing here is trusted blindly: a value is used only when its key equals the one
the caller computes from the instance as it is now, so a replaced instance (new
digest, new file) or a file changed behind the archive's back is never answered
from the cache; its row is overwritten when rebuilt. ``remove`` (``dicomstore
delete``) forgets the rows of what it deleted (:func:`forget`). The file is
written without flushes (WAL, ``synchronous=NORMAL``): a crash may lose the
latest rows, never corrupt the older ones; a damaged file is deleted and made
anew. Deleting ``.cache`` while the archive is not served empties the cache.
No C-STORE writes here: rows are made when first asked for.

The cache holds at most ``max_entries`` rows (:data:`DEFAULT_MAX_ENTRIES`,
``serve --metadata-cache-entries``): each row records when it was last used
(written or answered), and a write that takes the cache past the bound drops
the rows used longest ago (LRU). An evicted instance is made anew when asked
for again, so answers never change, only their cost.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

log = logging.getLogger("dicomstore.archive.metacache")

CACHE_DIR = ".cache"
CACHE_FILE = f"{CACHE_DIR}/metadata.sqlite"
_VERSION = 2
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS entry ("
    " sop_instance_uid TEXT PRIMARY KEY, key TEXT NOT NULL, value BLOB NOT NULL,"
    " used INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS entry_used ON entry (used)",
)
#: Rows kept by default: the instances used most recently, about 1 GB at ~4 KB a row.
DEFAULT_MAX_ENTRIES = 250_000
#: UIDs per statement (below SQLite's default limit of host parameters).
_BATCH = 500


class MetadataCache:
    """The cache of one archive; methods are thread-safe, failures never raise (a
    cache that cannot be read or written is a cache miss, logged once)."""

    def __init__(self, root: Path, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("a metadata cache holds at least one entry")
        self.root = Path(root)
        self.path = self.root / CACHE_FILE
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._broken = False
        self._closed = False  # (a write after close, e.g. an answer's late one: none)

    def _connect(self) -> sqlite3.Connection | None:
        if self._db is None and not self._broken and not self._closed:
            try:
                self._db = _open(self.path)
            except (OSError, sqlite3.Error) as exc:
                self._broken = True
                log.warning("metadata cache %s not used: %s", self.path, exc)
        return self._db

    def get_many(self, keys: dict[str, str]) -> dict[str, bytes]:
        """The values of those ``{uid: key}`` whose stored key is ``key``."""
        found: dict[str, bytes] = {}
        uids = list(keys)
        with self._lock:
            db = self._connect()
            if db is None:
                return found
            try:
                for start in range(0, len(uids), _BATCH):
                    part = uids[start : start + _BATCH]
                    marks = ", ".join("?" for _ in part)
                    sql = f"SELECT sop_instance_uid, key, value FROM entry WHERE sop_instance_uid IN ({marks})"  # noqa: E501
                    for uid, key, value in db.execute(sql, part):
                        if keys.get(uid) == key:
                            found[uid] = zlib.decompress(value)
                if found:  # (what was answered is the last to go)
                    hits = list(found)
                    with _transaction(db):
                        for start in range(0, len(hits), _BATCH):
                            part = hits[start : start + _BATCH]
                            marks = ", ".join("?" for _ in part)
                            sql = f"UPDATE entry SET used = ? WHERE sop_instance_uid IN ({marks})"
                            db.execute(sql, [_now(), *part])
            except sqlite3.OperationalError as exc:  # busy, I/O: these stay uncached
                log.debug("metadata cache %s not read: %s", self.path, exc)
            except (sqlite3.DatabaseError, zlib.error) as exc:
                log.warning("metadata cache %s damaged (%s): made anew", self.path, exc)
                self._reset(db)
        return found

    def put_many(self, entries: Iterable[tuple[str, str, bytes]]) -> None:
        """Store ``(uid, key, value)`` rows, replacing what each UID had; then drop the
        rows used longest ago beyond ``max_entries``."""
        now = _now()
        rows = [(uid, key, zlib.compress(value, 1), now) for uid, key, value in entries]
        if rows:  # (busy, read-only, full: these stay uncached)
            self._write(partial(self._insert, rows=rows), "not written", logging.DEBUG)

    def drop(self, sop_instance_uids: list[str]) -> None:
        """Drop the rows of ``sop_instance_uids`` (deleted instances); after
        :meth:`close` too, as :func:`forget` does (review66 L4: a row written just
        before the close stayed)."""
        work = partial(_delete_rows, uids=sop_instance_uids)
        written = self._write(work, "deleted instances not dropped", logging.WARNING)
        if not written and self._closed:  # (closed stays closed: no race with close)
            forget(self.root, sop_instance_uids)

    def _write(self, work: Callable[[sqlite3.Connection], None], failed: str, level: int) -> bool:
        """``work`` in one transaction; an error logged at ``level``, never raised;
        False when the cache is not open (closed, or not usable)."""
        with self._lock:
            db = self._connect()
            if db is None:
                return False
            try:
                with _transaction(db):
                    work(db)
            except sqlite3.Error as exc:
                log.log(level, "metadata cache %s: %s: %s", self.path, failed, exc)
            return True

    def _insert(self, db: sqlite3.Connection, rows: list[tuple[str, str, bytes, int]]) -> None:
        db.executemany("INSERT OR REPLACE INTO entry VALUES (?, ?, ?, ?)", rows)
        (count,) = db.execute("SELECT COUNT(*) FROM entry").fetchone()
        if count > self.max_entries:
            db.execute(
                "DELETE FROM entry WHERE sop_instance_uid IN (SELECT"
                " sop_instance_uid FROM entry ORDER BY used LIMIT ?)",
                (count - self.max_entries,),
            )

    def close(self) -> None:
        """Close the database; nothing is read or written after."""
        with self._lock:
            self._closed = True
            if self._db is not None:
                self._db.close()
                self._db = None

    def _reset(self, db: sqlite3.Connection) -> None:
        db.close()
        self._db = None
        _delete(self.path)


def forget(root: Path, sop_instance_uids: Iterable[str]) -> None:
    """Drop the rows of ``sop_instance_uids`` (deleted instances); nothing to do when
    the archive has no cache. Best effort: a failure is logged."""
    path = Path(root) / CACHE_FILE
    uids = list(sop_instance_uids)
    if not uids or not path.exists():
        return
    try:
        db = _open(path)
    except (OSError, sqlite3.Error) as exc:
        log.warning("metadata cache %s: deleted instances not forgotten: %s", path, exc)
        return
    try:
        with _transaction(db):
            _delete_rows(db, uids)
    except sqlite3.Error as exc:  # never served (not indexed), but their text stays on disk
        log.warning("metadata cache %s: deleted instances not forgotten: %s", path, exc)
    finally:
        db.close()


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """One transaction (the connection is in autocommit mode, where ``with db`` begins
    none: each statement was its own, a batch of 100 values 100 commits)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # (a failed COMMIT left it open; SQLite may have ended it)
            db.execute("ROLLBACK")
        raise


def _delete_rows(db: sqlite3.Connection, uids: list[str]) -> None:
    for start in range(0, len(uids), _BATCH):
        part = uids[start : start + _BATCH]
        marks = ", ".join("?" for _ in part)
        db.execute(f"DELETE FROM entry WHERE sop_instance_uid IN ({marks})", part)


def _open(path: Path) -> sqlite3.Connection:
    """The cache database, made (or made anew if damaged or of another version)."""
    path.parent.mkdir(exist_ok=True)
    for attempt in (1, 2):
        db = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version not in (0, _VERSION):
                raise sqlite3.DatabaseError(f"cache version {version}")
            for statement in _SCHEMA:
                db.execute(statement)
            db.execute(f"PRAGMA user_version={_VERSION}")
            return db
        except sqlite3.OperationalError:  # busy or I/O: not damage
            db.close()
            raise
        except sqlite3.DatabaseError:
            db.close()
            if attempt == 2:
                raise
            log.warning("metadata cache %s damaged or of another version: made anew", path)
            _delete(path)
    raise AssertionError("unreachable")


def _now() -> int:
    """When a row is used (LRU order; a clock shared by the processes of one host)."""
    return time.time_ns()


def _delete(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        try:
            Path(str(path) + suffix).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("metadata cache %s not deleted: %s", path, exc)
