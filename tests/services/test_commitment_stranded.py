"""Storage Commitment reports that cannot be delivered (services/commitment_reports.py,
review68 #2, review69 M1): refused for good, a request is stranded (it waits in the
journal, holds no pending slot); not taken in STRAND_AFTER tries, it is tried on with
its slot freed; its references are verified once, not at every try."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from tests.archive.archive_testlib import CT
from tests.conftest import free_port, wait_listening
from tests.services.commitment_testlib import (
    HELD,
    action_information,
    fill,
    report_listener,
    settled,
)
from tests.services.test_commitment_scp import n_action, serving

from dicomstore.archive.commitment import Reference
from dicomstore.archive.commitment_journal import CommitmentJournal, CommitmentRequest
from dicomstore.services import commitment_reports
from dicomstore.services.destinations import Destination


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "archive"
    fill(root)
    return root


def test_a_report_refused_for_good_is_stranded_at_once(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """DCMTK's ``storescp --refuse`` answers every association A-ASSOCIATE-RJ."""
    port = free_port()
    refusing = subprocess.Popen(["/usr/bin/storescp", "--refuse", str(port)])
    try:
        wait_listening(port, refusing)
        scus = (Destination("MODALITY", "127.0.0.1", port),)
        srv = serving(root, commitment_scus=scus)
        with srv:
            assert srv.server.commitments is not None
            srv.server.commitments.retry_delay = 0.01
            assert n_action(srv.port, action_information("1.2.8.190", *HELD)) == 0
            assert settled(srv)
            assert list(srv.server.commitments.stranded) == ["1.2.8.190"]
        srv.archive.close()  # type: ignore[attr-defined]
    finally:
        refusing.kill()
        refusing.wait()
    assert "its report is refused for good" in caplog.text
    assert [r.transaction_uid for r in CommitmentJournal(root).pending()] == ["1.2.8.190"]


def test_a_report_not_taken_in_its_tries_is_retried_on_without_its_slot(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing listens at the requester's address (a modality off for the night):
    after STRAND_AFTER tries its slot is freed (others are not refused 0213 for it),
    it is tried on (review69 M1: stranded, its report was lost until a restart) and
    reported once the SCU is back; verified once."""
    verified: list[int] = []
    verify = commitment_reports.verify
    monkeypatch.setattr(
        commitment_reports, "verify", lambda r, refs: verified.append(1) or verify(r, refs)
    )
    monkeypatch.setattr(commitment_reports, "STRAND_AFTER", 3)
    port = free_port()
    srv = serving(root, commitment_scus=(Destination("MODALITY", "127.0.0.1", port),))
    with srv:
        commitments = srv.server.commitments
        assert commitments is not None
        commitments.retry_delay = commitments.max_retry_delay = 0.02
        assert n_action(srv.port, action_information("1.2.8.191", *HELD)) == 0
        assert settled(srv)  # (no pending slot held)
        assert list(commitments.overdue) == ["1.2.8.191"] and not commitments.stranded
        # the same Transaction UID again: still pending here
        assert n_action(srv.port, action_information("1.2.8.191", *HELD)) == 0x0115
        with report_listener("MODALITY", port) as (_port, reports):
            (report,) = reports.wait()
            assert report.info.TransactionUID == "1.2.8.191"
        assert not commitments.overdue
    srv.archive.close()  # type: ignore[attr-defined]
    assert verified == [1]
    assert not list(CommitmentJournal(root).pending())


def test_a_report_retried_past_reverify_after_is_verified_again(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review69 I3: verified once, an overdue report sent hours later would say an
    instance deleted meanwhile is committed. Past REVERIFY_AFTER it is verified again."""
    import threading

    verified: list[int] = []
    twice = threading.Event()
    verify = commitment_reports.verify

    def counted(reader, refs):
        verified.append(1)
        if len(verified) >= 2:
            twice.set()
        return verify(reader, refs)

    monkeypatch.setattr(commitment_reports, "verify", counted)
    monkeypatch.setattr(commitment_reports, "REVERIFY_AFTER", 0.0)
    srv = serving(root, commitment_scus=(Destination("MODALITY", "127.0.0.1", free_port()),))
    with srv:
        assert srv.server.commitments is not None
        srv.server.commitments.retry_delay = 0.01
        assert n_action(srv.port, action_information("1.2.8.193", *HELD)) == 0
        assert twice.wait(20)
    srv.archive.close()  # type: ignore[attr-defined]


def test_a_report_retried_after_an_instance_changed_is_verified_again(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review117 F1: a report made while its requester could not be reached was sent
    as made for an hour of retries: an instance deleted or damaged meanwhile was
    reported committed (its modality may delete its own copy). A retry now looks
    at what it found committed (rows, file sizes, mtimes), and verifies again when
    that changed."""
    import threading

    verified: list[int] = []
    once = threading.Event()
    verify = commitment_reports.verify

    def counted(reader, refs):
        verdicts = verify(reader, refs)
        verified.append(1)
        once.set()
        return verdicts

    monkeypatch.setattr(commitment_reports, "verify", counted)
    port = free_port()  # (nothing listens there yet: the report is tried again)
    srv = serving(root, commitment_scus=(Destination("MODALITY", "127.0.0.1", port),))
    with srv:
        commitments = srv.server.commitments
        assert commitments is not None
        commitments.retry_delay = commitments.max_retry_delay = 0.05
        assert n_action(srv.port, action_information("1.2.8.194", *HELD)) == 0
        assert once.wait(20)  # (verified: both committed then)
        path = srv.archive.path_of(HELD[1])  # type: ignore[attr-defined]
        data = bytearray(path.read_bytes())
        data[-5] ^= 0xFF  # (damaged since: the same size)
        path.write_bytes(bytes(data))
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1))
        with report_listener("MODALITY", port) as (_port, reports):
            (report,) = reports.wait()
    srv.archive.close()  # type: ignore[attr-defined]
    assert report.committed == [HELD[0]] and list(report.failed) == [HELD[1]]
    assert len(verified) >= 2  # (verified again once it changed)


def test_a_backlog_found_at_start_leaves_the_others_room(root: Path) -> None:
    """review72 F2: at a start every journaled request was pending again, beyond the
    bounds and the requester's half: one modality's backlog had others refused 0213
    until each of its requests went overdue (tens of minutes)."""
    journal = CommitmentJournal(root, fsync=False)
    for n in range(3):
        refs = [Reference(CT, uid) for uid in HELD]
        journal.add(CommitmentRequest(f"1.2.8.20{n}", refs, "MODALITY"))
    journal.close()
    port = free_port()  # (nothing listens: MODALITY's reports keep failing)
    scus = (Destination("MODALITY", "127.0.0.1", port),)
    srv = serving(root, commitment_scus=scus, max_pending_commitments=2)
    with srv:
        commitments = srv.server.commitments
        assert commitments is not None
        assert len(commitments.pending) == 1 and len(commitments.overdue) == 2
        ds = action_information("1.2.8.209", *HELD)
        assert n_action(srv.port, ds, calling="OTHER") == 0
    srv.archive.close()  # type: ignore[attr-defined]


def test_an_overdue_report_takes_the_overdue_room_once_there_is_some(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review72 F3: a request was moved to the overdue only at its STRAND_AFTER-th
    failure; the overdue full then, it held its pending slot until reported."""
    monkeypatch.setattr(commitment_reports, "STRAND_AFTER", 2)
    srv = serving(root, commitment_scus=(Destination("MODALITY", "127.0.0.1", free_port()),))
    with srv:
        commitments = srv.server.commitments
        assert commitments is not None
        commitments.retry_delay = commitments.max_retry_delay = 0.02
        commitments.overdue.update({f"9.9.{n}": 1 for n in range(commitments.max_pending)})
        tries = _counted_attempts(commitments, monkeypatch)
        assert n_action(srv.port, action_information("1.2.8.210", *HELD)) == 0
        assert polled(lambda: len(tries) > 4)  # (past STRAND_AFTER: the overdue full)
        assert "1.2.8.210" in commitments.pending
        commitments.overdue.clear()
        assert polled(lambda: "1.2.8.210" in commitments.overdue)
        assert settled(srv)
    srv.archive.close()  # type: ignore[attr-defined]


def test_a_report_retried_past_a_thousand_times_is_still_retried(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CI, stop 53: the back-off was retry_delay * 2 ** failures, a float overflow past
    1024 failures (a week of a requester unreachable, at the default 10 min cap; a
    second under a loaded test's 0.02 s): the delivery task died of it, its request
    neither reported nor overdue for good."""
    monkeypatch.setattr(commitment_reports, "STRAND_AFTER", 10**9)
    srv = serving(root, commitment_scus=(Destination("MODALITY", "127.0.0.1", free_port()),))
    with srv:
        commitments = srv.server.commitments
        assert commitments is not None
        commitments.retry_delay = commitments.max_retry_delay = 0.0
        tries = _counted_attempts(commitments, monkeypatch)
        assert n_action(srv.port, action_information("1.2.8.211", *HELD)) == 0
        assert polled(lambda: len(tries) > 1100, timeout=60)
        assert "1.2.8.211" in commitments.pending
        commitments.overdue.clear()
    srv.archive.close()  # type: ignore[attr-defined]


def _counted_attempts(commitments, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A 1 for each attempt to deliver a report, from now on."""
    tries: list[int] = []
    attempt = commitments._attempt

    async def counted(*args):
        tries.append(1)
        return await attempt(*args)

    monkeypatch.setattr(commitments, "_attempt", counted)
    return tries


def polled(done, timeout: float = 20) -> bool:
    """Until ``done()`` (polled, with a deadline): True if so."""
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        time.sleep(0.01)
    return bool(done())


def test_a_backlog_found_at_start_leaves_room_to_go_overdue(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review74 F1: the backlog put overdue at a start counted in the overdue bound: no
    request could go overdue after it, and once a few requesters were unreachable every
    new request was refused 0213."""
    monkeypatch.setattr(commitment_reports, "STRAND_AFTER", 2)
    journal = CommitmentJournal(root, fsync=False)
    for n in range(8):
        journal.add(CommitmentRequest(f"1.2.8.22{n}", [Reference(CT, HELD[0])], "MODALITY"))
    journal.close()
    dead = free_port()  # (nothing listens: every report fails)
    scus = tuple(Destination(ae, "127.0.0.1", dead) for ae in ("MODALITY", "B", "C", "D"))
    srv = serving(root, commitment_scus=scus, max_pending_commitments=4)
    with srv:
        commitments = srv.server.commitments
        assert commitments is not None
        commitments.retry_delay = commitments.max_retry_delay = 0.02
        assert len(commitments.pending) == 2 and len(commitments.overdue) == 6
        for n, ae in ((1, "B"), (2, "C")):
            ds = action_information(f"1.2.8.23{n}", *HELD)
            assert n_action(srv.port, ds, calling=ae) == 0
        assert polled(lambda: {"1.2.8.231", "1.2.8.232"} <= set(commitments.overdue))
        assert n_action(srv.port, action_information("1.2.8.233", *HELD), calling="D") == 0
    srv.archive.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("seen", [True, False], ids=["seen-alive", "never-seen"])
def test_a_dead_nodes_requests_are_reported_by_a_live_node(
    root: Path, monkeypatch: pytest.MonkeyPatch, seen: bool
) -> None:
    """review88 F3: the requests a node accepted and did not report before it died
    were reported only by a node's start; a live node takes over those no live node
    holds (review90 N4: whether or not it saw that node alive)."""
    import asyncio

    from dicomstore.archive import Archive
    from dicomstore.services import serving as serving_module
    from dicomstore.services.server import ServerConfig

    monkeypatch.setattr(serving_module, "ORPHANS_LOOK_EVERY", 0.05)
    refs = [Reference(CT, uid) for uid in HELD]

    def another_node() -> tuple[Archive, CommitmentJournal]:
        other = Archive(root, fsync=False)
        journal = CommitmentJournal(root, fsync=False, node=True)  # its requests
        journal.add(CommitmentRequest("1.2.8.230", refs, "MODALITY"))
        return other, journal

    with report_listener("MODALITY") as (port, reports):
        before = another_node() if seen else None  # (alive when this one starts, else
        # it lives between two looks)
        scus = (Destination("MODALITY", "127.0.0.1", port),)

        async def main() -> None:
            archive = Archive(root, fsync=False)
            try:
                async with serving_module.running(
                    archive, ServerConfig(port=0, commitment_scus=scus)
                ):
                    other, journal = before or another_node()
                    assert not reports.received  # (held by the other node)
                    journal.close()
                    other.close()  # (the other node dies: its locks go)
                    await asyncio.to_thread(reports.wait, 1)
            finally:
                archive.close()

        asyncio.run(main())
    (report,) = reports.received
    assert report.event_type == 1 and sorted(report.committed) == sorted(HELD)


@pytest.mark.usefixtures("index_engine")  # (several nodes: on both index engines)
def test_a_request_stranded_on_a_live_node_is_replaced_asked_again_on_another(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review90 N1: two nodes on one storage; a request stranded on the first (its
    requester released at once and has no address) was 0115 on the second for the
    first node's life (behind a load balancer, a retry landing on any other node). The
    requester asking again on the second gets its report there."""
    from tests.services.commitment_testlib import Reports
    from tests.services.test_commitment_scp import journal_empty, report_after_release

    first, second = serving(root), serving(root)
    gated = report_after_release(first, monkeypatch)
    with first, second:
        ds = action_information("1.2.8.240", *HELD)
        assert n_action(first.port, ds) == 0  # (released at once: stranded)
        assert settled(first) and list(first.server.commitments.stranded) == ["1.2.8.240"]
        assert n_action(second.port, ds, calling="INTRUDER") == 0x0115
        gated[0] = False
        reports = Reports()
        assert n_action(second.port, ds, reports=reports) == 0
        (got,) = reports.received
        assert got.event_type == 1 and not got.new_association
        assert journal_empty(root, second)
    for srv in (first, second):
        srv.archive.close()  # type: ignore[attr-defined]


def test_a_request_that_cannot_be_stranded_is_let_go_and_said(
    root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Its journal file cannot be renamed (the disk): the request does not stay
    pending for ever in this node; it stays in the journal, unheld, for a node's look."""
    from tests.services.test_commitment_scp import report_after_release

    def broken(self: CommitmentJournal, transaction_uid: str) -> int | None:
        os.close(self._held.pop(transaction_uid))  # (as strand's finally does)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(CommitmentJournal, "strand", broken)
    srv = serving(root)
    report_after_release(srv, monkeypatch)
    with srv:
        assert n_action(srv.port, action_information("1.2.8.241", *HELD)) == 0
        assert settled(srv) and not srv.server.commitments.stranded
    srv.archive.close()  # type: ignore[attr-defined]
    assert "storage commitment journal: [Errno 5] Input/output error" in caplog.text
    assert [r.transaction_uid for r in CommitmentJournal(root).pending()] == ["1.2.8.241"]
