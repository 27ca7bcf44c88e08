"""DCMTK findscu (-P and -S, every level) against `dicomstore serve` (issue 15, PS3.4 C.4.1)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from tests.conftest import PEER_ENV, dcmtk
from tests.services.query_testlib import serving_layout


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[int]:
    """`dicomstore serve` on an archive holding query_testlib.LAYOUT; its port."""
    with serving_layout(tmp_path_factory.mktemp("query") / "archive") as port:
        yield port


def findscu(
    port: int, out: Path, model: str, *keys: str, extra: tuple[str, ...] = ()
) -> tuple[list, str]:
    """Run findscu with ``-k`` keys; the extracted responses and its log."""
    out.mkdir(exist_ok=True)
    args = [dcmtk("findscu"), model, *extra, "-v", "-X", "-od", str(out), "-aec", "DICOMSTORE"]
    for key in keys:
        args += ["-k", key]
    done = subprocess.run(
        [*args, "127.0.0.1", str(port)],
        env=PEER_ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))], done.stdout + done.stderr


@pytest.mark.parametrize(
    ("model", "keys", "expected"),
    [
        # Patient Root: PATIENT, STUDY, SERIES, IMAGE
        ("-P", ["QueryRetrieveLevel=PATIENT", "PatientID", "PatientName=D*"], {"PID1"}),
        (
            "-P",
            ["QueryRetrieveLevel=STUDY", "PatientID=PID1", "StudyInstanceUID"],
            {"1.2.9.1", "1.2.9.2"},
        ),
        (
            "-P",
            [
                "QueryRetrieveLevel=SERIES",
                "PatientID=PID1",
                "StudyInstanceUID=1.2.9.1",
                "SeriesInstanceUID",
                "Modality=M?",
            ],
            {"1.2.9.1.2"},
        ),
        (
            "-P",
            [
                "QueryRetrieveLevel=IMAGE",
                "PatientID=PID1",
                "StudyInstanceUID=1.2.9.1",
                "SeriesInstanceUID=1.2.9.1.1",
                "SOPInstanceUID",
            ],
            {"1.2.9.1.1.1", "1.2.9.1.1.2", "1.2.9.1.1.3"},
        ),
        # Study Root: STUDY (date range, universal), SERIES, IMAGE (a UID list)
        (
            "-S",
            ["QueryRetrieveLevel=STUDY", "StudyInstanceUID", "StudyDate=20231201-20241231"],
            {"1.2.9.1", "1.2.9.3"},
        ),
        (
            "-S",
            ["QueryRetrieveLevel=STUDY", "StudyInstanceUID"],
            {f"1.2.9.{n}" for n in (1, 2, 3, 4)},
        ),
        (
            "-S",
            ["QueryRetrieveLevel=SERIES", "StudyInstanceUID=1.2.9.1", "SeriesInstanceUID"],
            {"1.2.9.1.1", "1.2.9.1.2"},
        ),
        (
            "-S",
            [
                "QueryRetrieveLevel=IMAGE",
                "StudyInstanceUID=1.2.9.1",
                "SeriesInstanceUID=1.2.9.1.1",
                "SOPInstanceUID=1.2.9.1.1.1\\1.2.9.1.1.3\\1.2.9.9.9",
            ],
            {"1.2.9.1.1.1", "1.2.9.1.1.3"},
        ),
    ],
)
def test_findscu_matches_at_every_level(served, tmp_path, model, keys, expected) -> None:
    responses, _log = findscu(served, tmp_path / "out", model, *keys)
    level = keys[0].split("=")[1]
    unique = {
        "PATIENT": "PatientID",
        "STUDY": "StudyInstanceUID",
        "SERIES": "SeriesInstanceUID",
        "IMAGE": "SOPInstanceUID",
    }[level]
    found = [str(ds[unique].value) for ds in responses]
    assert sorted(found) == sorted(expected)  # each match once
    assert all(ds.QueryRetrieveLevel == level for ds in responses)


def test_findscu_return_keys_and_counts(served, tmp_path) -> None:
    responses, _log = findscu(
        served,
        tmp_path / "out",
        "-S",
        "QueryRetrieveLevel=STUDY",
        "StudyInstanceUID=1.2.9.1",
        "PatientName",
        "StudyDate",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "RetrieveAETitle",
        "PatientAge",
    )
    assert len(responses) == 1
    ds = responses[0]
    assert str(ds.PatientName) == "Doe^Jane" and ds.StudyDate == "20240102"
    assert list(ds.ModalitiesInStudy) == ["CT", "MR"]
    assert (ds.NumberOfStudyRelatedSeries, ds.NumberOfStudyRelatedInstances) == (2, 5)
    assert ds.RetrieveAETitle == "DICOMSTORE"
    assert ds.PatientAge == "042Y"  # not in the index: from a stored header


def test_findscu_patient_counts_and_character_set(served, tmp_path) -> None:
    responses, _log = findscu(
        served,
        tmp_path / "out",
        "-P",
        "QueryRetrieveLevel=PATIENT",
        "PatientID=PID3",
        "PatientName",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedInstances",
    )
    assert len(responses) == 1
    ds = responses[0]
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "Müller^Hans"
    assert (ds.NumberOfPatientRelatedStudies, ds.NumberOfPatientRelatedInstances) == (1, 1)


def test_findscu_in_latin_1_is_answered_in_latin_1(served, tmp_path) -> None:
    """interop97 I7: a request in ISO_IR 100 was answered in UTF-8, which a Latin-1
    workstation shows as mojibake; now in the request's character set where every
    value fits it (as dcmqrscp converts), else in UTF-8."""
    responses, _log = findscu(
        served,
        tmp_path / "out",
        "-P",
        "QueryRetrieveLevel=PATIENT",
        "SpecificCharacterSet=ISO_IR 100",
        "PatientID=PID3",
        "PatientName",
    )
    (ds,) = responses
    assert ds.SpecificCharacterSet == "ISO_IR 100"
    assert str(ds.PatientName) == "Müller^Hans"
    assert ds["PatientName"].value.original_string == "Müller^Hans".encode("latin-1")


def test_findscu_wrong_level_and_relational_query_are_a900(served, tmp_path) -> None:
    responses, log = findscu(
        served, tmp_path / "a", "-S", "QueryRetrieveLevel=PATIENT", "PatientID"
    )
    assert responses == [] and "(Error: DataSetDoesNotMatchSOPClass)" in log
    responses, log = findscu(
        served, tmp_path / "b", "-S", "QueryRetrieveLevel=SERIES", "SeriesInstanceUID"
    )
    assert responses == [] and "(Error: DataSetDoesNotMatchSOPClass)" in log


def test_findscu_cancel_after_one_response_ends_the_find(served, tmp_path) -> None:
    """findscu cancels once the first match is in: by then the SCP has usually sent
    every match of so small a result (a late C-CANCEL-RQ is ignored, PS3.7 9.3.2.3);
    either way the C-FIND ends with a final response and the association is released
    (before C-CANCEL was understood, it aborted the association). The cancel itself
    is tested deterministically in test_query_scp.py."""
    responses, log = findscu(
        served,
        tmp_path / "out",
        "-S",
        "QueryRetrieveLevel=IMAGE",
        "StudyInstanceUID=1.2.9.1",
        "SeriesInstanceUID=1.2.9.1.1",
        "SOPInstanceUID",
        extra=("--cancel", "1"),
    )
    assert "Sending Cancel Request (MsgID 1" in log
    assert (
        "Received Final Find Response (Cancel" in log
        and 1 <= len(responses) <= 3
        or "Received Final Find Response (Success)" in log
        and len(responses) == 3
    ), log
    assert "Releasing Association" in log and "Abort" not in log
