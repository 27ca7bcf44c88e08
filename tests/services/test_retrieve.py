"""The retrieve engine (PS3.4 C.4.2, C.4.3): the retrieve Identifier, the selection
from the index, the counts and final statuses of the sub-operations (issue 15)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from tests.services.query_testlib import fill, sop_uids

from dicomstore.archive.reader import ArchiveReader
from dicomstore.dimse import SubOperations
from dicomstore.services import retrieve as r
from dicomstore.services.query_identifier import FindFailure
from dicomstore.services.retrieve import (
    Retrieval,
    RetrieveQuery,
    Selected,
    SubOperationsEnded,
    parse_retrieve_identifier,
    select_instances,
)

#: On both index engines (issue 17).
pytestmark = pytest.mark.usefixtures("index_engine")

PATIENT = ("PATIENT", "STUDY", "SERIES", "IMAGE")
STUDY = ("STUDY", "SERIES", "IMAGE")


def ident(level: str | None, **keys: Any) -> Dataset:
    ds = Dataset()
    if level is not None:
        ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


@pytest.fixture(scope="module")
def reader(tmp_path_factory, index_engine: str) -> ArchiveReader:
    root = tmp_path_factory.mktemp("retrieve") / "archive"
    fill(root)
    return ArchiveReader(root)


@pytest.mark.parametrize(
    ("levels", "ds", "filters"),
    [
        (STUDY, ident("STUDY", StudyInstanceUID="1.2.9.1"), {0x0020000D: "1.2.9.1"}),
        (
            STUDY,
            ident("STUDY", StudyInstanceUID=["1.2.9.1", "1.2.9.3"], PatientName="ignored"),
            {0x0020000D: "1.2.9.1\\1.2.9.3"},
        ),
        (
            STUDY,
            ident(
                "IMAGE",
                StudyInstanceUID="1.2.9.1",
                SeriesInstanceUID="1.2.9.1.1",
                SOPInstanceUID=["1.2.9.1.1.1", "1.2.9.1.1.3"],
            ),
            {
                0x0020000D: "1.2.9.1",
                0x0020000E: "1.2.9.1.1",
                0x00080018: "1.2.9.1.1.1\\1.2.9.1.1.3",
            },
        ),
        (PATIENT, ident("PATIENT", PatientID="PID1"), {0x00100020: "PID1"}),
        (
            PATIENT,
            ident("SERIES", PatientID="PID1", StudyInstanceUID="1.2.9.1", SeriesInstanceUID=""),
            None,
        ),
    ],
)
def test_identifier_names_the_unique_keys(levels, ds, filters) -> None:
    if filters is None:
        with pytest.raises(FindFailure) as failure:
            parse_retrieve_identifier(ds, levels)
        assert failure.value.status == 0xA900 and failure.value.offending == (0x0020000E,)
        return
    assert parse_retrieve_identifier(ds, levels).filters == filters


@pytest.mark.parametrize(
    ("levels", "ds", "offending", "words"),
    [
        (STUDY, ident(None, StudyInstanceUID="1.2.9.1"), 0x00080052, "no Query/Retrieve Level"),
        (STUDY, ident("PATIENT", PatientID="PID1"), 0x00080052, "not in STUDY/SERIES/IMAGE"),
        (STUDY, ident("STUDY"), 0x0020000D, "no (0020,000D)"),
        (STUDY, ident("STUDY", StudyInstanceUID="1.2.*"), 0x0020000D, "no wildcards"),
        # (review36a #11: QIDO-RS's list syntax in DIMSE moved both studies)
        (STUDY, ident("STUDY", StudyInstanceUID="1.2.9.1,1.2.9.2"), 0x0020000D, "holds a ','"),
        (
            STUDY,
            ident("SERIES", StudyInstanceUID=["1.2.9.1", "1.2.9.2"], SeriesInstanceUID="1.2"),
            0x0020000D,
            "one value only",
        ),
        (PATIENT, ident("PATIENT", PatientID=["PID1", "PID2"]), 0x00100020, "one value only"),
        (PATIENT, ident("STUDY", StudyInstanceUID="1.2.9.1"), 0x00100020, "no (0010,0020)"),
        (
            STUDY,
            ident("STUDY", StudyInstanceUID="1.2.9.1", SOPInstanceUID="1.2.9.1.1.1"),
            0x00080018,
            "below the STUDY level",
        ),
    ],
)
def test_bad_identifiers_are_a900(levels, ds, offending, words) -> None:
    with pytest.raises(FindFailure) as failure:
        parse_retrieve_identifier(ds, levels)
    assert failure.value.status == 0xA900
    assert failure.value.offending == (offending,)
    assert words in failure.value.comment and len(failure.value.comment) <= 64


def test_selection_holds_uids_stored_syntax_and_file(reader: ArchiveReader) -> None:
    query = parse_retrieve_identifier(ident("STUDY", StudyInstanceUID="1.2.9.1"), STUDY)
    selected = select_instances(reader, query)
    assert [s.sop_instance_uid for s in selected] == sop_uids("1.2.9.1.1") + sop_uids("1.2.9.1.2")
    for s in selected:
        assert s.storage is reader.storage
        with reader.open({"path": s.key}) as fp:
            ds = dcmread(fp, stop_before_pixels=True)
        assert ds.SOPInstanceUID == s.sop_instance_uid and ds.SOPClassUID == s.sop_class_uid
        assert ds.file_meta.TransferSyntaxUID == s.transfer_syntax
        assert s.study_instance_uid == "1.2.9.1"
    images = RetrieveQuery("IMAGE", {0x00080018: "1.2.9.3.1.2\\1.2.9.9.9"})
    assert [s.sop_instance_uid for s in select_instances(reader, images)] == ["1.2.9.3.1.2"]
    assert select_instances(reader, RetrieveQuery("STUDY", {0x0020000D: "9.9"})) == []


def test_more_instances_than_the_counts_can_say_is_a701(reader, monkeypatch) -> None:
    monkeypatch.setattr(r, "MAX_SUBOPERATIONS", 4)
    query = RetrieveQuery("STUDY", {0x0020000D: "1.2.9.1"})  # 5 instances
    with pytest.raises(FindFailure) as failure:
        select_instances(reader, query)
    assert failure.value.status == 0xA701 and "5 instances" in failure.value.comment


class FakeSender:
    """Answers each sub-operation with the next status; ``end_at``: raise
    SubOperationsEnded at that sub-operation (the destination left)."""

    def __init__(self, statuses: Sequence[int] = (), *, refuse: bool = False, end_at=None):
        self.statuses = list(statuses)
        self.refuse = refuse
        self.end_at = end_at
        self.sent: list[str] = []
        self.stopped = False

    async def start(self, selected: Sequence[Selected]) -> None:
        if self.refuse:
            raise SubOperationsEnded("destination refused")

    async def send(self, item: Selected) -> int:
        if len(self.sent) == self.end_at:
            raise SubOperationsEnded("destination left")
        self.sent.append(item.sop_instance_uid)
        return self.statuses[len(self.sent) - 1] if self.statuses else 0

    async def stop(self) -> None:
        self.stopped = True


def items(n: int) -> list[Selected]:
    return [
        Selected(f"1.2.{i}", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", "x")
        for i in range(1, n + 1)
    ]


def run(retrieval: Retrieval, sender: FakeSender, cancel_after: int | None = None):
    pending: list[SubOperations] = []

    async def on_pending(counts: SubOperations) -> None:
        pending.append(counts)

    def cancelled() -> bool:
        return cancel_after is not None and len(sender.sent) >= cancel_after

    status = asyncio.run(retrieval.run(sender, is_cancelled=cancelled, pending=on_pending))
    assert sender.stopped or not retrieval.selected
    return status, pending


@pytest.mark.parametrize(
    ("statuses", "final", "counts", "failed"),
    [
        ([0, 0, 0], 0x0000, SubOperations(None, 3, 0, 0), []),
        ([0, 0xA700, 0xB007], 0xB000, SubOperations(None, 1, 1, 1), ["1.2.2"]),
        ([0xB000, 0xB000, 0xB000], 0xB000, SubOperations(None, 0, 0, 3), []),
        (
            [0xC000, 0xA900, 0x0122],
            0xA702,
            SubOperations(None, 0, 3, 0),
            ["1.2.1", "1.2.2", "1.2.3"],
        ),
    ],
)
def test_final_status_and_counts(statuses, final, counts, failed) -> None:
    retrieval = Retrieval(items(3))
    status, pending = run(retrieval, FakeSender(statuses))
    assert status == final and retrieval.counts() == counts and retrieval.failed_uids == failed
    assert [p.remaining for p in pending] == [2, 1]  # after each sub-operation but the last
    assert (retrieval.failed_identifier("1.2.840.10008.1.2.1")[0] is None) == (not failed)


def test_failed_sop_instance_uid_list_identifier() -> None:
    retrieval = Retrieval(items(2))
    run(retrieval, FakeSender([0xA700, 0]))
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset

    data, listed = retrieval.failed_identifier("1.2.840.10008.1.2.1")
    assert data is not None and listed == 1
    ds = read_dataset(DicomBytesIO(data), False, True)
    assert ds.FailedSOPInstanceUIDList == "1.2.1"


def test_a_failed_list_too_long_for_explicit_vr_lists_what_fits() -> None:
    """review36a #12: over 64 KiB the list went as UN (bytes to DCMTK and pynetdicom):
    in explicit VR it lists what a UI value holds; implicit VR (32-bit lengths) all."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset

    retrieval = Retrieval(items(1))
    retrieval.failed_uids = [f"1.2.826.0.1.3680043.8.498.1{n:04d}" for n in range(3000)]
    data, listed = retrieval.failed_identifier("1.2.840.10008.1.2.1")
    assert data is not None and 2000 < listed < 3000
    assert data[4:6] == b"UI" and int.from_bytes(data[6:8], "little") <= 0xFFFE
    ds = read_dataset(DicomBytesIO(data), False, True)
    assert list(ds.FailedSOPInstanceUIDList) == retrieval.failed_uids[:listed]
    data, listed = retrieval.failed_identifier("1.2.840.10008.1.2")
    assert data is not None and listed == 3000
    ds = read_dataset(DicomBytesIO(data), True, True)
    assert list(ds.FailedSOPInstanceUIDList) == retrieval.failed_uids


def test_refused_association_fails_every_sub_operation() -> None:
    retrieval = Retrieval(items(3))
    status, pending = run(retrieval, FakeSender(refuse=True))
    assert status == 0xA702 and retrieval.counts() == SubOperations(None, 0, 3, 0)
    assert retrieval.failed_uids == ["1.2.1", "1.2.2", "1.2.3"] and pending == []
    assert retrieval.ended == "destination refused"


def test_destination_leaving_midway_fails_the_rest() -> None:
    retrieval = Retrieval(items(4))
    status, _pending = run(retrieval, FakeSender(end_at=1))
    assert status == 0xB000 and retrieval.counts() == SubOperations(None, 1, 3, 0)
    assert retrieval.failed_uids == ["1.2.2", "1.2.3", "1.2.4"]


def test_cancel_stops_before_the_next_sub_operation() -> None:
    retrieval = Retrieval(items(4))
    sender = FakeSender()
    status, pending = run(retrieval, sender, cancel_after=2)
    assert status == 0xFE00 and sender.sent == ["1.2.1", "1.2.2"]
    assert retrieval.counts() == SubOperations(2, 2, 0, 0)  # Remaining kept on cancel


def test_cancel_then_the_destination_refused_counts_nothing_failed() -> None:
    """review36c L6: a cancel that met the destination's refusal counted one failure,
    though nothing was sent: all are Remaining, FE00."""
    retrieval = Retrieval(items(3))
    status, _pending = run(retrieval, FakeSender(refuse=True), cancel_after=0)
    assert status == 0xFE00 and retrieval.counts() == SubOperations(3, 0, 0, 0)


def test_nothing_selected_is_success_without_an_association() -> None:
    retrieval = Retrieval([])
    sender = FakeSender(refuse=True)
    status, pending = run(retrieval, sender)
    assert status == 0 and retrieval.counts() == SubOperations(None, 0, 0, 0) and not sender.stopped


def test_a_patient_is_its_id_and_issuer(tmp_path) -> None:
    """review81 F1: a PATIENT-level C-GET/C-MOVE of Patient ID DUP with Issuer HOSP_A
    sent HOSP_B's patient DUP as well (C-FIND kept them apart). The issuer qualifies the
    retrieval; without one, an ID held under several issuers is C000."""
    from tests.archive.archive_testlib import dataset, store

    from dicomstore.archive import Archive

    with Archive(tmp_path / "a", fsync=False) as archive:
        for n, issuer in enumerate(("HOSP_A", "HOSP_B")):
            uid = f"1.2.9.8.{n}"
            extra = {0x00100021: ("LO", issuer)}
            data = dataset(
                uid + ".1.1", patient_id="DUP", study=uid, series=uid + ".1", extra=extra
            )
            assert store(archive, data, sop_uid=uid + ".1.1").status == 0
        one = dataset("1.2.9.8.2.1.1", patient_id="ONE", study="1.2.9.8.2", series="1.2.9.8.2.1")
        assert store(archive, one, sop_uid="1.2.9.8.2.1.1").status == 0
    reader = ArchiveReader(tmp_path / "a")
    query = parse_retrieve_identifier(
        ident("PATIENT", PatientID="DUP", IssuerOfPatientID="HOSP_A"), PATIENT
    )
    assert query.described() == {"PatientID": "DUP", "IssuerOfPatientID": "HOSP_A"}  # (audit)
    assert [s.sop_instance_uid for s in select_instances(reader, query)] == ["1.2.9.8.0.1.1"]
    with pytest.raises(FindFailure) as refused:
        select_instances(
            reader, parse_retrieve_identifier(ident("PATIENT", PatientID="DUP"), PATIENT)
        )
    assert refused.value.status == 0xC000 and refused.value.offending == (0x00100021,)
    assert "held under 2 issuers" in refused.value.comment
    alone = parse_retrieve_identifier(ident("PATIENT", PatientID="ONE"), PATIENT)
    assert [s.sop_instance_uid for s in select_instances(reader, alone)] == ["1.2.9.8.2.1.1"]
    for bad in ("HOSP*", "A\\B"):
        with pytest.raises(FindFailure, match="no wildcards"):
            parse_retrieve_identifier(
                ident("PATIENT", PatientID="DUP", IssuerOfPatientID=bad), PATIENT
            )
