"""DCMTK movescu (-P and -S; STUDY, SERIES, IMAGE) against `dicomstore serve`, to DCMTK
storescp --bit-preserving: every data set received byte-identical to the stored one
(issue 15, PS3.4 C.4.2)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conftest import PEER_ENV, dcmtk
from tests.services.query_testlib import fill, sop_uids
from tests.services.retrieve_testlib import dataset_bytes, serving_to_storescp

from dicomstore.archive.reader import ArchiveReader

#: On both index engines (issue 17).
pytestmark = pytest.mark.usefixtures("index_engine")


@pytest.fixture(scope="module")
def served(tmp_path_factory, index_engine: str) -> Iterator[tuple[int, Path, Path]]:
    """`dicomstore serve` with STORESCP (DCMTK, bit-preserving) as its move destination;
    (its port, the archive, storescp's folder)."""
    base = tmp_path_factory.mktemp("movescu")
    root, received = base / "archive", base / "received"
    fill(root)
    with serving_to_storescp(root, received, subprocess.DEVNULL, "--bit-preserving") as port:
        yield port, root, received


def movescu(port: int, model: str, *keys: str, dest: str = "STORESCP", code: int = 0) -> str:
    """Run movescu with ``-k`` keys; its log (``code``: its exit code, 69 when DCMTK
    reports an error status)."""
    args = [dcmtk("movescu"), model, "-v", "-aec", "DICOMSTORE", "-aem", dest]
    for key in keys:
        args += ["-k", key]
    done = subprocess.run(
        [*args, "127.0.0.1", str(port)], env=PEER_ENV, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == code, done.stdout + done.stderr
    return done.stdout + done.stderr


@pytest.mark.parametrize(
    ("model", "keys", "expected"),
    [
        (
            "-S",
            ["QueryRetrieveLevel=STUDY", "StudyInstanceUID=1.2.9.1"],
            ["1.2.9.1.1", "1.2.9.1.2"],
        ),
        (
            "-S",
            [
                "QueryRetrieveLevel=SERIES",
                "StudyInstanceUID=1.2.9.3",
                "SeriesInstanceUID=1.2.9.3.1",
            ],
            ["1.2.9.3.1"],
        ),
        (
            "-S",
            [
                "QueryRetrieveLevel=IMAGE",
                "StudyInstanceUID=1.2.9.1",
                "SeriesInstanceUID=1.2.9.1.1",
                "SOPInstanceUID=1.2.9.1.1.1\\1.2.9.1.1.3",
            ],
            ["1.2.9.1.1.1", "1.2.9.1.1.3"],
        ),
        ("-P", ["QueryRetrieveLevel=PATIENT", "PatientID=PID3"], ["1.2.9.4.1"]),
        (
            "-P",
            ["QueryRetrieveLevel=STUDY", "PatientID=PID1", "StudyInstanceUID=1.2.9.2"],
            ["1.2.9.2.1"],
        ),
        (
            "-P",
            [
                "QueryRetrieveLevel=IMAGE",
                "PatientID=PID1",
                "StudyInstanceUID=1.2.9.1",
                "SeriesInstanceUID=1.2.9.1.2",
                "SOPInstanceUID=1.2.9.1.2.2",
            ],
            ["1.2.9.1.2.2"],
        ),
    ],
)
def test_movescu_at_every_level_is_byte_identical(served, model, keys, expected) -> None:
    port, root, received = served
    for old in received.iterdir():
        old.unlink()
    log = movescu(port, model, *keys)
    wanted = [
        uid for name in expected for uid in (sop_uids(name) if name.count(".") == 4 else [name])
    ]
    assert "Received Final Move Response (Success)" in log
    got = {p.name.split(".", 1)[1]: p for p in received.iterdir()}
    assert sorted(got) == sorted(wanted)
    reader = ArchiveReader(root)
    for uid, path in got.items():
        assert dataset_bytes(path) == dataset_bytes(reader.path(uid)), uid


def test_movescu_unknown_destination_and_bad_level(served) -> None:
    port, _root, _received = served
    log = movescu(
        port, "-S", "QueryRetrieveLevel=STUDY", "StudyInstanceUID=1.2.9.1", dest="NOPE", code=69
    )
    assert "Received Final Move Response (Refused: MoveDestinationUnknown)" in log
    log = movescu(port, "-S", "QueryRetrieveLevel=PATIENT", "PatientID=PID1", code=69)
    assert "Received Final Move Response (Error: DataSetDoesNotMatchSOPClass)" in log
