"""New instances made durable by one write to the node's journal (``journal.py``,
``publish.py``): answered after that write and no flush of the file system,
flushed where they belong at the checkpoint; what a power cut can take of them
before it (the file's data, the COMMIT) comes back from the journal at the next
start (``recovery.replay``), and nothing deleted since does."""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from archive_testlib import FINAL, dataset, die, settled, store, stored_dataset, uid

from dicomstore.archive import SUCCESS, Archive, Index, deferred, filejournal, journal, layout
from dicomstore.archive.recovery import RECOVERY_LOCK
from dicomstore.archive.removal import remove

pytestmark = [
    pytest.mark.skipif(not layout.SYNCFS_AVAILABLE, reason="needs syncfs (Linux 5.8+)"),
    pytest.mark.sqlite_index,  # (the journal serves a SQLite index in the root)
]


@pytest.fixture
def archive(root: Path) -> Iterator[Archive]:
    with Archive(root) as archive:
        assert archive._publisher.defers and archive.storage._journal is not None
        yield archive


def _unflushed(root: Path) -> list[str]:
    db = sqlite3.connect(root / layout.INDEX_FILE)
    try:
        return sorted(u for (u,) in db.execute("SELECT sop_instance_uid FROM unflushed"))
    finally:
        db.close()


def _journal_of(archive: Archive) -> Path:
    return archive.tmp_dir / journal.NAME


def test_an_instance_is_answered_after_one_write_to_the_journal_and_no_syncfs(
    archive: Archive, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert store(archive, dataset(uid(0)), sop_uid=uid(0)).status == SUCCESS
    calls: list[str] = []
    real_pwritev, real_syncfs, real_commit = os.pwritev, layout.syncfs, Index.commit

    def pwritev(fd: int, buffers: list[bytes], offset: int, flags: int = 0) -> int:
        calls.append("pwritev RWF_DSYNC" if flags & os.RWF_DSYNC else "pwritev")
        return real_pwritev(fd, buffers, offset, flags)

    def commit(self: Index, *, flush: bool = True) -> None:
        calls.append("COMMIT" if flush else "COMMIT (not flushed)")
        real_commit(self, flush=flush)

    monkeypatch.setattr(os, "pwritev", pwritev)
    monkeypatch.setattr(os, "rename", lambda a, b: (calls.append("rename"), os.replace(a, b))[1])
    monkeypatch.setattr(layout, "syncfs", lambda fd: (calls.append("syncfs"), real_syncfs(fd))[1])
    monkeypatch.setattr(Index, "commit", commit)
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append("fsync"))
    monkeypatch.setattr(os, "fdatasync", lambda fd: calls.append("fdatasync"))
    outcome = store(archive, dataset(uid(1)), sop_uid=uid(1))
    assert outcome.status == SUCCESS
    # named, committed (WAL not flushed), then the one durable write: answered
    assert calls == ["rename", "COMMIT (not flushed)", "pwritev RWF_DSYNC"]
    records = journal.read(_journal_of(archive))
    assert [r.meta["uid"] for r in records] == [uid(0), uid(1)]
    assert records[1].data == outcome.path.read_bytes()  # type: ignore[union-attr]
    assert records[1].meta["key"] == FINAL.format(uid(1))
    monkeypatch.undo()
    assert archive.check() == []
    # the checkpoint: one syncfs, the records obsolete, the traces gone, struck off
    assert _unflushed(root) == [uid(0), uid(1)]
    assert settled(archive)
    assert journal.read(_journal_of(archive)) == []
    assert store(archive, dataset(uid(2)), sop_uid=uid(2)).status == SUCCESS
    assert _unflushed(root) == [uid(2)]


def test_a_member_is_answered_only_after_its_record_is_written(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[object] = []
    real = journal.Journal.append

    def append(self: journal.Journal, entries: list[tuple[bytes, bytes]]) -> None:
        seen.append(archive.get_instance(uid(1)))  # (committed, not yet answered)
        real(self, entries)

    monkeypatch.setattr(journal.Journal, "append", append)
    assert store(archive, dataset(uid(1)), sop_uid=uid(1)).status == SUCCESS
    assert seen and seen[0] is not None


def test_the_checkpoint_comes_with_a_batch_once_the_oldest_record_waited(
    archive: Archive, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deferred, "CHECKPOINT_AFTER", 0.0)
    assert store(archive, dataset(uid(0)), sop_uid=uid(0)).status == SUCCESS
    assert any(p.name.endswith(".new") for p in archive.tmp_dir.iterdir())
    assert store(archive, dataset(uid(1)), sop_uid=uid(1)).status == SUCCESS  # (0 retired)
    assert len([p for p in archive.tmp_dir.iterdir() if p.name.endswith(".new")]) == 1
    assert store(archive, dataset(uid(2)), sop_uid=uid(2)).status == SUCCESS
    assert [r.meta["uid"] for r in journal.read(_journal_of(archive))] == [uid(2)]
    assert _unflushed(root) == [uid(2)]  # (1 and 2 struck off by the later COMMITs)


def test_a_node_that_stops_receiving_is_checkpointed_by_its_timer(
    archive: Archive, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deferred, "CHECKPOINT_AFTER", 0.01)
    retired = threading.Event()
    real = archive._publisher._retire

    def retire() -> None:
        real()
        retired.set()

    monkeypatch.setattr(archive._publisher, "_retire", retire)
    assert store(archive, dataset(uid(0)), sop_uid=uid(0)).status == SUCCESS
    assert retired.wait(10)
    assert archive.storage.journaled == 0
    assert not [p for p in archive.tmp_dir.iterdir() if p.name != journal.NAME]
    assert store(archive, dataset(uid(1)), sop_uid=uid(1)).status == SUCCESS
    assert _unflushed(root) == [uid(1)]  # (0 struck off by this COMMIT)


def test_a_close_flushes_what_the_journal_holds_and_removes_it(root: Path) -> None:
    with Archive(root) as archive:
        for n in range(3):
            assert store(archive, dataset(uid(n)), sop_uid=uid(n)).status == SUCCESS
        folder = archive.tmp_dir
    assert not folder.exists() and _unflushed(root) == []
    with Archive(root) as again:
        assert again.recovered == 0 and again.check() == []
        assert len(list(again.instances())) == 3


def test_a_full_journal_is_flushed_with_the_batch_that_does_not_fit_and_grows(
    archive: Archive, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal, "INITIAL_SIZE", journal.START + 2 * journal.ALIGN)
    for n in range(2):
        assert store(archive, dataset(uid(n)), sop_uid=uid(n)).status == SUCCESS
    assert archive.storage.journaled == 2
    syncfs: list[int] = []
    real = layout.syncfs
    monkeypatch.setattr(layout, "syncfs", lambda fd: (syncfs.append(fd), real(fd))[1])
    assert store(archive, dataset(uid(2)), sop_uid=uid(2)).status == SUCCESS
    assert len(syncfs) == 1  # its own flush, which covered the two journaled
    assert archive.storage.journaled == 0 and settled(archive)
    assert archive.storage._journal.size == 2 * journal.INITIAL_SIZE  # type: ignore[union-attr]
    assert store(archive, dataset(uid(3)), sop_uid=uid(3)).status == SUCCESS
    assert len(syncfs) == 1 and archive.storage.journaled == 1
    assert archive.check() == []


def test_a_file_over_the_journal_limit_is_flushed_with_a_syncfs(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(filejournal, "JOURNAL_MAX", 100)
    assert store(archive, dataset(uid(0)), sop_uid=uid(0)).status == SUCCESS
    assert archive.storage.journaled == 0
    assert not [p for p in archive.tmp_dir.iterdir() if p.name != journal.NAME]


def test_a_journal_that_cannot_be_made_leaves_the_batch_to_its_syncfs(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: journal.Journal, size: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal.Journal, "_grow", refuse)
    assert store(archive, dataset(uid(0)), sop_uid=uid(0)).status == SUCCESS
    assert archive.storage.journaled == 0 and not _journal_of(archive).exists()
    assert archive.check() == [] and settled(archive)


# -- a power cut before the checkpoint: what the journal puts back ----------------


def _lose_data(path: Path) -> None:
    """The file's blocks never reached the disk (delayed allocation)."""
    size = path.stat().st_size
    with open(path, "r+b") as fp:
        fp.truncate(0)
        fp.truncate(size)


def test_a_file_whose_data_was_lost_is_written_again_from_the_journal(
    archive: Archive, root: Path
) -> None:
    stored = store(archive, dataset(uid(1)), sop_uid=uid(1))
    data = stored.path.read_bytes()  # type: ignore[union-attr]
    die(archive)
    _lose_data(stored.path)  # type: ignore[arg-type]
    with Archive(root) as again:
        assert [r["sop_instance_uid"] for r in again.instances()] == [uid(1)]
        assert (root / FINAL.format(uid(1))).read_bytes() == data
        assert again.check() == [] and _unflushed(root) == []
        assert stored_dataset(root / FINAL.format(uid(1))) == dataset(uid(1))


def test_an_instance_whose_commit_was_lost_comes_back_from_the_journal(
    archive: Archive, root: Path
) -> None:
    """The WAL's COMMIT, the file and its trace all lost: the record alone brings
    the instance back, indexed."""
    assert store(archive, dataset(uid(0)), sop_uid=uid(0)).status == SUCCESS
    assert settled(archive)  # (uid 0 flushed where it belongs)
    stored = store(archive, dataset(uid(1)), sop_uid=uid(1))
    data = stored.path.read_bytes()  # type: ignore[union-attr]
    die(archive)
    db = sqlite3.connect(root / layout.INDEX_FILE)
    with db:  # (as if its COMMIT never reached the disk)
        db.execute("DELETE FROM instance WHERE sop_instance_uid = ?", (uid(1),))
        db.execute("DELETE FROM unflushed WHERE sop_instance_uid = ?", (uid(1),))
    db.close()
    stored.path.unlink()  # type: ignore[union-attr]
    for trace in archive.tmp_dir.glob("*.new"):
        trace.unlink()
    with Archive(root) as again:
        assert again.recovered == 1
        assert sorted(r["sop_instance_uid"] for r in again.instances()) == [uid(0), uid(1)]
        assert (root / FINAL.format(uid(1))).read_bytes() == data
        assert again.check() == [] and settled(again)


def test_an_instance_deleted_after_its_answer_does_not_come_back(
    archive: Archive, root: Path
) -> None:
    for n in range(2):
        assert store(archive, dataset(uid(n)), sop_uid=uid(n)).status == SUCCESS
    assert remove(root, uid(1)).instances == 1
    die(archive)
    with Archive(root) as again:
        assert [r["sop_instance_uid"] for r in again.instances()] == [uid(0)]
        assert not (root / FINAL.format(uid(1))).exists()
        assert again.check() == []


def test_a_torn_record_was_never_answered_and_is_not_replayed(archive: Archive, root: Path) -> None:
    """A crash during the write: the record fails its checksum and the run of
    records ends there; its instance's row, listed, is verified as without the
    journal (its file lost: dropped)."""
    for n in range(2):
        assert store(archive, dataset(uid(n)), sop_uid=uid(n)).status == SUCCESS
    path = _journal_of(archive)
    die(archive)
    second = journal.read(path)[1]
    with open(path, "r+b") as fp:  # (a byte of the second record's data lost)
        data = fp.read()
        at = data.index(second.data)
        fp.seek(at + 200)
        fp.write(b"\xff")
    assert [r.meta["uid"] for r in journal.read(path)] == [uid(0)]
    _lose_data(root / FINAL.format(uid(1)))
    with Archive(root) as again:
        assert [r["sop_instance_uid"] for r in again.instances()] == [uid(0)]
        assert again.check() == []


def _appended(writer: journal.Journal, tmp_path: Path, *records: tuple[bytes, bytes]) -> None:
    entries = []
    for n, (meta, data) in enumerate(records):
        source = tmp_path / f"source-{writer.pending}-{n}"
        source.write_bytes(data)
        entries.append((meta, os.open(source, os.O_RDONLY), len(data)))
    try:
        writer.append(entries)
    finally:
        for _, fd, _ in entries:
            os.close(fd)


def test_records_past_a_checkpoint_only_count(tmp_path: Path) -> None:
    """The superblock's checkpoint makes older records obsolete, also those a
    shorter run after it leaves behind; its two slots alternate."""
    path = tmp_path / journal.NAME
    writer = journal.Journal(path)
    assert writer.room(3 * journal.ALIGN)
    _appended(writer, tmp_path, (b'{"n": 1}', b"a" * 10), (b'{"n": 2}', b"b" * 5000))
    assert [(r.seq, r.meta, len(r.data)) for r in journal.read(path)] == [
        (1, {"n": 1}, 10),
        (2, {"n": 2}, 5000),
    ]
    writer.checkpoint()
    assert journal.read(path) == []
    _appended(writer, tmp_path, (b'{"n": 3}', b"c"))
    assert [r.meta for r in journal.read(path)] == [{"n": 3}]  # (not 2 behind it)
    writer.checkpoint()
    _appended(writer, tmp_path, (b'{"n": 4}', b"d"))
    with open(path, "r+b") as fp:  # the last slot written torn: the other counts
        fp.seek(0)
        fp.write(b"\0" * 16)
    assert [r.meta for r in journal.read(path)] == [{"n": 4}]
    writer.close()
    assert path.exists()  # (a record still counts)


def test_a_batch_larger_than_a_group_is_written_a_group_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most GROUP bytes of records are held at once (a file read a CHUNK at a
    time); the heads of records written early follow, then one fdatasync."""
    monkeypatch.setattr(journal, "GROUP", 3000)
    monkeypatch.setattr(journal, "CHUNK", 1000)
    calls: list[str] = []
    real_pwritev, real_fdatasync = os.pwritev, os.fdatasync
    monkeypatch.setattr(
        os, "pwritev", lambda *a: (calls.append(f"pwritev {len(a) > 3}"), real_pwritev(*a))[1]
    )
    monkeypatch.setattr(os, "fdatasync", lambda fd: (calls.append("fdatasync"), real_fdatasync(fd)))
    path = tmp_path / journal.NAME
    writer = journal.Journal(path)
    assert writer.room(8 * journal.ALIGN)
    datas = [bytes([n]) * size for n, size in enumerate((100, 7000, 50, 2500))]
    calls.clear()
    _appended(writer, tmp_path, *[(b'{"n": %d}' % n, d) for n, d in enumerate(datas)])
    assert calls[-1] == "fdatasync" and "pwritev True" not in calls
    assert calls.count("pwritev False") >= 3
    assert [r.data for r in journal.read(path)] == datas
    calls.clear()
    _appended(writer, tmp_path, (b"{}", b"small"))  # (one group: one write, flushed)
    assert calls == ["pwritev True"]
    assert [r.data for r in journal.read(path)] == [*datas, b"small"]


# -- what no checkpoint covers: left for the next start --------------------------------


def test_another_nodes_start_leaves_a_live_nodes_batches_listed(root: Path) -> None:
    """A worker starting beside a serving node verifies only dead nodes' batches:
    the live one's stay listed until its own checkpoint, so after a delete and a
    crash its replay tells the delete from a lost COMMIT."""
    first = Archive(root)
    for n in range(2):
        assert store(first, dataset(uid(n)), sop_uid=uid(n)).status == SUCCESS
    with Archive(root) as worker:
        assert worker.recovered == 0
    assert _unflushed(root) == [uid(0), uid(1)]
    assert remove(root, uid(1)).instances == 1
    die(first)
    with Archive(root) as again:
        assert [r["sop_instance_uid"] for r in again.instances()] == [uid(0)]
        assert again.check() == []


def _eio(*args: object) -> None:
    raise OSError(5, "Input/output error")


def test_a_failed_syncfs_leaves_the_journal_to_the_next_start(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Linux reports a writeback error once per descriptor: after a failed syncfs
    the next one would succeed without the lost data. So the journal's records
    are never made obsolete by this process any more (their batches never struck
    off, the journal and traces kept at its close), and the next start writes back
    what the disk lost."""
    archive = Archive(root)
    stored = store(archive, dataset(uid(1)), sop_uid=uid(1))
    data = stored.path.read_bytes()  # type: ignore[union-attr]
    with monkeypatch.context() as patch:
        patch.setattr(layout, "syncfs", _eio)
        assert not archive.storage.checkpoint()
    assert not archive.storage.checkpoint() and not archive.storage.journal_sound
    # later batches: flushed without the journal (a syncfs each), struck off
    assert store(archive, dataset(uid(2)), sop_uid=uid(2)).status == SUCCESS
    assert store(archive, dataset(uid(3)), sop_uid=uid(3)).status == SUCCESS
    assert archive.storage.journaled == 1
    folder = archive.tmp_dir
    archive.close()
    assert (folder / journal.NAME).exists() and _unflushed(root) == [uid(1)]
    _lose_data(root / FINAL.format(uid(1)))  # (what the failed writeback lost)
    with Archive(root) as again:
        assert (root / FINAL.format(uid(1))).read_bytes() == data
        assert len(list(again.instances())) == 3 and again.check() == []
        assert not folder.exists() and _unflushed(root) == []


def test_a_failed_record_write_breaks_the_journal_and_nothing_is_struck_off(
    archive: Archive, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed write may still leave valid records: the batch is flushed with a
    syncfs and answered, but never struck off (a delete since must not look like
    a lost COMMIT to the next start); later batches are flushed with a syncfs
    each, and struck off as usual."""
    with monkeypatch.context() as patch:
        patch.setattr(journal.Journal, "_write", _eio)
        assert store(archive, dataset(uid(1)), sop_uid=uid(1)).status == SUCCESS
    assert not archive.storage.journal_sound and archive.storage.journaled == 0
    for n in (2, 3):
        assert store(archive, dataset(uid(n)), sop_uid=uid(n)).status == SUCCESS
    assert archive.storage.journaled == 0  # (no more records)
    assert _unflushed(root) == [uid(1), uid(3)]  # (2 struck off by 3's COMMIT)


def test_a_failed_superblock_write_breaks_the_journal(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The block may have landed: no record may follow it at the old place."""
    assert store(archive, dataset(uid(1)), sop_uid=uid(1)).status == SUCCESS
    with monkeypatch.context() as patch:
        patch.setattr(journal.Journal, "_write", _eio)
        assert not archive.storage.checkpoint()
    assert not archive.storage.journal_sound
    assert store(archive, dataset(uid(2)), sop_uid=uid(2)).status == SUCCESS
    assert archive.storage.journaled == 1  # (only the first: the second flushed)


def test_a_replay_whose_flush_fails_stops_the_start_and_keeps_the_journal(
    archive: Archive, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a SIGKILL the files replay finds whole may be whole in memory only:
    the journal goes only after one syncfs made them durable; when that fails the
    start stops there, adopting nothing."""
    assert store(archive, dataset(uid(1)), sop_uid=uid(1)).status == SUCCESS
    folder = archive.tmp_dir
    die(archive)
    with monkeypatch.context() as patch:
        patch.setattr(layout, "syncfs", _eio)
        with pytest.raises(OSError, match="Input/output"):
            Archive(root, journal=False)
    assert (folder / journal.NAME).exists()
    with Archive(root) as again:
        assert [r["sop_instance_uid"] for r in again.instances()] == [uid(1)]
        assert not folder.exists() and again.check() == []


def test_an_instance_arriving_during_the_idle_checkpoint_waits_then_leads(
    archive: Archive,
) -> None:
    started, go = threading.Event(), threading.Event()
    order: list[str] = []

    def checkpoint() -> None:
        started.set()
        assert go.wait(10)
        order.append("checkpoint")

    runner = threading.Thread(target=archive._committer.when_idle, args=(checkpoint,))
    runner.start()
    assert started.wait(10)
    assert archive._committer.when_idle(lambda: None) == (False, None)  # (one lead)
    storing = threading.Thread(
        target=lambda: order.append(str(store(archive, dataset(uid(1)), sop_uid=uid(1)).status))
    )
    storing.start()
    queued = threading.Event()
    for _ in range(10_000):  # (until the store waits in the queue for the lead)
        if archive._committer._queue:
            break
        queued.wait(0.001)
    assert archive._committer._queue and order == []
    go.set()
    runner.join(10)
    storing.join(10)
    assert order == ["checkpoint", str(SUCCESS)]


def test_replay_writes_every_file_again_whole_or_not(archive: Archive, root: Path) -> None:
    """A file that reads whole may be whole in memory only (a failed writeback,
    reported once, to the node that is gone): replay writes it again from the
    record all the same, then flushes."""
    stored = store(archive, dataset(uid(1)), sop_uid=uid(1))
    before = os.stat(stored.path).st_ino  # type: ignore[arg-type]
    die(archive)
    with Archive(root) as again:
        path = root / FINAL.format(uid(1))
        assert os.stat(path).st_ino != before  # (written again: a new file renamed there)
        assert stored_dataset(path) == dataset(uid(1)) and again.check() == []


def test_starts_take_turns_at_recovery(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A node another start is settling still holds its lock and would pass for
    live: a start waits while another recovers (``recovery.RECOVERY_LOCK``)."""
    Archive(root).close()
    caplog.set_level(logging.INFO, "dicomstore.archive")
    fd = os.open(root / RECOVERY_LOCK, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    opened = threading.Event()
    starting = threading.Thread(target=lambda: (Archive(root).close(), opened.set()))
    starting.start()
    assert not opened.wait(0.2)  # (held: the start waits, and says so)
    assert "waiting for another start's recovery" in caplog.text
    os.close(fd)
    assert opened.wait(10)
    starting.join(10)


def test_a_failed_syncfs_stops_later_ones_from_standing_for_the_files(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The error reported once, a later syncfs through the same descriptor says
    nothing of the files written before it: ``durable_seq`` stays, and each file
    of a later batch is fsynced through its own descriptor."""
    with Archive(root, on_duplicate="replace") as archive:  # (flushed before the COMMIT)
        assert store(archive, dataset(uid(0)), sop_uid=uid(0)).status == SUCCESS
        storage = archive.storage
        with monkeypatch.context() as patch:
            patch.setattr(layout, "syncfs", _eio)
            with pytest.raises(OSError):
                storage._syncfs()
        seq = storage.durable_seq
        monkeypatch.setattr(archive._committer, "submitted", seq + 5)
        storage._syncfs()  # (succeeds)
        assert storage.durable_seq == seq


def test_after_a_failed_syncfs_each_file_is_fsynced_through_its_own_descriptor(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A later syncfs through the writer's descriptor would succeed without the
    data whose error it reported: from then on each file is fsynced on its own."""
    assert store(archive, dataset(uid(0)), sop_uid=uid(0)).status == SUCCESS
    with monkeypatch.context() as patch:
        patch.setattr(layout, "syncfs", _eio)
        with pytest.raises(OSError):
            archive.storage._syncfs()
    calls: list[str] = []
    real_fsync, real_syncfs = os.fsync, layout.syncfs
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(layout, "syncfs", lambda fd: (calls.append("syncfs"), real_syncfs(fd))[1])
    assert store(archive, dataset(uid(1)), sop_uid=uid(1)).status == SUCCESS
    assert "fsync" in calls and "syncfs" not in calls
    assert not archive.storage.flush_placed([])  # (not one syncfs for all)


def _damage_first_record(path: Path) -> None:
    """A byte of the journal's first record flipped (its checksum then fails)."""
    data = bytearray(path.read_bytes())
    data[journal.START + 64] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_record_before_a_stored_one_stops_the_start(
    archive: Archive, root: Path, caplog
) -> None:
    """review115 F2: a record failing its checksum was taken for the torn end of a
    crash: a start then read none after it, dropped the answered instance whose data
    the disk had lost, and check said the archive was clean. A whole record after it
    of an instance the index holds shows it damaged: the start stops, naming the
    journal, which stays."""
    stored = [store(archive, dataset(uid(n)), sop_uid=uid(n)) for n in range(3)]
    assert all(s.status == SUCCESS for s in stored)
    die(archive)
    path = _journal_of(archive)
    records = journal.read(path)
    assert len(records) == 3
    _lose_data(stored[1].path)  # type: ignore[arg-type]
    _damage_first_record(path)
    assert journal.read(path) == []  # (alone, the reader cannot tell: the end)
    with pytest.raises(OSError, match="the journal is damaged"):
        list(journal.records(path, lambda meta: True))
    assert list(journal.records(path, lambda meta: False)) == []  # (torn: none stored)
    from dicomstore.archive.reader import ArchiveReader
    from dicomstore.archive.readonly_check import would_settle

    said = would_settle(root, ArchiveReader(root))  # (check --read-only said nothing)
    assert any("the journal is damaged" in line and "a start stops there" in line for line in said)
    with pytest.raises(OSError, match="the journal is damaged") as stopped:
        Archive(root)
    assert "this start stops: move it aside to start without it" in str(stopped.value)
    assert path.exists()
