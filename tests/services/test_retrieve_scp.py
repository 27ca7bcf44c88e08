"""The C-MOVE SCP through pynetdicom and our own client (issue 15, PS3.4 C.4.2):
the sub-operations to DCMTK storescp --bit-preserving (byte-identical data sets),
Move Originator, A801, A900, 0124 by policy, a destination that refuses or aborts
(counts and Failed SOP Instance UID List), C-CANCEL, the audit record."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from tests.conftest import ServerThread, dcmtk_storescp, free_port
from tests.services.query_testlib import Audit, fill, sop_uids
from tests.services.retrieve_testlib import dataset_bytes, destination, pynetdicom_move

from dicomstore import uids
from dicomstore.aio.association import Timeouts
from dicomstore.aio.client import associate
from dicomstore.archive import Archive
from dicomstore.archive.reader import ArchiveReader
from dicomstore.dimse import (
    CCancelRQ,
    CEchoRQ,
    CEchoRSP,
    CMoveRQ,
    CMoveRSP,
    CommandReceived,
    command_pdvs,
    dataset_pdvs,
)
from dicomstore.policy import Peer, Policy
from dicomstore.services.conversion import encode_dataset
from dicomstore.services.destinations import parse_destination
from dicomstore.services.server import ServerConfig

#: On both index engines (issue 17).
pytestmark = pytest.mark.usefixtures("index_engine")

STUDY_ROOT_MOVE = uids.STUDY_ROOT_QR_MOVE
PATIENT_ROOT_MOVE = uids.PATIENT_ROOT_QR_MOVE
STUDY_1 = sop_uids("1.2.9.1.1") + sop_uids("1.2.9.1.2")  # 5 instances


@pytest.fixture(scope="module")
def root(tmp_path_factory, index_engine: str) -> Path:
    root = tmp_path_factory.mktemp("move") / "archive"
    fill(root)
    return root


def serving(root: Path, *destinations: str, **kwargs: Any) -> ServerThread:
    config = ServerConfig(port=0, move_destinations=tuple(map(parse_destination, destinations)))
    return ServerThread(config, Archive(root, fsync=False), **kwargs)


def study(uid: str = "1.2.9.1") -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = uid
    return ds


@pytest.fixture
def archive_server(root: Path) -> Iterator[tuple[ServerThread, Audit, int]]:
    """dicomstore with DCMTK storescp --bit-preserving as STORESCP; (server, audit, its port)."""
    port = free_port()
    audit = Audit()
    with (
        dcmtk_storescp(port, root.parent / "received", "--bit-preserving"),
        serving(root, f"STORESCP=127.0.0.1:{port}", audit=audit) as srv,
    ):
        yield srv, audit, port


def test_move_to_dcmtk_storescp_is_byte_identical(archive_server, root: Path) -> None:
    srv, audit, _port = archive_server
    answers = pynetdicom_move(srv.port, STUDY_ROOT_MOVE, study(), "STORESCP")
    statuses = [status for status, *_ in answers]
    assert statuses == [0xFF00] * 4 + [0x0000]
    assert [rsp.NumberOfRemainingSuboperations for _, rsp, _ in answers[:-1]] == [4, 3, 2, 1]
    final = answers[-1][1]
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (5, 0)
    assert final.NumberOfWarningSuboperations == 0 and answers[-1][2] is None
    reader = ArchiveReader(root)
    received = {p.name.split(".", 1)[1]: p for p in (root.parent / "received").iterdir()}
    assert sorted(received) == sorted(STUDY_1)
    for uid, path in received.items():
        assert dataset_bytes(path) == dataset_bytes(reader.path(uid)), uid
    (record,) = audit.records
    assert record["audit_event"] == "DICOM Instances Transferred" and record["event_id"] == "110104"
    assert record["destination"] == "STORESCP" and record["calling_ae"] == "MOVER"
    assert (record["status"], record["completed"], record["failed"]) == ("0000", 5, 0)
    assert record["study_instance_uids"] == ["1.2.9.1"] and record["level"] == "STUDY"


def test_unknown_destination_is_a801_and_bad_identifier_a900(archive_server) -> None:
    srv, audit, _port = archive_server
    ((status, rsp, _),) = pynetdicom_move(srv.port, STUDY_ROOT_MOVE, study(), "NOWHERE")
    assert status == 0xA801 and "NOWHERE" in rsp.ErrorComment
    bad = Dataset()
    bad.QueryRetrieveLevel = "SERIES"
    bad.SeriesInstanceUID = "1.2.9.1.1"  # no Study Instance UID above it
    ((status, rsp, _),) = pynetdicom_move(srv.port, STUDY_ROOT_MOVE, bad, "STORESCP")
    assert status == 0xA900 and rsp.OffendingElement == 0x0020000D and rsp.ErrorComment
    assert [r["status"] for r in audit.records] == ["A801", "A900"]


def test_patient_root_series_and_move_originator(root: Path) -> None:
    with destination() as dest, serving(root, f"DEST=127.0.0.1:{dest.port}") as srv:
        ds = Dataset()
        ds.QueryRetrieveLevel = "SERIES"
        ds.PatientID = "PID2"
        ds.StudyInstanceUID = "1.2.9.3"
        ds.SeriesInstanceUID = "1.2.9.3.1"
        answers = pynetdicom_move(srv.port, PATIENT_ROOT_MOVE, ds, "DEST")
        assert [s for s, *_ in answers] == [0xFF00, 0x0000]
        # PS3.7 9.3.1.1: each C-STORE-RQ names the C-MOVE's caller and Message ID
        assert sorted(dest.received) == [(uid, "MOVER", 1) for uid in sop_uids("1.2.9.3.1")]


def test_policy_move_right_move_to_and_destinations(root: Path) -> None:
    """The policy file's [destinations] serve as well as --move-destination."""
    with destination() as dest:
        policy = Policy(
            peers=[
                Peer("FINDONLY", may=frozenset({"echo", "find"})),
                Peer("LIMITED", move_to=frozenset({"OTHER"})),
                Peer("MOVER"),
            ],
            destinations=[parse_destination(f"DEST=127.0.0.1:{dest.port}")],
        )
        with serving(root, gatekeeper=policy) as srv:
            one = study("1.2.9.2")
            refused = pynetdicom_move(srv.port, STUDY_ROOT_MOVE, one, "DEST", "FINDONLY")
            assert [s for s, *_ in refused] == [0x0124]
            limited = pynetdicom_move(srv.port, STUDY_ROOT_MOVE, one, "DEST", "LIMITED")
            assert [s for s, *_ in limited] == [0x0124] and "DEST" in limited[0][1].ErrorComment
            # (and one not configured: the same 0124, not A801; review52 L7)
            nowhere = pynetdicom_move(srv.port, STUDY_ROOT_MOVE, one, "NOPE", "LIMITED")
            assert [s for s, *_ in nowhere] == [0x0124]
            assert dest.received == []
            allowed = pynetdicom_move(srv.port, STUDY_ROOT_MOVE, one, "DEST", "MOVER")
            assert [s for s, *_ in allowed] == [0x0000] and len(dest.received) == 1


def failed_list(identifier: Dataset | None) -> list[str]:
    assert identifier is not None
    value = identifier.FailedSOPInstanceUIDList
    return [value] if isinstance(value, str) else list(value)


def test_destination_refusing_the_association_fails_everything(root: Path) -> None:
    port = free_port()  # nothing listens: the connection is refused
    with serving(root, f"GONE=127.0.0.1:{port}") as srv:
        ((status, rsp, identifier),) = pynetdicom_move(srv.port, STUDY_ROOT_MOVE, study(), "GONE")
    assert status == 0xA702
    assert (rsp.NumberOfCompletedSuboperations, rsp.NumberOfFailedSuboperations) == (0, 5)
    assert sorted(failed_list(identifier)) == sorted(STUDY_1) and "GONE" in rsp.ErrorComment


def test_destination_rejecting_the_association_fails_everything(root: Path) -> None:
    with (
        destination(require_called_aet=True) as dest,
        serving(root, f"PICKY=127.0.0.1:{dest.port}") as srv,
    ):  # it is DEST: called PICKY, it rejects the association
        ((status, rsp, identifier),) = pynetdicom_move(srv.port, STUDY_ROOT_MOVE, study(), "PICKY")
    assert status == 0xA702 and rsp.NumberOfFailedSuboperations == 5
    assert sorted(failed_list(identifier)) == sorted(STUDY_1) and dest.received == []


def test_destination_aborting_midway(root: Path) -> None:
    with destination(abort_after=2) as dest, serving(root, f"DEST=127.0.0.1:{dest.port}") as srv:
        answers = pynetdicom_move(srv.port, STUDY_ROOT_MOVE, study(), "DEST")
    status, rsp, identifier = answers[-1]
    # the first C-STORE succeeded; the second was aborted before its response
    assert status == 0xB000
    assert (rsp.NumberOfCompletedSuboperations, rsp.NumberOfFailedSuboperations) == (1, 4)
    assert sorted(failed_list(identifier)) == sorted(STUDY_1[1:])
    assert [s for s, *_ in answers[:-1]] == [0xFF00]


async def _move_then_cancel(port: int, dest_arrived: threading.Event, release: threading.Event):
    """C-MOVE with our client; once the destination holds the first C-STORE, a
    C-CANCEL-RQ then a C-ECHO-RQ (its answer proves the cancel was read); then the
    destination is released. Every C-MOVE-RSP."""
    assoc = await associate(
        "127.0.0.1",
        port,
        called_ae="DICOMSTORE",
        calling_ae="CANCELLER",
        contexts=[
            (STUDY_ROOT_MOVE, (uids.EXPLICIT_VR_LE,)),
            (uids.VERIFICATION, (uids.IMPLICIT_VR_LE,)),
        ],
    )
    responses: list[CMoveRSP] = []
    echoed = asyncio.Event()
    done = asyncio.Event()

    def on_dimse(event: Any) -> None:
        if isinstance(event, CommandReceived):
            if isinstance(event.message, CEchoRSP):
                echoed.set()
                return
            assert isinstance(event.message, CMoveRSP)
            responses.append(event.message)
            if event.message.status != 0xFF00:
                done.set()

    assoc._on_dimse = on_dimse  # type: ignore[method-assign]
    move, echo = assoc.context_for(STUDY_ROOT_MOVE), assoc.context_for(uids.VERIFICATION)
    assert move is not None and echo is not None and assoc.negotiated is not None
    conn, max_pdu = assoc.t.conn, assoc.negotiated.peer_max_pdu
    rq = CMoveRQ(7, STUDY_ROOT_MOVE, move_destination="DEST")
    conn.send_each(command_pdvs(move.id, rq.encode(), max_pdu))
    conn.send_each(
        dataset_pdvs(move.id, encode_dataset(study(), uids.EXPLICIT_VR_LE), max_pdu, True)
    )
    assoc.t.write_now()
    assert await asyncio.to_thread(dest_arrived.wait, 30)
    conn.send_each(command_pdvs(move.id, CCancelRQ(7).encode(), max_pdu))
    conn.send_each(command_pdvs(echo.id, CEchoRQ(8).encode(), max_pdu))
    assoc.t.write_now()
    await asyncio.wait_for(echoed.wait(), 30)
    release.set()
    await asyncio.wait_for(done.wait(), 30)
    await assoc.release()
    return responses


def test_c_cancel_mid_move_is_fe00_with_counts(root: Path) -> None:
    release = threading.Event()
    with (
        destination(release=release) as dest,
        serving(root, f"DEST=127.0.0.1:{dest.port}") as srv,
    ):
        responses = asyncio.run(_move_then_cancel(srv.port, dest.arrived, release))
    assert [r.status for r in responses] == [0xFF00, 0xFE00]
    final = responses[-1].sub_operations
    assert (final.remaining, final.completed, final.failed, final.warning) == (4, 1, 0, 0)
    assert len(dest.received) == 1  # nothing sent after the cancel


def test_an_index_unavailable_is_a701_naming_the_cause_not_the_url(root, monkeypatch) -> None:
    """review36b #6: the Error Comment was the first 64 characters of the index's URL."""
    from dicomstore.archive.engine import PostgresOperationalError
    from dicomstore.services import retrieve_scp

    def unavailable(*_args: Any, **_kwargs: Any) -> Any:
        raise PostgresOperationalError(
            "index postgresql://ds@db:5432/archive: sorry, too many clients already",
            "sorry, too many clients already",
        )

    monkeypatch.setattr(retrieve_scp, "select_instances", unavailable)
    with serving(root, f"DEST=127.0.0.1:{free_port()}") as srv:
        (found,) = pynetdicom_move(srv.port, STUDY_ROOT_MOVE, study(), "DEST")
    status, rsp, _ = found
    assert status == 0xA701
    assert rsp.ErrorComment == "index unavailable: sorry, too many clients already"


def test_a_move_longer_than_the_idle_timeout_is_not_aborted(root: Path, monkeypatch) -> None:
    """review36a #2: the requestor waits for C-MOVE-RSPs in silence (PS3.7 9.1.4); the
    idle timer aborted a C-MOVE longer than --idle-timeout mid-way."""
    from dicomstore.aio.association import Timeouts
    from dicomstore.services.acceptor import AcceptorAssociation

    waited = threading.Event()  # (the idle timer ran out while we were answering)
    answering = AcceptorAssociation._answering

    def observed(self: AcceptorAssociation) -> bool:
        busy = answering.fget(self)  # type: ignore[attr-defined]
        if busy:
            waited.set()
        return busy

    monkeypatch.setattr(AcceptorAssociation, "_answering", property(observed))
    release = threading.Event()
    with destination(release=release) as dest:
        config = ServerConfig(
            port=0,
            move_destinations=(parse_destination(f"DEST=127.0.0.1:{dest.port}"),),
            # (idle from the A-ASSOCIATE-AC until the C-MOVE-RQ too: long enough for a
            # requester slowed by a loaded machine, shorter than the held C-STORE)
            timeouts=Timeouts(network=1.0),
        )
        with ServerThread(config, Archive(root, fsync=False)) as srv:
            moving = threading.Thread(
                target=lambda: answers.extend(
                    pynetdicom_move(srv.port, STUDY_ROOT_MOVE, study(), "DEST")
                )
            )
            answers: list[tuple[int, Dataset, Dataset | None]] = []
            moving.start()
            assert waited.wait(30)  # (the destination holds the first C-STORE meanwhile)
            release.set()
            moving.join(60)
    assert [s for s, *_ in answers] == [0xFF00] * 4 + [0x0000]
    assert len(dest.received) == 5


def test_c_cancel_then_the_destination_gone_is_fe00_with_the_rest_remaining(
    root: Path,
) -> None:
    """review36a #3: a C-CANCEL read while the destination held a C-STORE, then the
    destination gone: B000 with every instance failed; it is FE00, the one in flight
    failed, the rest Remaining (PS3.4 C.4.2.1.6)."""
    release = threading.Event()
    with (
        destination(release=release, abort_after=1) as dest,
        serving(root, f"DEST=127.0.0.1:{dest.port}") as srv,
    ):
        responses = asyncio.run(_move_then_cancel(srv.port, dest.arrived, release))
    assert [r.status for r in responses] == [0xFE00]
    final = responses[-1].sub_operations
    assert (final.remaining, final.completed, final.failed, final.warning) == (4, 0, 1, 0)


def test_c_cancel_while_the_destination_has_not_answered_the_association_is_fe00(
    root: Path,
) -> None:
    """review87 F7: a C-CANCEL-RQ while the destination held the A-ASSOCIATE-RQ
    unanswered was acted on only when ``--acse-timeout`` ran out; now the attempt is
    aborted (an A-ABORT to the destination) and the answer is FE00 at once, every
    instance Remaining."""
    accepted, received = threading.Event(), bytearray()
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def hold() -> None:  # accepts, reads, never answers
            peer, _ = listener.accept()
            with peer:
                accepted.set()
                while chunk := peer.recv(65536):
                    received.extend(chunk)

        holding = threading.Thread(target=hold, daemon=True)
        holding.start()
        config = ServerConfig(
            port=0,
            move_destinations=(parse_destination(f"DEST=127.0.0.1:{listener.getsockname()[1]}"),),
            timeouts=Timeouts(acse=3600),
        )
        with ServerThread(config, Archive(root, fsync=False)) as srv:
            responses = asyncio.run(_move_then_cancel(srv.port, accepted, threading.Event()))
            holding.join(30)
    assert [r.status for r in responses] == [0xFE00]
    final = responses[-1].sub_operations
    assert (final.remaining, final.completed, final.failed, final.warning) == (5, 0, 0, 0)
    assert not holding.is_alive()  # the connection was closed
    assert received[:1] == b"\x01"  # A-ASSOCIATE-RQ ...
    assert received[-10:-8] == b"\x07\x00"  # ... then A-ABORT (PS3.8 9.3.8: 10 bytes)


def test_a_move_whose_requester_left_is_audited_as_aborted(root: Path, caplog) -> None:
    """review36a #4: a C-MOVE cut short by its requester's leaving wrote no audit record
    (PS3.15 A.5.3.7: every transfer is one) and no last log line."""
    from pynetdicom import AE

    audited = threading.Event()

    class Recording(Audit):
        def retrieve(self, record: dict[str, Any]) -> None:
            super().retrieve(record)
            audited.set()

    audit, release = Recording(), threading.Event()
    with (
        destination(release=release) as dest,
        serving(root, f"DEST=127.0.0.1:{dest.port}", audit=audit) as srv,
    ):
        ae = AE(ae_title="MOVER")
        ae.add_requested_context(STUDY_ROOT_MOVE)
        assoc = ae.associate("127.0.0.1", srv.port, ae_title="DICOMSTORE")
        moving = threading.Thread(
            target=lambda: list(assoc.send_c_move(study(), "DEST", STUDY_ROOT_MOVE)),
            daemon=True,  # (pynetdicom's generator notices the abort only at its timeout)
        )
        moving.start()
        assert dest.arrived.wait(30)  # (the destination holds the first C-STORE)
        with caplog.at_level(logging.INFO, "dicomstore"):
            assoc.abort()
            release.set()
            assert audited.wait(30)
    (record,) = audit.records
    assert record["status"] == "aborted" and record["instances"] == 5
    assert record["calling_ae"] == "MOVER" and record["destination"] == "DEST"
    assert "C-MOVE ended aborted" in caplog.text


def test_a_destination_silent_past_the_dimse_timeout_fails_the_move(root: Path) -> None:
    """review36a #3: a destination that never answered a C-STORE held the C-MOVE (its
    slot, both associations) until the idle timeout, 600 s: the server's DIMSE timeout
    (`serve --dimse-timeout`, 300 s by default) aborts it, and the move ends."""
    from dataclasses import replace

    release = threading.Event()
    with destination(release=release) as dest:
        config = ServerConfig(
            port=0, move_destinations=(parse_destination(f"DEST=127.0.0.1:{dest.port}"),)
        )
        assert config.timeouts.dimse == 300.0
        config = replace(config, timeouts=replace(config.timeouts, dimse=0.5))
        with ServerThread(config, Archive(root, fsync=False)) as srv:
            answers = pynetdicom_move(srv.port, STUDY_ROOT_MOVE, study(), "DEST")
        release.set()
    status, rsp, identifier = answers[-1]
    assert status == 0xA702
    assert (rsp.NumberOfCompletedSuboperations, rsp.NumberOfFailedSuboperations) == (0, 5)
    assert sorted(failed_list(identifier)) == sorted(STUDY_1)
    assert "no response to message 1 within 0.5s" in rsp.ErrorComment
