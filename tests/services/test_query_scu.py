"""The C-FIND SCU's Python API (issue 15, PS3.4 C.4.1.2): Identifiers from keys, matches
from our SCP, failures with their Error Comment, FF01, C-CANCEL against a
pynetdicom SCP that waits for it, and bounded memory against one whose matches are
large (aio/invoker.py: one response's data set, and those waiting to be read)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from tests.conftest import ServerThread
from tests.services.query_testlib import BulkySCP, WaitingSCP, fill

import dicomstore
from dicomstore import uids
from dicomstore.aio import invoker
from dicomstore.aio.invoker import MAX_RESPONSE_DATASET, Responses
from dicomstore.archive import Archive
from dicomstore.errors import AssociationAborted
from dicomstore.services.qr_operations import decode_identifier
from dicomstore.services.query_identifier import encode_elements
from dicomstore.services.query_scu import (
    FindFailed,
    find,
    find_contexts,
    identifier_keys,
)
from dicomstore.services.server import ServerConfig


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServerThread]:
    root: Path = tmp_path_factory.mktemp("query") / "archive"
    fill(root)
    archive = Archive(root, fsync=False)
    with ServerThread(ServerConfig(port=0), archive) as srv:
        yield srv
    archive.close()


async def _find_all(port: int, keys: Any, **kwargs: Any) -> tuple[list[Dataset], Any]:
    async with dicomstore.connect(
        "127.0.0.1", port, called_ae="DICOMSTORE", contexts=find_contexts()
    ) as assoc:
        query = dicomstore.find(assoc, keys, **kwargs)
        return [ds async for ds in query], query


def matches(port: int, keys: Any, **kwargs: Any) -> tuple[list[Dataset], Any]:
    return asyncio.run(_find_all(port, keys, **kwargs))


@pytest.mark.parametrize(
    ("model", "level", "keys", "unique", "expected"),
    [
        ("patient", "PATIENT", {"PatientName": "m*"}, "PatientID", {"PID3"}),
        ("patient", "STUDY", {"PatientID": "PID1"}, "StudyInstanceUID", {"1.2.9.1", "1.2.9.2"}),
        ("study", "STUDY", {"PatientName": "*j*"}, "StudyInstanceUID",
         {"1.2.9.1", "1.2.9.2", "1.2.9.3"}),
        ("study", "STUDY", {"StudyDate": "20231201-"}, "StudyInstanceUID", {"1.2.9.1", "1.2.9.3"}),
        ("study", "SERIES", {"0020,000D": "1.2.9.1", "Modality": "M?"}, "SeriesInstanceUID",
         {"1.2.9.1.2"}),
        (
            "study",
            "IMAGE",
            {"StudyInstanceUID": "1.2.9.1", 0x0020000E: "1.2.9.1.1",
             "(0008,0018)": "1.2.9.1.1.1\\1.2.9.1.1.3"},
            "SOPInstanceUID",
            {"1.2.9.1.1.1", "1.2.9.1.1.3"},
        ),
    ],
)  # fmt: skip
def test_matches_at_every_level(server, model, level, keys, unique, expected) -> None:
    found, query = matches(server.port, keys, level=level, model=model)
    assert sorted(str(ds[unique].value) for ds in found) == sorted(expected)
    assert all(ds.QueryRetrieveLevel == level for ds in found)
    assert (query.status, query.matches, query.warnings) == (0, len(expected), 0)


def test_return_keys_and_non_ascii_values(server) -> None:
    found, _ = matches(
        server.port,
        {"PatientName": "Mü*", "NumberOfPatientRelatedInstances": ""},
        level="PATIENT",
        model="patient",
    )
    (ds,) = found
    assert str(ds.PatientName) == "Müller^Hans" and ds.NumberOfPatientRelatedInstances == 1
    assert ds.PatientID == "PID3"  # the level's unique key, returned without being asked


def test_a_pydicom_dataset_is_sent_as_it_is(server) -> None:
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = "1.2.9.1"
    ds.SeriesInstanceUID = ""
    found, _ = matches(server.port, ds)
    assert {d.SeriesInstanceUID for d in found} == {"1.2.9.1.1", "1.2.9.1.2"}


def test_failure_statuses_raise_with_the_error_comment(server) -> None:
    with pytest.raises(FindFailed) as refused:
        matches(server.port, {"SeriesInstanceUID": ""}, level="SERIES")
    assert refused.value.status == 0xA900 and "relational" in refused.value.error_comment
    assert refused.value.offending_element == (0x0020000D,)
    raw = Dataset()  # (as given: the keys' own checks would refuse it before sending)
    raw.QueryRetrieveLevel, raw.StudyInstanceUID, raw.StudyDate = "STUDY", "", "2024"
    with pytest.raises(FindFailed) as unreadable:
        matches(server.port, raw)
    assert unreadable.value.status == 0xC000 and "2024" in str(unreadable.value)


def test_a_key_not_matched_by_the_scp_counts_as_a_warning(server) -> None:
    found, query = matches(
        server.port, {"PatientID": "PID2", "PatientAge": "042Y"}, level="PATIENT", model="patient"
    )
    assert len(found) == 1 and (query.status, query.warnings) == (0, 1)


def test_a_model_the_peer_did_not_accept_is_an_association_error(server) -> None:
    async def run() -> None:
        contexts = find_contexts("study")
        async with dicomstore.connect("127.0.0.1", server.port, contexts=contexts) as assoc:
            async for _ in find(assoc, {}, level="PATIENT", model="patient"):
                pass

    with pytest.raises(dicomstore.AssociationError, match="Patient Root"):
        asyncio.run(run())


# -- Identifiers from keys ------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize("ts", [uids.EXPLICIT_VR_LE, uids.IMPLICIT_VR_LE, uids.EXPLICIT_VR_BE])
def test_identifier_keys_are_encoded_as_given(ts) -> None:
    keys = identifier_keys(
        {
            "StudyInstanceUID": "1.2.*",  # not a UI value: the SCP judges, we send it
            "StudyDate": "20240101-",
            "PatientName": "Mü*",
            "Rows": "512",  # US
            "ReferencedStudySequence": "",
            "NumberOfStudyRelatedInstances": "",
        },
        "STUDY",
    )
    ds = decode_identifier(encode_elements(keys, ts), ts)
    assert ds.SpecificCharacterSet == "ISO_IR 192" and ds.QueryRetrieveLevel == "STUDY"
    assert ds[0x0020000D].value == "1.2.*" and ds.StudyDate == "20240101-"
    assert str(ds.PatientName) == "Mü*" and ds.Rows == 512
    assert ds.ReferencedStudySequence == [] and ds.NumberOfStudyRelatedInstances is None
    assert [int(e.tag) for e in ds] == sorted(int(e.tag) for e in ds)


@pytest.mark.parametrize(
    ("keys", "level", "message"),
    [
        ({"NoSuchKeyword": ""}, "STUDY", "not a DICOM keyword"),
        ({"0009,0010": ""}, "STUDY", "unknown attribute"),
        ({"Rows": "many"}, "STUDY", "not a US value"),
        ({"ReferencedStudySequence": "x"}, "STUDY", "sequence"),
        ({}, "FRAME", "Query/Retrieve Level 'FRAME'"),
        ({"QueryRetrieveLevel": "SERIES"}, "STUDY", "two Query/Retrieve Levels"),
        # review48 L2: Python's "'ascii' codec can't encode character '\xfc'..."
        ({"SpecificCharacterSet": "", "PatientName": "Mü*"}, "STUDY", "'ü' is not in the"),
        ({"SpecificCharacterSet": "ISO_IR 100", "PatientName": "Ω*"}, "STUDY", "'Ω' is not"),
        # review48 L6: sent as they were, though the README says refused
        ({"StudyDate": "bad"}, "STUDY", "not a date"),
        ({"StudyDate": "20240101-2024"}, "STUDY", "not a date"),
        ({"StudyTime": "25h"}, "STUDY", "not a time"),
        ({"PatientID": "x" * 70}, "STUDY", "over 64 characters"),
        ({"Modality": "CT\\" + "M" * 17}, "SERIES", "over 16 characters"),
    ],
)
def test_bad_keys_are_value_errors(keys, level, message) -> None:
    with pytest.raises(ValueError, match=message):
        identifier_keys(keys, level)


@pytest.mark.parametrize(
    "keys",
    [
        {"StudyDate": "20240101-20241231", "StudyTime": "1000-"},
        {"StudyDate": "-20240101", "StudyTime": "10:15:00"},
        {"PatientName": "DOE^*", "PatientID": "x" * 64, "AccessionNumber": "A?C*"},
        {"StudyInstanceUID": "1.2.3\\1.2.4", "StudyTime": "101500.123456"},
    ],
)
def test_good_keys_pass_the_checks(keys) -> None:
    identifier_keys(keys, "STUDY")


# -- C-CANCEL (PS3.7 9.3.2.3) ---------------------------------------------------------


def test_cancel_ends_the_find_with_fe00() -> None:
    async def run(port: int) -> tuple[list[str], Any]:
        async with dicomstore.connect("127.0.0.1", port, contexts=find_contexts()) as assoc:
            query = find(assoc, {"StudyInstanceUID": ""}, level="STUDY")
            seen = []
            async for ds in query:
                seen.append(ds.StudyInstanceUID)
                await query.cancel()
            return seen, query

    scp = WaitingSCP()
    with scp as port:
        seen, query = asyncio.run(run(port))
    assert seen == ["1.2.3.1"] and query.cancelled and query.status == 0xFE00
    assert scp.cancelled.is_set()


# -- a hostile SCP: large response Identifiers -----------------------------------------


def test_a_response_identifier_over_the_bound_aborts_the_association(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A match whose Identifier outgrows MAX_RESPONSE_DATASET: not kept, the association
    aborted (a response cannot be refused), the C-FIND fails saying why, logged."""
    caplog.set_level(logging.WARNING, logger="dicomstore.client")

    async def run(port: int) -> str:
        async with dicomstore.connect("127.0.0.1", port, contexts=find_contexts()) as assoc:
            with pytest.raises(AssociationAborted) as aborted:
                _ = [ds async for ds in find(assoc, {"StudyInstanceUID": ""}, level="STUDY")]
            assert assoc.invoker.ended is not None  # no further request on it
            return str(aborted.value)

    scp = BulkySCP(1, MAX_RESPONSE_DATASET)
    with scp as port:
        why = asyncio.run(run(port))
        assert scp.aborted.wait(10), "the SCP's association was not aborted"
    assert f"over {MAX_RESPONSE_DATASET} bytes" in why, why
    assert any(f"over {MAX_RESPONSE_DATASET} bytes" in r.getMessage() for r in caplog.records)


def test_matches_waiting_to_be_read_are_bounded_in_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """128 matches of 256 KiB each (32 MiB) to a reader that stops after the first: the
    client stops reading the socket once RESPONSES_BUFFERED_BYTES (here 2 MiB) wait, not
    at RESPONSES_BUFFERED (256) responses; then every match is read, in order."""
    bound, size, count = 2 << 20, 256 << 10, 128
    monkeypatch.setattr(invoker, "RESPONSES_BUFFERED_BYTES", bound)
    most = [0]
    put = Responses._put

    def recording(self: Responses, rsp: Any, data: bytes | None) -> None:
        put(self, rsp, data)
        most[0] = max(most[0], self.buffered)

    monkeypatch.setattr(Responses, "_put", recording)
    scp = BulkySCP(count, size)

    async def run(port: int) -> tuple[list[str], bool, Any]:
        async with dicomstore.connect("127.0.0.1", port, contexts=find_contexts()) as assoc:
            query = find(assoc, {"StudyInstanceUID": ""}, level="STUDY")
            matches = aiter(query)
            seen = [(await anext(matches)).StudyInstanceUID]
            stream = next(iter(assoc.invoker.streams.values()))
            deadline = asyncio.get_running_loop().time() + 30
            # (the SCP's own "sent" says nothing: pynetdicom queues its PDUs unbounded)
            while not stream.full:
                assert asyncio.get_running_loop().time() < deadline, "never full"
                await asyncio.sleep(0.005)
            seen += [ds.StudyInstanceUID async for ds in matches]
            return seen, query

    with scp as port:
        seen, query = asyncio.run(run(port))
    # the batch being decoded when the bound is reached is finished: a receive buffer more
    assert bound <= most[0] <= bound + (2 << 20) + size, most[0]
    assert seen == [f"1.2.3.{n + 1}" for n in range(count)]
    assert (query.status, query.matches) == (0, count)


def test_a_find_left_early_drops_its_late_answers_and_the_association_goes_on(server) -> None:
    """review39 #2: the responses still coming to a C-FIND whose reader stopped aborted
    the association (taken for answers to a message never sent)."""

    async def run() -> tuple[list[str], int, int]:
        contexts = [*find_contexts(), (uids.VERIFICATION, [uids.IMPLICIT_VR_LE])]
        async with dicomstore.connect(
            "127.0.0.1", server.port, called_ae="DICOMSTORE", contexts=contexts
        ) as assoc:
            seen = []
            async for match in dicomstore.find(assoc, {"PatientName": "*"}, level="STUDY"):
                seen.append(str(match.StudyInstanceUID))
                break  # (more matches and the final response are on their way)
            echoed = (await assoc.echo()).status
            again = [
                ds async for ds in dicomstore.find(assoc, {"PatientID": "PID1"}, level="STUDY")
            ]
            return seen, echoed, len(again)

    seen, echoed, again = asyncio.run(run())
    assert len(seen) == 1 and (echoed, again) == (0x0000, 2)


def test_a_find_left_early_is_cancelled() -> None:
    """review40 #2: the SCP went on with the find its reader left (a next request on
    the association waited for it): a C-CANCEL-RQ goes out when the stream closes."""
    scp = WaitingSCP()  # (one match, then up to 10 s for a C-CANCEL-RQ)

    async def run() -> None:
        with scp as port:
            async with dicomstore.connect(
                "127.0.0.1", port, called_ae="WAITING", contexts=find_contexts()
            ) as assoc:
                found = dicomstore.find(assoc, {"StudyInstanceUID": ""}, level="STUDY")
                iterator = aiter(found)
                await anext(iterator)
                await iterator.aclose()  # (what `break` leads to)
                await asyncio.to_thread(scp.cancelled.wait, 5)

    asyncio.run(run())
    assert scp.cancelled.is_set()
