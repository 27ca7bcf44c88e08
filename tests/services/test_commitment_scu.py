"""The Storage Commitment SCU (issue 16, PS3.4 J.3): `dicomstore send --commit` against
our SCP (all committed; a file altered after it was stored; the report and exit code
8), against pynetdicom as SCP (its N-EVENT-REPORT on the same association), and the
Python API on an association of its own."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from tests.conftest import ServerThread, free_port
from tests.services.commitment_testlib import (
    HELD,
    MISSING,
    SC,
    SC_INSTANCE,
    fill,
    settled,
)
from tests.services.query_testlib import Audit
from tests.services.test_scu_support import sendable, uid_of

from dicomstore.archive import Archive
from dicomstore.archive.commitment import NO_SUCH_OBJECT_INSTANCE, Reference
from dicomstore.cli import send as cli_send
from dicomstore.services import commitment_reports
from dicomstore.services.commitment_scu import commit
from dicomstore.services.destinations import Destination
from dicomstore.services.server import ServerConfig

CT = "1.2.840.10008.5.1.4.1.1.2"


def _main(*args: str) -> int:
    return cli_send.main([*args, "--retry-delay", "0.001", "--log-level", "error"])


@pytest.fixture
def archive_server(tmp_path: Path) -> Iterator[tuple[ServerThread, Archive]]:
    archive = Archive(tmp_path / "archive", fsync=False)
    with ServerThread(ServerConfig(port=0), archive) as srv:
        yield srv, archive
    archive.close()


def test_send_commit_all_committed(tmp_path: Path, archive_server, capsys) -> None:
    srv, _archive = archive_server
    files = sendable(compressed=False)[:3]
    report = tmp_path / "report.jsonl"
    code = _main("127.0.0.1", str(srv.port), *map(str, files), "--commit", "--report", str(report))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "committed 3 of 3 stored instance(s)" in out
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    commitments = [row for row in lines if row.get("event") == "commitment"]
    assert {row["sop_instance_uid"] for row in commitments} == {uid_of(p) for p in files}
    assert {row["commitment"] for row in commitments} == {"committed"}
    assert settled(srv)


def test_send_commit_an_instance_altered_after_it_was_stored_exits_8(
    tmp_path: Path, archive_server, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    srv, archive = archive_server
    files = sendable(compressed=False)[:3]
    victim = uid_of(files[1])
    real_verify = commitment_reports.verify

    def alter_then_verify(reader, refs):  # the disk changes between C-STORE and the check
        path = reader.path(victim)
        data = bytearray(path.read_bytes())
        data[-3] ^= 0xFF
        path.write_bytes(bytes(data))
        return real_verify(reader, refs)

    monkeypatch.setattr(commitment_reports, "verify", alter_then_verify)
    code = _main("127.0.0.1", str(srv.port), *map(str, files), "--commit")
    out = capsys.readouterr().out
    assert code == 8, out
    assert "committed 2 of 3 stored instance(s)" in out
    assert f"{files[1]}: failed, 0110 processing failure" in out


def test_send_commit_to_an_scp_without_storage_commitment_exits_8(tmp_path: Path, capsys) -> None:
    from tests.services.test_scu_retry import FlakyHandler

    files = sendable(compressed=False)[:2]
    with ServerThread(ServerConfig(port=0), FlakyHandler()) as srv:  # no archive: no SC
        code = _main("127.0.0.1", str(srv.port), *map(str, files), "--commit")
    out = capsys.readouterr().out
    assert code == 8
    assert "committed 0 of 2 stored instance(s)" in out and "unknown" in out


class PynetdicomSCP:
    """pynetdicom as Storage and Storage Commitment SCP: it reports, from its N-ACTION
    handler, on the same association (``failed``: SOP Instance UIDs it fails, 0112)."""

    def __init__(self, failed: set[str], transaction: str | None = None) -> None:
        self.failed = failed
        self.transaction = transaction  # (what it reports as Transaction UID, if not it)
        self.stored: set[str] = set()
        self.requests: list[Dataset] = []
        self.report_status: list[int] = []

    def on_store(self, event: Any) -> int:
        self.stored.add(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def on_action(self, event: Any) -> tuple[int, None]:
        info = event.action_information
        self.requests.append(info)
        report = Dataset()
        report.TransactionUID = (
            self.transaction if self.transaction is not None else info.TransactionUID
        )
        ok, bad = [], []
        for item in info.ReferencedSOPSequence:
            ref = Dataset()
            ref.ReferencedSOPClassUID = item.ReferencedSOPClassUID
            ref.ReferencedSOPInstanceUID = item.ReferencedSOPInstanceUID
            if str(item.ReferencedSOPInstanceUID) in self.failed:
                ref.FailureReason = 0x0112
                bad.append(ref)
            else:
                ok.append(ref)
        if ok:
            report.ReferencedSOPSequence = ok
        if bad:
            report.FailedSOPSequence = bad
        status, _reply = event.assoc.send_n_event_report(report, 2 if bad else 1, SC, SC_INSTANCE)
        self.report_status.append(int(status.Status))
        return 0x0000, None


def test_send_commit_against_pynetdicom_scp(tmp_path: Path, capsys) -> None:
    files = sendable(compressed=False)[:3]
    failed = {uid_of(files[2])}
    peer = PynetdicomSCP(failed)
    handlers = [(evt.EVT_C_STORE, peer.on_store), (evt.EVT_N_ACTION, peer.on_action)]
    code = send_commit_to_pynetdicom(handlers, files)
    out = capsys.readouterr().out
    assert code == 8, out
    assert peer.stored == {uid_of(p) for p in files}
    (request,) = peer.requests
    assert {str(i.ReferencedSOPInstanceUID) for i in request.ReferencedSOPSequence} == peer.stored
    assert peer.report_status == [0x0000]  # our SCU acknowledged the report
    assert "committed 2 of 3 stored instance(s)" in out
    assert f"{files[2]}: failed, 0112 no such object instance" in out


def send_commit_to_pynetdicom(handlers: list[Any], files: list[Path], *argv: str) -> int:
    """``dicomstore send --commit`` of ``files`` to pynetdicom with ``handlers``: its code."""
    ae = AE(ae_title="PYSCP")
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(SC)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    try:
        port = str(server.server_address[1])
        return _main("127.0.0.1", port, *map(str, files), "--commit", "--aec", "PYSCP", *argv)
    finally:
        server.shutdown()


def test_send_commit_with_a_report_it_cannot_read_says_so(tmp_path: Path, capsys) -> None:
    """review73 F1: a report refused said "no report" and to use --commit-listen."""
    files = sendable(compressed=False)[:2]
    peer = PynetdicomSCP(set(), transaction="")
    handlers = [(evt.EVT_C_STORE, peer.on_store), (evt.EVT_N_ACTION, peer.on_action)]
    code = send_commit_to_pynetdicom(handlers, files, "--commit-timeout", "0.5")
    out = capsys.readouterr().out
    assert code == 8 and peer.report_status == [0x0121], out
    assert "that could be read (one was refused: 0121 Transaction UID empty)" in out


def test_send_commit_without_a_report_says_why_and_what_to_do(tmp_path: Path, capsys) -> None:
    """review48 M1: Orthanc reports on an association of its own; without --commit-listen
    the summary listed each instance 'unknown', the reason only in a stderr warning."""
    files = sendable(compressed=False)[:2]
    handlers = [
        (evt.EVT_C_STORE, lambda event: 0x0000),
        (evt.EVT_N_ACTION, lambda event: (0x0000, None)),  # (its report: elsewhere, later)
    ]
    code = send_commit_to_pynetdicom(handlers, files, "--commit-timeout", "0.5")
    out = capsys.readouterr().out
    assert code == 8, out
    assert "committed 0 of 2 stored instance(s)" in out
    assert "  unknown: 2 (no report within 0.5 s on this association" in out
    assert "needs --commit-listen PORT)" in out


def test_commit_api_on_an_association_of_its_own(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    fill(root)
    archive = Archive(root, fsync=False)
    refs = [Reference(CT, HELD[0]), Reference(CT, MISSING)]
    try:
        with ServerThread(ServerConfig(port=0), archive) as srv:
            result = asyncio.run(commit("127.0.0.1", srv.port, refs, called_ae="DICOMSTORE"))
    finally:
        archive.close()
    assert result.status == 0 and result.event_type == 2
    assert result.reported_on == "same association"
    assert result.outcome(HELD[0]) == ("committed", None)
    assert result.outcome(MISSING) == ("failed", NO_SUCH_OBJECT_INSTANCE)
    assert not result.all_committed


def test_send_commit_listen_takes_the_report_on_a_new_association(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--commit-listen: the SCU releases after the N-ACTION-RSP; our SCP, once the
    requesting association is gone, opens one to the configured address (role
    selection) and the listener there takes the report."""
    files = sendable(compressed=False)[:2]
    listen = free_port()
    archive = Archive(tmp_path / "archive", fsync=False)
    config = ServerConfig(port=0, commitment_scus=(Destination("COMMITTER", "127.0.0.1", listen),))
    real_verify = commitment_reports.verify
    audit = Audit()
    with ServerThread(config, archive, audit=audit) as srv:

        def verify_once_released(reader, refs):
            deadline = time.monotonic() + 20
            while srv.server.associations and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not srv.server.associations
            return real_verify(reader, refs)

        monkeypatch.setattr(commitment_reports, "verify", verify_once_released)
        args = ["127.0.0.1", str(srv.port), *map(str, files), "--aet", "COMMITTER"]
        code = _main(*args, "--commit-listen", str(listen), "--commit-timeout", "20")
    archive.close()
    out = capsys.readouterr().out
    assert code == 0, out
    assert "committed 2 of 2 stored instance(s)" in out
    report = audit.records[-1]
    assert (report["phase"], report["reported"]) == ("report", "on a new association")
    assert report["status"] == "0000"  # our listener acknowledged it


def test_send_commit_listen_without_a_report_says_the_scp_must_know_where(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review56 F7: our SCP not told where COMMITTER listens (no --commitment-scu)
    strands the report; the summary said 'no report within N s', the cause only in
    the SCP's log."""
    files = sendable(compressed=False)[:1]
    archive = Archive(tmp_path / "archive", fsync=False)
    real_verify = commitment_reports.verify
    with ServerThread(ServerConfig(port=0), archive) as srv:

        def verify_once_released(reader, refs):  # (not on the requesting association,
            deadline = time.monotonic() + 20  # still open for a moment: it would be
            while srv.server.associations and time.monotonic() < deadline:  # reported
                time.sleep(0.01)  # there, as CI once saw)
            return real_verify(reader, refs)

        monkeypatch.setattr(commitment_reports, "verify", verify_once_released)
        args = ["127.0.0.1", str(srv.port), *map(str, files), "--aet", "COMMITTER"]
        listen = str(free_port())
        code = _main(*args, "--commit-listen", listen, "--commit-timeout", "0.5")
    archive.close()
    out = capsys.readouterr().out
    assert code == 8, out
    assert "  unknown: 1 (no report within 0.5 s at --commit-listen (the SCP must" in out
    assert "--commitment-scu OURAET=HOST:PORT)" in out


def test_a_report_is_taken_for_the_pairs_asked_only() -> None:
    """review38scu #13: an instance reported committed under another SOP Class, or in
    both sequences, counted as committed."""
    from dicomstore.archive.commitment import Reference
    from dicomstore.services.commitment_scu import Commitment, settled

    ct, mr, vl = (
        "1.2.840.10008.5.1.4.1.1.2",
        "1.2.840.10008.5.1.4.1.1.4",
        "1.2.840.10008.5.1.4.1.1.77.1.1",
    )
    asked = Commitment("1.2.3", [Reference(ct, "1.1"), Reference(mr, "1.2"), Reference(ct, "1.3")])
    committed = {"1.1": ct, "1.2": vl, "1.3": ct, "9.9": ct}
    asked.committed, asked.failed = settled(asked, committed, {"1.3": 0x0110})
    assert asked.committed == {"1.1"}
    assert asked.failed == {"1.2": 0x0119, "1.3": 0x0110}
    assert [asked.outcome(uid) for uid in ("1.1", "1.2", "1.3")] == [
        ("committed", None),
        ("failed", 0x0119),
        ("failed", 0x0110),
    ]
    assert not asked.all_committed


def test_send_commit_listen_on_a_port_in_use_is_exit_3(tmp_path: Path, capsys) -> None:
    """review48 L7: exit 2 (usage), where the README says 3: the server cannot listen."""
    import socket

    from tests.services.test_scu_retry import FlakyHandler

    files = sendable(compressed=False)[:1]
    with (
        socket.socket() as taken,
        ServerThread(ServerConfig(port=0), FlakyHandler()) as srv,
    ):
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        busy = str(taken.getsockname()[1])
        code = _main("127.0.0.1", str(srv.port), *map(str, files), "--commit-listen", busy)
    assert code == 3
    assert f"cannot listen on port {busy}" in capsys.readouterr().err
