"""Study-complete events (issue 16, services/stability.py): a study is stable after
its quiet time, whatever door its instances came through; the event is logged
durably, found again after a restart, and runs the hook, the command and the
webhook."""

from __future__ import annotations

import asyncio
import dataclasses
import http.server
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from tests.archive.archive_testlib import damage, dataset
from tests.archive.archive_testlib import store as archive_store
from tests.conftest import free_port, index_option, serve_command, wait_listening
from tests.services.test_scu_support import sendable
from tests.services.test_store_doors import DOORS, STUDY, Site, site, store  # noqa: F401

from dicomstore.archive import Archive
from dicomstore.archive.reader import ArchiveReader
from dicomstore.services import stability, stable_log
from dicomstore.services.server import ServerConfig
from dicomstore.services.serving import running
from dicomstore.services.stability import StudyStability, command_line
from dicomstore.services.stable_log import StableLog, StableStudy, epoch
from dicomstore.services.stable_search import stable_states

#: On both index engines (issue 17).
pytestmark = pytest.mark.usefixtures("index_engine")

QUICK = 0.05  # seconds of quiet time in these tests


@pytest.mark.parametrize("door", DOORS)
def test_every_door_makes_its_study_stable_once(site: Site, door: str) -> None:  # noqa: F811
    events: list[StableStudy] = []
    heard = threading.Event()

    def on_stable(event: StableStudy) -> None:
        events.append(event)
        heard.set()

    # the clock stands still until both instances are in (however long a door
    # takes on a loaded machine), then moves past the quiet time
    started, moved = time.time(), [0.0]

    def clock() -> float:
        return started + moved[0]

    async def watch() -> StudyStability:
        reader = ArchiveReader(site.archive.root)
        stability = StudyStability(reader, QUICK, on_stable=[on_stable], fsync=False, clock=clock)
        site.dicom.server.store.observers.append(stability.observe)
        await stability.start()
        return stability

    stability = site.dicom.call(watch())
    try:
        assert store(site, door, "1.2.11.71") == 0x0000
        assert store(site, door, "1.2.11.72") == 0x0000
        assert not heard.is_set()
        moved[0] = 1.0
        assert heard.wait(30)
    finally:
        site.dicom.call(stability.close())
    (event,) = events
    assert (event.study_uid, event.instances, event.series) == (STUDY, 2, 1)
    assert Path(event.folder) == site.archive.root / STUDY
    assert event.first_received <= event.last_received <= event.stable_at
    assert list(StableLog(site.archive.root).read()) == [event]  # logged before the hook


@pytest.mark.parametrize("door", DOORS)
def test_a_duplicate_kept_as_it_was_is_no_arrival(site: Site, door: str) -> None:  # noqa: F811
    """review45 M10: an identical resend made the study stable again (its event, hook
    and command ran twice) though nothing arrived; forwarding did not resend it."""

    async def watch() -> StudyStability:
        reader = ArchiveReader(site.archive.root)
        stability = StudyStability(reader, 3600, fsync=False)
        site.dicom.server.store.observers.append(stability.observe)
        await stability.start()
        return stability

    async def pending() -> set[str]:
        await asyncio.sleep(0)  # (the observer's call onto the loop has run)
        return set(stability.pending)

    stability = site.dicom.call(watch())
    try:
        assert store(site, door, "1.2.11.81") == 0x0000
        assert site.dicom.call(pending()) == {STUDY}
        stability.pending.clear()  # (as once its event is made)
        assert store(site, door, "1.2.11.81") == 0x0000  # (the same again: kept)
        assert site.dicom.call(pending()) == set()
        assert store(site, door, "1.2.11.82") == 0x0000  # (a new one: an arrival)
        assert site.dicom.call(pending()) == {STUDY}
    finally:
        site.dicom.call(stability.close())


def _fill(root: Path, studies: dict[str, int]) -> None:
    archive = Archive(root, fsync=False)
    try:
        for study, count in studies.items():
            for n in range(count):
                uid = f"{study}.1.{n + 1}"
                data = dataset(uid, study=study, series=f"{study}.1")
                assert archive_store(archive, data, sop_uid=uid).status == 0
    finally:
        archive.close()


def test_a_restart_waits_again_for_studies_not_yet_reported(tmp_path: Path, caplog) -> None:
    root = tmp_path / "archive"
    _fill(root, {"1.2.31": 2, "1.2.32": 1})
    reader = ArchiveReader(root)
    first = StudyStability(reader, QUICK, fsync=False)
    caplog.set_level("INFO", logger="dicomstore.stable")
    assert first.recover() == 2  # nothing logged yet: both are waited for
    assert "2 studies not yet reported stable: waiting for them again" in caplog.messages
    last = first.pending["1.2.31"].last
    StableLog(root).append(
        StableStudy("1.2.31", "PID1", 2, 1, "x", _iso(last), _iso(last), str(root / "1.2.31"))
    )
    again = StudyStability(reader, QUICK, fsync=False)
    assert again.recover() == 1 and list(again.pending) == ["1.2.32"]
    assert "1 study not yet reported stable: waiting for it again" in caplog.messages
    _fill(root, {"1.2.31": 3})  # a third instance after its event: waited for again
    later = StudyStability(reader, QUICK, fsync=False)
    assert later.recover() == 2 and sorted(later.pending) == ["1.2.31", "1.2.32"]
    # (review49 #14: this burst's first arrival, not the study's very first)
    assert later.pending["1.2.31"].first > last

    async def fire() -> list[StableStudy]:
        heard: list[StableStudy] = []
        done = asyncio.Event()

        async def hook(event: StableStudy) -> None:  # async hooks are awaited
            heard.append(event)
            if len(heard) == 2:
                done.set()

        later.on_stable.append(hook)
        await later.start()
        await asyncio.wait_for(done.wait(), 30)
        await later.close()
        return heard

    heard = asyncio.run(fire())
    assert sorted((e.study_uid, e.instances) for e in heard) == [("1.2.31", 3), ("1.2.32", 1)]
    assert [e.study_uid for e in StableLog(root).read()][0] == "1.2.31"
    assert StudyStability(reader, QUICK, fsync=False).recover() == 0  # all reported
    states = stable_states(reader, ["1.2.31", "1.2.32", "1.2.99"])
    assert states["1.2.31"] and states["1.2.32"] and states["1.2.99"] is None
    _fill(root, {"1.2.32": 2})  # another instance: receiving again, not stable
    assert stable_states(reader, ["1.2.32"]) == {"1.2.32": None}


def test_a_study_deleted_before_it_is_stable_has_no_event(tmp_path: Path, caplog) -> None:
    """review83 F1: a study deleted while it waited was reported stable with 0 instances,
    its command run on a folder that was gone (a replay skipped it)."""
    from dicomstore.archive.removal import remove

    root = tmp_path / "archive"
    _fill(root, {"1.2.33": 1, "1.2.34": 1})
    stability = StudyStability(ArchiveReader(root), QUICK, fsync=False)
    assert stability.recover() == 2
    assert remove(root, "1.2.33", fsync=False).instances == 1
    caplog.set_level("INFO", logger="dicomstore.stable")

    async def fire() -> list[StableStudy]:
        heard: list[StableStudy] = []
        judged: list[str] = []
        done = asyncio.Event()
        stable = stability._stable

        async def judge(study_uid: str, pending) -> None:  # (each study's turn, then)
            await stable(study_uid, pending)
            judged.append(study_uid)
            if len(judged) == 2:
                done.set()

        stability._stable = judge  # type: ignore[method-assign]
        stability.on_stable.append(heard.append)
        await stability.start()
        await asyncio.wait_for(done.wait(), 30)
        await stability.close()
        return heard

    heard = asyncio.run(fire())
    assert [e.study_uid for e in heard] == ["1.2.34"]
    assert [e.study_uid for e in StableLog(root).read()] == ["1.2.34"]
    assert "study 1.2.33: deleted before it was stable, no event" in caplog.messages


def _iso(when: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(when, UTC).isoformat()


class _Hook(http.server.BaseHTTPRequestHandler):
    bodies: list[dict] = []
    posted = threading.Event()

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        length = int(self.headers["Content-Length"])
        type(self).bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()
        type(self).posted.set()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[str]:
    _Hook.bodies, _Hook.posted = [], threading.Event()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/stable"
    httpd.shutdown()
    httpd.server_close()


def test_a_time_without_an_offset_is_utc(monkeypatch) -> None:
    """review49 #15: `events --since 2026-12-05T20:09:45` was read in the local time
    zone, while every event time is UTC: 1, 0 or 2 events by TZ."""
    import time

    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert epoch("2026-12-05T20:09:45") == epoch("2026-12-05T20:09:45+00:00")
    finally:
        monkeypatch.undo()
        time.tzset()


def test_the_clock_is_woken_only_for_an_earlier_deadline(tmp_path: Path) -> None:
    """More instances of a study only defer its deadline, and a new study's comes after
    the ones already waited for: neither wakes the clock task (once per instance it
    cost a task and a timer per C-STORE); an empty wait list or an earlier deadline does."""
    root = tmp_path / "archive"
    _fill(root, {"1.2.51": 1})
    watcher = StudyStability(ArchiveReader(root), 3600.0, fsync=False)

    async def run() -> list[bool]:
        await watcher.start()
        woken = []
        for study, when in (("1.2.51", 1.0), ("1.2.51", 2.0), ("1.2.52", 3.0), ("1.2.53", -1800.0)):
            while watcher._wake.is_set():  # the clock task takes the last wake-up first
                await asyncio.sleep(0)
            watcher.arrived(study, "PID", "1.2.51/1/1.dcm", watcher.clock() + when)
            woken.append(watcher._wake.is_set())
        await watcher.close()
        return woken

    assert asyncio.run(run()) == [True, False, False, True]


def test_an_event_after_a_line_cut_by_a_crash_is_kept(tmp_path: Path) -> None:
    """A crash mid-append leaves a line without its newline; the next event starts a
    line of its own, so the cut line alone is lost (skipped when read)."""
    log = StableLog(tmp_path, fsync=False)
    first = StableStudy("1.2.41", "PID1", 1, 1, "x", "2026-01-01T00:00:00", "t", "f")
    second = StableStudy("1.2.42", "PID2", 2, 1, "y", "2026-01-01T00:01:00", "t", "g")
    log.append(first)
    with open(log.path, "ab") as fp:
        fp.write(b'{"study_uid": "1.2.4')  # cut mid-write
    log.append(second)
    assert list(log.read()) == [first, second]
    assert log.path.read_bytes().endswith(b"\n")


def test_lines_that_are_no_event_are_said_when_read(tmp_path: Path, caplog) -> None:
    """review115 F10: `dicomstore events` (StableLog.read) skipped them unsaid."""
    log = StableLog(tmp_path, fsync=False)
    event = StableStudy("1.2.41", "PID1", 1, 1, "x", "2026-01-01T00:00:00", "t", "f")
    log.append(event)
    with open(log.path, "ab") as fp:
        fp.write(b"garbage\n")
    with caplog.at_level("WARNING", logger="dicomstore.stable"):
        assert list(log.read()) == [event]
    assert f"{log.path}: 1 line(s) not a study event, skipped" in caplog.text


def _event(study: str, stable_at: str) -> StableStudy:
    return StableStudy(study, "PID1", 1, 1, "x", "2026-01-01T00:00:00", stable_at, "f")


def test_the_event_before_a_studys_last(tmp_path: Path) -> None:
    """(What a later event's forwarding leaves out: review49 #6.)"""
    log = StableLog(tmp_path, fsync=False)
    one, other, two = _event("1.2.53", "t1"), _event("1.2.54", "t2"), _event("1.2.53", "t3")
    log.append(one)
    assert log.before(one) is None
    log.append(other)
    log.append(two)
    assert log.before(two) == one and log.before(other) is None
    assert StableLog(tmp_path).before(_event("1.2.53", "t9")) == two  # (not logged yet)


def test_the_cached_log_reads_only_what_was_appended(tmp_path: Path, monkeypatch, caplog) -> None:
    """StableLog.latest parses each line once per process: later calls read the bytes
    appended since; a line not yet ended waits, one cut by a crash is skipped."""
    parsed: list[bytes] = []
    real = stable_log._parse
    monkeypatch.setattr(stable_log, "_parse", lambda line: parsed.append(line) or real(line))
    log = StableLog(tmp_path, fsync=False)
    assert log.latest() == {}  # no log yet
    log.append(_event("1.2.51", "t1"))
    log.append(_event("1.2.52", "t1"))
    seen = log.latest()
    assert {uid: e.stable_at for uid, e in seen.items()} == {"1.2.51": "t1", "1.2.52": "t1"}
    assert len(parsed) == 2
    assert StableLog(tmp_path).latest() is seen and len(parsed) == 2  # unchanged: not read
    log.append(_event("1.2.51", "t2"))  # a later event of the same study
    latest = StableLog(tmp_path).latest()
    assert len(parsed) == 3 and latest["1.2.51"].stable_at == "t2"
    assert seen["1.2.51"].stable_at == "t1"  # a mapping handed out does not change
    line = (json.dumps(_event("1.2.53", "t3").as_dict()) + "\n").encode()
    with open(log.path, "ab") as fp:  # another writer, mid-append
        fp.write(line[:20])
    assert "1.2.53" not in log.latest() and len(parsed) == 3  # not yet ended: waits
    with open(log.path, "ab") as fp:
        fp.write(line[20:])
    assert log.latest()["1.2.53"].stable_at == "t3"
    with open(log.path, "ab") as fp:
        fp.write(b'{"study_uid": "1.2.5')  # cut by a crash
    log.append(_event("1.2.54", "t4"))  # starts a line of its own
    assert "not a study event" not in caplog.text
    assert sorted(log.latest()) == ["1.2.51", "1.2.52", "1.2.53", "1.2.54"]
    assert log.latest()["1.2.51"].stable_at == "t2"
    # (review77 F18: skipped without a word) said once, where
    assert caplog.text.count("1 line(s) not a study event, skipped (after byte ") == 1


def test_a_rewritten_log_is_read_anew(tmp_path: Path) -> None:
    log = StableLog(tmp_path, fsync=False)
    log.append(_event("1.2.61", "t1"))
    log.append(_event("1.2.62", "t1"))
    assert sorted(log.latest()) == ["1.2.61", "1.2.62"]
    log.path.unlink()  # e.g. cleaned by an operator
    log.append(_event("1.2.63", "t1"))
    assert sorted(log.latest()) == ["1.2.63"]


def test_command_and_webhook_run_for_each_stable_study(tmp_path: Path, webhook: str) -> None:
    root = tmp_path / "archive"
    _fill(root, {"1.2.41": 2})
    out = tmp_path / "ran.json"
    script = (
        "import json, os, sys; "
        f"json.dump([sys.argv[1:], os.environ['DICOMSTORE_STUDY_UID']], open({str(out)!r}, 'w'))"
    )
    command = f"{sys.executable} -c {json.dumps(script)} --study={{study}} {{folder}}"

    async def main() -> None:
        stability = StudyStability(
            ArchiveReader(root), QUICK, exec_command=command, webhook=webhook, fsync=False
        )
        assert stability.recover() == 1
        await stability.start()
        await asyncio.wait_for(asyncio.to_thread(_Hook.posted.wait, 30), 35)
        await stability.close()  # waits for the command

    asyncio.run(main())
    argv, env_study = json.loads(out.read_text())
    assert argv == ["--study=1.2.41", str(root / "1.2.41")] and env_study == "1.2.41"
    (body,) = _Hook.bodies
    assert body["event"] == "study.stable" and body["study_uid"] == "1.2.41"
    assert body["instances"] == 2


def test_without_placeholders_the_study_and_folder_are_appended(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    _fill(root, {"1.2.51": 1})
    event = StableStudy("1.2.51", None, 1, 1, "a", "b", "c", "/x/1.2.51")
    assert command_line(["notify", "--now"], event) == ["notify", "--now", "1.2.51", "/x/1.2.51"]
    with pytest.raises(ValueError, match="positive"):
        StudyStability(ArchiveReader(root), 0)


def test_serve_runs_the_events_with_its_config(tmp_path: Path) -> None:
    """`running` (serve() and `dicomstore serve`) attaches the watcher to the archive,
    and a hook failing does not stop the events."""
    root = tmp_path / "archive"
    _fill(root, {"1.2.61": 1, "1.2.62": 1})

    async def main() -> list[str]:
        archive = Archive(root, fsync=False)
        seen: list[str] = []
        done = asyncio.Event()

        def hook(event: StableStudy) -> None:
            seen.append(event.study_uid)
            if len(seen) == 2:
                done.set()
            raise RuntimeError("a broken hook")

        config = dataclasses.replace(ServerConfig(port=0), stable_age=QUICK)
        try:
            async with running(archive, config, on_study_stable=hook) as server:
                assert server.stability is not None
                await asyncio.wait_for(done.wait(), 30)
        finally:
            archive.close()
        return seen

    assert sorted(asyncio.run(main())) == ["1.2.61", "1.2.62"]
    assert len(list(StableLog(root).read())) == 2


def test_serve_listens_while_it_reads_the_index_for_studies_to_wait_for(
    tmp_path: Path, monkeypatch
) -> None:
    """The read of the index after a restart (a second or two at a million
    instances) runs once the port is open; its studies are waited for then."""
    root = tmp_path / "archive"
    _fill(root, {"1.2.71": 1})
    reading, release = threading.Event(), threading.Event()
    unreported = StudyStability._unreported

    def slow(self: StudyStability) -> list:
        reading.set()
        assert release.wait(30)
        return unreported(self)

    monkeypatch.setattr(StudyStability, "_unreported", slow)

    async def main() -> list[str]:
        archive = Archive(root, fsync=False)
        seen: list[str] = []
        done = asyncio.Event()
        config = dataclasses.replace(ServerConfig(port=0), stable_age=QUICK)
        try:
            async with running(archive, config, on_study_stable=lambda e: done.set()) as server:
                assert await asyncio.to_thread(reading.wait, 30)
                assert server.listener.started  # listening while the index is read
                assert server.stability is not None and not server.stability.pending
                release.set()
                await asyncio.wait_for(done.wait(), 30)
                seen = [e.study_uid for e in StableLog(root).read()]
        finally:
            release.set()
            archive.close()
        return seen

    assert asyncio.run(main()) == ["1.2.71"]


def test_catching_up_joins_what_arrives_meanwhile_and_skips_what_was_reported(
    tmp_path: Path, monkeypatch
) -> None:
    root = tmp_path / "archive"
    _fill(root, {"1.2.81": 2, "1.2.82": 1})
    reader = ArchiveReader(root)
    first = min(epoch(r["received_at"]) for r in reader.instances())
    read, gate = threading.Event(), threading.Event()
    unreported = StudyStability._unreported

    def gated(self: StudyStability) -> list:
        found = unreported(self)
        read.set()  # the index and the log are read: what follows comes after
        assert gate.wait(30)
        return found

    monkeypatch.setattr(StudyStability, "_unreported", gated)

    async def main() -> dict[str, tuple[float, float]]:
        s = StudyStability(reader, 3600.0, fsync=False)  # (nothing becomes stable by itself)
        await s.start()
        s.catch_up()
        assert await asyncio.to_thread(read.wait, 30)
        now = time.time()
        s.arrived("1.2.81", "PID1", "1.2.81/1.2.81.1/x.dcm", now)  # observed meanwhile
        # 1.2.82's event is logged meanwhile (e.g. a quiet time ending)
        await s._stable("1.2.82", stability._Pending("PID1", first, now, str(root / "1.2.82")))
        gate.set()
        assert s._catching_up is not None and await s._catching_up == 1
        out = {uid: (p.first, p.last) for uid, p in s.pending.items()}
        await s.close()
        return out

    pending = asyncio.run(main())
    assert list(pending) == ["1.2.81"]  # 1.2.82: its event covers what the read found
    earliest, newest = pending["1.2.81"]
    assert earliest == first and newest > first  # the index's first, the observed newest


def test_catching_up_leaves_a_study_whose_event_is_being_made(tmp_path: Path, monkeypatch) -> None:
    """A study popped for its event (its counts still being read) when the index
    read comes back is not waited for again: one event, not two."""
    root = tmp_path / "archive"
    _fill(root, {"1.2.91": 1})
    reader = ArchiveReader(root)
    read, gate, counting, counted = (threading.Event() for _ in range(4))
    unreported, counts = StudyStability._unreported, StudyStability._counts

    def gated(self: StudyStability) -> list:
        found = unreported(self)
        read.set()
        assert gate.wait(30)
        return found

    def slow_counts(self: StudyStability, study_uid: str) -> tuple[int, int]:
        counting.set()
        assert counted.wait(30)
        return counts(self, study_uid)

    monkeypatch.setattr(StudyStability, "_unreported", gated)
    monkeypatch.setattr(StudyStability, "_counts", slow_counts)

    async def main() -> tuple[list[str], int]:
        done = asyncio.Event()
        s = StudyStability(reader, QUICK, fsync=False, on_stable=[lambda event: done.set()])
        await s.start()
        s.catch_up()
        assert await asyncio.to_thread(read.wait, 30)
        (row,) = reader.instances()  # its arrival, as the store observed it: due at once
        s.arrived("1.2.91", "PID1", row["path"], epoch(row["received_at"]))
        assert await asyncio.to_thread(counting.wait, 30)  # its event is being made
        gate.set()  # the read comes back meanwhile
        assert s._catching_up is not None
        found = await s._catching_up
        counted.set()
        await asyncio.wait_for(done.wait(), 30)  # the event, logged
        pending = list(s.pending)
        await s.close()
        return pending, found

    pending, found = asyncio.run(main())
    assert pending == [] and found == 0
    assert [e.study_uid for e in StableLog(root).read()] == ["1.2.91"]


def test_an_arrival_its_event_being_made_covers_makes_no_second_event(
    tmp_path: Path, monkeypatch
) -> None:
    """review107: after a stall, the look at the other nodes' arrivals gave rows of a
    study popped for its event whose counts were still being read (not yet logged):
    pending again, due at once, a second identical event 37 ms later. Arrivals the event
    being made covers are left to it (the node's own, late, too)."""
    root = tmp_path / "archive"
    _fill(root, {"1.2.92": 1})
    reader = ArchiveReader(root)
    counting, counted = threading.Event(), threading.Event()
    counts = StudyStability._counts

    def slow_counts(self: StudyStability, study_uid: str) -> tuple[int, int]:
        counting.set()
        assert counted.wait(30)
        return counts(self, study_uid)

    monkeypatch.setattr(StudyStability, "_counts", slow_counts)

    async def main() -> list[str]:
        done = asyncio.Event()
        s = StudyStability(reader, QUICK, fsync=False, on_stable=[lambda event: done.set()])
        await s.start()
        (row,) = reader.instances()
        s.arrived("1.2.92", "PID1", row["path"], epoch(row["received_at"]))  # (due at once)
        assert await asyncio.to_thread(counting.wait, 30)  # its event is being made
        s.arrived_elsewhere([row])  # (the look's rows: the same arrival)
        s._arrived_once("1.2.92", "PID1", row["path"], epoch(row["received_at"]))
        pending = list(s.pending)
        counted.set()
        await asyncio.wait_for(done.wait(), 30)
        await s.close()
        return pending

    assert asyncio.run(main()) == []
    assert [e.study_uid for e in StableLog(root).read()] == ["1.2.92"]


def test_a_failed_catch_up_is_logged(tmp_path: Path, monkeypatch, caplog) -> None:
    root = tmp_path / "archive"
    _fill(root, {"1.2.92": 1})

    def broken(self: StudyStability) -> list:
        raise RuntimeError("index unreadable")

    monkeypatch.setattr(StudyStability, "_unreported", broken)

    async def main() -> int:
        s = StudyStability(ArchiveReader(root), QUICK, fsync=False)
        await s.start()
        s.catch_up()
        assert s._catching_up is not None
        found = await s._catching_up
        await s.close()
        return found

    assert asyncio.run(main()) == 0
    assert "studies to wait for again not read" in caplog.text
    assert "index unreadable" in caplog.text


@pytest.mark.sqlite_index
def test_a_damaged_index_met_at_start_makes_the_node_not_ready(tmp_path: Path, caplog) -> None:
    """review77 F8: a server on a damaged index met the damage at start (the read for
    studies to wait for: a traceback in the log) and said "ready" until a store failed.
    The damage is told the archive's health: readiness says so from the start."""
    root = tmp_path / "archive"
    _fill(root, {"1.2.93": 1})
    damage(root / "index.sqlite")

    async def main() -> list[str]:
        archive = Archive(root, fsync=False)
        config = dataclasses.replace(ServerConfig(port=0), stable_age=QUICK)
        try:
            async with running(archive, config) as server:
                assert server.stability is not None
                assert server.stability._catching_up is not None
                await server.stability._catching_up
                return archive.cannot_store()
        finally:
            archive.close()

    assert asyncio.run(main()) == ["the archive index is damaged (see the log)"]
    assert "Traceback" not in caplog.text
    assert "run `dicomstore reindex --storage" in caplog.text


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until ``path`` exists (what the command writes last), or the server died."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, f"{path} never appeared"
        threading.Event().wait(0.05)  # polling a file the child writes: no event to wait on


def test_dicomstore_serve_runs_the_command_and_events_replays_it(tmp_path: Path) -> None:
    storage, out = tmp_path / "store", tmp_path / "ran"
    script = f"import sys; open({str(out)!r}, 'a').write(' '.join(sys.argv[1:]) + chr(10))"
    exec_command = f"{sys.executable} -c {json.dumps(script)} {{study}}"
    port = free_port()
    proc = subprocess.Popen(
        serve_command(port, storage, "--stable-age", "0.1", "--on-stable-exec", exec_command),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_listening(port, proc)
        files = sendable(compressed=False)[:1]
        sent = subprocess.run(
            [sys.executable, "-m", "dicomstore.cli", "send", "127.0.0.1", str(port)]
            + [str(f) for f in files],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        _wait_for(out, proc)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    study = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    assert out.read_text() == f"{study}\n"
    assert f"study {study} stable: 1 instance(s) in 1 series" in err

    ls = [sys.executable, "-m", "dicomstore.cli", "ls", "--storage", str(storage)]
    ls += index_option(storage)
    (row,) = json.loads(subprocess.run([*ls, "--json"], capture_output=True, text=True).stdout)
    assert row["study_uid"] == study and row["stable_at"]
    assert " yes " in subprocess.run(ls, capture_output=True, text=True).stdout

    events = [sys.executable, "-m", "dicomstore.cli", "events", "--storage", str(storage)]
    events += index_option(storage)  # (a replay asks the index which studies it holds)
    listed = subprocess.run(events, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and f"  {study}  1 instance(s)" in listed.stdout
    assert listed.stdout.endswith("1 event(s)\n")
    as_json = subprocess.run([*events, "--json"], capture_output=True, text=True, timeout=60)
    assert json.loads(as_json.stdout)["study_uid"] == study
    replayed = subprocess.run([*events, "--exec", exec_command], capture_output=True, text=True)
    assert replayed.returncode == 0, replayed.stderr
    assert out.read_text() == f"{study}\n{study}\n"  # run again, as serve did
    other = subprocess.run([*events, "--study", "1.2.3"], capture_output=True, text=True)
    assert other.stdout == "0 event(s)\n"
    bad = subprocess.run([*events, "--since", "yesterday"], capture_output=True, text=True)
    assert bad.returncode == 2 and "not an ISO 8601 time" in bad.stderr
    url = subprocess.run([*events, "--webhook", "ftp://x"], capture_output=True, text=True)
    assert url.returncode == 2 and "not an http:// or https:// URL" in url.stderr


def _hostile(study: str, patient: str | None = "PID1") -> StableStudy:
    return StableStudy(study, patient, 1, 1, "a", "b", "c", "/data/x-5a1e")


@pytest.mark.parametrize(
    ("template", "study", "patient"),
    [  # review52 M2: the sender's values reached the operator's program as they came
        (["touch", "/out/sub/{study}.done"], "../../EXEC_ESCAPED", "PID1"),
        (["notify"], "--reference=/etc/passwd", "PID1"),  # (appended: an option)
        (["notify", "{study}"], "-o1.2.3", "PID1"),
        (["notify", "{patient}"], "1.2.3", "-rf"),
        (["notify", "/out/{patient}/x"], "1.2.3", ".."),
        (["notify", "/out/{patient}"], "1.2.3", "a/../../b"),
        (["notify", "{patient}"], "1.2.3", "a\\..\\b"),
        (["notify", "{patient}"], "1.2.3", "a\x1bb"),
    ],
)
def test_a_senders_value_unsafe_as_an_argument_runs_no_command(
    tmp_path: Path, template: list[str], study: str, patient: str, caplog
) -> None:
    event = _hostile(study, patient)
    with pytest.raises(stability.UnsafeValue):
        command_line(template, event)
    ran = tmp_path / "ran"
    script = f"open({str(ran)!r}, 'w').close()"
    command = [sys.executable, "-c", script, *template[1:]]
    assert asyncio.run(stability.run_command(command, event)) is None
    assert not ran.exists()
    assert "the study-stable command is not run" in caplog.text


def test_safe_values_pass_and_the_unused_ones_are_not_checked() -> None:
    event = _hostile("1.2.840.10008.3", "PID 1^Ü.2")
    assert command_line(["n", "{patient}:{study}"], event) == ["n", "PID 1^Ü.2:1.2.840.10008.3"]
    assert command_line(["n", "{patient}"], _hostile("1.2.3", None)) == ["n", ""]
    odd = _hostile("../x", "-p")  # (neither used: both only in the environment)
    assert command_line(["n", "{folder}"], odd) == ["n", "/data/x-5a1e"]
    dashed = dataclasses.replace(event, folder="-data/1.2.3")  # (a relative --storage)
    assert command_line(["n"], dashed) == ["n", "1.2.840.10008.3", "./-data/1.2.3"]
    # one pass: a value holding a placeholder is not replaced again
    braces = _hostile("1.2.3", "{study}")
    assert command_line(["n", "{patient}{study}"], braces) == ["n", "{study}1.2.3"]
    # review55 M1: what real senders send, safe as an argument, was refused
    real = _hostile("1.2.840.113619.02.55.3." + "1" * 60, "856215/1234")
    assert command_line(["n", "{study}", "{patient}"], real) == ["n", real.study_uid, "856215/1234"]
    assert command_line(["n", "{patient}"], _hostile("1.2.3", "A\\B.C")) == ["n", "A\\B.C"]


def test_events_exec_replay_refuses_an_unsafe_value(tmp_path: Path, capsys, monkeypatch) -> None:
    """`dicomstore events --exec` as serve: the event is not run, and counts as failed."""
    from dicomstore.cli import events, main

    monkeypatch.setattr(events, "_present", lambda args: lambda study: True)  # (no index here)
    StableLog(tmp_path, fsync=False).append(_hostile("../../EXEC_ESCAPED"))
    code = main(["events", "--storage", str(tmp_path), "--exec", "true {study}"])
    assert code == 1 and "1 replay(s) failed" in capsys.readouterr().out


def test_events_replay_skips_the_studies_deleted_since(tmp_path: Path, capsys) -> None:
    """review58 M5: the log keeps a deleted study's event, and a replay ran its command."""
    from dicomstore.archive.removal import remove
    from dicomstore.cli import main

    root, out = tmp_path / "archive", tmp_path / "ran"
    _fill(root, {"1.2.61": 1, "1.2.62": 1})
    log = StableLog(root, fsync=False)
    for study in ("1.2.61", "1.2.62"):
        log.append(StableStudy(study, "PID1", 1, 1, "a", "b", "c", str(root / study)))
    assert remove(root, "1.2.61", fsync=False).instances == 1
    script = f"import sys; open({str(out)!r}, 'a').write(sys.argv[1] + chr(10))"
    command = f"{sys.executable} -c {json.dumps(script)} {{study}}"
    assert main(["events", "--storage", str(root), "--exec", command]) == 0
    assert out.read_text() == "1.2.62\n"
    text = capsys.readouterr().out
    assert "not replayed: study 1.2.61 is no longer in the archive (deleted)" in text
    assert text.endswith("2 event(s), 1 not replayed (studies deleted)\n")
    assert main(["events", "--storage", str(root)]) == 0  # listed: the log as it is
    assert capsys.readouterr().out.endswith("2 event(s)\n")


def test_events_replay_refuses_without_an_index(tmp_path: Path, capsys) -> None:
    from dicomstore.cli import main

    StableLog(tmp_path, fsync=False).append(_hostile("1.2.3"))
    assert main(["events", "--storage", str(tmp_path), "--exec", "true"]) == 1
    assert "cannot replay: no index to tell deleted studies" in capsys.readouterr().err
