"""What other nodes store (issue 17, services/arrivals.py): the node running
forwarding and the study-complete events reads it from the shared index while
other nodes live, each instance once, a late commit within the slack too; the
events leave out what a study's last event covered. Two archives open on one
root in this process are two nodes (each holds its node lock)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from tests.archive.archive_testlib import dataset
from tests.archive.archive_testlib import store as archive_store

from dicomstore.archive import Archive, nodes
from dicomstore.archive.reader import ArchiveReader
from dicomstore.services.arrivals import OtherArrivals, others_alive
from dicomstore.services.stability import StudyStability
from dicomstore.services.stable_log import StableLog, StableStudy

#: On both index engines.
pytestmark = pytest.mark.usefixtures("index_engine")


def _store(archive: Archive, uid: str, study: str = "1.2.61") -> None:
    data = dataset(uid, study=study, series=f"{study}.1")
    assert archive_store(archive, data, sop_uid=uid).status == 0


def _later(iso: str, seconds: float) -> str:
    return (datetime.fromisoformat(iso) + timedelta(seconds=seconds)).isoformat()


def _unreachable() -> None:
    raise OSError(111, "Connection refused")


def test_each_instance_once_while_another_node_lives(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    here = Archive(root, fsync=False)
    try:
        arrivals = OtherArrivals(ArchiveReader(root), lambda rows: None)
        _store(here, "1.2.61.1.1")
        assert not others_alive(root)
        assert len(arrivals.look()) == 1  # (the first look reads: who went before it?)
        assert arrivals.look() == []  # one node: nothing read
        there = Archive(root, fsync=False)  # a second node
        try:
            assert sorted(nodes.alive(root)) == sorted([here._node.name, there._node.name])
            _store(there, "1.2.61.1.2")
            first = arrivals.look()  # (the slack before: this node's own store too)
            assert sorted(r["sop_instance_uid"] for r in first) == ["1.2.61.1.1", "1.2.61.1.2"]
            assert {r["study_uid"] for r in first} == {"1.2.61"} and all(r["path"] for r in first)
            assert arrivals.look() == []  # seen: not again
            _store(there, "1.2.61.1.3")
            assert [r["sop_instance_uid"] for r in arrivals.look()] == ["1.2.61.1.3"]
            # committed late: its received_at is behind the newest seen, within the slack
            newest = arrivals.newest
            arrivals.newest = _later(newest, arrivals.slack - 1)
            _store(there, "1.2.61.1.4")
            arrivals.newest = _later(newest, arrivals.slack - 1)
            late = arrivals.look()
            assert [r["sop_instance_uid"] for r in late] == ["1.2.61.1.4"]
            _store(there, "1.2.61.1.5")  # its last store, then it stops (review50 #5)
        finally:
            there.close()
        assert not others_alive(root)
        connect = arrivals.reader.connect
        arrivals.reader.connect = _unreachable  # type: ignore[method-assign]
        with pytest.raises(OSError):  # (the index restarting: review51 #2, then forgotten)
            arrivals.look()
        arrivals.reader.connect = connect  # type: ignore[method-assign]
        assert [r["sop_instance_uid"] for r in arrivals.look()] == ["1.2.61.1.5"]
        assert arrivals.look() == []  # one node again: nothing read
    finally:
        here.close()


def test_a_node_whose_clock_is_ahead_hides_no_other_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    """review88 F10: one instance stamped 60 s ahead (a node's clock) moved the newest
    seen there, and every other node's arrivals were left out for as long."""
    from dicomstore.archive import fields
    from dicomstore.services import arrivals as arrivals_module

    monkeypatch.setattr(arrivals_module, "_ahead_told", [])  # (told once in a while)

    class Ahead(datetime):
        @classmethod
        def now(cls, tz=None):  # type: ignore[no-untyped-def, override]
            return datetime.now(tz) + timedelta(seconds=60)

    root = tmp_path / "archive"
    here, there = Archive(root, fsync=False), Archive(root, fsync=False)
    try:
        arrivals = OtherArrivals(ArchiveReader(root), lambda rows: None)
        with monkeypatch.context() as ahead:
            ahead.setattr(fields, "datetime", Ahead)
            _store(there, "1.2.61.3.1")
        assert [r["sop_instance_uid"] for r in arrivals.look()] == ["1.2.61.3.1"]
        _store(here, "1.2.61.3.2")  # (this node's clock)
        assert [r["sop_instance_uid"] for r in arrivals.look()] == ["1.2.61.3.2"]
        assert arrivals.look() == []  # (the one ahead, seen, is not taken again)
        assert "the clock of a node storing into this archive is ahead" in caplog.text
    finally:
        there.close()
        here.close()


def test_the_events_leave_out_what_a_last_event_covered(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    archive = Archive(root, fsync=False)
    try:
        _store(archive, "1.2.62.1.1", study="1.2.62")
        _store(archive, "1.2.63.1.1", study="1.2.63")
        reader = ArchiveReader(root)
        (covered, newer) = sorted(reader.instances(), key=lambda r: r["study_uid"])
        at = covered["received_at"]
        StableLog(root, fsync=False).append(
            StableStudy("1.2.62", "PID1", 1, 1, at, at, at, str(root / "1.2.62"))
        )

        async def run() -> list[str]:
            stability = StudyStability(reader, 60.0, fsync=False)
            await stability.start()
            try:
                stability.arrived_elsewhere([covered, newer])
                stability.arrived_elsewhere([newer])  # (again: one pending study)
                return sorted(stability.pending)
            finally:
                await stability.close()

        assert asyncio.run(run()) == ["1.2.63"]
    finally:
        archive.close()


def test_what_a_rebuild_took_from_the_files_is_no_arrival(tmp_path: Path) -> None:
    """review58 H1: the first look (the slack back) handed the instances a reindex had
    just taken in from the files (their times a restore's) to forwarding and the
    events as new; the rebuild's mark (archive/rebuild.py) leaves them out."""
    root = tmp_path / "archive"
    here = Archive(root, fsync=False)
    try:
        _store(here, "1.2.64.1.1", study="1.2.64")
        with here.index.lock:  # (the index lost: a restore of the files)
            here.index.begin()
            here.index.clear()
            here.index.commit()
        assert here.reindex() == 1
        arrivals = OtherArrivals(ArchiveReader(root), lambda rows: None)
        there = Archive(root, fsync=False)  # a second node stores
        try:
            _store(there, "1.2.64.1.2", study="1.2.64")
            assert [r["sop_instance_uid"] for r in arrivals.look()] == ["1.2.64.1.2"]
        finally:
            there.close()
    finally:
        here.close()


def test_the_index_of_arrival_times_is_made_once_another_node_lives(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A look read the whole instance table every 2 s while other nodes lived (0.14 s
    at 1,000,000 instances); the node looking makes an index of arrival times once
    another node lives, not before (every C-STORE updates it)."""
    import logging
    from contextlib import closing

    from dicomstore.archive.schema import ARRIVALS_INDEX

    caplog.set_level(logging.INFO, logger="dicomstore")
    name = ARRIVALS_INDEX.split()[5]
    root = tmp_path / "archive"
    here = Archive(root, fsync=False)
    reader = ArchiveReader(root)

    def indexes() -> set[str]:
        with closing(reader.connect()) as db:
            return reader.engine.index_names(db)  # type: ignore[no-any-return]

    try:
        arrivals = OtherArrivals(reader, lambda rows: None)
        _store(here, "1.2.62.1.1")
        arrivals.look()
        assert name not in indexes()  # (one node)
        there = Archive(root, fsync=False)
        try:
            _store(there, "1.2.62.1.2")
            assert [r["sop_instance_uid"] for r in arrivals.look()] == ["1.2.62.1.2"]
            assert name in indexes()
            assert "the index of arrival times made" in caplog.text
            if reader.engine.local_file() is not None:  # (SQLite: the look's plan uses it)
                with closing(reader.connect()) as db:
                    sql = "EXPLAIN QUERY PLAN SELECT * FROM instance WHERE received_at >= '9'"
                    assert name in str(db.execute(sql).fetchall())
        finally:
            there.close()
    finally:
        here.close()


def test_an_index_of_arrival_times_left_invalid_is_made_again(tmp_path: Path) -> None:
    """review92 A1: on PostgreSQL a failed concurrent build (its wait for a backup's
    transaction cut short) leaves the index invalid: every write updates it, no search
    uses it; it was taken as made."""
    from contextlib import closing

    from dicomstore.archive import schema

    root = tmp_path / "archive"
    here = Archive(root, fsync=False)
    reader = ArchiveReader(root)
    try:
        _store(here, "1.2.63.1.1")
        assert schema.arrivals_indexed(reader.engine, 5.0)
        assert not schema.arrivals_indexed(reader.engine, 5.0)  # (there, usable)
        if reader.engine.local_file() is not None:
            return  # (SQLite: built in one transaction, never half)
        db = reader.engine.writer(durable=True, timeout=5.0)
        with closing(db):
            db.execute(
                "UPDATE pg_index SET indisvalid = false"
                " WHERE indexrelid = to_regclass('instance_received_idx')"
            )
        assert schema.arrivals_indexed(reader.engine, 5.0)  # (dropped, made again)
        with closing(reader.connect()) as db:
            sql = "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(?)"
            assert db.execute(sql, ("instance_received_idx",)).fetchone()[0] is True
    finally:
        here.close()


def test_the_index_of_arrival_times_is_tried_again_or_said_how_to_make_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """review92 A3: a failed build was never tried again in the node's life. A2: on
    SQLite a build holds the write lock about 1 s per 1,000,000 instances, and other
    nodes' stores failed A700 past their 5-s wait: beyond a size it is not made, the
    log says how to make it while no node runs."""
    import logging

    from dicomstore.archive import engine as engine_module
    from dicomstore.services import arrivals as arrivals_module

    caplog.set_level(logging.INFO, logger="dicomstore")
    root = tmp_path / "archive"
    here, there = Archive(root, fsync=False), Archive(root, fsync=False)
    calls: list[int] = []
    real = arrivals_module.arrivals_indexed

    def failing_once(engine, timeout):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:
            raise OSError(5, "Input/output error")
        return real(engine, timeout)

    try:
        _store(there, "1.2.64.1.1")
        _store(there, "1.2.64.1.2")
        arrivals = OtherArrivals(ArchiveReader(root), lambda rows: None)
        monkeypatch.setattr(arrivals_module, "arrivals_indexed", failing_once)
        arrivals.look()
        arrivals.look()
        assert len(calls) == 1  # (not at every look)
        monkeypatch.setattr(arrivals_module, "INDEX_AGAIN", 0.0)
        arrivals._index_due = 0.0  # (its time has come)
        arrivals.look()
        assert len(calls) == 2 and "index of arrival times made" in caplog.text
        if arrivals.reader.engine.local_file() is None:
            return  # (PostgreSQL builds it concurrently, whatever its size)
        monkeypatch.setattr(engine_module, "SQLITE_BUILD_MAX_ROWS", 1)
        db = arrivals.reader.engine.writer(durable=True, timeout=5.0)
        db.execute("DROP INDEX instance_received_idx")
        db.close()
        fresh = OtherArrivals(ArchiveReader(root), lambda rows: None)
        fresh.look()
        assert "instance_received_idx not made: 2 rows" in caplog.text
        assert "make it while no node runs: sqlite3 " in caplog.text
        assert fresh._index_due == float("inf")  # (too large stays too large)
    finally:
        here.close()
        there.close()
