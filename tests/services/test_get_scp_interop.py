"""DCMTK getscu (-P and -S, PATIENT to IMAGE) against `dicomstore serve`: the C-STORE
sub-operations come back on the same association, every data set byte-identical to
the stored one (issue 15, PS3.4 C.4.3, PS3.7 D.3.3.4)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from tests.archive.archive_testlib import stored_dataset
from tests.conftest import PEER_ENV, dcmtk
from tests.services.query_testlib import fill, serving_cli, sop_uids, stored_datasets

#: On both index engines (issue 17).
pytestmark = pytest.mark.usefixtures("index_engine")


@pytest.fixture(scope="module")
def served(tmp_path_factory, index_engine: str) -> Iterator[tuple[int, dict[str, bytes]]]:
    """`dicomstore serve` on an archive holding query_testlib.LAYOUT: its port, and
    the data set bytes of each stored instance by SOP Instance UID."""
    root = tmp_path_factory.mktemp("get") / "archive"
    fill(root)
    with serving_cli(root) as port:
        yield port, stored_datasets(root)


def getscu(port: int, out: Path, model: str, *keys: str) -> tuple[dict[str, bytes], str]:
    """Run getscu with ``-k`` keys into ``out``: the data set bytes it received by
    SOP Instance UID, and its log."""
    out.mkdir()
    args = [dcmtk("getscu"), model, "-v", "-od", str(out), "-aec", "DICOMSTORE"]
    for key in keys:
        args += ["-k", key]
    done = subprocess.run(
        [*args, "127.0.0.1", str(port)], env=PEER_ENV, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    received = {str(dcmread(p).SOPInstanceUID): stored_dataset(p) for p in out.iterdir()}
    assert len(received) == len(list(out.iterdir()))  # each instance once
    return received, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("model", "keys", "expected"),
    [
        ("-P", ["QueryRetrieveLevel=PATIENT", "PatientID=PID2"], sop_uids("1.2.9.3.1")),
        (
            "-P",
            ["QueryRetrieveLevel=STUDY", "PatientID=PID1", "StudyInstanceUID=1.2.9.2"],
            sop_uids("1.2.9.2.1"),
        ),
        (
            "-P",
            [
                "QueryRetrieveLevel=SERIES",
                "PatientID=PID1",
                "StudyInstanceUID=1.2.9.1",
                "SeriesInstanceUID=1.2.9.1.2",
            ],
            sop_uids("1.2.9.1.2"),
        ),
        (
            "-P",
            [
                "QueryRetrieveLevel=IMAGE",
                "PatientID=PID1",
                "StudyInstanceUID=1.2.9.1",
                "SeriesInstanceUID=1.2.9.1.1",
                "SOPInstanceUID=1.2.9.1.1.1\\1.2.9.1.1.3",
            ],
            ["1.2.9.1.1.1", "1.2.9.1.1.3"],
        ),
        (  # a list of studies: CT, MR and US instances
            "-S",
            ["QueryRetrieveLevel=STUDY", "StudyInstanceUID=1.2.9.1\\1.2.9.3"],
            sop_uids("1.2.9.1.1") + sop_uids("1.2.9.1.2") + sop_uids("1.2.9.3.1"),
        ),
        (
            "-S",
            [
                "QueryRetrieveLevel=SERIES",
                "StudyInstanceUID=1.2.9.1",
                "SeriesInstanceUID=1.2.9.1.1",
            ],
            sop_uids("1.2.9.1.1"),
        ),
        (
            "-S",
            [
                "QueryRetrieveLevel=IMAGE",
                "StudyInstanceUID=1.2.9.4",
                "SeriesInstanceUID=1.2.9.4.1",
                "SOPInstanceUID=1.2.9.4.1.1",
            ],
            ["1.2.9.4.1.1"],
        ),
    ],
)
def test_getscu_receives_byte_identical_data_sets(served, tmp_path, model, keys, expected) -> None:
    port, stored = served
    received, log = getscu(port, tmp_path / "out", model, *keys)
    assert sorted(received) == sorted(expected)
    for uid, data in received.items():
        assert data == stored[uid], uid  # bit for bit, as stored
    assert "Received C-GET Response (Success)" in log
    assert f"Number of Completed Suboperations : {len(expected)}" in log
    assert "Number of Failed Suboperations    : 0" in log
    assert log.count("Received C-GET Response (Pending)") == len(expected) - 1


def test_getscu_nothing_matches_and_a_bad_identifier(served, tmp_path) -> None:
    port, _stored = served
    received, log = getscu(
        port, tmp_path / "none", "-S", "QueryRetrieveLevel=STUDY", "StudyInstanceUID=1.2.9.99"
    )
    assert received == {} and "Received C-GET Response (Success)" in log
    received, log = getscu(port, tmp_path / "bad", "-S", "QueryRetrieveLevel=SERIES")
    assert received == {} and "Error: DataSetDoesNotMatchSOPClass" in log, log
