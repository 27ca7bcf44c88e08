"""Group commit: concurrent commits share flushes and a transaction, each keeps its fate."""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from archive_testlib import (
    CT,
    EXPLICIT_LE,
    crash_at_commit,
    dataset,
    dcm_files,
    die,
    digest_of,
    settled,
    store,
    stored_dataset,
)

from dicomstore.archive import (
    CANNOT_UNDERSTAND,
    DATASET_MISMATCH,
    OUT_OF_RESOURCES,
    SUCCESS,
    WARNING_COERCION,
    Archive,
    Index,
    Ingest,
    StoreOutcome,
    layout,
)
from dicomstore.archive import commit as commit_module
from dicomstore.archive.engine import engine_for
from dicomstore.archive.filestorage import FileStorage

SYNCFS = pytest.mark.skipif(not layout.SYNCFS_AVAILABLE, reason="needs syncfs (Linux 5.8+)")


def uid_of(n: int) -> str:
    return f"1.2.3.4.5.6.{100 + n}"


def receive(archive: Archive, n: int, data: bytes | None = None, **kw: object) -> Ingest:
    """begin + write of instance ``n`` (its own UID, series 1.2.3.4.5 unless ``data``)."""
    uid = str(kw.pop("sop_uid", uid_of(n)))
    ingest = archive.begin(
        sop_class_uid=CT, sop_instance_uid=uid, transfer_syntax_uid=EXPLICIT_LE, calling_ae="SCU"
    )
    ingest.write(dataset(uid, **kw) if data is None else data)
    return ingest


def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


class Batches:
    """Holds the first batch until told, so that the next commits queue behind it."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.seen: list[int] = []
        real = archive._committer._publish

        def publish(batch: list) -> None:
            self.seen.append(len(batch))
            if not self.entered.is_set():
                self.entered.set()
                assert self.gate.wait(10)
            real(batch)

        archive._committer._publish = publish

    def run(self, first: Ingest, others: list[Ingest], *, raising: bool = False) -> list:
        """Commit ``first`` (held), queue ``others``, release: their outcomes, in order
        (with ``raising``, what each commit raised instead)."""
        outcomes: list[StoreOutcome | BaseException | None] = [None] * (1 + len(others))

        def commit(i: int, ingest: Ingest) -> None:
            try:
                outcomes[i] = ingest.commit()
            except BaseException as exc:  # noqa: BLE001 - the test reports it
                outcomes[i] = exc

        threads = [threading.Thread(target=commit, args=(0, first))]
        threads[0].start()
        assert self.entered.wait(10)
        for i, ingest in enumerate(others, 1):
            threads.append(threading.Thread(target=commit, args=(i, ingest)))
            threads[-1].start()
        queue = self.archive._committer._queue
        # (those failing their checks never queue)
        _wait_for(lambda: len(queue) + sum(o is not None for o in outcomes[1:]) == len(others))
        self.gate.set()
        for thread in threads:
            thread.join(30)
        for outcome in outcomes:
            assert isinstance(outcome, BaseException if raising else StoreOutcome), outcome
        return outcomes


#: (the flushes of each batch: without the journal, ``test_archive_journal.py``)
@pytest.fixture(params=[True, False], ids=["syncfs", "fsync-each"])
def archive(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Archive]:
    if request.param and not layout.SYNCFS_AVAILABLE:
        pytest.skip("needs syncfs (Linux 5.8+)")
    with Archive(tmp_path / "root", syncfs=request.param, journal=False) as archive:
        yield archive


def assert_clean(archive: Archive) -> None:
    assert archive.check() == []
    assert settled(archive)


def test_commits_meeting_are_published_as_one_batch(archive: Archive) -> None:
    assert store(archive, dataset(uid_of(0)), sop_uid=uid_of(0)).status == SUCCESS
    batches = Batches(archive)
    outcomes = batches.run(receive(archive, 1), [receive(archive, n) for n in range(2, 18)])
    assert batches.seen == [1, 16]
    assert [o.status for o in outcomes] == [SUCCESS] * 17
    for n, outcome in enumerate(outcomes, 1):
        assert outcome.instance == archive.get_instance(uid_of(n))
        assert stored_dataset(outcome.path) == dataset(uid_of(n))
    assert len(archive.instances()) == 18
    assert archive.stats.snapshot()["batches"] == 3
    assert archive.stats.snapshot()["instances"] == 18
    assert_clean(archive)


def test_many_threads_store_everything(archive: Archive) -> None:
    errors: list[BaseException] = []
    statuses: list[int] = []
    barrier = threading.Barrier(8)

    def run(t: int) -> None:
        try:
            barrier.wait()
            for k in range(12):
                n = t * 100 + k
                series = f"1.2.3.4.{t % 3}"
                statuses.append(receive(archive, n, series=series).commit().status)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert statuses == [SUCCESS] * 96
    assert len(archive.instances()) == 96
    assert len(archive.instances(series_uid="1.2.3.4.0")) == 36
    stats = archive.stats.snapshot()
    assert stats["instances"] == 96 and stats["batches"] <= 96
    assert_clean(archive)


def _count_flushes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    flushes: list[str] = []
    real_fsync, real_syncfs = os.fsync, layout.syncfs
    monkeypatch.setattr(os, "fsync", lambda fd: (flushes.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(layout, "syncfs", lambda fd: (flushes.append("syncfs"), real_syncfs(fd))[1])
    return flushes


@pytest.mark.parametrize("flush_first", [False, True], ids=["as-configured", "flush-first"])
@pytest.mark.parametrize("syncfs", [pytest.param(True, marks=SYNCFS), False])
@pytest.mark.parametrize("size", [1, 4, 16])
def test_flushes_per_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syncfs: bool, size: int, flush_first: bool
) -> None:
    """Committed before the flush (SQLite, syncfs): one syncfs per batch; flushed
    first (PostgreSQL, replace, no syncfs): the files, then the folder."""
    if flush_first:
        _flush_before_the_commit(monkeypatch)
    with Archive(tmp_path / "root", syncfs=syncfs, journal=False) as archive:
        assert store(archive, dataset(uid_of(0)), sop_uid=uid_of(0)).status == SUCCESS
        batches = Batches(archive)
        first = receive(archive, 1)
        others = [receive(archive, n) for n in range(2, size + 2)]
        flushes = _count_flushes(monkeypatch)
        outcomes = batches.run(first, others)
        assert {o.status for o in outcomes} == {SUCCESS}
        assert batches.seen == [1, size]
        assert archive._publisher.defers == (syncfs and not flush_first and not pg_index(archive))
        if archive._publisher.defers:  # committed first, then one syncfs for everything
            assert flushes == ["syncfs", "syncfs"]
            assert archive.stats.flushes == 1 + len(flushes)
            return
        # batch of one: file + series folder; then the batch of `size`
        expected = ["fsync", "fsync"]
        if syncfs and size >= 2:
            expected += ["syncfs", "fsync"]  # all the files at once, then the folder
        else:
            expected += ["fsync"] * (size + 1)
        assert flushes == expected
        # (+ the first store's, a new study: file + 3 folders, or file + one syncfs)
        assert archive.stats.flushes == (2 if syncfs else 4) + len(flushes)


def _log_placing(monkeypatch: pytest.MonkeyPatch, root: Path) -> list[str]:
    """The file system calls that place an instance, in order, with their paths
    relative to ``root`` (``.tmp`` for any name in it)."""
    calls: list[str] = []
    real = {name: getattr(os, name) for name in ("fsync", "link", "rename")}

    def rel(path: object) -> str:
        text = str(Path(str(path)).relative_to(root))
        return ".tmp" if text.startswith(".tmp") else text

    def fsync(fd: int) -> None:
        calls.append(f"fsync {rel(os.readlink(f'/proc/self/fd/{fd}'))}")
        real["fsync"](fd)

    def logged(name: str) -> Callable[..., None]:
        def call(src: object, dst: object, *args: object, **kw: object) -> None:
            calls.append(f"{name} {rel(src)} {rel(dst)}")  # (before: failed ones too)
            real[name](src, dst, *args, **kw)

        return call

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", logged("link"))
    monkeypatch.setattr(os, "rename", logged("rename"))
    return calls


@pytest.mark.parametrize("fsync", [True, False])
def test_how_a_lone_new_instance_is_placed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync: bool
) -> None:
    """Durable: its data flushed, a trace made and the file renamed into place, its
    folder flushed (not ``.tmp``: a new instance's trace need not be durable), then
    the COMMIT (a hard link into place made every flush slower: see
    ``FileStorage.place``). Without fsync: one hard link, its temporary the trace."""
    root = tmp_path / "root"
    with Archive(root, fsync=fsync, syncfs=False) as archive:
        assert store(archive, dataset(uid_of(0)), sop_uid=uid_of(0)).status == SUCCESS
        calls = _log_placing(monkeypatch, root.resolve())
        assert store(archive, dataset(uid_of(1)), sop_uid=uid_of(1)).status == SUCCESS
        final = f"1.2.3.4/1.2.3.4.5/{uid_of(1)}.dcm"
        if fsync:
            assert calls == [
                "fsync .tmp",
                "link .tmp .tmp",  # the trace
                f"link {final} .tmp",  # a backup of what is there: nothing (ENOENT)
                f"rename .tmp {final}",
                "fsync 1.2.3.4/1.2.3.4.5",
            ]
        else:
            assert calls == [f"link .tmp {final}"]
        assert list(archive.tmp_dir.rglob("*.p*")) == []  # (the trace is gone)
        assert_clean(archive)


def test_a_durable_replace_makes_its_trace_and_backup_durable_before_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unlike a new instance's: the next start takes the new file away (the trace)
    or the old one (its removal intent) by the committed row. The new version goes
    to the instance's other place: the old file is never renamed over."""
    root = tmp_path / "root"
    with Archive(root, on_duplicate="replace", syncfs=False) as archive:
        assert store(archive, dataset(uid_of(1)), sop_uid=uid_of(1)).status == SUCCESS
        calls = _log_placing(monkeypatch, root.resolve())
        again = dataset(uid_of(1), patient_name="Doe^John")
        assert store(archive, again, sop_uid=uid_of(1)).status == SUCCESS
        final = f"1.2.3.4/1.2.3.4.5/{uid_of(1)}.dcm"
        other = f"{final.removesuffix('.dcm')}.r.dcm"
        assert calls[:4] == [
            "fsync .tmp",
            "link .tmp .tmp",  # the trace
            f"link {other} .tmp",  # (a backup of a file there: none)
            f"link {final} .tmp",  # the old file's removal intent
        ]
        assert calls[4] == f"rename .tmp {other}"
        # the folders before the COMMIT; after it, the old file's goes (its folder)
        assert sorted(calls[5:7]) == ["fsync .tmp", "fsync 1.2.3.4/1.2.3.4.5"]
        assert calls[7:] == ["fsync 1.2.3.4/1.2.3.4.5"]
        assert_clean(archive)


def pg_index(archive: Archive) -> bool:
    return archive.index.engine.dialect != "sqlite"


def _flush_before_the_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files flushed before they are placed, as on PostgreSQL or for a replace (not
    a SQLite index's new instances: committed first, flushed after)."""
    monkeypatch.setattr(FileStorage, "defers_flush", lambda self, index_file: False)


def test_files_written_before_a_syncfs_need_no_flush_of_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not layout.SYNCFS_AVAILABLE:
        pytest.skip("needs syncfs")
    _flush_before_the_commit(monkeypatch)
    with Archive(tmp_path / "root") as archive:
        batches = Batches(archive)
        first = receive(archive, 1)
        others = [
            receive(archive, n, study=f"1.2.9.{n}", series=f"1.2.9.{n}.1") for n in range(2, 6)
        ]
        flushes = _count_flushes(monkeypatch)
        assert {o.status for o in batches.run(first, others)} == {SUCCESS}
        # first: file, then one syncfs for its new folders, which began after the others
        # were submitted: their data is durable already; then one syncfs for their folders
        assert flushes == ["fsync", "syncfs", "syncfs"]
        assert archive.stats.flushed_before == 1
        assert_clean(archive)


def test_an_instance_submitted_during_a_syncfs_is_flushed_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not layout.SYNCFS_AVAILABLE:
        pytest.skip("needs syncfs")
    _flush_before_the_commit(monkeypatch)
    with Archive(tmp_path / "root") as archive:
        late = receive(archive, 2, study="1.2.9.2", series="1.2.9.2.1")
        outcomes: list[StoreOutcome] = []
        flushes = _count_flushes(monkeypatch)
        counted = layout.syncfs
        threads: list[threading.Thread] = []

        def syncfs(fd: int) -> None:
            if not threads:  # the first instance's folders: the second one arrives now
                threads.append(threading.Thread(target=lambda: outcomes.append(late.commit())))
                threads[0].start()
                _wait_for(lambda: archive._committer.submitted == 2)
            counted(fd)

        monkeypatch.setattr(layout, "syncfs", syncfs)
        assert store(archive, dataset(uid_of(1)), sop_uid=uid_of(1)).status == SUCCESS
        threads[0].join(10)
        assert [o.status for o in outcomes] == [SUCCESS]
        # the second was not written before that syncfs began: its file is flushed
        assert flushes == ["fsync", "syncfs", "fsync", "syncfs"]
        assert archive.stats.flushed_before == 0
        assert_clean(archive)


# -- one member's failure is its own ------------------------------------------------------


def test_bad_members_fail_alone(archive: Archive) -> None:
    batches = Batches(archive)
    first = receive(archive, 1)
    others = [
        receive(archive, 2),
        receive(archive, 3, data=dataset(uid_of(3)), sop_uid=uid_of(99)),  # A900
        receive(archive, 4, data=b"garbage, not a data set" * 4),  # C000
        receive(archive, 5),
    ]
    outcomes = batches.run(first, others)
    assert [o.status for o in outcomes] == [
        SUCCESS,
        SUCCESS,
        DATASET_MISMATCH,
        CANNOT_UNDERSTAND,
        SUCCESS,
    ]
    assert batches.seen == [1, 2]  # the failures never joined a batch
    assert {r["sop_instance_uid"] for r in archive.instances()} == {uid_of(n) for n in (1, 2, 5)}
    assert_clean(archive)


def _fail_for(paths: set[str], real: Callable, error: int = errno.ENOSPC) -> Callable:
    def call(first: object, *args: object, **kwargs: object) -> object:
        if str(first) in paths or (isinstance(first, int) and _fd_path(first) in paths):
            raise OSError(error, os.strerror(error))
        return real(first, *args, **kwargs)

    return call


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def test_a_file_that_cannot_be_flushed_fails_alone(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = Batches(archive)
    first = receive(archive, 1)
    others = [receive(archive, n) for n in range(2, 6)]
    # (by its temporary's name, or its final one: flushed after its COMMIT)
    failing = {str(others[1].temp), str(archive.root / "1.2.3.4/1.2.3.4.5" / f"{uid_of(3)}.dcm")}
    monkeypatch.setattr(os, "fsync", _fail_for(failing, os.fsync, errno.EIO))
    real_syncfs = layout.syncfs

    def failing_syncfs(fd: int) -> None:  # a writeback error somewhere on the file system
        real_syncfs(fd)
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(layout, "syncfs", failing_syncfs)
    outcomes = batches.run(first, others)
    monkeypatch.undo()
    assert [o.status for o in outcomes] == [SUCCESS, SUCCESS, OUT_OF_RESOURCES] + [SUCCESS] * 2
    assert outcomes[2].error_comment.startswith(os.strerror(errno.EIO))
    assert "flushing the file" in outcomes[2].error_comment
    assert archive.get_instance(uid_of(3)) is None and len(archive.instances()) == 4
    assert_clean(archive)


def test_enospc_naming_one_file_fails_it_alone(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = Batches(archive)
    first = receive(archive, 1)
    others = [receive(archive, n) for n in range(2, 6)]
    failing = {str(others[2].temp)}  # new instances are linked into place (FileStorage.place)
    monkeypatch.setattr(os, "link", _fail_for(failing, os.link))
    monkeypatch.setattr(os, "rename", _fail_for(failing, os.rename))
    outcomes = batches.run(first, others)
    monkeypatch.undo()
    assert [o.status for o in outcomes] == [SUCCESS] * 3 + [OUT_OF_RESOURCES, SUCCESS]
    assert "No space left on device" in outcomes[3].error_comment
    assert len(archive.instances()) == 4
    assert_clean(archive)


def test_enospc_flushing_the_folder_fails_the_batch_and_leaves_nothing(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert store(archive, dataset(uid_of(0)), sop_uid=uid_of(0)).status == SUCCESS
    batches = Batches(archive)
    first = receive(archive, 1)
    others = [receive(archive, n) for n in range(2, 6)]
    real, real_syncfs = layout.fsync_dir, layout.syncfs
    calls = []
    defers = archive._publisher.defers  # (flushed after the COMMIT: syncfs, else fsyncs)

    def fsync_dir(path: Path) -> None:
        calls.append(path)
        if defers or len(calls) == 2:  # the folder flush of the second batch
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path)

    def syncfs(fd: int) -> None:
        calls.append(fd)
        if len(calls) >= 2:  # the second batch's
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_syncfs(fd)

    monkeypatch.setattr(layout, "fsync_dir", fsync_dir)
    if defers:
        monkeypatch.setattr(layout, "syncfs", syncfs)
    outcomes = batches.run(first, others)
    monkeypatch.undo()
    assert [o.status for o in outcomes] == [SUCCESS] + [OUT_OF_RESOURCES] * 4
    assert {r["sop_instance_uid"] for r in archive.instances()} == {uid_of(0), uid_of(1)}
    assert len([p for p in dcm_files(archive.root) if ".tmp" not in p.parts]) == 2
    assert_clean(archive)


def test_index_failure_fails_the_batch_and_restores_replaced_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Archive(tmp_path / "root", on_duplicate="replace") as archive:
        old = dataset(uid_of(2), patient_name="Old")
        assert store(archive, old, sop_uid=uid_of(2)).status == SUCCESS
        batches = Batches(archive)
        first = receive(archive, 1)
        others = [receive(archive, 2, patient_name="New"), receive(archive, 3)]
        real = Index.commit
        commits = []

        def commit(self: Index, **kw: object) -> None:
            commits.append(1)
            if len(commits) == 2:
                raise sqlite3.OperationalError("disk I/O error")
            real(self, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(Index, "commit", commit)
        outcomes = batches.run(first, others)
        monkeypatch.undo()
        assert [o.status for o in outcomes] == [SUCCESS, OUT_OF_RESOURCES, OUT_OF_RESOURCES]
        assert "index" in outcomes[1].error_comment
        assert stored_dataset(archive.path_of(uid_of(2))) == old
        assert archive.get_instance(uid_of(2))["digest"] == digest_of(old)
        assert archive.get_instance(uid_of(3)) is None
        assert_clean(archive)


def test_duplicates_never_share_a_batch(tmp_path: Path) -> None:
    with Archive(tmp_path / "root") as archive:
        batches = Batches(archive)
        first = receive(archive, 1)
        same = dataset(uid_of(2))
        others = [
            receive(archive, 2, data=same),
            receive(archive, 3),
            receive(archive, 2, data=same),
            receive(archive, 2, data=dataset(uid_of(2), patient_name="Other")),
        ]
        outcomes = batches.run(first, others)
        assert batches.seen == [1, 2, 1, 1]
        assert [o.status for o in outcomes] == [SUCCESS] * 4 + [WARNING_COERCION]
        assert stored_dataset(archive.path_of(uid_of(2))) == same
        assert_clean(archive)


def test_commit_after_close_is_a700(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "root")
    ingest = receive(archive, 1)
    archive.close()
    outcome = ingest.commit()
    assert outcome.status == OUT_OF_RESOURCES and "closed" in outcome.error_comment
    assert settled(archive)
    # (review120 F10: a store begun after the close answered A700 "No such file or
    # directory while creating the file")
    with pytest.raises(ValueError, match="is closed"):
        receive(archive, 2)


# -- crash safety -------------------------------------------------------------------------


@pytest.mark.parametrize("syncfs", [pytest.param(True, marks=SYNCFS), False])
@pytest.mark.parametrize("size", [1, 5])
def test_no_name_before_durable_data_no_answer_before_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syncfs: bool, size: int
) -> None:
    """The order of events: data flushed → named (linked, or renamed) → folder
    flushed → COMMIT → answered."""
    events: list[tuple] = []
    lock = threading.Lock()

    def log(*event: object) -> None:
        with lock:
            events.append(event)

    real_fsync, real_syncfs, real_rename, real_link = os.fsync, layout.syncfs, os.rename, os.link
    real_commit = Index.commit
    monkeypatch.setattr(os, "fsync", lambda fd: (log("flush", _fd_path(fd)), real_fsync(fd))[1])
    monkeypatch.setattr(layout, "syncfs", lambda fd: (log("flush", "*"), real_syncfs(fd))[1])
    monkeypatch.setattr(
        os, "rename", lambda a, b: (log("named", str(a), str(b)), real_rename(a, b))[1]
    )
    monkeypatch.setattr(os, "link", lambda a, b: (log("named", str(a), str(b)), real_link(a, b))[1])
    monkeypatch.setattr(
        Index, "commit", lambda self, **kw: (real_commit(self, **kw), log("commit"))[0]
    )
    with Archive(tmp_path / "root", syncfs=syncfs, journal=False) as archive:
        batches = Batches(archive)
        ingests = [receive(archive, n, series=f"1.2.3.{n % 2}") for n in range(size + 1)]
        temps = [str(i.temp) for i in ingests]
        outcomes = batches.run(ingests[0], ingests[1:])
        log("answered")
        assert {o.status for o in outcomes} == {SUCCESS}
        defers = archive._publisher.defers
    position = {e: i for i, e in enumerate(events)}
    for temp, outcome in zip(temps, outcomes, strict=True):
        final = str(outcome.path)
        (renamed,) = [i for i, e in enumerate(events) if e[:3] == ("named", temp, final)]
        if defers:  # named → COMMIT → one syncfs (data, names, COMMIT) → answered
            commit = [i for i, e in enumerate(events) if i > renamed and e == ("commit",)]
            assert commit, f"{final} was never committed"
            flush = [i for i, e in enumerate(events) if i > commit[0] and e == ("flush", "*")]
            assert flush and flush[0] < position[("answered",)]
            continue
        data = [i for i, e in enumerate(events[:renamed]) if e in (("flush", temp), ("flush", "*"))]
        assert data, f"{final} was named before its data was flushed"
        folder = [
            i
            for i, e in enumerate(events)
            if i > renamed and e in (("flush", os.path.dirname(final)), ("flush", "*"))
        ]
        commit = [i for i, e in enumerate(events) if i > renamed and e == ("commit",)]
        assert folder and commit and folder[0] < commit[0] < position[("answered",)]


@pytest.mark.sqlite_index
@pytest.mark.parametrize("size", [1, 4])
def test_a_crash_before_commit_leaves_files_the_next_start_adopts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    root = tmp_path / "root"
    archive = Archive(root)
    assert store(archive, dataset(uid_of(0)), sop_uid=uid_of(0)).status == SUCCESS
    batches = Batches(archive)
    first = receive(archive, 1)
    others = [receive(archive, n) for n in range(2, size + 2)]
    crashed = crash_at_commit(monkeypatch)
    with pytest.raises(AssertionError):  # the batch of `size` "crashes" at its COMMIT
        batches.run(first, others)
    monkeypatch.undo()
    die(archive)
    files = [p for p in dcm_files(root) if ".tmp" not in p.parts]
    assert len(files) == 2 + size  # the crashed ones are named, not indexed
    assert len(archive.instances()) == 2
    for path in files:  # (written long before the start that adopts them)
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    before = datetime.now(UTC).isoformat(timespec="microseconds")
    with Archive(root) as again:
        assert again.recovered == size
        for n in range(2, size + 2):  # review88 F7: an arrival at its adoption, not before
            assert again.get_instance(uid_of(n))["received_at"] >= before
        assert {r["sop_instance_uid"] for r in again.instances()} == {
            uid_of(n) for n in range(size + 2)
        }
        assert again.get_instance(uid_of(2))["digest"] is not None
        assert_clean(again)
    assert crashed


@pytest.mark.sqlite_index
@pytest.mark.parametrize("moved", [False, True], ids=["same-place", "moved"])
def test_a_crash_before_a_replace_commits_keeps_the_old_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moved: bool
) -> None:
    root = tmp_path / "root"
    archive = Archive(root, on_duplicate="replace")
    old = dataset(uid_of(1), patient_name="Old")
    assert store(archive, old, sop_uid=uid_of(1)).status == SUCCESS
    kw = {"study": "1.2.9", "series": "1.2.9.1"} if moved else {}
    crash_at_commit(monkeypatch, 1)
    with pytest.raises(RuntimeError):
        store(archive, dataset(uid_of(1), patient_name="New", **kw), sop_uid=uid_of(1))
    monkeypatch.undo()
    die(archive)
    with Archive(root) as again:
        assert again.recovered == 0
        assert stored_dataset(again.path_of(uid_of(1))) == old
        assert len([p for p in dcm_files(root) if ".tmp" not in p.parts]) == 1
        assert_clean(again)


def test_a_crash_before_the_rename_or_after_the_commit_adopts_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with Archive(root) as archive:
        assert store(archive, dataset(uid_of(0)), sop_uid=uid_of(0)).status == SUCCESS
        stored = archive.path_of(uid_of(0))
        # after the COMMIT, before the trace went: a trace of an indexed file
        os.link(stored, archive.tmp_dir / "a.part.pub")
        # before the rename: a complete temporary and its trace, no final name
        ingest = receive(archive, 1)
        os.link(ingest.temp, f"{ingest.temp}.pub")
    with Archive(root) as again:
        assert again.recovered == 0
        assert [r["sop_instance_uid"] for r in again.instances()] == [uid_of(0)]
        assert_clean(again)
    ingest.abort()


# -- what the writer remembers -------------------------------------------------------------


def test_parent_rows_gain_values_later_instances_bring(tmp_path: Path) -> None:
    with Archive(tmp_path / "root", fsync=False) as archive:
        a = store(archive, dataset(uid_of(1), extra={0x00081030: ("LO", "")}), sop_uid=uid_of(1))
        assert a.instance["study_description"] is None
        b = store(
            archive, dataset(uid_of(2), extra={0x00081030: ("LO", "Brain")}), sop_uid=uid_of(2)
        )
        c = store(archive, dataset(uid_of(3), extra={0x00081030: ("LO", "")}), sop_uid=uid_of(3))
        for outcome in (b, c):
            assert outcome.instance == archive.get_instance(outcome.instance["sop_instance_uid"])
            assert outcome.instance["study_description"] == "Brain"
        assert archive.get_instance(uid_of(1))["study_description"] == "Brain"


def test_rows_deleted_by_another_connection_are_written_again(tmp_path: Path) -> None:
    with Archive(tmp_path / "root", fsync=False) as archive:
        assert store(archive, dataset(uid_of(1)), sop_uid=uid_of(1)).status == SUCCESS
        other = Index(engine_for(archive.root), durable=False)  # e.g. dicomstore delete
        with other.lock:
            other.begin()
            other.remove(uid_of(1))
            other.prune("1.2.3.4.5", "1.2.3.4", "PID1")
            other.commit()
        other.close()
        os.unlink(archive.root / "1.2.3.4" / "1.2.3.4.5" / f"{uid_of(1)}.dcm")
        os.rmdir(archive.root / "1.2.3.4" / "1.2.3.4.5")  # the folder went too
        os.rmdir(archive.root / "1.2.3.4")
        outcome = store(archive, dataset(uid_of(2)), sop_uid=uid_of(2))
        assert outcome.status == SUCCESS
        assert outcome.instance == archive.get_instance(uid_of(2))
        assert archive.instances(study_uid="1.2.3.4")[0]["patient_name"] == "Doe^Jane"
        assert_clean(archive)


def test_a_replace_moving_the_last_instance_of_a_series(tmp_path: Path) -> None:
    with Archive(tmp_path / "root", on_duplicate="replace", fsync=False) as archive:
        assert store(archive, dataset(uid_of(1)), sop_uid=uid_of(1)).status == SUCCESS
        moved = dataset(uid_of(1), study="1.2.9", series="1.2.9.1", patient_id="P2")
        assert store(archive, moved, sop_uid=uid_of(1)).status == SUCCESS
        assert archive.instances(series_uid="1.2.3.4.5") == []  # pruned, forgotten
        back = store(archive, dataset(uid_of(2)), sop_uid=uid_of(2))  # into the pruned series
        assert back.status == SUCCESS
        assert back.instance == archive.get_instance(uid_of(2))
        assert_clean(archive)


def test_a_batch_of_moved_replaces_flushes_their_old_folder_once_before_the_intents_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review36c L2: under the index's write lock, a batch of replaces moved to another
    series flushed the old folder once per member. The order stays: every old file
    unlinked, then its folder flushed (once), then the removal intents go."""
    root = tmp_path / "root"
    with Archive(root, on_duplicate="replace", journal=False, syncfs=False) as archive:
        for n in range(1, 4):
            assert store(archive, dataset(uid_of(n)), sop_uid=uid_of(n)).status == SUCCESS
        old = {archive.path_of(uid_of(n)) for n in range(2, 4)}
        events: list[tuple[str, Path]] = []
        unlink, fsync_dir, remove = os.unlink, layout.fsync_dir, layout.remove_quietly

        def unlinking(path, *args, **kw):
            if Path(path) in old:
                events.append(("unlink", Path(path)))
            return unlink(path, *args, **kw)

        def flushing(path: Path) -> None:
            events.append(("fsync", path))
            fsync_dir(path)

        def removing(path) -> None:
            if str(path).endswith(layout.INTENT):
                events.append(("intent", Path(path)))
            remove(path)

        monkeypatch.setattr(os, "unlink", unlinking)
        monkeypatch.setattr(layout, "fsync_dir", flushing)
        monkeypatch.setattr(layout, "remove_quietly", removing)
        batches = Batches(archive)
        moved = [receive(archive, n, series="1.2.3.4.6") for n in range(2, 4)]
        outcomes = batches.run(receive(archive, 4), moved)
        monkeypatch.undo()
        assert batches.seen == [1, 2] and [o.status for o in outcomes] == [SUCCESS] * 3
        after = events[[kind for kind, _ in events].index("unlink") :]  # (the folders made
        # and the trace folder flushed before the COMMIT come first)
        assert [kind for kind, _ in after] == ["unlink", "unlink", "fsync", "intent", "intent"]
        assert after[2][1] == next(iter(old)).parent
        assert_clean(archive)


def test_a_duplicate_with_a_uid_that_is_not_utf8_is_found(tmp_path: Path) -> None:
    uid = "1.2.\udce4"  # a byte that was not UTF-8, kept by surrogateescape
    data = dataset(uid.encode("latin-1", "surrogateescape"))
    with Archive(tmp_path / "root", fsync=False) as archive:
        assert store(archive, data, sop_uid=uid).status == SUCCESS
        other = dataset(uid.encode("latin-1", "surrogateescape"), patient_name="Other")
        again = store(archive, other, sop_uid=uid)
        assert again.status == WARNING_COERCION  # kept, not replaced
        assert stored_dataset(again.path) == data


# -- a leader waits for the commits on their way ----------------------------------------------


@pytest.mark.parametrize("fails", [False, True], ids=["joins", "fails-its-checks"])
def test_a_leader_waits_for_commits_already_checking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: bool
) -> None:
    monkeypatch.setattr(commit_module, "MAX_GATHER", 30.0)  # no clock in this test
    with Archive(tmp_path / "root") as archive:
        archive._publisher.flush_time = 60.0  # as if flushes were slow: worth waiting
        seen: list[int] = []
        real = archive._committer._publish
        archive._committer._publish = lambda batch: (seen.append(len(batch)), real(batch))[1]
        slow = receive(archive, 2, data=dataset(uid_of(2)), sop_uid=uid_of(9 if fails else 2))
        checking, go_on = threading.Event(), threading.Event()
        real_check = slow._check

        def held_check() -> object:
            checking.set()
            assert go_on.wait(10)
            return real_check()

        slow._check = held_check  # type: ignore[method-assign]
        outcomes: dict[str, StoreOutcome] = {}
        threads = [
            threading.Thread(target=lambda: outcomes.__setitem__("slow", slow.commit())),
            threading.Thread(target=lambda: outcomes.__setitem__("lead", lead.commit())),
        ]
        lead = receive(archive, 1)
        threads[0].start()
        assert checking.wait(10)  # announced, still checking
        threads[1].start()
        committer = archive._committer
        _wait_for(lambda: len(committer._queue) == 1)  # the leader is waiting for it
        assert seen == []
        go_on.set()
        for thread in threads:
            thread.join(30)
        assert outcomes["lead"].status == SUCCESS
        if fails:
            assert outcomes["slow"].status == DATASET_MISMATCH
            assert seen == [1]
        else:
            assert outcomes["slow"].status == SUCCESS
            assert seen == [2]
        assert committer._arriving == 0
        assert_clean(archive)


def test_no_waiting_without_fsync(tmp_path: Path) -> None:
    with Archive(tmp_path / "root", fsync=False) as archive:
        assert archive._committer._gather is None
        ingest = receive(archive, 1)
        archive._committer.arriving()  # someone announced, never comes
        assert ingest.commit().status == SUCCESS  # not held up
        archive._committer.left()


def test_a_leader_waits_for_as_many_as_last_time_but_not_longer_than_it_saves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Archive(tmp_path / "root") as archive:
        committer = archive._committer
        committer._last = 4  # the last batch had four members
        archive._publisher.flush_time = 0.0  # and its flushes cost nothing: no waiting
        assert receive(archive, 1).commit().status == SUCCESS
        assert committer._last == 1
        monkeypatch.setattr(commit_module, "MAX_GATHER", 30.0)
        committer._last = 2
        archive._publisher.flush_time = 60.0  # slow flushes: worth waiting for a second one
        outcomes: list[StoreOutcome] = []
        first = threading.Thread(target=lambda: outcomes.append(receive(archive, 2).commit()))
        first.start()
        _wait_for(lambda: len(committer._queue) == 1)  # the leader waits
        second = receive(archive, 3)
        outcomes.append(second.commit())  # joins, and both are answered
        first.join(30)
        assert [o.status for o in outcomes] == [SUCCESS, SUCCESS]
        assert committer._last == 2 and archive.stats.batches == 2


def test_a_row_is_stamped_received_when_it_is_written(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review101 H1: ``received_at`` was taken when the data set was whole, before the
    wait for the group commit: a store whose commit took over a minute had a row older
    than the forward queue's and the arrivals' watermarks look back, and no restart
    queued it. It is stamped again in the index's write transaction."""
    from dicomstore.archive import fields

    stamps: list[datetime] = []

    class Stepping(datetime):
        """A clock 100 s further at each reading (a slow commit between two)."""

        @classmethod
        def now(cls, tz=None):  # type: ignore[no-untyped-def]
            stamps.append(datetime(2030, 1, 1, tzinfo=UTC) + timedelta(seconds=100 * len(stamps)))
            return stamps[-1]

    monkeypatch.setattr(fields, "datetime", Stepping)
    outcome = store(archive, dataset(uid_of(1)), sop_uid=uid_of(1))
    assert outcome.status == SUCCESS and len(stamps) >= 2
    row = archive.get_instance(uid_of(1))
    assert row is not None and row["received_at"] == stamps[-1].isoformat(timespec="microseconds")
    assert outcome.instance is not None and outcome.instance["received_at"] == row["received_at"]


def test_a_batch_with_a_conflict_flushes_its_commit(tmp_path: Path, monkeypatch) -> None:
    """review102 H2: with the files' flush deferred (durable, the default), a batch of
    a new instance and a duplicate answered B000 (a conflict: Storage Commitment fails
    its UID) committed the conflict unflushed, and only the new instance went into the
    node's journal: a power cut lost the conflict, and the UID was committed after
    all. The B000 goes out once a flushed COMMIT holds it."""
    flushes: list[bool] = []
    real = Index.commit

    def commit(self: Index, *, flush: bool = True) -> None:
        flushes.append(flush)
        real(self, flush=flush)

    archive = Archive(tmp_path / "durable")
    try:
        if not archive._publisher.defers:
            pytest.skip("this index flushes every COMMIT")
        assert store(archive, dataset(uid_of(0), pixels=512), sop_uid=uid_of(0)).status == SUCCESS
        monkeypatch.setattr(Index, "commit", commit)
        batches = Batches(archive)
        again = receive(archive, 0, pixels=514)  # (another data set, the same UID)
        outcomes = batches.run(receive(archive, 1), [receive(archive, 2), again])
        assert batches.seen == [1, 2]
        assert [o.status for o in outcomes] == [SUCCESS, SUCCESS, WARNING_COERCION]
        assert flushes == [False, True]  # (new instances alone: deferred)
    finally:
        archive.close()
