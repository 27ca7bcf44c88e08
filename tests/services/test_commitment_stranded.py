"""Storage Commitment reports that cannot be delivered (services/commitment_reports.py,
review68 #2, review69 M1): refused for good, a request is stranded (it waits in the
journal, holds no pending slot); not taken in STRAND_AFTER tries, it is tried on with
its slot freed; its references are verified once, not at every try."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from tests.conftest import free_port, wait_listening
from tests.services.commitment_testlib import (
    HELD,
    action_information,
    fill,
    report_listener,
    settled,
)
from tests.services.test_commitment_scp import n_action, serving

from dicomstore.archive.commitment import CommitmentJournal
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
