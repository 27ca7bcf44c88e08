"""Writers of one SQLite index take turns (archive/turns.py): an flock beside the
index, held from ``Index.begin`` to the COMMIT or ROLLBACK, in front of SQLite's
own write lock, whose busy handler sleeps milliseconds between tries."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap

import pytest

from dicomstore.archive.index import Index
from dicomstore.archive.turns import Turns

pytestmark = pytest.mark.sqlite_index


def other_writer_gets_a_turn(path) -> bool:
    """Whether a writer of another process would get its turn now (without waiting)."""
    turns = Turns(str(path))
    try:
        return turns.take(0.0)
    finally:
        turns.close()


def test_a_turn_lasts_from_begin_to_commit_or_rollback(tmp_path) -> None:
    path = tmp_path / "index.sqlite"
    index = Index(path, durable=False)
    try:
        with index.lock:
            index.begin([])
            assert not other_writer_gets_a_turn(path)
            index.commit()
        assert other_writer_gets_a_turn(path)
        with index.lock:
            index.begin(["1.2.3"])
            assert not other_writer_gets_a_turn(path)
            index.rollback()
        assert other_writer_gets_a_turn(path)
    finally:
        index.close()


def test_a_failed_begin_gives_the_turn_back(tmp_path) -> None:
    path = tmp_path / "index.sqlite"
    index = Index(path, durable=False, timeout=0.05)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # (a writer that takes no turn: SQLite's lock)
        with index.lock, pytest.raises(sqlite3.OperationalError, match="locked"):
            index.begin([])
        assert other_writer_gets_a_turn(path)
        other.execute("ROLLBACK")
        with index.lock:  # and the index writes again
            index.begin([])
            index.commit()
    finally:
        other.close()
        index.close()


def test_a_writer_waits_for_the_turn_of_another_process(tmp_path) -> None:
    """A second process's writer waits while the first holds its turn, and writes as
    soon as it is given; a turn held past the timeout leaves the wait to SQLite."""
    path = tmp_path / "index.sqlite"
    Index(path, durable=False).close()
    turns = Turns(str(path))
    assert turns.take(1.0)
    script = textwrap.dedent(
        f"""
        import sys, time
        from dicomstore.archive.turns import Turns
        turns = Turns({str(path)!r})
        print("waiting", flush=True)
        got = turns.take(30.0)
        print("got" if got else "not given", flush=True)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "waiting"
        assert child.poll() is None
        turns.give()
        assert child.stdout.readline().strip() == "got"
    finally:
        child.wait(30)
        turns.close()
    held = Turns(str(path))
    assert held.take(1.0)
    try:
        assert not other_writer_gets_a_turn(path)
        waiting = Turns(str(path))
        assert not waiting.take(0.05)  # not given within the timeout
        waiting.close()
    finally:
        held.close()
    assert other_writer_gets_a_turn(path)  # (closing ends a turn held)


def test_no_turns_where_the_file_cannot_be_made(tmp_path) -> None:
    turns = Turns(str(tmp_path / "no such folder" / "index.sqlite"))
    assert not turns.take(1.0) and not turns.held
    turns.give()
    turns.close()


def test_a_turn_not_given_in_time_leaves_only_sqlites_lock(tmp_path) -> None:
    """A turn held past the index's timeout (a writer that never gives it): the begin
    goes on to SQLite's lock without its busy handler (the timeout is spent), so a
    free index is written and a locked one fails at once, not a timeout later."""
    path = tmp_path / "index.sqlite"
    index = Index(path, durable=False, timeout=0.05)
    stuck = Turns(str(path))
    assert stuck.take(1.0)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        with index.lock:
            index.begin([])  # (SQLite's lock is free)
            index.commit()
        other.execute("BEGIN IMMEDIATE")
        with index.lock, pytest.raises(sqlite3.OperationalError, match="locked"):
            index.begin([])
        other.execute("ROLLBACK")
        assert index._db.execute("PRAGMA busy_timeout").fetchone()[0] == 50
    finally:
        other.close()
        stuck.close()
        index.close()


def test_a_writer_dropped_unclosed_gives_its_turn_back(tmp_path) -> None:
    path = tmp_path / "index.sqlite"
    dropped = Turns(str(path))
    assert dropped.take(1.0)
    del dropped  # (collected: its file closed)
    assert other_writer_gets_a_turn(path)
