"""The C-GET SCP through pynetdicom as Q/R SCU (issue 15, PS3.4 C.4.3): sub-operations
back on the same association by role selection (PS3.7 D.3.3.4), byte-identical data
sets, conversion, pending counts, C-CANCEL mid-get, sub-operations failing (a failure
status from the SCU, no context for a SOP class, no SCP role at all), 0124, the audit."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pynetdicom import AE, build_role, evt
from tests.archive.archive_testlib import CT, MR, dataset, dcm_files, store, stored_dataset
from tests.conftest import ServerThread
from tests.services.query_testlib import Audit, fill, identifier, sop_uids

from dicomstore import uids
from dicomstore.aio.client import connect
from dicomstore.archive import Archive
from dicomstore.archive.reader import NotStoredError
from dicomstore.policy import Peer, Policy
from dicomstore.services import retrieve
from dicomstore.services.server import ServerConfig
from dicomstore.ul.items import RoleSelection

#: On both index engines (issue 17).
pytestmark = pytest.mark.usefixtures("index_engine")

STUDY_ROOT_GET = uids.STUDY_ROOT_QR_GET
PATIENT_ROOT_GET = uids.PATIENT_ROOT_QR_GET
STUDY_1 = sop_uids("1.2.9.1.1") + sop_uids("1.2.9.1.2")  # 3 CT then 2 MR
UNCOMPRESSED = [uids.EXPLICIT_VR_LE, uids.IMPLICIT_VR_LE]


@pytest.fixture(scope="module")
def root(tmp_path_factory, index_engine: str) -> Path:
    root = tmp_path_factory.mktemp("get") / "archive"
    fill(root)
    return root


@pytest.fixture(scope="module")
def stored(root: Path) -> dict[str, bytes]:
    """The data set bytes of each stored instance, by SOP Instance UID."""
    return {
        str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): stored_dataset(p)
        for p in dcm_files(root)
    }


@pytest.fixture
def server(root: Path) -> Iterator[tuple[ServerThread, Audit]]:
    audit = Audit()
    archive = Archive(root, fsync=False)
    with ServerThread(ServerConfig(port=0), archive, audit=audit) as srv:
        yield srv, audit
    archive.close()


@dataclass
class Got:
    """What one C-GET by pynetdicom brought: its responses and the instances received."""

    responses: list[tuple[int, Dataset, Dataset | None]] = field(default_factory=list)
    #: data set bytes as received, and the transfer syntax, by SOP Instance UID
    received: dict[str, bytes] = field(default_factory=dict)
    syntaxes: dict[str, str] = field(default_factory=dict)

    @property
    def statuses(self) -> list[int]:
        return [status for status, *_ in self.responses]

    @property
    def final(self) -> Dataset:
        return self.responses[-1][1]

    def counts(self, n: int = -1) -> tuple[int, int, int, int | None]:
        rsp = self.responses[n][1]
        return (
            rsp.NumberOfCompletedSuboperations,
            rsp.NumberOfFailedSuboperations,
            rsp.NumberOfWarningSuboperations,
            rsp.get("NumberOfRemainingSuboperations"),
        )

    def failed_uids(self) -> list[str]:
        ident = self.responses[-1][2]
        assert ident is not None, "no Failed SOP Instance UID List"
        value = ident.FailedSOPInstanceUIDList
        return sorted([value] if isinstance(value, str) else value)


def pynetdicom_get(
    port: int,
    ds: Dataset,
    model: str = STUDY_ROOT_GET,
    *,
    storage: dict[str, list[str]] | None = None,
    roles: bool = True,
    status_for: Callable[[str], int] = lambda uid: 0x0000,
    on_response: Callable[[Any, int], None] | None = None,
    calling: str = "GETTER",
) -> Got:
    """One C-GET by pynetdicom: ``storage`` the Storage SOP classes (and transfer
    syntaxes) it proposes, with the SCP role when ``roles``; ``status_for`` what its
    Storage SCP answers for a SOP Instance UID; ``on_response(assoc, n)`` after the
    n-th response."""
    got = Got()
    storage = {CT: UNCOMPRESSED, MR: UNCOMPRESSED} if storage is None else storage

    def on_store(event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        got.received[uid] = event.encoded_dataset(include_meta=False)
        got.syntaxes[uid] = str(event.context.transfer_syntax)
        return status_for(uid)

    ae = AE(ae_title=calling)
    ae.add_requested_context(model)
    for sop_class, syntaxes in storage.items():
        ae.add_requested_context(sop_class, syntaxes)
    role_items = [build_role(sop_class, scp_role=True) for sop_class in storage] if roles else []
    assoc = ae.associate(
        "127.0.0.1",
        port,
        ae_title="DICOMSTORE",
        ext_neg=role_items,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    try:
        for rsp, ident in assoc.send_c_get(ds, model):
            # (an empty rsp: pynetdicom's way of saying the association was aborted)
            got.responses.append((rsp.get("Status"), rsp, ident))
            if on_response is not None:
                on_response(assoc, len(got.responses))
    finally:
        assoc.release()
    return got


def test_get_study_is_byte_identical_with_pending_counts(server, stored) -> None:
    srv, audit = server
    got = pynetdicom_get(srv.port, identifier("STUDY", StudyInstanceUID="1.2.9.1"))
    assert got.statuses == [0xFF00] * 4 + [0x0000]
    # after each sub-operation but the last: Remaining falls as Completed grows
    assert [got.counts(n) for n in range(4)] == [(n + 1, 0, 0, 4 - n) for n in range(4)]
    assert got.counts() == (5, 0, 0, None) and got.responses[-1][2] is None
    assert sorted(got.received) == sorted(STUDY_1)
    for uid, data in got.received.items():
        assert data == stored[uid], uid  # as stored, bit for bit
    assert set(got.syntaxes.values()) == {uids.EXPLICIT_VR_LE}
    (record,) = audit.records
    assert record["service"] == "C-GET" and record["calling_ae"] == "GETTER"
    assert record["audit_event"] == "DICOM Instances Transferred"
    assert (record["status"], record["completed"], record["failed"]) == ("0000", 5, 0)
    assert record["study_instance_uids"] == ["1.2.9.1"] and record["level"] == "STUDY"


def test_patient_root_series_level(server, stored) -> None:
    srv, _audit = server
    ds = identifier(
        "SERIES", PatientID="PID1", StudyInstanceUID="1.2.9.1", SeriesInstanceUID="1.2.9.1.2"
    )
    got = pynetdicom_get(srv.port, ds, PATIENT_ROOT_GET)
    assert got.statuses == [0xFF00, 0x0000]
    assert {uid: stored[uid] for uid in sop_uids("1.2.9.1.2")} == got.received


def test_converted_when_the_scu_takes_another_syntax(server, stored) -> None:
    """Stored Explicit VR Little Endian; the SCU's CT context takes Implicit only."""
    srv, _audit = server
    got = pynetdicom_get(
        srv.port,
        identifier("STUDY", StudyInstanceUID="1.2.9.2"),
        storage={CT: [uids.IMPLICIT_VR_LE]},
    )
    assert got.statuses == [0x0000] and got.counts() == (1, 0, 0, None)
    ((uid, data),) = got.received.items()
    assert got.syntaxes[uid] == uids.IMPLICIT_VR_LE and data != stored[uid]
    as_sent = read_dataset(BytesIO(data), True, True)
    as_stored = read_dataset(BytesIO(stored[uid]), False, True)
    assert [(e.tag, e.value) for e in as_sent] == [(e.tag, e.value) for e in as_stored]


def test_failed_and_warning_sub_operations_are_counted_and_listed(server) -> None:
    """The SCU answers A700 for one CT and B000 for another, and proposes no MR
    context: 1 completed, 1 warning, 3 failed (B000, the Failed SOP Instance UID List)."""
    srv, audit = server
    answers = {"1.2.9.1.1.2": 0xA700, "1.2.9.1.1.3": 0xB000}
    got = pynetdicom_get(
        srv.port,
        identifier("STUDY", StudyInstanceUID="1.2.9.1"),
        storage={CT: UNCOMPRESSED},
        status_for=lambda uid: answers.get(uid, 0x0000),
    )
    assert got.statuses == [0xFF00] * 4 + [0xB000]
    assert got.counts() == (1, 3, 1, None)
    assert got.failed_uids() == sorted(["1.2.9.1.1.2", *sop_uids("1.2.9.1.2")])
    assert sorted(got.received) == sop_uids("1.2.9.1.1")  # MR never sent
    record = audit.records[-1]
    assert record["status"] == "B000" and record["failed_sop_instance_uids"] == [
        "1.2.9.1.1.2",
        *sop_uids("1.2.9.1.2"),
    ]


@pytest.mark.parametrize("roles", [True, False], ids=["no-storage-context", "no-role-item"])
def test_without_any_scp_role_every_sub_operation_fails_a702(server, roles: bool) -> None:
    """No Storage context (or one without the SCP role: only the GET model is
    usable): nothing can be sent back, A702 with every instance listed."""
    srv, _audit = server
    got = pynetdicom_get(
        srv.port,
        identifier("STUDY", StudyInstanceUID="1.2.9.1"),
        storage={} if roles else {CT: UNCOMPRESSED},
        roles=roles,
    )
    assert got.statuses == [0xA702] and got.counts() == (0, 5, 0, None)
    assert got.failed_uids() == sorted(STUDY_1)
    assert "SCP role" in got.final.ErrorComment and got.received == {}


def test_c_cancel_after_the_first_pending_response_is_fe00(server) -> None:
    """The SCU sends C-CANCEL-RQ once the first pending response is in; its Storage
    SCP holds the second C-STORE until then, so the cancel is read before that
    sub-operation ends: two completed, three remaining, FE00 (PS3.4 C.4.3.3.1)."""
    srv, audit = server
    cancelled = threading.Event()
    stores: list[str] = []

    def status_for(uid: str) -> int:
        stores.append(uid)
        if len(stores) == 2:
            assert cancelled.wait(30), "the C-CANCEL-RQ was not sent"
        return 0x0000

    def on_response(assoc: Any, n: int) -> None:
        if n == 1:
            context = next(
                c for c in assoc.accepted_contexts if c.abstract_syntax == STUDY_ROOT_GET
            )
            assoc.send_c_cancel(1, context.context_id)
            cancelled.set()

    got = pynetdicom_get(
        srv.port,
        identifier("STUDY", StudyInstanceUID="1.2.9.1"),
        status_for=status_for,
        on_response=on_response,
    )
    assert got.statuses == [0xFF00, 0xFF00, 0xFE00]
    assert got.counts() == (2, 0, 0, 3)  # Remaining is in a cancelled final response
    assert len(got.received) == 2 and audit.records[-1]["status"] == "FE00"


def test_policy_without_get_is_0124(root: Path, caplog) -> None:
    archive = Archive(root, fsync=False)
    policy = Policy(peers=[Peer("FINDER", may=frozenset({"echo", "find"})), Peer("GETTER")])
    try:
        with ServerThread(ServerConfig(port=0), archive, gatekeeper=policy) as srv:
            ds = identifier("STUDY", StudyInstanceUID="1.2.9.2")
            refused = pynetdicom_get(srv.port, ds, calling="FINDER")
            assert refused.statuses == [0x0124] and refused.received == {}
            assert "C-GET is not allowed" in refused.final.ErrorComment
            # (review81 F5: the refusal is the operator's to see too)
            assert "C-GET message 1 refused 0124: C-GET is not allowed for this caller" in (
                caplog.text
            )
            allowed = pynetdicom_get(srv.port, ds, calling="GETTER")
            assert allowed.statuses == [0x0000] and len(allowed.received) == 1
    finally:
        archive.close()


def test_no_get_models_nor_scp_role_without_an_archive() -> None:
    policy = ServerConfig().policy(find=False)
    assert STUDY_ROOT_GET not in policy.abstract_syntaxes and not policy.scu_role_with
    with_archive = ServerConfig().policy()
    assert {STUDY_ROOT_GET, PATIENT_ROOT_GET} <= with_archive.scu_role_with
    assert STUDY_ROOT_GET in with_archive.scp_role_only
    assert CT not in with_archive.scp_role_only  # a Storage SOP Class: SCP role possible


def test_no_c_store_to_us_on_a_context_where_the_requestor_is_only_scp(server) -> None:
    """The requestor took only the SCP role for CT: a C-STORE-RQ from it on that
    context is refused (0122), nothing is stored (PS3.7 D.3.3.4)."""
    srv, _audit = server

    async def store() -> tuple[int, str]:
        async with connect(
            "127.0.0.1",
            srv.port,
            called_ae="DICOMSTORE",
            contexts=[(STUDY_ROOT_GET, UNCOMPRESSED), (CT, UNCOMPRESSED)],
            roles=[RoleSelection(CT, False, True)],
        ) as assoc:
            ctx = assoc.context_for(CT)
            assert ctx is not None and (ctx.scu_role, ctx.scp_role) == (False, True)
            rsp = await assoc.store_stream(ctx, CT, "1.2.9.9.9", [dataset("1.2.9.9.9")])
            return rsp.status, rsp.error_comment or ""

    status, comment = asyncio.run(store())
    assert status == 0x0122 and "no SCU role" in comment
    assert srv.server.reader is not None
    with pytest.raises(NotStoredError):
        srv.server.reader.instance("1.2.9.9.9")


def test_a_get_requester_that_stops_answering_is_aborted_as_idle(root: Path) -> None:
    """review36c M1: the idle timer does not run while we answer a request (review36a
    #2), but a C-GET requester silent while it owes us a C-STORE-RSP is idle."""
    import logging

    from dicomstore.aio.association import Timeouts

    idle, release = threading.Event(), threading.Event()

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "no activity for" in record.getMessage():
                idle.set()

    def hang(_uid: str) -> int:  # (the requester's Storage SCP does not answer)
        release.wait(30)
        return 0x0000

    seen, logger = Seen(), logging.getLogger("dicomstore.server")
    logger.addHandler(seen)
    level, _ = logger.level, logger.setLevel(logging.INFO)
    archive = Archive(root, fsync=False)
    try:
        config = ServerConfig(port=0, timeouts=Timeouts(network=0.3))
        with ServerThread(config, archive) as srv:
            ds = identifier("STUDY", StudyInstanceUID="1.2.9.1")
            getting = threading.Thread(
                target=lambda: pynetdicom_get(srv.port, ds, status_for=hang), daemon=True
            )
            getting.start()
            assert idle.wait(30)  # (aborted while the requester owed a C-STORE-RSP)
            release.set()
            getting.join(30)
    finally:
        logger.removeHandler(seen)
        logger.setLevel(level)
        archive.close()


def test_an_instance_replaced_between_its_scan_and_its_send_goes_as_it_is_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replace that removes the file after the sub-operation scanned it (and before
    it opened it to send) sends the new version (it failed, 'cannot read'; the other
    half of review51 #1, the window after ``scan_selected``)."""
    uid = "1.2.9.7.1"
    archive = Archive(tmp_path / "archive", fsync=False, on_duplicate="replace")
    assert store(archive, dataset(uid, patient_name="First"), sop_uid=uid).status == 0
    scan, replaced = retrieve._scan, []

    def scan_then_replace(item: Any) -> Any:
        found = scan(item)
        if not replaced:  # (the first scan only: the one of the old version)
            replaced.append(store(archive, dataset(uid, patient_name="Second"), sop_uid=uid))
        return found

    monkeypatch.setattr(retrieve, "_scan", scan_then_replace)
    try:
        with ServerThread(ServerConfig(port=0), archive) as srv:
            got = pynetdicom_get(srv.port, identifier("STUDY", StudyInstanceUID="1.2.3.4"))
    finally:
        archive.close()
    assert [r.status for r in replaced] == [0]
    assert got.statuses[-1] == 0x0000 and got.counts() == (1, 0, 0, None)
    received = read_dataset(BytesIO(got.received[uid]), False, True)
    assert str(received.PatientName) == "Second"


def test_a_scu_that_never_answers_is_no_cancel(root: Path, caplog) -> None:
    """review81 F6: a C-GET SCU that never answered a C-STORE sub-operation was aborted
    at the DIMSE timeout (bounded), but logged and audited FE00 "(cancelled)", no
    WARNING naming the timeout. Now: a WARNING, and the audit's status "aborted"."""
    from dicomstore.aio.association import Timeouts

    caplog.set_level("INFO", logger="dicomstore.server")
    release = threading.Event()

    class Told(Audit):  # (the SCU's handler answers once the server has given up)
        def retrieve(self, record: dict[str, Any]) -> None:
            super().retrieve(record)
            release.set()

    audit = Told()
    archive = Archive(root, fsync=False)
    config = ServerConfig(port=0, timeouts=Timeouts(dimse=0.5))
    try:
        with ServerThread(config, archive, audit=audit) as srv:
            got = pynetdicom_get(
                srv.port,
                identifier("STUDY", StudyInstanceUID="1.2.9.1"),
                status_for=lambda uid: release.wait(30) and 0x0000,  # (never in time)
            )
            release.set()
        assert got.received and not any(s == 0xFE00 for s in got.statuses)
        assert "C-GET stopped: the association ended: no response to message" in caplog.text
        assert "(cancelled)" not in caplog.text
        assert audit.records[-1]["status"] == "aborted"
        # (review87 F8: the association's outcome said "accepted")
        assert "association ended (aborted: a response late or of another type)" in caplog.text
    finally:
        release.set()
        archive.close()
