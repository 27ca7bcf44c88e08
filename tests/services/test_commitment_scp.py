"""The Storage Commitment Push Model SCP with pynetdicom as SCU (issue 16, PS3.4 J.3):
stored, altered and missing instances reported on the same association and, once the
requester has released, on a new association to its configured address (role
selection); a pending request reported after a restart; refusals of bad requests and
by policy; the journal and the audit records."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from tests.archive.archive_testlib import CT, MR
from tests.conftest import ServerThread, free_port
from tests.services.commitment_testlib import (
    ALTERED,
    HELD,
    MISSING,
    SC,
    SC_INSTANCE,
    Reports,
    action_information,
    fill,
    report_listener,
    settled,
)
from tests.services.query_testlib import Audit

from dicomstore import uids
from dicomstore.aio.association import Timeouts
from dicomstore.archive import Archive
from dicomstore.archive.commitment import (
    CLASS_INSTANCE_CONFLICT,
    NO_SUCH_OBJECT_INSTANCE,
    PROCESSING_FAILURE,
    Reference,
)
from dicomstore.archive.commitment_journal import CommitmentJournal, CommitmentRequest
from dicomstore.archive.reader import ArchiveReader
from dicomstore.policy import ACTIONS, Peer, Policy
from dicomstore.services import commitment_reports
from dicomstore.services.destinations import Destination
from dicomstore.services.server import ServerConfig

#: On both index engines (issue 17).
pytestmark = pytest.mark.usefixtures("index_engine")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "archive"
    fill(root)
    return root


def serving(root: Path, audit: Audit | None = None, **config: Any) -> ServerThread:
    archive = Archive(root, fsync=False)
    thread = ServerThread(ServerConfig(port=0, **config), archive, audit=audit or Audit())
    thread.archive = archive  # type: ignore[attr-defined]
    return thread


@pytest.fixture
def server(root: Path) -> Iterator[tuple[ServerThread, Audit]]:
    audit = Audit()
    srv = serving(root, audit)
    with srv:
        yield srv, audit
    srv.archive.close()  # type: ignore[attr-defined]


def n_action(
    port: int,
    ds: Any,
    *,
    reports: Reports | None = None,
    calling: str = "MODALITY",
    action_type: int = 1,
    instance: str = SC_INSTANCE,
    release_first: threading.Event | None = None,
) -> int:
    """One N-ACTION by pynetdicom: its status. With ``reports`` the association waits
    for one report; else it is released at once (then ``release_first`` is set)."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(SC)
    handlers = [(evt.EVT_N_EVENT_REPORT, reports.on_report)] if reports else []
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMSTORE", evt_handlers=handlers)
    assert assoc.is_established
    try:
        status, _reply = assoc.send_n_action(ds, action_type, SC, instance)
        if reports is not None and status.Status == 0:
            reports.wait()
            reports.answered()  # (released before its RSP went out, the report is lost)
    finally:
        assoc.release()
        if release_first is not None:
            release_first.set()
    return int(status.Status)


def journal_empty(root: Path, srv: ServerThread) -> bool:
    """Every accepted request reported, and none left in the journal."""
    return settled(srv) and not list(CommitmentJournal(root).pending())


def report_after_release(srv: ServerThread, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Reports wait (verify is held) until no association is open: a request
    "released at once" is then never reported on its own association (else, if the
    report beat the A-RELEASE-RQ, pynetdicom answered it 0110 or died sending its RSP
    in Sta7, and the release waited 30 s). Clear the returned flag before a request
    whose report should go on its association."""
    real_verify = commitment_reports.verify
    gated = [True]

    def verify_once_released(reader, refs):
        deadline = time.monotonic() + 20
        while gated[0] and srv.server.associations and time.monotonic() < deadline:
            time.sleep(0.01)
        return real_verify(reader, refs)

    monkeypatch.setattr(commitment_reports, "verify", verify_once_released)
    return gated


def test_report_on_the_same_association(root: Path, server) -> None:
    srv, audit = server
    reports = Reports()
    ds = action_information("1.2.8.100", *HELD, ALTERED, MISSING)
    assert n_action(srv.port, ds, reports=reports) == 0x0000
    (report,) = reports.received
    assert not report.new_association
    assert report.event_type == 2  # failures exist
    assert report.info.TransactionUID == "1.2.8.100"
    assert report.info.RetrieveAETitle == "DICOMSTORE"
    assert report.committed == HELD
    assert report.failed == {ALTERED: PROCESSING_FAILURE, MISSING: NO_SUCH_OBJECT_INSTANCE}
    assert journal_empty(root, srv)
    phases = [(r["phase"], r["status"]) for r in audit.records]
    assert phases == [("request", "0000"), ("report", "0000")]
    assert audit.records[1]["reported"] == "on the same association"
    assert audit.records[1]["committed"] == 2 and len(audit.records[1]["failed"]) == 2


def test_all_committed_is_event_type_1(root: Path, server) -> None:
    srv, _audit = server
    reports = Reports()
    assert n_action(srv.port, action_information("1.2.8.101", *HELD), reports=reports) == 0
    (report,) = reports.received
    assert report.event_type == 1 and report.committed == HELD and report.failed == {}
    assert "FailedSOPSequence" not in report.info


def test_class_instance_conflict(root: Path, server) -> None:
    srv, _audit = server
    reports = Reports()
    ds = action_information("1.2.8.102", HELD[0], sop_class=MR)
    assert n_action(srv.port, ds, reports=reports) == 0
    assert reports.received[0].failed == {HELD[0]: CLASS_INSTANCE_CONFLICT}
    assert reports.received[0].committed == []


@pytest.mark.parametrize("syntax", [None, uids.EXPLICIT_VR_BE], ids=["any", "big-endian-only"])
def test_report_on_a_new_association_once_the_requester_released(
    root: Path, monkeypatch: pytest.MonkeyPatch, syntax: str | None
) -> None:
    """(review72 F5: an SCU that accepts Explicit VR Big Endian only was never reported to:
    the archive proposed Little Endian alone.)"""
    released = threading.Event()
    real_verify = commitment_reports.verify

    def verify_after_release(reader, refs):  # the report waits until the requester left
        assert released.wait(30)
        return real_verify(reader, refs)

    monkeypatch.setattr(commitment_reports, "verify", verify_after_release)
    with report_listener("MODALITY", syntaxes=[syntax] if syntax else None) as (port, reports):
        scu = Destination("MODALITY", "127.0.0.1", port)
        audit = Audit()
        srv = serving(root, audit, commitment_scus=(scu,))
        with srv:
            ds = action_information("1.2.8.103", *HELD, ALTERED, MISSING)
            assert n_action(srv.port, ds, release_first=released) == 0
            (report,) = reports.wait()
            assert report.new_association  # the archive requested it
            assert report.event_type == 2 and report.info.TransactionUID == "1.2.8.103"
            assert report.committed == HELD
            assert report.failed == {ALTERED: PROCESSING_FAILURE, MISSING: NO_SUCH_OBJECT_INSTANCE}
            assert journal_empty(root, srv)
        srv.archive.close()  # type: ignore[attr-defined]
    assert audit.records[-1]["reported"] == "on a new association"


def test_a_failed_report_is_retried_and_kept_until_acknowledged(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SCU's listener is down at first: the request stays in the journal and
    the report is retried (backoff) until an N-EVENT-REPORT-RSP comes; its references
    verified once, not at every try (review68 #2)."""
    released = threading.Event()
    real_verify = commitment_reports.verify
    verified: list[int] = []
    attempts: list[int] = []

    def verify_after_release(reader, refs):
        assert released.wait(30)
        verified.append(1)
        return real_verify(reader, refs)

    send_new = commitment_reports.CommitmentService._send_new

    async def counted(self, scu, report):
        attempts.append(1)
        return await send_new(self, scu, report)

    monkeypatch.setattr(commitment_reports, "verify", verify_after_release)
    monkeypatch.setattr(commitment_reports.CommitmentService, "_send_new", counted)
    port = free_port()
    srv = serving(root, commitment_scus=(Destination("MODALITY", "127.0.0.1", port),))
    with srv:
        commitments = srv.server.commitments
        assert commitments is not None
        commitments.retry_delay = 0.05
        assert (
            n_action(srv.port, action_information("1.2.8.104", *HELD), release_first=released) == 0
        )
        deadline = time.monotonic() + 20
        while len(attempts) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(attempts) >= 2 and verified == [1]  # refused connection, tried again
        assert [r.transaction_uid for r in CommitmentJournal(root).pending()] == ["1.2.8.104"]
        # the listener comes up on that port: the next attempt is acknowledged
        with report_listener("MODALITY", port) as (_port, reports):
            (report,) = reports.wait()
            assert report.event_type == 1 and report.committed == HELD
            assert journal_empty(root, srv)
    srv.archive.close()  # type: ignore[attr-defined]


def test_a_stranded_request_sent_again_holds_no_slot(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review36c H1: the same Transaction UID sent again was 0115, but it took a
    pending slot for good: max-pending of them refused everyone 0213 again. (Since
    review49 #3 a stranded one asked again replaces it: stranded again here.)"""
    srv = serving(root, max_pending_commitments=1)
    gated = report_after_release(srv, monkeypatch)
    with srv:
        ds = action_information("1.2.8.150", *HELD)
        assert n_action(srv.port, ds) == 0x0000  # (released at once: stranded)
        assert settled(srv)
        assert n_action(srv.port, ds) == 0x0000  # (replaces it; released: stranded)
        assert settled(srv)
        assert list(srv.server.commitments.stranded) == ["1.2.8.150"]
        gated[0] = False
        reports = Reports()
        other = action_information("1.2.8.151", *HELD)
        assert n_action(srv.port, other, reports=reports, calling="OTHER") == 0x0000
    srv.archive.close()  # type: ignore[attr-defined]


def test_a_stranded_request_asked_again_is_reported_on_the_new_association(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review49 #3: a requester that released at once (its report stranded: no
    address) and asks again with the same Transaction UID, now waiting, was refused
    0115 'already pending' for ever, across restarts; it gets its report."""
    srv = serving(root)
    gated = report_after_release(srv, monkeypatch)
    with srv:
        ds = action_information("1.2.8.152", *HELD)
        assert n_action(srv.port, ds) == 0x0000
        assert settled(srv)
        gated[0] = False
        reports = Reports()
        assert n_action(srv.port, ds, reports=reports) == 0x0000
        (got,) = reports.received
        assert got.event_type == 1 and not got.new_association  # all committed, there
        assert journal_empty(root, srv) and not srv.server.commitments.stranded
    srv.archive.close()  # type: ignore[attr-defined]


def test_a_stranded_request_is_not_replaced_by_another_ae_title(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review52 L2: a request of another calling AE title with a stranded request's
    Transaction UID replaced it (answered 0000): the first requester's report was lost.
    Only its own AE title may ask again; another is 0115, as for one pending."""
    srv = serving(root)
    report_after_release(srv, monkeypatch)
    with srv:
        ds = action_information("1.2.8.153", *HELD)
        assert n_action(srv.port, ds) == 0x0000  # (released at once: stranded)
        assert settled(srv)
        assert n_action(srv.port, ds, calling="INTRUDER") == 0x0115
        assert list(srv.server.commitments.stranded) == ["1.2.8.153"]
    srv.archive.close()  # type: ignore[attr-defined]


def test_a_report_answered_0110_is_sent_again_a_few_times(
    root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """review36a #10: a report the requester answered 0110 (it could not process it)
    was taken as delivered at once; it is sent again, PROCESSING_FAILURE_TRIES in all.
    review75 F5: the last line then says it was given up, not as if reported."""
    caplog.set_level(logging.INFO, "dicomstore")
    tries = commitment_reports.PROCESSING_FAILURE_TRIES
    released = threading.Event()
    real_verify = commitment_reports.verify

    def verify_after_release(reader, refs):  # every try goes to the listener (not one
        assert released.wait(30)  # on the requesting association, answered 0110 there)
        return real_verify(reader, refs)

    monkeypatch.setattr(commitment_reports, "verify", verify_after_release)
    with report_listener("MODALITY") as (port, reports):
        reports.status = 0x0110
        srv = serving(root, commitment_scus=(Destination("MODALITY", "127.0.0.1", port),))
        with srv:
            commitments = srv.server.commitments
            assert commitments is not None
            commitments.retry_delay = 0.05
            ds = action_information("1.2.8.140", *HELD)
            assert n_action(srv.port, ds, release_first=released) == 0x0000
            reports.wait(tries)
            assert settled(srv) and journal_empty(root, srv)
        srv.archive.close()  # type: ignore[attr-defined]
    assert len(reports.received) == tries
    assert (
        "1.2.8.140 reported on a new association (2 of 2 committed, answered 0110:"
        " given up)" in caplog.text
    )


def test_a_report_answered_0110_after_failed_tries_is_still_sent_again(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review117 F4: the tries that failed to connect counted as 0110 answers: after
    two, the first 0110 was final ("twice more" did not hold)."""
    tries = commitment_reports.PROCESSING_FAILURE_TRIES
    port = free_port()  # (nothing there at first)
    srv = serving(root, commitment_scus=(Destination("MODALITY", "127.0.0.1", port),))
    with srv:
        commitments = srv.server.commitments
        assert commitments is not None
        commitments.retry_delay = commitments.max_retry_delay = 0.05
        failed = threading.Event()
        attempt = commitments._attempt

        async def counted(*args):
            try:
                return await attempt(*args)
            except OSError:
                if len(failed_tries) >= 1:
                    failed.set()
                failed_tries.append(1)
                raise

        failed_tries: list[int] = []
        monkeypatch.setattr(commitments, "_attempt", counted)
        assert n_action(srv.port, action_information("1.2.8.141", *HELD)) == 0x0000
        assert failed.wait(30)  # (two tries failed: nothing listened)
        with report_listener("MODALITY", port) as (_port, reports):
            reports.status = 0x0110
            reports.wait(tries)
            assert settled(srv)
    srv.archive.close()  # type: ignore[attr-defined]
    assert len(reports.received) == tries


def test_the_dimse_timeout_bounds_a_report_s_answer(root: Path) -> None:
    """review117 F5: a report's N-EVENT-REPORT-RSP was waited for 60 s, whatever
    --dimse-timeout said."""
    srv = serving(root, timeouts=Timeouts(dimse=7.5))
    with srv:
        assert srv.server.commitments is not None
        assert srv.server.commitments.report_timeout == 7.5
    srv.archive.close()  # type: ignore[attr-defined]


def test_a_pending_request_is_reported_after_a_restart(root: Path) -> None:
    """Accepted before a crash (in the journal, never reported): reported at start."""
    CommitmentJournal(root).add(
        CommitmentRequest(
            "1.2.8.105",
            [Reference(CT, HELD[0]), Reference(CT, MISSING)],
            "MODALITY",
            "127.0.0.1",
        )
    )
    with report_listener("MODALITY") as (port, reports):
        srv = serving(root, commitment_scus=(Destination("MODALITY", "127.0.0.1", port),))
        with srv:
            (report,) = reports.wait()
            assert report.new_association and report.info.TransactionUID == "1.2.8.105"
            assert report.committed == [HELD[0]]
            assert report.failed == {MISSING: NO_SUCH_OBJECT_INSTANCE}
            assert journal_empty(root, srv)
        srv.archive.close()  # type: ignore[attr-defined]


def _with_items(**changes: Any) -> Any:
    ds = action_information("1.2.8.110", HELD[0])
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("ds", "kwargs", "status"),
    [
        (lambda: _with_items(TransactionUID=None), {}, 0x0120),  # missing attribute
        (lambda: _with_items(TransactionUID=""), {}, 0x0121),  # missing attribute value
        (lambda: _with_items(TransactionUID="1.2.abc"), {}, 0x0106),  # not a UID
        (lambda: _with_items(ReferencedSOPSequence=None), {}, 0x0120),
        (lambda: _with_items(ReferencedSOPSequence=[]), {}, 0x0121),
        (lambda: action_information("1.2.8.112", HELD[0]), {"action_type": 2}, 0x0123),
        (lambda: action_information("1.2.8.113", HELD[0]), {"instance": "1.2.3"}, 0x0112),
        (lambda: None, {}, 0x0115),  # no Action Information
    ],
    ids=[
        "no-transaction",
        "empty-transaction",
        "bad-transaction",
        "no-sequence",
        "empty-sequence",
        "action-type-2",
        "other-instance",
        "no-information",
    ],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_bad_requests_are_refused(root: Path, server, ds, kwargs, status) -> None:
    srv, audit = server
    assert n_action(srv.port, ds(), **kwargs) == status
    assert audit.records[-1]["phase"] == "request"
    assert audit.records[-1]["status"] == f"{status:04X}" and audit.records[-1]["error_comment"]
    assert list(CommitmentJournal(root).pending()) == []


def test_a_reference_to_a_uid_stored_under_none_is_failed_not_the_request(server) -> None:
    """review117 F2: an item UID that is no PS3.5 9.1 UID refused the whole request 0106
    (C-STORE stores some such: a leading zero); now the report fails it 0112."""
    srv, _ = server
    reports = Reports()
    ds = action_information("1.2.8.111", "1..2", HELD[0])
    assert n_action(srv.port, ds, reports=reports) == 0x0000
    (report,) = reports.received
    assert report.committed == [HELD[0]] and report.failed == {"1..2": 0x0112}


def test_limits_and_a_transaction_uid_still_pending(
    root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    gate = threading.Event()
    real_verify = commitment_reports.verify

    def held_back(reader, refs):
        assert gate.wait(30)
        return real_verify(reader, refs)

    monkeypatch.setattr(commitment_reports, "verify", held_back)
    srv = serving(root, max_commitment_references=2, max_pending_commitments=1)
    with srv:
        assert n_action(srv.port, action_information("1.2.8.120", *HELD, ALTERED)) == 0x0213
        assert n_action(srv.port, action_information("1.2.8.121", *HELD)) == 0x0000
        # pending (its report waits): the same Transaction UID again, and one too many
        assert n_action(srv.port, action_information("1.2.8.121", *HELD)) == 0x0115
        assert n_action(srv.port, action_information("1.2.8.122", *HELD)) == 0x0213
        gate.set()
    srv.archive.close()  # type: ignore[attr-defined]
    # no address for MODALITY, and its association is gone: it waits in the journal
    assert [r.transaction_uid for r in CommitmentJournal(root).pending()] == ["1.2.8.121"]
    # said in one line (review35b F5: a KeyError traceback and a retry came first)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_requests_that_cannot_be_reported_hold_no_slot(
    root: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review36a #1: requests from an AE without an address whose association ended
    held a pending slot for ever (restarts too): max_pending of them refused everyone
    0213. They wait in the journal, at most max_pending of them, oldest dropped first."""
    audit = Audit()
    srv = serving(root, audit, max_pending_commitments=2)
    gated = report_after_release(srv, monkeypatch)
    with srv:
        for n in range(3):  # (each released at once: no way to report it)
            assert n_action(srv.port, action_information(f"1.2.8.13{n}", *HELD)) == 0x0000
            assert settled(srv)
        gated[0] = False
        reports = Reports()
        ds = action_information("1.2.8.139", *HELD)
        assert n_action(srv.port, ds, reports=reports, calling="OTHER") == 0x0000
        assert [r.info.TransactionUID for r in reports.received] == ["1.2.8.139"]
    srv.archive.close()  # type: ignore[attr-defined]
    waiting = sorted(r.transaction_uid for r in CommitmentJournal(root).pending())
    assert waiting == ["1.2.8.131", "1.2.8.132"]
    assert "1.2.8.130: dropped, never reported: over 2 requests wait" in caplog.text
    # (review117 F6: the audit trail's last word on it was its request's 0000)
    (dropped,) = [r for r in audit.records if r.get("phase") == "dropped"]
    assert dropped["transaction_uid"] == "1.2.8.130"
    assert dropped["reported"] == "never: over 2 requests wait for an address"


def test_policy_without_the_commit_right_is_refused(root: Path) -> None:
    policy = Policy(
        peers=[Peer("MODALITY", may=ACTIONS - {"commit"}), Peer("TRUSTED")],
    )
    archive = Archive(root, fsync=False)
    audit = Audit()
    with ServerThread(ServerConfig(port=0), archive, gatekeeper=policy, audit=audit) as srv:
        assert n_action(srv.port, action_information("1.2.8.130", *HELD)) == 0x0124
        reports = Reports()
        ds = action_information("1.2.8.131", *HELD)
        assert n_action(srv.port, ds, reports=reports, calling="TRUSTED") == 0x0000
    archive.close()
    assert audit.records[0]["status"] == "0124" and audit.records[0]["calling_ae"] == "MODALITY"


def _c_store(port: int, uid: str) -> int:
    """One C-STORE by pynetdicom (its status)."""
    from io import BytesIO

    from pydicom.filereader import read_dataset
    from tests.archive.archive_testlib import dataset

    ds = read_dataset(BytesIO(dataset(uid)), False, True)
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ae = AE(ae_title="MODALITY")
    ae.dimse_timeout = 10  # (a modality's: held behind verifications, it gives up)
    ae.add_requested_context(CT, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMSTORE")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(ds).get("Status", -1))
    finally:
        assoc.release()


def test_verifications_take_no_thread_a_c_store_needs(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review49 #1: verifications ran in the threads that commit C-STOREs (six by
    default), unbounded: six large requests held a one-instance C-STORE for 133 s.
    They have a thread of their own: with more held than the default pool has
    threads, a C-STORE is stored at once; and a request looks its references up in
    the index in one connection, not one per reference."""
    gate = threading.Event()
    real_verify = commitment_reports.verify
    connections: list[int] = []

    verifying = threading.local()

    def held(reader, refs):
        assert gate.wait(60)
        verifying.now = True
        try:
            return real_verify(reader, refs)
        finally:
            verifying.now = False

    real_connect = ArchiveReader.connect

    def counted(self):
        if getattr(verifying, "now", False):
            connections.append(1)
        return real_connect(self)

    monkeypatch.setattr(ArchiveReader, "connect", counted)
    monkeypatch.setattr(commitment_reports, "verify", held)
    with report_listener("MODALITY") as (port, reports):
        srv = serving(root, commitment_scus=(Destination("MODALITY", "127.0.0.1", port),))
        with srv:
            for n in range(8):  # (the default pool: min(32, cores + 4) threads)
                ds = action_information(f"1.2.8.16{n}", *HELD, ALTERED, MISSING)
                assert n_action(srv.port, ds) == 0x0000
            assert _c_store(srv.port, "1.2.8.77") == 0x0000  # (not behind them)
            gate.set()
            reports.wait(8)
            assert journal_empty(root, srv)
        srv.archive.close()  # type: ignore[attr-defined]
    # (per request: the rows, those of the files that failed again (review88 F6), then
    # make_durable)
    assert 8 <= len(connections) <= 3 * 8


@contextmanager
def two_requesters(
    root: Path, monkeypatch: pytest.MonkeyPatch, **config: Any
) -> Iterator[tuple[ServerThread, threading.Event, Reports, Reports]]:
    """A server whose reports wait for the yielded event, and the report listeners of
    MODALITY and OTHER (each with its --commitment-scu address)."""
    gate = threading.Event()
    real_verify = commitment_reports.verify
    monkeypatch.setattr(
        commitment_reports, "verify", lambda r, refs: gate.wait(30) and real_verify(r, refs)
    )
    with report_listener("MODALITY") as (port, reports), report_listener("OTHER") as (o, others):
        scus = (Destination("MODALITY", "127.0.0.1", port), Destination("OTHER", "127.0.0.1", o))
        srv = serving(root, commitment_scus=scus, **config)
        with srv:
            yield srv, gate, reports, others
        srv.archive.close()  # type: ignore[attr-defined]


def test_pending_references_are_bounded(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each pending request holds its references in memory (review49 #1: 25 MiB for
    65,535, and 1000 may be pending): at most 4 x --max-commitment-references of them,
    and one calling AE title half of that (the others' room)."""
    with two_requesters(root, monkeypatch, max_commitment_references=2) as served:
        srv, gate, reports, others = served
        for n in range(2):
            assert n_action(srv.port, action_information(f"1.2.8.17{n}", *HELD)) == 0
        assert n_action(srv.port, action_information("1.2.8.179", *HELD)) == 0x0213
        for n in range(2, 4):
            ds = action_information(f"1.2.8.17{n}", *HELD)
            assert n_action(srv.port, ds, calling="OTHER") == 0
        ds = action_information("1.2.8.178", *HELD)
        assert n_action(srv.port, ds, calling="THIRD") == 0x0213  # (8 in all)
        gate.set()
        reports.wait(2)
        others.wait(2)
        assert settled(srv)
        assert n_action(srv.port, action_information("1.2.8.179", *HELD)) == 0
        assert settled(srv)


def test_one_requester_holds_half_the_pending_requests(
    root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with two_requesters(root, monkeypatch, max_pending_commitments=2) as served:
        srv, gate, reports, others = served
        assert n_action(srv.port, action_information("1.2.8.190", *HELD)) == 0
        assert n_action(srv.port, action_information("1.2.8.191", *HELD)) == 0x0213
        ds = action_information("1.2.8.192", *HELD)
        assert n_action(srv.port, ds, calling="OTHER") == 0
        gate.set()
        reports.wait(1)
        others.wait(1)
        assert settled(srv)
    assert (
        "N-ACTION answered 0213: 1 requests of MODALITY (2 references) pending already"
        in caplog.text
    )


def test_damage_found_is_logged(root: Path, server, caplog: pytest.LogCaptureFixture) -> None:
    """review49 #5: a changed or missing file found by a commitment request was told
    the requester only; the operator sees it in the log."""
    srv, _audit = server
    gone = ALTERED  # (its file removed: indexed, missing)
    with caplog.at_level(logging.WARNING, logger="dicomstore.server"):
        reports = Reports()
        ds = action_information("1.2.8.180", *HELD, ALTERED, MISSING)
        assert n_action(srv.port, ds, reports=reports) == 0
    lines = [r.getMessage() for r in caplog.records]
    assert any("2 of 4 not committed" in line and "0112 not in the archive x1" in line
               for line in lines), lines  # fmt: skip
    assert f"archive damage: instance {gone}: file content differs from what was stored" in lines
    assert not any(f"instance {MISSING}" in line for line in lines)  # (never stored: no damage)


def test_a_report_answered_0110_on_an_open_association_is_sent_there_again(
    root: Path, server
) -> None:
    """review49 #4: with no address for the requester, a report it answered 0110 on
    its association, still open, was stranded at once (the README says: twice more)."""
    srv, _audit = server
    srv.server.commitments.retry_delay = 0.05
    reports = Reports()
    reports.status = 0x0110
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(SC)
    handlers = [(evt.EVT_N_EVENT_REPORT, reports.on_report)]
    assoc = ae.associate("127.0.0.1", srv.port, ae_title="DICOMSTORE", evt_handlers=handlers)
    assert assoc.is_established
    try:
        status, _ = assoc.send_n_action(action_information("1.2.8.181", *HELD), 1, SC, SC_INSTANCE)
        assert status.Status == 0
        reports.wait(1)
        reports.status = 0x0000
        reports.wait(2)
        reports.answered()
    finally:
        assoc.release()
    assert [r.new_association for r in reports.received[:2]] == [False, False]
    assert settled(srv) and not srv.server.commitments.stranded
