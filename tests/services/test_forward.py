"""Forwarding (issue 16, services/forwarding.py): rules and their filters, the durable
queue across a restart (pending entries, instances stored but not yet queued,
instances deleted meanwhile), when=stable, permanent failures given up, and the
queue in `dicomstore stats` and /metrics. Destinations are pynetdicom Storage SCPs
in this process and our own server; DCMTK's storescp in test_forward_interop.py."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from tests.archive.archive_testlib import dataset
from tests.archive.archive_testlib import store as archive_store
from tests.conftest import free_port
from tests.services.forward_testlib import (
    MR,
    config,
    instance,
    serving,
    status,
    store,
    until,
)
from tests.services.retrieve_testlib import destination

from dicomstore.archive import Archive
from dicomstore.archive.removal import remove
from dicomstore.cli import build_parser
from dicomstore.cli.access import main as access_main
from dicomstore.cli.settings import SettingsError, parse
from dicomstore.services.forward_queue import queue_path
from dicomstore.services.forward_rules import ForwardRule, parse_rule
from dicomstore.services.forwarding import BatchReport, Forwarding
from dicomstore.services.metrics import ServerMetrics
from dicomstore.services.server import ServerConfig
from dicomstore.services.stable_log import StableLog
from dicomstore.services.storage import StoreResult

#: On both index engines (issue 17).
pytestmark = pytest.mark.usefixtures("index_engine")

# -- rules --------------------------------------------------------------------------


def test_a_rule_is_a_destination_and_filters() -> None:
    rule = parse_rule("PACS=10.0.0.5:104;calling=MOD1|MOD2;modality=CT;sop-class=1.2.3;when=stable")
    assert (rule.destination.ae_title, rule.destination.host, rule.destination.port) == (
        "PACS",
        "10.0.0.5",
        104,
    )
    assert rule.calling == {"MOD1", "MOD2"} and rule.modality == {"CT"}
    assert rule.sop_class == {"1.2.3"} and rule.when == "stable"
    assert parse_rule(str(rule)) == rule
    plain = parse_rule("PACS=[::1]:104")
    assert plain == ForwardRule(plain.destination) and plain.when == "instance"
    row = {"calling_ae": "MOD2", "modality": "CT", "sop_class_uid": "1.2.3"}
    assert rule.matches(row) and plain.matches(row)
    assert not rule.matches({**row, "calling_ae": "MOD3"})
    assert not rule.matches({**row, "modality": "MR"})
    assert not rule.matches({**row, "sop_class_uid": "1.2.4"})


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("PACS", "is not AET=HOST:PORT"),
        ("PACS=h:104;colour=red", "unknown filter"),
        ("PACS=h:104;modality", "is not KEY=VALUE"),
        ("PACS=h:104;when=later", "instance or stable"),
        ("PACS=h:104;sop-class=CT", "not a UID"),
        ("PACS=h:104;calling=" + "A" * 17, "not an AE title"),
        ("PACS=h:104;modality=CT;modality=MR", "given twice"),
        ("PACS=h:104;modality=ct", "upper case \\(modality=CT\\)"),  # (review49 #13)
    ],
)
def test_a_bad_rule_says_why(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_rule(text)


def test_rules_from_flags_environment_and_file(tmp_path: Path) -> None:
    """Repeatable: a list in the file, commas between rules in the environment (so no
    commas inside one)."""
    toml = tmp_path / "server.toml"
    toml.write_text('forward = ["A=h:1;modality=CT|MR", "B=h:2;when=stable"]\n')
    args = parse(build_parser(), ["serve", "--server-config", str(toml)], {})
    assert [str(r) for r in args.forward] == ["A=h:1;modality=CT|MR", "B=h:2;when=stable"]
    env = {"DICOMSTORE_FORWARD": "A=h:1;calling=X,B=h:2", "DICOMSTORE_FORWARD_RETRY_MAX": "9"}
    args = parse(build_parser(), ["serve"], env)
    assert [str(r) for r in args.forward] == ["A=h:1;calling=X", "B=h:2"]
    assert args.forward_retry_max == 9.0
    with pytest.raises(SettingsError, match="unknown filter"):
        parse(build_parser(), ["serve"], {"DICOMSTORE_FORWARD": "A=h:1;x=y"})


def test_the_queue_of_a_relative_storage_is_read(tmp_path: Path, monkeypatch) -> None:
    """review35b F2: `dicomstore stats` with a relative --storage (the default) raised
    "relative path can't be expressed as a file URI"."""
    from dicomstore.services.forward_queue import ForwardQueue, queue_status

    (tmp_path / "data").mkdir()
    ForwardQueue(tmp_path / "data").close()
    monkeypatch.chdir(tmp_path)
    assert queue_status("data") == []


def test_backoff_doubles_up_to_the_cap_with_jitter(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    Archive(root, fsync=False).close()
    from dicomstore.archive.reader import ArchiveReader

    rules = [parse_rule("A=h:1")]
    low = Forwarding(ArchiveReader(root), rules, calling_ae="X", retry_delay=1, retry_max=10)
    low.jitter = lambda: 0.0
    assert [low.backoff(n) for n in (1, 2, 3, 4, 5, 60)] == [0.5, 1, 2, 4, 5, 5]
    low.jitter = lambda: 0.999
    assert 9.99 < low.backoff(100) < 10
    with pytest.raises(ValueError, match="given as A=h:1 and A=h:2"):
        Forwarding(ArchiveReader(root), [*rules, parse_rule("A=h:2")], calling_ae="X")


def test_a_kept_duplicate_is_not_a_new_store(tmp_path: Path) -> None:
    """The archive answers a duplicate it keeps with the row of the earlier store: not
    queued again. A new store is queued however long its commit took (review101 H1:
    one whose row was stamped more than a minute before the observer saw it was taken
    for a kept duplicate, never forwarded, and no restart queued it)."""
    root = tmp_path / "archive"
    Archive(root, fsync=False).close()
    from dicomstore.archive.reader import ArchiveReader

    now = time.time()
    fw = Forwarding(ArchiveReader(root), [parse_rule("A=h:1")], calling_ae="X", clock=lambda: now)

    def stored(uid: str, seconds_ago: float, kept: bool) -> StoreResult:
        when = datetime.fromtimestamp(now - seconds_ago, UTC).isoformat(timespec="microseconds")
        row = {"sop_instance_uid": uid, "received_at": when}
        return StoreResult(0x0000, outcome=SimpleNamespace(instance=row, kept=kept))

    fw.observe(None, stored("1.2.3", 0.01, kept=True))
    fw.observe(None, stored("1.2.4", 120, kept=True))
    assert fw._arrivals == []
    fw.observe(None, stored("1.2.5", 0.01, kept=False))
    fw.observe(None, stored("1.2.6", 120, kept=False))  # (a slow commit)
    assert [row["sop_instance_uid"] for row in fw._arrivals] == ["1.2.5", "1.2.6"]


# -- filters --------------------------------------------------------------------------


def test_filters_by_calling_ae_modality_and_sop_class(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    x1 = instance("1.2.77.1.1")  # CT from MODA
    x2 = instance("1.2.77.1.2", sop_class=MR, modality="MR")  # MR from MODB
    x3 = instance("1.2.77.1.3", modality="MR")  # a CT image in a series "MR" from MODB
    expected = {
        "ALL": {"1.2.77.1.1", "1.2.77.1.2", "1.2.77.1.3"},
        "BYCALL": {"1.2.77.1.1"},
        "BYMOD": {"1.2.77.1.2", "1.2.77.1.3"},
        "BYCLASS": {"1.2.77.1.2"},
    }
    with (
        destination("ALL") as all_,
        destination("BYCALL") as by_call,
        destination("BYMOD") as by_mod,
        destination("BYCLASS") as by_class,
    ):
        rules = [
            f"ALL=127.0.0.1:{all_.port}",
            f"BYCALL=127.0.0.1:{by_call.port};calling=MODA",
            f"BYMOD=127.0.0.1:{by_mod.port};modality=MR|SR",
            f"BYCLASS=127.0.0.1:{by_class.port};sop-class={MR}",
        ]

        async def main() -> None:
            async with serving(root, config(*rules)) as server:
                await store(server.port, [x1], calling_ae="MODA")
                await store(server.port, [x2, x3], calling_ae="MODB")
                done = lambda: all(  # noqa: E731
                    status(root, ae)["sent"] == len(uids) for ae, uids in expected.items()
                )
                await until(done)

        asyncio.run(main())
        got = {d: [uid for uid, *_ in dest.received] for d, dest in zip(
            expected, (all_, by_call, by_mod, by_class), strict=True
        )}  # fmt: skip
    for ae, uids in expected.items():
        assert sorted(got[ae]) == sorted(uids), ae  # each once
        assert status(root, ae)["pending"] == status(root, ae)["failed"] == 0


# -- durability ----------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["gone", "changed"])
def test_a_damaged_stored_file_is_a_failure_requeue_sends_once_restored(
    tmp_path: Path, damage: str
) -> None:
    """review101 M2: an indexed instance whose file was gone when its turn came was
    *skipped* (for an instance deleted: final), so a file restored after a moment
    (a share remounting, a backup) was never forwarded and `requeue` saw nothing.
    M1: a file whose bytes are no longer those stored (the indexed digest) was sent,
    and counted sent. Both are archive damage: failed, logged, not sent, and
    `requeue` sends it once restored."""
    from dicomstore.services.forward_queue import requeue_failed

    root, port = tmp_path / "archive", free_port()
    cfg = config(f"DEST=127.0.0.1:{port}")
    uids = ["1.2.77.4.1", "1.2.77.4.2"]

    async def stored_while_down() -> None:
        async with serving(root, cfg) as server:
            await store(server.port, [instance(uid) for uid in uids])
            await until(
                lambda: (
                    status(root, "DEST")["last_error"] is not None
                    and status(root, "DEST")["pending"] == 2
                )
            )

    async def sending() -> None:
        async with serving(root, cfg):
            await until(lambda: status(root, "DEST")["pending"] == 0)

    asyncio.run(stored_while_down())
    archive = Archive(root, fsync=False)
    try:
        stored_path = archive.path_of(uids[1])
    finally:
        archive.close()
    assert stored_path is not None
    original = stored_path.read_bytes()
    if damage == "gone":
        stored_path.unlink()  # (its row kept)
    else:  # (a flipped bit: the same size)
        stored_path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with destination("DEST", port=port) as dest:
        asyncio.run(sending())
        assert [uid for uid, *_ in dest.received] == [uids[0]]
        row = status(root, "DEST")
        assert (row["sent"], row["skipped"], row["failed"]) == (1, 0, 1)
        said = "is missing" if damage == "gone" else "content differs from what was stored"
        assert "archive damage" in row["last_error"] and said in row["last_error"]
        stored_path.write_bytes(original)
        assert requeue_failed(root) == {"DEST": 1}
        asyncio.run(sending())
    assert sorted(uid for uid, *_ in dest.received) == uids


def test_a_restart_sends_what_was_pending_and_what_was_not_yet_queued(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run 1: the destination is down; entries stay pending with the error recorded.
    Between runs an instance is stored without the server (as if it crashed between
    its commit and its queueing) and one queued instance is deleted. Run 2 sends
    the pending one and the recovered one, and skips the deleted one."""
    root, port = tmp_path / "archive", free_port()
    cfg = config(f"DEST=127.0.0.1:{port}")

    async def first() -> None:
        async with serving(root, cfg) as server:
            await store(server.port, [instance("1.2.77.2.1"), instance("1.2.77.2.2")])
            # (the second may be queued after the first's failure was recorded)
            await until(
                lambda: (
                    status(root, "DEST")["last_error"] is not None
                    and status(root, "DEST")["pending"] == 2
                )
            )

    asyncio.run(first())
    assert "unreachable" in status(root, "DEST")["last_error"]
    archive = Archive(root, fsync=False)
    try:
        data = dataset("1.2.77.2.3", study="1.2.77.2", series="1.2.77.2.1")
        assert archive_store(archive, data, sop_uid="1.2.77.2.3").status == 0
    finally:
        archive.close()
    assert not remove(root, "1.2.77.2.2").problems

    async def second() -> None:
        async with serving(root, cfg) as server:
            assert server.forwarding is not None
            await until(lambda: status(root, "DEST")["pending"] == 0)

    with destination("DEST", port=port) as dest:
        asyncio.run(second())
    assert sorted(uid for uid, *_ in dest.received) == ["1.2.77.2.1", "1.2.77.2.3"]
    row = status(root, "DEST")
    assert (row["sent"], row["skipped"], row["failed"]) == (2, 1, 0)

    assert access_main(["stats", "--storage", str(root)]) == 0
    out = capsys.readouterr().out
    header, line = out.splitlines()[-2:]
    assert header.split()[:5] == ["FORWARD", "TO", "PENDING", "SENT", "FAILED"]
    assert line.split()[:6] == [f"DEST=127.0.0.1:{port}", "0", "2", "0", "1", "-"]
    assert access_main(["stats", "--storage", str(root), "--json"]) == 0
    (forwarded,) = json.loads(capsys.readouterr().out)["forwarding"]
    assert forwarded["destination"] == "DEST" and forwarded["sent"] == 2


def test_a_new_rule_does_not_send_the_past(tmp_path: Path) -> None:
    """What was stored before a rule was configured is not forwarded by it."""
    root = tmp_path / "archive"
    with destination("DEST") as dest:

        async def main() -> None:
            async with serving(root, config(f"OTHER=127.0.0.1:{dest.port};calling=NOBODY")) as s:
                await store(s.port, [instance("1.2.77.3.1")])
            async with serving(root, config(f"DEST=127.0.0.1:{dest.port}")) as s:
                await store(s.port, [instance("1.2.77.3.2")])
                await until(lambda: status(root, "DEST")["sent"] == 1)

        asyncio.run(main())
    assert [uid for uid, *_ in dest.received] == ["1.2.77.3.2"]


def test_entries_of_a_destination_no_longer_configured_are_said_so(
    tmp_path: Path, caplog, capsys
) -> None:
    """review49 #8: entries pending for a destination whose rule was removed stayed
    'pending' in `stats` as if it were still tried, without a word at start."""
    root = tmp_path / "archive"

    async def main() -> None:
        gone = f"GONE=127.0.0.1:{free_port()}"  # (nobody there: pending, retried)
        async with serving(root, config(gone)) as s:
            await store(s.port, [instance("1.2.77.11.1")])
            await until(lambda: status(root, "GONE")["pending"] == 1)
        with caplog.at_level("WARNING", logger="dicomstore.forward"):
            async with serving(root, config("OTHER=127.0.0.1:9;calling=NOBODY")):
                pass

    asyncio.run(main())
    assert "1 instance(s) pending for GONE, which no --forward rule names now" in caplog.text
    assert access_main(["stats", "--storage", str(root)]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("GONE=")]
    assert "(not configured)" in line and " 1 " in line  # (its pending entry, kept)


# -- when=stable ----------------------------------------------------------------------


def test_when_stable_forwards_the_study_once_it_is_stable(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    study = "1.2.77.4"
    cts = [instance(f"{study}.1.{n}", study=study) for n in (1, 2)]
    sr = instance(f"{study}.2.1", study=study, series=f"{study}.2", modality="SR")
    with destination("DEST") as dest:
        rule = f"DEST=127.0.0.1:{dest.port};when=stable;modality=CT"

        async def main() -> None:
            # (a study stable 1 s after its last instance: not between two of them,
            # even on a loaded machine)
            async with serving(root, config(rule, stable_age=1.0)) as server:
                await store(server.port, [*cts, sr])
                await until(lambda: status(root, "DEST")["sent"] == 2)

        asyncio.run(main())
    assert sorted(uid for uid, *_ in dest.received) == [f"{study}.1.1", f"{study}.1.2"]
    (event,) = StableLog(root).read()
    assert event.study_uid == study and event.instances == 3
    with closing(sqlite3.connect(queue_path(root))) as db:
        queued = [t for (t,) in db.execute("SELECT queued_at FROM entry")]
    stable_at = datetime.fromisoformat(event.stable_at).timestamp()
    assert len(queued) == 2 and min(queued) >= stable_at  # queued when stable, not before


def test_a_late_instance_sends_itself_not_the_study_again(tmp_path: Path) -> None:
    """review49 #6: a study's next stable event queued every instance of it; once the
    queue had forgotten the sent ones (after an hour, KEEP_DONE), one late instance
    had the whole study sent again. Only what the event before did not cover is."""
    root = tmp_path / "archive"
    study = "1.2.77.9"
    with destination("DEST") as dest:
        rule = f"DEST=127.0.0.1:{dest.port};when=stable"

        async def main() -> None:
            async with serving(root, config(rule, stable_age=1.0)) as server:
                assert server.forwarding is not None
                server.forwarding.keep_done = -60.0  # (forgets what it sent at once)
                await store(server.port, [instance(f"{study}.1.{n}", study=study) for n in (1, 2)])
                await until(lambda: status(root, "DEST")["sent"] == 2)
                await until(lambda: len(list(StableLog(root).read())) == 1)
                await store(server.port, [instance(f"{study}.1.3", study=study)])
                await until(lambda: len(list(StableLog(root).read())) == 2)
                late = list(StableLog(root).read())[1]
                queue = server.forwarding.queue
                assert queue is not None
                await until(lambda: queue.stable_seen(study, late.stable_at))  # (queued)
                await until(lambda: status(root, "DEST")["pending"] == 0)  # (and sent)

        asyncio.run(main())
    assert sorted(uid for uid, *_ in dest.received) == [f"{study}.1.{n}" for n in (1, 2, 3)]


def test_when_stable_needs_stable_events(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="stable age"):

        async def main() -> None:
            async with serving(tmp_path / "a", config("DEST=127.0.0.1:9;when=stable")):
                pass

        asyncio.run(main())


# -- failures --------------------------------------------------------------------------


def test_an_association_broken_mid_batch_puts_the_rest_back_with_the_one_in_flight(
    tmp_path: Path,
) -> None:
    """review101 L1: a destination aborting mid-batch counted 1 `to retry` (the one in
    flight) while the rest waited uncounted and came due at once, where a refused
    connection counted the whole batch. The rest waits the back-off with the one in
    flight (an attempt more for it alone), each counted, as for a transient status."""
    root, port = tmp_path / "archive", free_port()
    cfg = config(f"DEST=127.0.0.1:{port}")
    uids = [f"1.2.77.7.{n}" for n in range(1, 5)]
    reports: list[BatchReport] = []

    async def queue_made() -> None:
        async with serving(root, cfg):
            pass

    asyncio.run(queue_made())
    archive = Archive(root, fsync=False)  # (stored between two runs: queued at the next
    try:  # start, all due at once, one batch; stored while the destination was down,
        for uid in uids:  # each waited its own jittered back-off: batches of fewer)
            data = dataset(uid, study="1.2.77.7", series="1.2.77.7.1")
            assert archive_store(archive, data, sop_uid=uid).status == 0
    finally:
        archive.close()
    with destination("DEST", port=port, abort_after=2) as dest:

        def seen(report: BatchReport) -> None:
            reports.append(report)
            dest.abort_after = None  # (once)

        async def sending() -> None:
            async with serving(root, cfg) as server:
                assert server.forwarding is not None
                server.forwarding.observers.append(seen)
                await until(lambda: status(root, "DEST")["sent"] == 4)

        asyncio.run(sending())
    assert (reports[0].sent, reports[0].retry) == (1, 3)
    assert {uid for uid, *_ in dest.received} == set(uids)


def test_out_of_resources_is_tried_again(tmp_path: Path) -> None:
    """A700 (PS3.4 B.2.3) and 0213 (PS3.7 C.5) are transient: the entry waits its
    backoff and is sent at a later attempt."""
    root = tmp_path / "archive"
    reports: list[BatchReport] = []
    with destination("DEST", answers=[0xA700, 0x0213]) as dest:

        async def main() -> None:
            async with serving(root, config(f"DEST=127.0.0.1:{dest.port}")) as server:
                assert server.forwarding is not None
                server.forwarding.observers.append(reports.append)
                await store(server.port, [instance("1.2.77.6.1")])
                await until(lambda: status(root, "DEST")["sent"] == 1)

        asyncio.run(main())
    assert [uid for uid, *_ in dest.received] == ["1.2.77.6.1"]
    assert [(r.retry, r.sent) for r in reports] == [(1, 0), (1, 0), (0, 1)]
    with closing(sqlite3.connect(queue_path(root))) as db:
        assert db.execute("SELECT state, attempts FROM entry").fetchall() == [("sent", 3)]


async def _failed_for_good(
    server: Any, root: Path, ae: str, uids: list[str], reports: list[BatchReport]
) -> None:
    """Store ``uids`` and wait until each failed for good at ``ae`` and the batch
    reports (in ``reports``) say so (the counters follow the queue's update)."""
    assert server.forwarding is not None
    server.forwarding.observers.append(reports.append)
    await store(server.port, [instance(uid) for uid in uids])
    await until(lambda: status(root, ae)["failed"] == len(uids))
    await until(lambda: sum(r.failed for r in reports) == len(uids))


def test_max_attempts_fails_an_entry_tried_that_often(tmp_path: Path, caplog) -> None:
    """review88 F4: --forward-max-attempts N: after N transient failures (here A700 twice)
    the entry fails for good, says why, and is not sent again (a destination that keeps
    answering late would otherwise get it at every retry, without bound)."""
    caplog.set_level(logging.INFO, logger="dicomstore")
    root = tmp_path / "archive"
    reports: list[BatchReport] = []
    with destination("DEST", answers=[0xA700, 0xA700]) as dest:

        async def main() -> None:
            cfg = config(f"DEST=127.0.0.1:{dest.port}", forward_max_attempts=2)
            async with serving(root, cfg) as server:
                await _failed_for_good(server, root, "DEST", ["1.2.77.6.2"], reports)

        asyncio.run(main())
    assert dest.received == []  # (A700: pynetdicom's handler answered, stored nothing)
    assert [(r.retry, r.failed) for r in reports] == [(1, 0), (0, 1)]
    with closing(sqlite3.connect(queue_path(root))) as db:
        (row,) = db.execute("SELECT state, attempts, status, reason FROM entry").fetchall()
    assert row[:3] == ("failed", 2, "A700")
    assert row[3].endswith("(tried 2 times: --forward-max-attempts)")
    assert "1.2.77.6.2 failed: A700" in caplog.text


def test_out_of_resources_holds_the_batch_back_together(tmp_path: Path) -> None:
    """review36a #8: after an A700 each instance came back on its own association
    (their jittered delays came due one by one), the destination never backed off:
    the rest of the batch waits with it, due at one time, and goes on one association."""
    root, port = tmp_path / "archive", free_port()
    cfg = config(f"DEST=127.0.0.1:{port}")
    uids = [f"1.2.77.8.{n}" for n in range(1, 4)]

    async def queued() -> None:  # (the destination down: all three pending)
        async with serving(root, cfg) as server:
            await store(server.port, [instance(uid) for uid in uids])
            await until(lambda: status(root, "DEST")["pending"] == 3)

    asyncio.run(queued())
    with closing(sqlite3.connect(queue_path(root))) as db, db:  # (all due at once: their
        db.execute("UPDATE entry SET next_attempt = 0")  # failed tries' delays differ)
        before = dict(db.execute("SELECT sop_instance_uid, attempts FROM entry"))
    reports: list[BatchReport] = []
    with destination("DEST", port=port, answers=[0xA700]) as dest:

        async def main() -> None:
            async with serving(root, cfg) as server:
                assert server.forwarding is not None
                server.forwarding.observers.append(reports.append)
                await until(lambda: status(root, "DEST")["sent"] == 3)
                await until(lambda: sum(r.sent for r in reports) == 3)

        asyncio.run(main())
    # review88 F1: the one refused goes after the others, which were not tried (one
    # instance a destination kept refusing, first of every batch, held back every other)
    received = [uid for uid, *_ in dest.received]
    with closing(sqlite3.connect(queue_path(root))) as db:
        attempts = dict(db.execute("SELECT sop_instance_uid, attempts FROM entry"))
    (refused,) = [uid for uid in uids if attempts[uid] == before[uid] + 2]  # (tried twice)
    assert all(attempts[uid] == before[uid] + 1 for uid in uids if uid != refused)
    assert sorted(received) == uids and received[-1] == refused
    assert [(r.retry, r.sent) for r in reports] == [(3, 0), (0, 3)]
    assert reports[0].error is not None and reports[0].error.startswith("A700")


def test_a_failure_status_is_given_up_not_retried(tmp_path: Path) -> None:
    """The destination (our own server, --store-aet NOBODY) answers 0124 Not
    Authorized: each entry is failed after one attempt, counted, never tried again."""
    root, other = tmp_path / "archive", tmp_path / "other"
    reports: list[BatchReport] = []

    async def main() -> bytes:
        refusing = ServerConfig(port=0, ae_title="REFUSER", store_aets=frozenset({"NOBODY"}))
        async with serving(other, refusing) as dest:
            rule = f"REFUSER=127.0.0.1:{dest.port}"
            async with serving(root, config(rule)) as server:
                assert server.forwarding is not None
                metrics = ServerMetrics()
                metrics.watch(server)
                server.forwarding.observers.append(reports.append)
                await store(server.port, [instance("1.2.77.5.1"), instance("1.2.77.5.2")])
                await until(lambda: status(root, "REFUSER")["failed"] == 2)
                # (the batch's report, and the counters, follow the queue's update)
                await until(lambda: sum(r.failed for r in reports) == 2)
                return metrics.exposition()

    exposition = asyncio.run(main()).decode()
    assert status(root, "REFUSER")["pending"] == 0
    with closing(sqlite3.connect(queue_path(root))) as db:
        rows = db.execute("SELECT state, attempts, status, reason FROM entry").fetchall()
    assert {r[:3] for r in rows} == {("failed", 1, "0124")}
    assert all("may not store" in r[3] for r in rows)
    assert sum(r.failed for r in reports) == 2 and not any(r.retry for r in reports)
    assert 'dicomstore_forwarded_total{destination="REFUSER",outcome="failed"} 2.0' in exposition
    assert 'dicomstore_forward_pending{destination="REFUSER"} 0.0' in exposition


def test_a_data_set_over_the_destination_s_size_limit_is_given_up_not_retried(
    tmp_path: Path,
) -> None:
    """Our server as destination, with a size limit: its A700 says "larger than the
    limit", which no later attempt changes; the entry is failed after one attempt (it
    was retried as any A700, the whole batch held back each time)."""
    root, other = tmp_path / "archive", tmp_path / "other"
    reports: list[BatchReport] = []

    async def main() -> None:
        small = ServerConfig(port=0, ae_title="SMALL", max_instance_bytes=64)
        async with (
            serving(other, small) as dest,
            serving(root, config(f"SMALL=127.0.0.1:{dest.port}")) as server,
        ):
            await _failed_for_good(server, root, "SMALL", ["1.2.77.9.1"], reports)

    asyncio.run(main())
    with closing(sqlite3.connect(queue_path(root))) as db:
        rows = db.execute("SELECT state, attempts, status, reason FROM entry").fetchall()
    assert [r[:3] for r in rows] == [("failed", 1, "A700")]
    assert "larger than the limit of 64 bytes" in rows[0][3]
    assert not any(r.retry for r in reports)


def test_a_pending_or_cancel_answer_is_no_store(tmp_path: Path, caplog) -> None:
    """review49 #7: a destination answering FE00 (Cancel) or FF00 (Pending), which a
    C-STORE does not have (PS3.4 B.2.3), had the instance recorded sent, for good,
    without a word; it was not stored: failed, logged, with the status."""
    root = tmp_path / "archive"
    with destination("DEST", answers=[0xFE00, 0xFF00]) as dest:

        async def main() -> None:
            async with serving(root, config(f"DEST=127.0.0.1:{dest.port}")) as server:
                await store(server.port, [instance("1.2.77.8.1"), instance("1.2.77.8.2")])
                await until(lambda: status(root, "DEST")["failed"] == 2)

        with caplog.at_level("WARNING", logger="dicomstore.server"):
            asyncio.run(main())
    with closing(sqlite3.connect(queue_path(root))) as db:
        rows = db.execute("SELECT state, status FROM entry ORDER BY status").fetchall()
    assert rows == [("failed", "FE00"), ("failed", "FF00")]
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "DEST answered FE00" in said and "DEST answered FF00" in said and "None" not in said


def test_a_class_the_destination_refuses_says_so_in_the_queue(tmp_path: Path) -> None:
    """review49 #10: 'not sent: unreadable, or no context accepted for it (see the
    log)': the queue and `stats` say why, as the log does."""
    root = tmp_path / "archive"
    with destination("DEST", classes=("1.2.840.10008.5.1.4.1.1.4",)) as dest:  # (MR only)

        async def main() -> None:
            async with serving(root, config(f"DEST=127.0.0.1:{dest.port}")) as server:
                await store(server.port, [instance("1.2.77.8.3")])  # (a CT)
                await until(lambda: status(root, "DEST")["failed"] == 1)

        asyncio.run(main())
    with closing(sqlite3.connect(queue_path(root))) as db:
        (reason,) = db.execute("SELECT reason FROM entry").fetchone()
    assert reason.startswith("not sent: the SCP refused CT Image Storage (abstract syntax")


def test_a_batch_records_what_it_sent_as_it_goes(tmp_path: Path) -> None:
    """review49 #12: a batch's outcomes were recorded when it ended: `stats` showed 0
    sent while it ran, and a kill sent every delivered instance of it again (up to
    BATCH). They are recorded every SETTLE_EVERY instances (or SETTLE_AFTER s), also
    while a reply is held: all 12 delivered before the held 13th are (it was flaky: the
    ones sent after the last tenth waited for the held reply)."""
    root = tmp_path / "archive"
    with destination("DEST", hold_at=12) as dest:

        async def main() -> None:
            async with serving(root, config(f"DEST=127.0.0.1:{dest.port}")) as server:
                await store(server.port, [instance(f"1.2.77.10.{n}") for n in range(20)])
                await until(dest.holding.is_set)  # (12 delivered, the batch under way)
                await until(lambda: status(root, "DEST")["sent"] == 12)
                dest.resume.set()
                await until(lambda: status(root, "DEST")["sent"] == 20)

        asyncio.run(main())
    assert len(dest.received) == 20


def test_requeue_sends_failed_entries_again(tmp_path: Path, capsys) -> None:
    """review36a #9: a destination's C000 (its own transient trouble, called permanent)
    failed the entries for good, with no remedy: `dicomstore requeue` makes them pending
    again while the server runs, and they are sent."""
    from dicomstore.cli import main as cli_main

    root = tmp_path / "archive"
    uids = ["1.2.77.9.1", "1.2.77.9.2"]
    with destination("DEST", answers=[0xC000, 0xC000]) as dest:

        async def main() -> None:
            async with serving(root, config(f"DEST=127.0.0.1:{dest.port}")) as server:
                assert server.forwarding is not None
                server.forwarding.idle_look = 0.05  # (else within IDLE_LOOK, 30 s)
                await store(server.port, [instance(uid) for uid in uids])
                await until(lambda: status(root, "DEST")["failed"] == 2)
                assert status(root, "DEST")["sent"] == 0 and not dest.received
                argv = ["requeue", "--storage", str(root), "--destination", "DEST"]
                assert await asyncio.to_thread(cli_main, argv) == 0
                await until(lambda: status(root, "DEST")["sent"] == 2)

        asyncio.run(main())
    assert "DEST: 2 failed entries pending again" in capsys.readouterr().out
    assert sorted(uid for uid, *_ in dest.received) == uids
    assert (status(root, "DEST")["failed"], status(root, "DEST")["pending"]) == (0, 0)


def test_requeue_drop_drops_an_unconfigured_destinations_entries(tmp_path: Path, capsys) -> None:
    """review49 #8: a destination removed from the rules kept its entries pending for
    good (and got them if it came back); nothing dropped them."""
    from dicomstore.archive.nodes import ServiceLock
    from dicomstore.cli import main as cli_main
    from dicomstore.services.forward_queue import ForwardQueue, Queued, Settled

    queue = ForwardQueue(tmp_path)
    queue.configure([("KEPT", "instance")], "2026-01-01T00:00:00")
    queue.add(
        [Queued(d, f"1.2.3.{n}", "2026-01-01T00:00:00") for d in ("GONE", "KEPT") for n in (1, 2)]
    )
    (entry, *_) = queue.due("GONE", time.time(), 10)
    queue.settle("GONE", [Settled(entry.id, "failed", 1, status=0xC000)])
    queue.close()
    argv = ["requeue", "--storage", str(tmp_path), "--drop"]
    assert cli_main(argv) == 2 and "--drop needs --destination" in capsys.readouterr().err
    forwarding = ServiceLock(tmp_path, "forward")  # a node forwarding, KEPT's rule its
    assert forwarding.take()
    assert cli_main([*argv, "--destination", "KEPT"]) == 1
    assert "KEPT: the node forwarding now has a --forward rule for it" in capsys.readouterr().err
    assert status(tmp_path, "KEPT")["pending"] == 2  # (nothing dropped)
    assert cli_main([*argv, "--destination", "GONE"]) == 0
    assert capsys.readouterr().out == "GONE: 2 entries dropped, not sent\n"
    assert [status(tmp_path, "GONE")[s] for s in ("pending", "failed")] == [0, 0]
    forwarding.close()  # (review51 #3: the node restarted without any rule forwards not)
    assert cli_main([*argv, "--destination", "KEPT"]) == 0
    assert capsys.readouterr().out == "KEPT: 2 entries dropped, not sent\n"
    assert cli_main([*argv, "--destination", "NOPE"]) == 1
    out, err = capsys.readouterr()
    assert "no forwarding destination NOPE" in err and out == ""


def test_requeue_takes_only_the_destinations_named(tmp_path: Path, capsys) -> None:
    from dicomstore.cli import main as cli_main
    from dicomstore.services.forward_queue import ForwardQueue, Queued, Settled, requeue_failed

    assert requeue_failed(tmp_path) is None
    # (review112 I2: every destination's, of an archive that never forwarded: nothing
    # to do, no failure; a destination named is unknown)
    assert cli_main(["requeue", "--storage", str(tmp_path)]) == 0
    assert cli_main(["requeue", "--storage", str(tmp_path), "--destination", "A"]) == 1
    # (review113 L5: a storage that is none, a typo, is no empty queue)
    assert cli_main(["requeue", "--storage", str(tmp_path / "typo")]) == 1
    assert f"no archive at {tmp_path / 'typo'}" in capsys.readouterr().err
    # review88 F8: --index as every archive command takes it (the queue is in --storage)
    assert cli_main(["requeue", "--storage", str(tmp_path), "--index", "postgresql://u@h/d"]) == 0
    assert "has no forwarding queue" in capsys.readouterr().err
    queue = ForwardQueue(tmp_path)
    queue.add([Queued(dest, "1.2.3", "2026-01-01T00:00:00") for dest in ("A", "B")])
    for entry in queue.due("A", time.time(), 10) + queue.due("B", time.time(), 10):
        queue.settle(entry.destination, [Settled(entry.id, "failed", 1, status=0xC000)])
    queue.close()
    before = time.time()
    assert requeue_failed(tmp_path, ["A"]) == {"A": 1}
    assert (status(tmp_path, "A")["pending"], status(tmp_path, "A")["failed"]) == (1, 0)
    assert status(tmp_path, "A")["oldest_pending"] >= before  # (queued again now)
    assert (status(tmp_path, "B")["pending"], status(tmp_path, "B")["failed"]) == (0, 1)
    assert cli_main(["requeue", "--storage", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "B: 1 failed entries pending again\n"
    assert cli_main(["requeue", "--storage", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "no failed entries\n"
    # review45 L14: a destination that is none said '0 ... pending again', exit 0
    assert cli_main(["requeue", "--storage", str(tmp_path), "--destination", "NOPE"]) == 1
    out, err = capsys.readouterr()
    assert "no forwarding destination NOPE in the queue" in err
    assert out == ""  # (review77 F14: 'NOPE: 0 failed entries pending again' beside it)
    assert cli_main(["requeue", "--storage", str(tmp_path), "--destination", "A"]) == 0
    # (review112 L4: named as stats names it, AET=HOST:PORT)
    queue = ForwardQueue(tmp_path)
    (entry,) = queue.due("A", time.time(), 10)
    queue.settle("A", [Settled(entry.id, "failed", 1, status=0xC000)])
    queue.close()
    capsys.readouterr()
    assert (
        cli_main(["requeue", "--storage", str(tmp_path), "--destination", "A=127.0.0.1:104"]) == 0
    )
    assert capsys.readouterr().out == "A: 1 failed entries pending again\n"


def test_entries_failed_for_good_are_the_destinations_last_error(tmp_path: Path) -> None:
    """review45 M9: stats kept showing an old 'Connection refused' after entries had
    failed for good with 0124 (only the server's log said so)."""
    from dicomstore.services.forward_queue import ForwardQueue, Queued, Settled

    queue = ForwardQueue(tmp_path)
    queue.add([Queued("DEAD", "1.2.3", "2026-01-01T00:00:00")])
    (entry,) = queue.due("DEAD", time.time(), 10)
    queue.settle("DEAD", [Settled(entry.id, "pending", 1, time.time())], error="unreachable")
    assert status(tmp_path, "DEAD")["last_error"] == "unreachable"
    queue.settle("DEAD", [Settled(entry.id, "failed", 2, status=0x0124, reason="not authorized")])
    queue.close()
    assert status(tmp_path, "DEAD")["last_error"] == "failed for good: 0124 not authorized"


def test_the_events_handed_over_whose_queueing_fails_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    """review90 N3: the node forwarding when=stable took the events over from another
    node; the queueing of the studies that became stable meanwhile failed unsaid."""
    import logging

    from dicomstore.services.forwarding import Forwarding

    async def failing(self: Forwarding) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Forwarding, "events_taken", failing)
    caplog.set_level(logging.INFO, logger="dicomstore")
    root = tmp_path / "archive"

    async def main() -> None:
        plain = config(stable_age=0.2)
        async with serving(root, plain):  # (takes the events first)
            rule = config(f"DEST=127.0.0.1:{free_port()};when=stable", stable_age=0.2)
            async with serving(root, rule):
                await until(lambda: "the studies stable meanwhile not queued" in caplog.text)

    asyncio.run(main())
    assert "handed to the node forwarding when=stable" in caplog.text


def test_a_plain_node_starting_while_the_events_are_asked_for_leaves_them(
    tmp_path: Path, caplog
) -> None:
    """review90 I1: a node without when=stable rules starting while the node forwarding
    when=stable asks for the events took them (a catch-up of the index, an
    --on-stable-exec run perhaps), then handed them over: it leaves them."""
    import logging

    from dicomstore.archive.nodes import ServiceLock
    from dicomstore.services.serving import WANTED

    caplog.set_level(logging.INFO, logger="dicomstore")
    root = tmp_path / "archive"
    Archive(root, fsync=False).close()
    asking = ServiceLock(root, WANTED)  # (the node forwarding when=stable, asking)
    assert asking.take()

    async def main() -> None:
        async with serving(root, config(stable_age=0.2)) as server:
            assert server.stability is None
            assert "asked for by the node forwarding when=stable; not here" in caplog.text
            events = ServiceLock(root, "events")  # (free: the asker takes them)
            assert events.take()
            events.close()

    try:
        asyncio.run(main())
    finally:
        asking.close()
    assert "handed to the node forwarding" not in caplog.text


def test_a_damaged_queue_is_named_not_taken_for_the_index(tmp_path: Path, capsys) -> None:
    """review115 F3: a damaged .forward/queue.sqlite made `stats` say the (healthy)
    index.sqlite was malformed, pointing to a needless reindex, and `serve --forward`
    end in a traceback (exit 1); each now names the queue, serve in one line, exit 2."""
    import subprocess

    from tests.conftest import serve_command

    from dicomstore.cli import main as cli_main

    root = tmp_path / "archive"
    with Archive(root, fsync=False) as archive:
        archive_store(archive, dataset())
    queue = queue_path(root)
    queue.parent.mkdir(parents=True)
    queue.write_bytes(b"SQLite format 3\x00" + b"\xff" * 3000)  # (its header, then junk)
    assert cli_main(["stats", "--storage", str(root)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"dicomstore: {queue}: ") and "(the forwarding queue: " in err, err
    assert "moved aside, a new one starts; what it still had to send is not sent" in err
    rule = ["--forward", f"DEST=127.0.0.1:{free_port()}"]
    done = subprocess.run(
        serve_command(free_port(), root, *rule), capture_output=True, text=True, timeout=60
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert lines[-1].startswith(f"dicomstore: cannot open the archive {root}: {queue}: ")


def test_a_new_queue_beside_stored_instances_says_what_is_not_forwarded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """review122 F3: a damaged queue moved aside, the new one sent nothing of what the
    old one still had to send, and nothing said so."""
    from dicomstore.archive.reader import ArchiveReader

    root = tmp_path / "archive"
    with Archive(root, fsync=False) as archive:
        archive_store(archive, dataset())
    caplog.set_level(logging.WARNING, "dicomstore.forward")
    rule = parse_rule(f"DEST=127.0.0.1:{free_port()}")
    forwarding = Forwarding(ArchiveReader(root), (rule,), calling_ae="DICOMSTORE")
    assert forwarding.open() == 0
    forwarding.queue.close()
    assert "a new forwarding queue: what the archive holds already is not forwarded" in (
        caplog.text
    )
    assert "send that with `dicomstore send`" in caplog.text
    caplog.clear()
    forwarding = Forwarding(ArchiveReader(root), (rule,), calling_ae="DICOMSTORE")
    forwarding.open()  # (the queue there now: no word of it)
    forwarding.queue.close()
    assert "a new forwarding queue" not in caplog.text
