"""The C-FIND SCP through pynetdicom and our own client: matching, FF01, C-CANCEL,
refusals (A900, C000, 0124), the audit record (issue 15, PS3.4 C.4.1)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from tests.conftest import ServerThread
from tests.services.query_testlib import (
    PATIENT_ROOT,
    STUDY_ROOT,
    Audit,
    audited_server,
    fill,
    identifier,
)

from dicomstore import uids
from dicomstore.aio.client import associate
from dicomstore.archive import Archive
from dicomstore.dimse import (
    CCancelRQ,
    CFindRQ,
    CFindRSP,
    CommandReceived,
    command_pdvs,
    dataset_pdvs,
)
from dicomstore.policy import Peer, Policy
from dicomstore.services.conversion import encode_dataset
from dicomstore.services.server import Server, ServerConfig


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("query") / "archive"
    fill(root)
    return root


@pytest.fixture
def server(root: Path) -> Iterator[tuple[ServerThread, Audit]]:
    with audited_server(root) as served:
        yield served


def pynetdicom_find(port: int, model: str, ds: Dataset, calling: str = "PYNETDICOM"):
    """Every (status, identifier) of one C-FIND by pynetdicom."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", port)
    assert assoc.is_established
    try:
        return [(rsp.Status, rsp, ident) for rsp, ident in assoc.send_c_find(ds, model)]
    finally:
        assoc.release()


def test_pynetdicom_study_root_every_level(server) -> None:
    srv, _audit = server
    studies = pynetdicom_find(
        srv.port, STUDY_ROOT, identifier("STUDY", StudyInstanceUID="", PatientName="*j*")
    )
    # PN matching is case-insensitive: Doe^Jane (2 studies), Smith^John (1)
    assert [s for s, *_ in studies] == [0xFF00] * 3 + [0x0000]
    assert {i.StudyInstanceUID for _, _, i in studies[:-1]} == {"1.2.9.1", "1.2.9.2", "1.2.9.3"}
    series = pynetdicom_find(
        srv.port,
        STUDY_ROOT,
        identifier(
            "SERIES",
            StudyInstanceUID="1.2.9.1",
            SeriesInstanceUID="",
            Modality="",
            NumberOfSeriesRelatedInstances="",
        ),
    )
    got = {
        (i.SeriesInstanceUID, i.Modality, i.NumberOfSeriesRelatedInstances) for *_, i in series[:-1]
    }
    assert got == {("1.2.9.1.1", "CT", 3), ("1.2.9.1.2", "MR", 2)}
    images = pynetdicom_find(
        srv.port,
        STUDY_ROOT,
        identifier(
            "IMAGE",
            StudyInstanceUID="1.2.9.3",
            SeriesInstanceUID="1.2.9.3.1",
            SOPInstanceUID="",
            SOPClassUID="",
        ),
    )
    assert sorted(i.SOPInstanceUID for *_, i in images[:-1]) == ["1.2.9.3.1.1", "1.2.9.3.1.2"]
    assert images[-1][0] == 0x0000 and images[-1][2] is None


def test_pynetdicom_patient_root_and_unmatched_optional_key_is_ff01(server) -> None:
    srv, _audit = server
    found = pynetdicom_find(
        srv.port,
        PATIENT_ROOT,
        identifier("PATIENT", PatientID="PID2", PatientName="", PatientAge="042Y"),
    )
    # Patient's Age is not in the index: not matched, so each match warns (FF01)
    assert [s for s, *_ in found] == [0xFF01, 0x0000]
    assert str(found[0][2].PatientName) == "Smith^John" and found[0][2].PatientAge == ""


def test_keys_not_in_the_index_come_from_a_stored_header(server) -> None:
    """Return keys the index does not hold are read from one stored instance of each
    match: any attribute at IMAGE level, only those of the level and above higher up
    (issue 15: "for keys it does not hold, from the stored header")."""
    srv, _audit = server
    study = pynetdicom_find(
        srv.port,
        STUDY_ROOT,
        identifier("STUDY", StudyInstanceUID="1.2.9.1", PatientAge="", ImageType=""),
    )
    assert [s for s, *_ in study] == [0xFF00, 0x0000]
    assert study[0][2].PatientAge == "042Y"
    assert study[0][2].ImageType is None or study[0][2].ImageType == ""  # an IMAGE attribute
    series = pynetdicom_find(
        srv.port,
        STUDY_ROOT,
        identifier("SERIES", StudyInstanceUID="1.2.9.1", SeriesInstanceUID="", Manufacturer=""),
    )
    assert sorted(ds.Manufacturer for _s, _r, ds in series[:-1]) == [
        "Maker 1.2.9.1.1",
        "Maker 1.2.9.1.2",
    ]
    images = pynetdicom_find(
        srv.port,
        STUDY_ROOT,
        identifier(
            "IMAGE",
            StudyInstanceUID="1.2.9.3",
            SeriesInstanceUID="1.2.9.3.1",
            SOPInstanceUID="",
            ImageType="",
        ),
    )
    assert sorted(list(ds.ImageType) for _s, _r, ds in images[:-1]) == [
        ["ORIGINAL", "PRIMARY", "3.1.1"],
        ["ORIGINAL", "PRIMARY", "3.1.2"],
    ]
    patient = pynetdicom_find(
        srv.port,
        PATIENT_ROOT,
        identifier("PATIENT", PatientID="PID3", OtherPatientNames="", PatientAge="042Y"),
    )
    # read with the header's ISO_IR 100, answered in UTF-8; Patient's Age (a STUDY
    # attribute) is not read at PATIENT level, and its value is not matched: FF01
    assert [s for s, *_ in patient] == [0xFF01, 0x0000]
    ds = patient[0][2]
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.OtherPatientNames) == "Müller^Johann" and ds.PatientAge == ""


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        # single value (C.2.2.2.1), case-insensitive for PN
        ({"PatientID": "PID2"}, {"1.2.9.3"}),
        ({"PatientName": "doe^jane"}, {"1.2.9.1", "1.2.9.2"}),
        ({"StudyDate": "20240310"}, {"1.2.9.3"}),
        # wildcards (C.2.2.2.4)
        ({"PatientName": "Doe*"}, {"1.2.9.1", "1.2.9.2"}),
        ({"PatientName": "Sm?th^J*"}, {"1.2.9.3"}),
        ({"ModalitiesInStudy": "M?"}, {"1.2.9.1"}),
        # list of UIDs (C.2.2.2.2)
        ({"StudyInstanceUID": ["1.2.9.1", "1.2.9.4", "1.2.9.77"]}, {"1.2.9.1", "1.2.9.4"}),
        # date ranges (C.2.2.2.5): closed, open at either end
        ({"StudyDate": "20230101-20231231"}, {"1.2.9.2"}),
        ({"StudyDate": "20240101-"}, {"1.2.9.1", "1.2.9.3"}),
        ({"StudyDate": "-20221231"}, {"1.2.9.4"}),
        # time ranges: closed, open; a study without a time (a Required Key of zero
        # length: unknown, C.2.2.1.1) matches every one (review36a #6)
        ({"StudyTime": "0900-1000"}, {"1.2.9.1", "1.2.9.4"}),
        ({"StudyTime": "1400-"}, {"1.2.9.2", "1.2.9.3", "1.2.9.4"}),
        ({"StudyTime": "-1500"}, {"1.2.9.1", "1.2.9.2", "1.2.9.4"}),
        # universal matching (C.2.2.2.3): zero-length, or only "*"
        ({"StudyDate": "", "PatientName": ""}, {"1.2.9.1", "1.2.9.2", "1.2.9.3", "1.2.9.4"}),
        ({"PatientName": "*"}, {"1.2.9.1", "1.2.9.2", "1.2.9.3", "1.2.9.4"}),
        # several keys: all must match
        ({"PatientName": "D*", "StudyDate": "20240101-"}, {"1.2.9.1"}),
        ({"PatientName": "Smith*", "StudyDate": "-20231231"}, set()),
    ],
)
def test_every_matching_type_at_study_level(server, keys, expected) -> None:
    """Each kind of matching of PS3.4 C.2.2.2, by pynetdicom at STUDY level."""
    srv, _audit = server
    keys = {"StudyInstanceUID": "", **keys}
    found = pynetdicom_find(srv.port, STUDY_ROOT, identifier("STUDY", **keys))
    assert [s for s, *_ in found] == [0xFF00] * len(expected) + [0x0000]
    assert {ds.StudyInstanceUID for _s, _r, ds in found[:-1]} == expected


def test_pynetdicom_refusals(server) -> None:
    srv, _audit = server
    cases = [
        (PATIENT_ROOT, identifier("FRAME", PatientID=""), 0xA900),
        (STUDY_ROOT, identifier("STUDY", StudyInstanceUID="", Modality="CT"), 0xA900),
        (STUDY_ROOT, identifier("IMAGE", StudyInstanceUID="1.2.9.1", SOPInstanceUID=""), 0xA900),
        (STUDY_ROOT, identifier("STUDY", StudyInstanceUID="", StudyDate="2024"), 0xC000),
        # (review111 F6: accepted, matching nothing, or only the studies without a date)
        (
            STUDY_ROOT,
            identifier("STUDY", StudyInstanceUID="", StudyDate="20240115-20240101"),
            0xC000,
        ),
        (STUDY_ROOT, identifier("STUDY", StudyInstanceUID="1.2.9.?"), 0xC000),
    ]
    for model, ds, status in cases:
        found = pynetdicom_find(srv.port, model, ds)
        assert len(found) == 1, found
        assert found[0][0] == status and found[0][1].ErrorComment, found
    said = [pynetdicom_find(srv.port, model, ds)[0][1].ErrorComment for model, ds, _ in cases[-2:]]
    assert "a date range ends before it begins" in said[0]
    assert "a UID is matched whole, without wildcards" in said[1]
    without_level = Dataset()
    without_level.PatientID = ""
    found = pynetdicom_find(srv.port, PATIENT_ROOT, without_level)
    assert found[0][0] == 0xA900 and found[0][1].OffendingElement == 0x00080052


def test_policy_without_find_is_0124(root: Path) -> None:
    archive = Archive(root, fsync=False)
    policy = Policy(peers=[Peer("ECHOONLY", may=frozenset({"echo"})), Peer("FINDER")])
    try:
        with ServerThread(ServerConfig(port=0), archive, gatekeeper=policy) as srv:
            ds = identifier("STUDY", StudyInstanceUID="")
            refused = pynetdicom_find(srv.port, STUDY_ROOT, ds, calling="ECHOONLY")
            assert [s for s, *_ in refused] == [0x0124]
            allowed = pynetdicom_find(srv.port, STUDY_ROOT, ds, calling="FINDER")
            assert [s for s, *_ in allowed] == [0xFF00] * 4 + [0x0000]
    finally:
        archive.close()


def test_each_find_is_audited_as_a_query(server) -> None:
    srv, audit = server
    pynetdicom_find(srv.port, STUDY_ROOT, identifier("STUDY", StudyInstanceUID="1.2.9.3"))
    pynetdicom_find(srv.port, STUDY_ROOT, identifier("BAD"))
    ok, bad = audit.records
    assert ok["audit_event"] == "Query" and ok["event_id"] == "110112"
    assert ok["service"] == "C-FIND" and ok["calling_ae"] == "PYNETDICOM"
    assert ok["level"] == "STUDY" and ok["query"] == {"StudyInstanceUID": "1.2.9.3"}
    assert (ok["status"], ok["matches"]) == ("0000", 1)
    assert (bad["status"], bad["matches"], bad["level"]) == ("A900", 0, None)


async def _find_with(port: int, cancel: bool, release: bool = False) -> list[tuple[int, bool]]:
    """C-FIND-RQ, its Identifier and (``cancel``) a C-CANCEL-RQ for it, written at
    once (one write: the SCP reads the cancel before it answers), (``release``) then
    an A-RELEASE-RQ at once; (status, has identifier) of each response."""
    assoc = await associate("127.0.0.1", port, contexts=[(STUDY_ROOT, (uids.EXPLICIT_VR_LE,))])
    responses: list[tuple[int, bool]] = []
    done = asyncio.Event()

    def on_dimse(event: Any) -> None:  # our client models no C-FIND yet: collect here
        if isinstance(event, CommandReceived):
            rsp = event.message
            assert isinstance(rsp, CFindRSP) and rsp.message_id_being_responded_to == 7
            responses.append((rsp.status, rsp.has_dataset))
            if not rsp.has_dataset:
                done.set()

    assoc._on_dimse = on_dimse  # type: ignore[method-assign]
    ctx = assoc.context_for(STUDY_ROOT)
    assert ctx is not None
    ds = identifier(
        "IMAGE", StudyInstanceUID="1.2.9.1", SeriesInstanceUID="1.2.9.1.1", SOPInstanceUID=""
    )
    data = encode_dataset(ds, uids.EXPLICIT_VR_LE)
    conn, max_pdu = assoc.t.conn, assoc.negotiated.peer_max_pdu
    conn.send_each(command_pdvs(ctx.id, CFindRQ(7, STUDY_ROOT).encode(), max_pdu))
    conn.send_each(dataset_pdvs(ctx.id, data, max_pdu, True))
    if cancel:
        conn.send_each(command_pdvs(ctx.id, CCancelRQ(7).encode(), max_pdu))
    assoc.t.write_now()
    if release:  # (the responses come before the A-RELEASE-RP, or not at all)
        await asyncio.wait_for(assoc.release(), 30)
        return responses
    await asyncio.wait_for(done.wait(), 30)
    await assoc.release()
    return responses


def test_c_cancel_stops_the_matches_with_fe00(server) -> None:
    srv, audit = server
    assert asyncio.run(_find_with(srv.port, cancel=False)) == [(0xFF00, True)] * 3 + [(0, False)]
    assert asyncio.run(_find_with(srv.port, cancel=True)) == [(0xFE00, False)]
    assert audit.records[-1]["status"] == "FE00" and audit.records[-1]["matches"] == 0


def test_stray_c_cancels_are_counted_not_logged_each(server, caplog) -> None:
    """review68 #4: 200,000 C-CANCEL-RQs for no operation in progress wrote one log
    line each (24.6 MB): the first few, then one count when the association ends."""
    srv, _audit = server

    async def stray(times: int) -> None:
        contexts = [(STUDY_ROOT, (uids.EXPLICIT_VR_LE,))]
        assoc = await associate("127.0.0.1", srv.port, contexts=contexts)
        ctx = assoc.context_for(STUDY_ROOT)
        assert ctx is not None and assoc.negotiated is not None
        for _ in range(times):
            cancel = CCancelRQ(77).encode()
            assoc.t.conn.send_each(command_pdvs(ctx.id, cancel, assoc.negotiated.peer_max_pdu))
        assoc.t.write_now()
        await asyncio.wait_for(assoc.release(), 30)

    ended = threading.Event()

    class Ended(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "association ended" in record.getMessage():
                ended.set()

    server_log = logging.getLogger("dicomstore.server")
    server_log.addHandler(watch := Ended())
    try:
        with caplog.at_level(logging.INFO, logger="dicomstore.server"):
            asyncio.run(stray(50))
            assert ended.wait(30)
    finally:
        server_log.removeHandler(watch)
    said = [m for m in caplog.messages if "C-CANCEL-RQ, message 77 not in progress" in m]
    assert len(said) == 3
    assert any(
        m.endswith(": 47 more C-CANCEL-RQs not in progress, not logged each")
        for m in caplog.messages
    )


def test_a_release_right_after_a_find_waits_for_its_answers(server) -> None:
    """review34a #4: the A-RELEASE-RP came at once and the C-FIND was never answered."""
    srv, _audit = server
    assert asyncio.run(_find_with(srv.port, cancel=False, release=True)) == [(0xFF00, True)] * 3 + [
        (0, False)
    ]


def test_no_find_contexts_without_an_archive() -> None:
    class Handler:
        def begin(self, **kwargs: Any) -> Any:
            raise OSError("unused")

    server = Server(ServerConfig(port=0), Handler())
    assert server.reader is None
    assert STUDY_ROOT not in server.policy.abstract_syntaxes
    assert STUDY_ROOT in ServerConfig().policy().abstract_syntaxes


def test_an_index_unavailable_is_a700_naming_the_cause_not_the_url(server, monkeypatch) -> None:
    """review36b #6: C000 with the first 64 characters of the index's URL for comment."""
    from dicomstore.archive.engine import PostgresOperationalError
    from dicomstore.services import query_scp

    def unavailable(*_args: Any, **_kwargs: Any) -> Any:
        raise PostgresOperationalError(
            "index postgresql://ds@db:5432/archive: sorry, too many clients already",
            "sorry, too many clients already",
        )

    monkeypatch.setattr(query_scp.q, "iter_search", unavailable)
    srv, _audit = server
    found = pynetdicom_find(srv.port, STUDY_ROOT, identifier("STUDY", StudyInstanceUID=""))
    assert [s for s, *_ in found] == [0xA700]
    assert found[0][1].ErrorComment == "index unavailable: sorry, too many clients already"


def test_a_sequence_key_with_a_value_is_ff01_and_an_empty_one_ff00(server) -> None:
    """review36a #7: a sequence key asking for sequence matching (PS3.4 C.2.2.2.6, not
    done) was answered FF00, "every key matched"."""
    srv, _audit = server
    asked, returned = Dataset(), Dataset()
    asked.CodeValue, returned.CodeValue = "NO-SUCH-CODE", ""
    for item, expected in ((asked, 0xFF01), (returned, 0xFF00)):
        ds = identifier("STUDY", StudyInstanceUID="1.2.9.3")
        ds.ProcedureCodeSequence = [item]
        found = pynetdicom_find(srv.port, STUDY_ROOT, ds)
        assert [s for s, *_ in found] == [expected, 0x0000]


def test_identifiers_are_decoded_and_parsed_off_the_event_loop(server, monkeypatch) -> None:
    """review36a #5: a 1 MiB Identifier (or an N-ACTION naming 65535 instances) was
    decoded and parsed on the event loop, every association stalled for seconds."""
    from dicomstore.services import qr_operations, query_scp

    on_loop: list[str] = []

    def off_loop(real: Any) -> Any:
        def call(*args: Any) -> Any:
            try:
                asyncio.get_running_loop()
                on_loop.append(real.__name__)
            except RuntimeError:  # (no loop in this thread: a worker's)
                pass
            return real(*args)

        return call

    monkeypatch.setattr(
        qr_operations, "decode_identifier", off_loop(qr_operations.decode_identifier)
    )
    monkeypatch.setattr(query_scp, "parse_identifier", off_loop(query_scp.parse_identifier))
    srv, _audit = server
    found = pynetdicom_find(srv.port, STUDY_ROOT, identifier("STUDY", StudyInstanceUID="1.2.9.3"))
    assert [s for s, *_ in found] == [0xFF00, 0x0000] and on_loop == []


class _Panic(BaseException):
    """As pyo3's PanicException (a Rust decoder's panic): not an Exception."""


def test_an_operation_that_dies_still_gets_its_final_response(server, monkeypatch, caplog):
    """review38mem D7/D8: a task that raised (a RecursionError reading a stored sequence
    3,000 deep, a decoder's panic) sent no response; the SCU waited for its timeout."""
    from dicomstore.services import query_scp

    srv, _audit = server

    async def dies(self, op) -> None:
        raise _Panic("index out of bounds")

    monkeypatch.setattr(query_scp.QuerySCP, "answer", dies)
    with caplog.at_level("ERROR", logger="dicomstore.server"):
        found = pynetdicom_find(srv.port, STUDY_ROOT, identifier("STUDY", StudyInstanceUID=""))
    assert [(status, rsp.ErrorComment) for status, rsp, _ in found] == [
        (0xC000, "internal error: _Panic")
    ]
    assert "C-FIND message 1 failed" in caplog.text


def test_a_stored_value_too_long_for_an_answer_is_returned_zero_length(tmp_path, caplog):
    """review38mem D3: a key whose stored value was 400 MiB was read whole (1.3 GiB)
    and sent back in every pending response."""
    from tests.archive.archive_testlib import dataset, store

    from dicomstore.services.query_scp import MAX_RETURNED_VALUE

    root = tmp_path / "archive"
    archive = Archive(root, fsync=False)
    long_text = "x" * (MAX_RETURNED_VALUE + 2)
    extra = {0x0040A160: ("UT", long_text), 0x00081030: ("LO", "kept")}
    data = dataset("1.2.9.77.1.1", study="1.2.9.77", series="1.2.9.77.1", extra=extra)
    assert store(archive, data, sop_uid="1.2.9.77.1.1").status == 0
    archive.close()
    query = identifier(
        "IMAGE", StudyInstanceUID="1.2.9.77", SeriesInstanceUID="1.2.9.77.1", SOPInstanceUID=""
    )
    query.TextValue = ""
    query.StudyDescription = ""
    with audited_server(root) as (srv, _audit), caplog.at_level("WARNING"):
        found = pynetdicom_find(srv.port, STUDY_ROOT, query)
    (status, _rsp, match), (final, _, _) = found
    assert (status, final) == (0xFF00, 0x0000)
    assert match.TextValue == "" and match.StudyDescription == "kept"
    assert f"({MAX_RETURNED_VALUE + 2} bytes) is returned zero-length" in caplog.text


def _find_held(port: int, sent: threading.Event) -> Any:
    """An association whose C-FIND of every study has had a match sent (``sent``), the
    server then holding the rest as for a slow reader."""
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(STUDY_ROOT)
    assoc = ae.associate("127.0.0.1", port)
    assert assoc.is_established
    next(assoc.send_c_find(identifier("STUDY", StudyInstanceUID=""), STUDY_ROOT))
    assert sent.wait(30)
    return assoc


def test_a_find_whose_association_ends_under_it_is_audited_aborted(root, monkeypatch) -> None:
    """review81 F3: a C-FIND cut off while the server waited to send (a slow reader gone)
    left no audit record though matches had gone out. Now "aborted", with the matches."""
    from dicomstore.services import query_scp

    sent, told = threading.Event(), threading.Event()
    real = query_scp.QuerySCP.drain

    async def held(self) -> None:  # (the first match is sent; then as for a slow reader)
        await real(self)
        sent.set()
        await asyncio.Event().wait()

    class Told(Audit):
        def query(self, record: dict[str, Any]) -> None:
            super().query(record)
            told.set()

    monkeypatch.setattr(query_scp.QuerySCP, "drain", held)
    audit, archive = Told(), Archive(root, fsync=False)
    try:
        with ServerThread(ServerConfig(port=0), archive, audit=audit) as srv:
            assoc = _find_held(srv.port, sent)
            assoc.abort()
            assert told.wait(30), "no audit record"
        assert audit.records[-1]["status"] == "aborted" and audit.records[-1]["matches"] == 1
    finally:
        archive.close()


@pytest.mark.parametrize("when", ["at-a-fetch", "mid-batch"])
def test_a_slowly_read_find_lets_the_index_checkpoint(tmp_path, monkeypatch, when) -> None:
    """review81 F2: a client reading a C-FIND's answers slowly kept its cursor, and so a
    read of the index, open: SQLite's WAL could not be checkpointed past it (it grew
    by 270 MB). Past HOLD_READ seconds the rest is read into a file, the read over:
    when the next batch is fetched, or while one is sent (review82 F1)."""
    import sqlite3

    from dicomstore.services import query_scp

    root = tmp_path / "archive"
    fill(root)
    sent = threading.Event()
    real = query_scp.QuerySCP.drain

    drains = []

    async def held(self) -> None:  # (the matches sent, then as for a slow reader)
        await real(self)
        drains.append(1)
        if when == "mid-batch" and len(drains) == 1:
            monkeypatch.setattr(query_scp, "HOLD_READ", 0.0)  # (overdue from now)
            return
        sent.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(query_scp.QuerySCP, "drain", held)
    monkeypatch.setattr(query_scp, "BATCH", 1 if when == "at-a-fetch" else 2)
    hold = 0.0 if when == "at-a-fetch" else 99.0
    monkeypatch.setattr(query_scp, "HOLD_READ", hold, raising=False)
    archive = Archive(root, fsync=False)
    try:
        with ServerThread(ServerConfig(port=0), archive) as srv:
            assoc = _find_held(srv.port, sent)
            with closing(sqlite3.connect(root / "index.sqlite", timeout=0.2)) as con:
                con.execute("CREATE TABLE probe(x)")  # (frames in the WAL)
                con.commit()
                busy, _log, _done = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            assoc.abort()
        assert busy == 0, (busy, _log, _done)  # (no reader held the WAL)
    finally:
        archive.close()


def test_a_specific_character_set_asked_for_is_returned(server) -> None:
    """review114: a return key (0008,0005) was left out of an answer whose values are
    ASCII; PS3.4 C.2.2.1.3: a key asked for is returned, here zero-length (the
    default repertoire)."""
    srv, _audit = server
    ds = identifier("STUDY", StudyInstanceUID="", PatientID="")
    ds.SpecificCharacterSet = ""
    found = pynetdicom_find(srv.port, STUDY_ROOT, ds)
    pending = [answer for status, _rsp, answer in found if status == 0xFF00]
    assert pending and all(
        "SpecificCharacterSet" in answer and not answer.SpecificCharacterSet for answer in pending
    )
    ds = identifier("STUDY", StudyInstanceUID="", PatientID="")
    found = pynetdicom_find(srv.port, STUDY_ROOT, ds)
    assert all(
        "SpecificCharacterSet" not in answer for status, _rsp, answer in found if status == 0xFF00
    )
