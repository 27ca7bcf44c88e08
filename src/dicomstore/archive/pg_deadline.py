"""A deadline on PostgreSQL's answers (review36b #5).

A backend that is stopped (SIGSTOP, a paused VM) or whose disk hangs still has its
kernel acknowledge our packets: neither libpq's keepalives nor ``tcp_user_timeout``
notice, and a statement sent to it waits without end, with the C-STORE, the C-FIND
or the HTTP request behind it. So one watch thread cuts (shuts down the socket of)
a session whose statement has waited past its deadline: the call then fails at once
as a lost session does (the writer connects anew for its next transaction), and a
store is answered A700. Safe for a COMMIT among them: ``aftercommit`` reads it back
under the index's write lock, which the stopped backend still holds, so the read
fails too and the files stay as a crash would leave them (no rows lost or files
taken from under committed rows if the backend resumes and commits).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("dicomstore.archive")

#: Seconds a statement (or a pipeline of them) may wait for PostgreSQL's answer in
#: ``dicomstore serve`` (``--index-answer-timeout``; None: no deadline, as for the
#: commands a user can interrupt); a writer's session adds its lock timeout (the
#: server ends a lock wait by itself).
ANSWER_TIMEOUT: float | None = None
#: How often the watch looks at the sessions waiting (seconds).
LOOK_EVERY = 1.0
#: The name of each thread that sends a cut session's cancel request.
CANCEL_THREAD = "dicomstore-pg-cancel"


class _Watch:
    """The sessions waiting for an answer, and the thread that cuts the late ones."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: id of the owner -> (deadline, owner: a PgConnection, seconds)
        self._waiting: dict[int, tuple[float, Any, float]] = {}
        self._thread: threading.Thread | None = None

    def begin(self, owner: Any, seconds: float) -> None:
        """A statement is sent on ``owner.conn``: its answer is due within ``seconds``."""
        with self._lock:
            self._waiting[id(owner)] = (time.monotonic() + seconds, owner, seconds)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="dicomstore-pg-deadline", daemon=True
                )
                self._thread.start()

    def end(self, owner: Any) -> None:
        """The answer came (or the call failed)."""
        with self._lock:
            self._waiting.pop(id(owner), None)

    def _run(self) -> None:
        while True:
            time.sleep(LOOK_EVERY)
            now = time.monotonic()
            with self._lock:  # (cut under the lock: an answer that came meanwhile
                # has ended its wait, and its session is left alone)
                late = [key for key, (due, *_rest) in self._waiting.items() if due <= now]
                for key in late:
                    _due, owner, seconds = self._waiting.pop(key)
                    owner.cut = True  # (a failure to report, not a stale session to retry)
                    # a slow backend would go on (holding the index's lock): cancelled,
                    # from a thread of its own (the cancel request is a connection of its
                    # own), started before the cut, so that whoever sees the failure sees
                    # the cancel under way (the backend's key is taken before its socket
                    # is shut)
                    canceller = _canceller(owner.conn)
                    if canceller is not None:
                        threading.Thread(
                            target=_cancel, args=(canceller,), daemon=True, name=CANCEL_THREAD
                        ).start()
                    # said before the cut, so that the failure it causes comes after it
                    # (a cancel honoured first fails the statement as well: cut is set)
                    log.warning(
                        "index %s: no answer within %g s: the session is cut, its statement"
                        " fails (and is cancelled on the server)",
                        owner.where,
                        seconds,
                    )
                    _shut(owner.conn)


def _shut(conn: Any) -> None:
    """Shut the session's socket down: libpq's wait for the answer ends (end of file)."""
    try:
        fd = conn.pgconn.socket
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except Exception:  # noqa: BLE001 - closed meanwhile: nothing to cut
        pass


#: Seconds the cancel request of a cut session is given (a server whose postmaster is
#: stopped takes its connection and never answers).
CANCEL_TIMEOUT = 10.0


def _canceller(conn: Any) -> Any:
    """What cancels the session's statement (the backend's key, taken before its socket
    is shut): libpq's cancel connection (PQcancelCreate, libpq 17), else its PGcancel;
    or None."""
    try:
        from psycopg import capabilities

        if capabilities.has_cancel_safe():
            return conn.pgconn.cancel_conn()
        return conn.pgconn.get_cancel()
    except Exception:  # noqa: BLE001 - closed meanwhile: nothing to cancel
        return None


def _cancel(canceller: Any) -> None:
    """Ask the server to cancel the statement (a stopped backend does once it runs
    again; then it finds its client gone and ends, its locks freed): without blocking,
    within :data:`CANCEL_TIMEOUT` (review107 M1: libpq's blocking PQcancel, called
    through psycopg's binary module, holds the GIL while it waits for the server's
    answer; a server whose postmaster was stopped never gave it, and every thread of
    the process, the event loop among them, stood until it ran again)."""
    try:
        if hasattr(canceller, "poll"):  # (a PGcancelConn)
            _cancel_within(canceller, CANCEL_TIMEOUT)
        else:
            canceller.cancel()  # (libpq before 17: blocking)
    except Exception:  # noqa: BLE001 - the server unreachable too: nothing more to do
        pass


def _cancel_within(conn: Any, seconds: float) -> None:
    """Send a cancel request over the PGcancelConn ``conn`` (PQcancelStart, then
    PQcancelPoll while its socket waits, each wait in ``select``: the GIL free)."""
    import select

    from psycopg import pq

    due = time.monotonic() + seconds
    try:
        conn.start()
        while (status := conn.poll()) in (pq.PollingStatus.READING, pq.PollingStatus.WRITING):
            left = due - time.monotonic()
            if left <= 0:
                return
            fd = conn.socket
            if status == pq.PollingStatus.READING:
                select.select([fd], [], [], left)
            else:
                select.select([], [fd], [], left)
    finally:
        conn.finish()


WATCH = _Watch()


@contextmanager
def without_deadline(db: Any) -> Iterator[None]:
    """No deadline on ``db``'s statements meanwhile (a connection of either engine):
    work that may rightly take long (an index built or a rebuild's COMMIT on many rows)."""
    deadline = getattr(db, "deadline", None)
    if deadline is not None:
        db.deadline = None
    try:
        yield
    finally:
        if deadline is not None:
            db.deadline = deadline
