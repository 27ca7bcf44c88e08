"""New instances committed before their flush (``publish.py``), on a SQLite index with
syncfs: renamed into place, committed without the WAL's fdatasync, then one syncfs
makes the data, the names and the COMMIT durable before anyone is answered; what a
power cut can leave (a committed row whose file never reached the disk, a trace
whose data did not) is verified at the next start (``recovery.py``). Without the
journal, which ``test_archive_journal.py`` tests: each batch flushed on its own."""

from __future__ import annotations

import errno
import gc
import logging
import os
import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from threading import Event, Thread

import pytest
from archive_testlib import (
    CT,
    FINAL,
    crash_at_commit,
    dataset,
    dcm_files,
    die,
    store,
    stored_dataset,
    uid,
)

from dicomstore.archive import OUT_OF_RESOURCES, SUCCESS, Archive, Index, deferred, digests, layout
from dicomstore.archive.commit import Staged
from dicomstore.archive.commitment import Reference, verify
from dicomstore.archive.engine import SqliteEngine
from dicomstore.archive.filestorage import FileStorage
from dicomstore.archive.reader import ArchiveReader

pytestmark = [
    pytest.mark.skipif(not layout.SYNCFS_AVAILABLE, reason="needs syncfs (Linux 5.8+)"),
    pytest.mark.sqlite_index,  # (a server's COMMIT is durable on its own: flushed first)
]


@pytest.fixture
def archive(root: Path) -> Iterator[Archive]:
    with Archive(root, journal=False) as archive:
        assert archive._publisher.defers  # (SQLite in the root, syncfs)
        yield archive


def _eio(*args: object) -> None:
    raise OSError(errno.EIO, os.strerror(errno.EIO))


def timer_now() -> float:
    import time

    return time.monotonic()


def _unflushed(root: Path) -> list[tuple[str, str]]:
    db = sqlite3.connect(root / layout.INDEX_FILE)
    try:
        return sorted(db.execute("SELECT batch, sop_instance_uid FROM unflushed"))
    finally:
        db.close()


def _log_calls(monkeypatch: pytest.MonkeyPatch, root: Path) -> list[str]:
    """The calls that place, commit and flush an instance, in order (paths relative
    to ``root``; ``.tmp`` for any name in it)."""
    calls: list[str] = []

    def rel(path: object) -> str:
        text = str(Path(str(path)).relative_to(root))
        return ".tmp" if text.startswith(".tmp") else text

    def logged(name: str, real: Callable[..., object], paths: bool) -> Callable[..., object]:
        def call(*args: object) -> object:
            calls.append(" ".join([name, *(rel(a) for a in args[:2])]) if paths else name)
            return real(*args)

        return call

    for name in ("link", "rename"):
        monkeypatch.setattr(os, name, logged(name, getattr(os, name), True))
    for name in ("fsync", "fdatasync"):
        monkeypatch.setattr(os, name, logged(name, getattr(os, name), False))
    monkeypatch.setattr(layout, "syncfs", logged("syncfs", layout.syncfs, False))
    real_commit = Index.commit

    def commit(self: Index, *, flush: bool = True) -> None:
        calls.append("COMMIT" if flush else "COMMIT (not flushed)")
        real_commit(self, flush=flush)

    monkeypatch.setattr(Index, "commit", commit)
    return calls


def test_a_new_instance_is_renamed_committed_then_flushed_once(
    archive: Archive, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert store(archive, dataset(uid(0)), sop_uid=uid(0)).status == SUCCESS
    calls = _log_calls(monkeypatch, root)
    assert store(archive, dataset(uid(1)), sop_uid=uid(1)).status == SUCCESS
    final = FINAL.format(uid(1))
    assert calls == [
        "link .tmp .tmp",  # the trace, the digest in its name
        f"rename .tmp {final}",
        "COMMIT (not flushed)",
        "syncfs",  # data, names and the COMMIT: the one flush
    ]
    assert archive.stats.flushes == 2  # (one per store)
    assert archive.check() == [] and not any(archive.tmp_dir.iterdir())


def test_members_are_answered_only_after_the_flush(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[object] = []
    real = FileStorage.flush_placed

    def flush_placed(self: FileStorage, placed: list[Staged]) -> bool:
        seen.extend(member.outcome for member in placed)
        return real(self, placed)

    monkeypatch.setattr(FileStorage, "flush_placed", flush_placed)
    assert store(archive, dataset(uid(1)), sop_uid=uid(1)).status == SUCCESS
    assert seen == [None]


def test_a_replace_is_flushed_before_it_is_placed_beside_the_old_file(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old file is a committed instance's: the new one's data is durable before
    it is placed at the instance's other place (the old one gets a removal intent),
    and the COMMIT is flushed as it happens (an archive replacing duplicates takes
    the flush-first steps for every batch)."""
    with Archive(root, on_duplicate="replace", journal=False) as archive:
        assert store(archive, dataset(uid(1)), sop_uid=uid(1)).status == SUCCESS
        calls = _log_calls(monkeypatch, root)
        again = dataset(uid(1), patient_name="Doe^John")
        assert store(archive, again, sop_uid=uid(1)).status == SUCCESS
        final = FINAL.format(uid(1))
        other = final.removesuffix(".dcm") + ".r.dcm"
        assert calls[:5] == [
            "fsync",
            "link .tmp .tmp",  # the trace
            f"link {other} .tmp",  # (a backup of a file there: none)
            f"link {final} .tmp",  # the old file's removal intent
            f"rename .tmp {other}",
        ]
        # (synchronous=FULL: durable as it returns; then the old file goes, its folder
        # flushed)
        assert calls[-2:] == ["COMMIT", "fsync"]
        assert archive.path_of(uid(1)) == root / other
        assert stored_dataset(root / other) == again
        assert not (root / final).exists()
        assert archive.check() == []


def test_each_batch_is_struck_off_in_the_next_commit(archive: Archive, root: Path) -> None:
    for n in range(3):
        assert store(archive, dataset(uid(n)), sop_uid=uid(n)).status == SUCCESS
        assert [u for _, u in _unflushed(root)] == [uid(n)]  # (its flush done, not yet struck)
    archive.close()  # (and the last one when the archive closes)
    assert _unflushed(root) == []


def test_a_batch_flushed_is_struck_off_when_no_store_follows(archive: Archive, root: Path) -> None:
    """review117 F3: a batch flushed and answered stayed listed until the next store's
    COMMIT; damaged since, a crash then, its instance was dropped at the start as one
    never answered, with its file (committed, reported so by Storage Commitment). Now
    an idle timer strikes it off in a COMMIT of its own."""
    assert store(archive, dataset(uid(1)), sop_uid=uid(1)).status == SUCCESS
    timer = archive._idle._timer
    assert timer is not None  # (armed: the strike-off when no store comes)
    assert archive._idle._at - timer_now() <= deferred.STRIKE_AFTER
    ran, _ = archive._committer.when_idle(archive._publisher.checkpoint_due)  # (as it fires)
    assert ran and _unflushed(root) == []
    damaged = root / FINAL.format(uid(1))
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 1
    damaged.write_bytes(bytes(data))
    die(archive)
    with Archive(root, journal=False) as again:
        assert [r["sop_instance_uid"] for r in again.instances()] == [uid(1)]  # (kept)
        assert damaged.exists() and again.check() != []  # (said damaged)


def test_a_committed_row_whose_file_never_reached_the_disk_is_dropped_at_start(
    archive: Archive, root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A power cut after the COMMIT and before the flush: the row may be on the
    disk and its file not. It was never answered: it goes, with what is left of
    its file; what was flushed before stays."""
    for n in range(2):
        assert store(archive, dataset(uid(n)), sop_uid=uid(n)).status == SUCCESS
    die(archive)  # (the second batch still listed: its flush's strike-off never came)
    lost = root / FINAL.format(uid(1))
    size = lost.stat().st_size
    with open(lost, "r+b") as fp:  # (delayed allocation: the blocks never written)
        fp.truncate(0)
        fp.truncate(size)
    with (
        caplog.at_level(logging.WARNING, "dicomstore.archive"),
        Archive(root, journal=False) as again,
    ):
        assert [r["sop_instance_uid"] for r in again.instances()] == [uid(0)]
        assert not lost.exists()
        assert again.check() == [] and _unflushed(root) == []
    assert "its data was lost before it was flushed" in caplog.text


def test_a_row_left_unflushed_whose_file_is_whole_is_kept(archive: Archive, root: Path) -> None:
    """Killed between the COMMIT and the flush (or a live node's batch): the file
    matches its digest, is flushed, and stays."""
    assert store(archive, dataset(uid(1)), sop_uid=uid(1)).status == SUCCESS
    die(archive)
    assert [u for _, u in _unflushed(root)] == [uid(1)]
    with Archive(root, journal=False) as again:
        assert [r["sop_instance_uid"] for r in again.instances()] == [uid(1)]
        assert _unflushed(root) == [] and again.check() == []


@pytest.mark.parametrize("lost", ["nothing", "some", "all"])
def test_a_trace_left_before_the_commit_is_adopted_only_if_its_digest_matches(
    archive: Archive, root: Path, monkeypatch: pytest.MonkeyPatch, lost: str
) -> None:
    """Its trace carries the digest of the data received: a file placed before its
    flush is adopted at the next start only if it still has that data; one whose
    header still names it goes. One with nothing left (a zero-length file at its
    name, as ext4 leaves after a power cut) cannot be named from its trace: it
    stays for ``check`` to report, until the sender (never answered) sends it
    again."""
    assert store(archive, dataset(uid(0)), sop_uid=uid(0)).status == SUCCESS
    crash_at_commit(monkeypatch, 1)
    with pytest.raises(RuntimeError):
        store(archive, dataset(uid(1)), sop_uid=uid(1))
    monkeypatch.undo()
    die(archive)
    (trace,) = [p for p in archive.tmp_dir.iterdir() if p.name.endswith(".new")]
    assert trace.name.endswith(".new") and ".xxh3_" in trace.name
    final = root / FINAL.format(uid(1))
    data = final.read_bytes()
    if lost == "some":  # a block of its data set never reached the disk
        at = data.index(b"Doe^Jane")
        final.write_bytes(data[:at] + bytes(8) + data[at + 8 :])
    elif lost == "all":
        final.write_bytes(b"")
    with Archive(root, journal=False) as again:
        assert again.recovered == (1 if lost == "nothing" else 0)
        expected = [uid(0), uid(1)] if lost == "nothing" else [uid(0)]
        assert [r["sop_instance_uid"] for r in again.instances()] == expected
        assert final.exists() == (lost != "some")
        assert not any(again.tmp_dir.iterdir())
        if lost == "all":
            (problem,) = again.check()
            assert FINAL.format(uid(1)) in str(problem)
            assert store(again, dataset(uid(1)), sop_uid=uid(1)).status == SUCCESS
            assert final.read_bytes() != b""
        assert again.check() == []
        assert len(dcm_files(root)) == (1 if lost == "some" else 2)


def test_an_index_on_another_file_system_is_flushed_before_answering(tmp_path: Path) -> None:
    """A syncfs of the archive's file system does not flush an index elsewhere."""
    shm = Path("/dev/shm")
    storage = FileStorage(tmp_path / "root")
    (tmp_path / "root" / layout.TMP_DIR).mkdir(parents=True)
    storage.start(storage.stats, lambda: 0)
    try:
        assert storage.defers_flush(tmp_path / "root" / "index.sqlite") is False  # (absent)
        (tmp_path / "root" / "index.sqlite").touch()
        assert storage.defers_flush(tmp_path / "root" / "index.sqlite") is True
        assert storage.defers_flush(None) is False  # a server's
        if shm.is_dir() and shm.stat().st_dev != tmp_path.stat().st_dev:
            assert storage.defers_flush(shm) is False
    finally:
        storage.close()
    assert FileStorage(tmp_path, fsync=False).defers_flush(tmp_path) is False


@pytest.mark.parametrize("syncfs", [None, False])
def test_flush_keys_says_when_its_one_flush_covered_the_index(
    tmp_path: Path, syncfs: bool | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``flush_keys`` is True only when one syncfs covered the index file too (then
    no fdatasync of the WAL is due); file by file, or an index elsewhere: False."""
    root, shm = tmp_path / "root", Path("/dev/shm")
    (root / layout.TMP_DIR).mkdir(parents=True)
    (root / "a").mkdir()
    (root / "a" / "x.dcm").write_bytes(b"x")
    (root / "index.sqlite").touch()
    storage = FileStorage(root, syncfs=syncfs)
    storage.start(storage.stats, lambda: 0)
    try:
        covered = syncfs is None and layout.SYNCFS_AVAILABLE
        assert storage.flush_keys(["a/x.dcm"], root / "index.sqlite") is covered
        assert storage.flush_keys(["a/x.dcm"], None) is False
        if shm.is_dir() and shm.stat().st_dev != tmp_path.stat().st_dev:
            assert storage.flush_keys(["a/x.dcm"], shm) is False
        if not covered:  # file by file: a key without a file cannot be made durable
            with pytest.raises(FileNotFoundError):
                storage.flush_keys(["a/gone.dcm"], root / "index.sqlite")
        else:  # through a descriptor of its own, not the writer's (whose flushes
            # could take a write-back error first: each descriptor sees it once)
            synced: list[int] = []
            real = layout.syncfs
            monkeypatch.setattr(layout, "syncfs", lambda fd: (synced.append(fd), real(fd))[1])
            storage.flush_keys(["a/x.dcm"], None)
            own = storage._watch_fd  # type: ignore[attr-defined]
            assert synced == [own] and own != storage._fs_fd  # type: ignore[attr-defined]
            # an error the syncfs reports is not retried file by file: raised
            fsynced: list[object] = []
            monkeypatch.setattr(layout, "syncfs", _eio)
            monkeypatch.setattr(layout, "fsync_file", lambda *a: fsynced.append(a))
            with pytest.raises(OSError, match="Input/output"):
                storage.flush_keys(["a/x.dcm"], root / "index.sqlite")
            assert fsynced == []
            monkeypatch.undo()
    finally:
        storage.close()
    assert FileStorage(root, fsync=False).flush_keys(["a/x.dcm"], None) is True


# -- what others see between a COMMIT and its flush (review of a491ec4) -------------------


class PowerCut(BaseException):
    """The machine dies here: nothing after it runs."""


def _paused_flush(archive: Archive, then: Callable[[], bool]) -> tuple[Event, Event]:
    """Hold ``archive``'s next flush after its COMMIT until released; then ``then()``."""
    entered, release = Event(), Event()

    def flush_placed(placed: list[Staged]) -> bool:
        entered.set()
        assert release.wait(20)
        return then()

    archive.storage.flush_placed = flush_placed  # type: ignore[method-assign]
    return entered, release


def _in_thread(action: Callable[[], object]) -> tuple[Thread, list[object]]:
    result: list[object] = []

    def run() -> None:
        try:
            result.append(action())
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            result.append(exc)

    thread = Thread(target=run)
    thread.start()
    return thread, result


def test_a_replace_policy_flushes_before_it_commits(root: Path) -> None:
    """A batch renaming over a committed instance must have its data durable first:
    with ``replace`` every batch takes the flush-first steps (its COMMIT durable)."""
    with Archive(root, on_duplicate="replace", journal=False) as archive:
        assert not archive._publisher.defers
        assert archive.index._deferring is False


def test_another_node_answers_a_duplicate_only_once_the_first_copy_is_durable(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """serve --workers 2: node A has committed X and not yet flushed it; X sent again
    to node B (keep) is answered 0000 from A's row, and a Storage Commitment says
    committed, only after a flush that makes A's copy durable: one syncfs, which
    covers the index (no fdatasync of the WAL after it)."""
    a, b = Archive(root, journal=False), Archive(root, journal=False)
    try:
        entered, release = _paused_flush(a, lambda: (_ for _ in ()).throw(PowerCut()))
        thread, _ = _in_thread(lambda: store(a, dataset(uid(1)), sop_uid=uid(1)))
        assert entered.wait(20)
        flushes = b.stats.flushes
        wal_flushes: list[object] = []
        monkeypatch.setattr(SqliteEngine, "flush", lambda self, db: wal_flushes.append(db))
        again = store(b, dataset(uid(1)), sop_uid=uid(1))
        assert again.status == SUCCESS
        assert b.stats.flushes == flushes + 1  # (one syncfs: A's data, name and COMMIT)
        synced: list[int] = []
        real = layout.syncfs
        layout.syncfs = lambda fd: (synced.append(fd), real(fd))[1]  # type: ignore[assignment]
        try:
            (verdict,) = verify(ArchiveReader(root), [Reference(CT, uid(1))])
        finally:
            layout.syncfs = real  # type: ignore[assignment]
        assert verdict.committed and synced
        assert wal_flushes == []
        monkeypatch.undo()
        release.set()
        thread.join(20)
        die(a)
    finally:
        b.close()
    with Archive(root, journal=False) as after:  # what B answered is durable: the row stays
        assert after.get_instance(uid(1)) is not None and after.check() == []


def test_a_withdrawn_file_is_gone_on_disk_before_its_row_is(
    archive: Archive, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flush after the COMMIT fails for the file (EIO; the folders flush): it is
    answered A700, and its withdrawal is ordered so that no crash keeps the file
    without its row: the unlink, the folder's fsync, then the COMMIT removing the row."""
    final = FINAL.format(uid(1))
    calls: list[str] = []
    real_fsync, real_unlink, real_commit = os.fsync, os.unlink, Index.commit

    def eio(*args: object) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    def fsync(fd: int) -> None:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            eio()
        calls.append("fsync folder")
        real_fsync(fd)

    def unlink(path: object, *args: object, **kwargs: object) -> None:
        calls.append(f"unlink {Path(str(path)).relative_to(root)}")
        real_unlink(path, *args, **kwargs)  # type: ignore[arg-type]

    def commit(self: Index, *, flush: bool = True) -> None:
        calls.append("COMMIT")
        real_commit(self, flush=flush)

    monkeypatch.setattr(layout, "syncfs", eio)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "unlink", unlink)
    monkeypatch.setattr(Index, "commit", commit)
    outcome = store(archive, dataset(uid(1)), sop_uid=uid(1))
    monkeypatch.undo()
    assert outcome.status == OUT_OF_RESOURCES
    withdrawal = calls[calls.index(f"unlink {final}") :]
    assert withdrawal[:3] == [f"unlink {final}", "fsync folder", "COMMIT"]
    assert archive.get_instance(uid(1)) is None and not (root / final).exists()
    assert archive.check() == []


def test_a_commitment_flushes_through_a_descriptor_opened_with_the_reader(
    archive: Archive, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A descriptor reports only the write-back errors after its opening: the reader's
    syncfs goes through one opened with the reader, not at the flush (where it would
    miss an error the writing node saw first), and the reader closes it when it goes."""
    assert store(archive, dataset(uid(1)), sop_uid=uid(1)).status == SUCCESS
    die(archive)  # (its batch still listed)
    reader = ArchiveReader(root)
    watch = reader.storage._watch_fd  # type: ignore[attr-defined]
    assert watch >= 0
    synced: list[int] = []
    opened: list[object] = []
    real_open, real_syncfs = os.open, layout.syncfs
    monkeypatch.setattr(
        os, "open", lambda path, *a, **k: (opened.append(path), real_open(path, *a, **k))[1]
    )
    monkeypatch.setattr(layout, "syncfs", lambda fd: (synced.append(fd), real_syncfs(fd))[1])
    reader.make_durable([uid(1)])
    monkeypatch.undo()
    assert synced == [watch] and str(root) not in map(str, opened)
    del reader
    gc.collect()
    link = Path(f"/proc/self/fd/{watch}")  # (closed with the reader, or reused since)
    assert not link.exists() or os.readlink(link) != str(root)


def test_a_withdrawn_member_takes_nothing_of_another_nodes_replace(root: Path) -> None:
    """Node A commits X and its flush fails: A withdraws X. Meanwhile node B (replace,
    flushed first) replaced X and answered Success: A takes neither its file nor its row."""
    a, b = Archive(root, journal=False), Archive(root, on_duplicate="replace", journal=False)
    try:

        def eio() -> bool:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        entered, release = _paused_flush(a, eio)
        thread, result = _in_thread(lambda: store(a, dataset(uid(1)), sop_uid=uid(1)))
        assert entered.wait(20)
        two = dataset(uid(1), patient_name="Two")
        assert store(b, two, sop_uid=uid(1)).status == SUCCESS
        release.set()
        thread.join(20)
        assert result[0].status == OUT_OF_RESOURCES  # type: ignore[attr-defined]
        assert stored_dataset(b.path_of(uid(1))) == two  # type: ignore[arg-type]
        assert b.check() == []
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize(
    "error",
    [OSError(errno.EMFILE, os.strerror(errno.EMFILE)), ValueError("unknown digest algorithm")],
)
def test_a_read_error_at_start_drops_nothing(
    root: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    """A listed row whose file cannot be read now (EMFILE, EIO), or whose digest this
    version cannot compute, is no sign that its data was lost: it stays, listed for
    the next start."""
    archive = Archive(root, journal=False)
    assert store(archive, dataset(uid(1)), sop_uid=uid(1)).status == SUCCESS
    die(archive)  # (its batch still listed)

    def matches(recorded: str, where: object) -> bool:
        raise error

    monkeypatch.setattr(digests, "matches", matches)
    with Archive(root, journal=False) as again:
        assert again.get_instance(uid(1)) is not None
    assert [u for _, u in _unflushed(root)] == [uid(1)]
    monkeypatch.undo()
    with Archive(root, journal=False) as again:
        assert again.get_instance(uid(1)) is not None and _unflushed(root) == []


def test_a_row_stored_again_while_a_start_verifies_is_not_dropped(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start reads the listed files outside the index lock: a row found bad, but
    stored again by another (running) node before the start drops it, is that
    node's: kept. (Starts take turns: the other node started before.)"""
    other = Archive(root, on_duplicate="replace", journal=False)
    archive = Archive(root, journal=False)
    assert store(archive, dataset(uid(1)), sop_uid=uid(1)).status == SUCCESS
    die(archive)
    lost = root / FINAL.format(uid(1))
    lost.write_bytes(bytes(lost.stat().st_size))  # (its data lost by a power cut)
    two = dataset(uid(1), patient_name="Two")
    real = digests.matches
    started = Event()

    def matches(recorded: str, where: object) -> bool:
        if not started.is_set():  # meanwhile the other node stores it again
            started.set()
            assert store(other, two, sop_uid=uid(1)).status == SUCCESS
        return real(recorded, where)  # type: ignore[arg-type]

    monkeypatch.setattr(digests, "matches", matches)
    with Archive(root, journal=False) as again:
        monkeypatch.undo()
        assert started.is_set() and stored_dataset(again.path_of(uid(1))) == two  # type: ignore[arg-type]
        assert again.check() == []
    other.close()
