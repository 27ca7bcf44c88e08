"""A request Identifier is kept up to MAX_IDENTIFIER bytes (qr_operations.py): beyond,
the rest is discarded unread and the request refused with the service's Refused: Out
of Resources (A700 C-FIND, PS3.4 C.4.1.1.4; A701 C-MOVE and C-GET, C.4.2.1.5,
C.4.3.1.4) and an Error Comment, logged and audited; the association goes on.
Through our own SCUs and DCMTK's findscu, the memory held measured with tracemalloc."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from tests.conftest import ServerThread
from tests.services.query_testlib import Audit, audited_server, fill, identifier

import dicomstore
from dicomstore import uids
from dicomstore.dimse import status as st
from dicomstore.services.get_scp import GetSCP
from dicomstore.services.qr_operations import MAX_IDENTIFIER, QROperations
from dicomstore.services.query_scp import QuerySCP
from dicomstore.services.query_scu import FindFailed, find, find_contexts
from dicomstore.services.retrieve_scu import get, get_contexts, move, move_contexts

COMMENT = f"Identifier larger than {MAX_IDENTIFIER} bytes"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[ServerThread, Audit]]:
    """One server on LAYOUT for the module (its audit records accumulate)."""
    layout = tmp_path_factory.mktemp("bounds") / "archive"
    fill(layout)
    with audited_server(layout) as served:
        yield served


@pytest.fixture
def kept(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The most Identifier bytes any Q/R SCP held, recorded after each event it took."""
    most = [0]
    receive = QROperations.receive

    def recording(self: QROperations, event: Any) -> None:
        op = self._collecting  # (None for a command: it has no Identifier yet)
        receive(self, event)
        if op is not None:
            most[0] = max(most[0], len(op.identifier))

    monkeypatch.setattr(QROperations, "receive", recording)
    return most


def oversized(size: int, level: str = "STUDY", **keys: Any) -> Dataset:
    """An Identifier of more than ``size`` bytes: the keys and a long private OB value."""
    ds = identifier(level, **keys)
    ds.add_new(0x00091010, "LO", "BOUNDS TEST")  # private creator of (0009,10xx)
    ds.add_new(0x00091001, "OB", b"\0" * size)
    return ds


async def _oversized_then_find(port: int, service: str) -> tuple[int | None, str | None, list]:
    """An oversized C-FIND, C-MOVE or C-GET, then a C-FIND on the same association:
    (status, Error Comment) of the first, the matches of the second."""
    others = [*find_contexts(), *move_contexts()]
    get_specs, roles = get_contexts(most=128 - len(others))
    contexts = [*others, *get_specs]
    ds = oversized(MAX_IDENTIFIER, StudyInstanceUID="1.2.9.1")
    async with dicomstore.connect(
        "127.0.0.1", port, called_ae="DICOMSTORE", contexts=contexts, roles=roles
    ) as assoc:
        if service == "C-FIND":
            with pytest.raises(FindFailed) as failed:
                _ = [match async for match in find(assoc, ds)]
            status, comment = failed.value.status, failed.value.error_comment
        else:
            retrieve = move(assoc, ds, "NOWHERE") if service == "C-MOVE" else get(assoc, ds)
            result = await retrieve.run()
            status, comment = result.status, result.error_comment
            assert (result.completed, result.failed, result.failed_uids) == (0, 0, [])
        after = [m async for m in find(assoc, {"StudyInstanceUID": "1.2.9.3"}, level="STUDY")]
    return status, comment, after


@pytest.mark.parametrize(
    ("service", "status"),
    [
        ("C-FIND", st.OUT_OF_RESOURCES),
        ("C-MOVE", st.UNABLE_TO_CALCULATE_MATCHES),
        ("C-GET", st.UNABLE_TO_CALCULATE_MATCHES),
    ],
)
def test_an_oversized_identifier_is_refused_and_the_association_goes_on(
    server, kept: list[int], caplog: pytest.LogCaptureFixture, service: str, status: int
) -> None:
    srv, audit = server
    caplog.set_level(logging.WARNING, logger="dicomstore.server")
    before = len(audit.records)
    got, comment, after = asyncio.run(_oversized_then_find(srv.port, service))
    assert (got, comment) == (status, COMMENT) and len(COMMENT) <= 64
    # the C-FIND after it on the same association is answered as usual
    assert [str(ds.StudyInstanceUID) for ds in after] == ["1.2.9.3"]
    assert 0 < kept[0] <= MAX_IDENTIFIER  # what was kept never outgrew the bound
    refused, found = audit.records[before:]
    assert (refused["service"], refused["status"]) == (service, f"{status:04X}")
    assert (found["service"], found["status"]) == ("C-FIND", "0000")
    logged = [r.getMessage() for r in caplog.records if COMMENT in r.getMessage()]
    assert len(logged) == 1 and service in logged[0] and "discarded" in logged[0], logged


def test_an_identifier_within_the_bound_is_answered(server, kept: list[int]) -> None:
    """The bound is on size only: an Identifier just under it is served (the private
    element is not a key: no match is excluded by it)."""
    srv, _audit = server

    async def run() -> list[Dataset]:
        async with dicomstore.connect(
            "127.0.0.1", srv.port, called_ae="DICOMSTORE", contexts=find_contexts()
        ) as assoc:
            ds = oversized(MAX_IDENTIFIER - 4096, StudyInstanceUID="1.2.9.3")
            return [m async for m in find(assoc, ds)]

    assert [str(ds.StudyInstanceUID) for ds in asyncio.run(run())] == ["1.2.9.3"]
    assert MAX_IDENTIFIER - 4096 < kept[0] <= MAX_IDENTIFIER


def test_memory_stays_bounded_for_dcmtk_findscu_sending_32_mib(server, tmp_path: Path) -> None:
    """DCMTK's findscu (another process) sends a 32 MiB Identifier: the server (this
    process) allocates a few MiB at most meanwhile, not the Identifier; A700."""
    srv, audit = server
    query = oversized(32 << 20, StudyInstanceUID="")
    query.file_meta = FileMetaDataset()
    query.file_meta.TransferSyntaxUID = uids.EXPLICIT_VR_LE
    query.file_meta.MediaStorageSOPClassUID = uids.STUDY_ROOT_QR_FIND
    query.file_meta.MediaStorageSOPInstanceUID = "1.2.9.99"
    path = tmp_path / "query.dcm"
    query.save_as(path, enforce_file_format=True)
    del query
    tracemalloc.start()
    try:
        findscu = ["/usr/bin/findscu", "-v", "-S", "-aec", "DICOMSTORE"]
        proc = subprocess.run(
            [*findscu, "127.0.0.1", str(srv.port), path],
            capture_output=True,
            text=True,
            timeout=60,
        )
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"{peak} bytes allocated while receiving 32 MiB"
    assert "Final Find Response (Refused: OutOfResources)" in proc.stdout + proc.stderr, proc
    assert audit.records[-1]["status"] == "A700"


# -- the operations window (PS3.7 D.3.3.3) ----------------------------------------------

PIPELINED = 5


@pytest.fixture
def window_probe(monkeypatch: pytest.MonkeyPatch) -> Callable[[type], list[int]]:
    """``probe(SCP)``: the most operations of that SCP run at once, recorded. Each of
    its answers waits until the SCP took the next request (started, held or refused
    it beyond the window), so that a second one runs beside it unless the window
    stops it."""

    def probe(scp: type) -> list[int]:
        most = [0]
        taken: list[int] = []
        start, answer = QROperations._start, scp.answer

        def taking(self: QROperations, op: Any) -> None:
            start(self, op)
            taken.append(op.rq.message_id)
            waker = getattr(self, "probe_waker", None)
            if waker is not None:
                waker.set()

        async def answering(self: Any, op: Any) -> None:
            most[0] = max(most[0], len(self._running))
            after = taken.index(op.rq.message_id) + 2  # taken once the next one is
            if after <= PIPELINED:
                self.probe_waker = waker = asyncio.Event()
                while len(taken) < after:
                    await asyncio.wait_for(waker.wait(), 30)
                    waker.clear()
            most[0] = max(most[0], len(self._running))
            await answer(self, op)

        monkeypatch.setattr(QROperations, "_start", taking)
        monkeypatch.setattr(scp, "answer", answering)
        return most

    return probe


def test_requests_beyond_the_window_wait_for_it(server, window_probe) -> None:
    """A peer granted the default window of one operation (PS3.7 D.3.3.3) sends five
    C-FINDs at once: the SCP runs one at a time, reading no further meanwhile (the
    requests are not kept), and answers each in full."""
    srv, _audit = server
    most = window_probe(QuerySCP)

    async def run() -> list[list[str]]:
        async with dicomstore.connect(
            "127.0.0.1", srv.port, called_ae="DICOMSTORE", contexts=find_contexts()
        ) as assoc:
            assert assoc.negotiated.max_ops_invoked == 1

            async def one(study: str) -> list[str]:
                query = {"StudyInstanceUID": study}
                return [str(m.StudyInstanceUID) async for m in find(assoc, query, level="STUDY")]

            studies = [f"1.2.9.{n % 3 + 1}" for n in range(PIPELINED)]
            return await asyncio.gather(*(one(uid) for uid in studies))

    answers = asyncio.run(run())
    assert answers == [[f"1.2.9.{n % 3 + 1}"] for n in range(PIPELINED)]
    assert most[0] == 1


def test_a_c_get_beyond_the_window_is_refused(server, window_probe) -> None:
    """C-GET's sub-operations are answered on the association, so it is read on: a
    C-GET beyond the window of one is refused (A701, with why), the one running
    completes."""
    srv, _audit = server
    most = window_probe(GetSCP)
    specs, roles = get_contexts()

    async def run() -> list[tuple[int, str | None, int]]:
        async with dicomstore.connect(
            "127.0.0.1", srv.port, called_ae="DICOMSTORE", contexts=specs, roles=roles
        ) as assoc:
            ds = identifier("STUDY", StudyInstanceUID="1.2.9.1")
            results = await asyncio.gather(*(get(assoc, ds).run() for _ in range(2)))
            return [(r.status, r.error_comment, r.completed + r.failed) for r in results]

    refusal = (st.UNABLE_TO_CALCULATE_MATCHES, "more than 1 operations at once", 0)
    results = asyncio.run(run())
    assert results.count(refusal) == 1
    (ran,) = [r for r in results if r != refusal]
    assert ran[2] == 5  # its five sub-operations went out (no Storage SCP here: failed)
    assert most[0] == 1


def _explicit(
    group: int, element: int, vr: bytes, value: bytes, length: int | None = None
) -> bytes:
    import struct

    return (
        struct.pack("<HH2sH", group, element, vr, len(value) if length is None else length) + value
    )


GOOD = _explicit(0x0008, 0x0052, b"CS", b"STUDY ") + _explicit(0x0020, 0x000D, b"UI", b"1.2.3.4\0")


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (GOOD[:-3], "runs past the end"),  # (the last value cut)
        (GOOD + _explicit(0x0010, 0x0010, b"PN", b"AB", length=200), "runs past the end"),
        (GOOD + b"\x10\x00\x10", "3 bytes at its end are no element"),  # (a header cut)
        (b"\x01\x02\x03", "3 bytes at its end are no element"),
    ],
    ids=["value-cut", "length-past-end", "header-cut", "garbage"],
)
def test_an_identifier_cut_short_is_unreadable(data: bytes, why: str) -> None:
    """review46 #4: pydicom reads what there is: a value cut short was matched as sent
    (C-FIND 0000 with no match; a C-MOVE moved the whole study), a cut header dropped."""
    from dicomstore.services.qr_operations import decode_identifier

    with pytest.raises(ValueError, match=why):
        decode_identifier(data, uids.EXPLICIT_VR_LE)
    assert decode_identifier(GOOD, uids.EXPLICIT_VR_LE).StudyInstanceUID == "1.2.3.4"


def test_an_item_value_cut_short_is_unreadable() -> None:
    import struct

    from dicomstore.services.qr_operations import decode_identifier

    item = _explicit(0x0008, 0x0100, b"SH", b"ABCD", length=40)  # (past its item's end)
    seq = struct.pack("<HH2sHI", 0x0008, 0x1032, b"SQ", 0, 8 + len(item))
    seq += struct.pack("<HHI", 0xFFFE, 0xE000, len(item)) + item
    with pytest.raises(ValueError):
        decode_identifier(GOOD + seq, uids.EXPLICIT_VR_LE)


def test_a_key_s_value_is_cut_in_the_log_line() -> None:
    """review53 #10: a C-FIND listing 40,000 UIDs was one 349 KB log line."""
    from dicomstore.services.qr_operations import LOGGED_VALUE, keys_line

    many = "\\".join(f"1.2.3.{n}" for n in range(40000))
    line = keys_line({"StudyInstanceUID": many, "PatientID": "PID1"})
    assert len(line) < LOGGED_VALUE + 100
    assert line.endswith(f"... ({len(many)} characters)' PatientID='PID1'")
    assert keys_line({"PatientID": "PID1"}) == "PatientID='PID1'"
