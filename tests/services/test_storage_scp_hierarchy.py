"""Hierarchy integrity through C-STORE from real DCMTK storescu (PS3.4 B.1.1, B.2.3):
a series reused in another patient's study, a study under another patient and
a data set without Study/Series Instance UID are answered A900; with
``--on-relational-mismatch accept`` each instance is filed under its own study."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from tests.conftest import PEER_ENV, ServerThread, dcmtk

from dicomstore.archive import Archive
from dicomstore.archive.reader import ArchiveReader
from dicomstore.services.server import ServerConfig

CT = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture: no module beyond the IEs needed
STUDY_A, STUDY_B = generate_uid(), generate_uid()
SERIES = generate_uid()


def write(folder: Path, name: str, **attrs: str | None) -> Path:
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "OT"
    for keyword, value in attrs.items():
        if value is not None:
            setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    folder.mkdir(exist_ok=True)
    path = folder / name
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def alpha(folder: Path) -> Path:
    return write(
        folder,
        "1-alpha.dcm",
        PatientID="A",
        PatientName="ALPHA^A",
        StudyInstanceUID=STUDY_A,
        SeriesInstanceUID=SERIES,
    )


def beta(folder: Path, study: str, series: str) -> Path:
    """Patient B's instance in ``study`` / ``series``."""
    return write(
        folder,
        "2-beta.dcm",
        PatientID="B",
        PatientName="BETA^B",
        StudyInstanceUID=study,
        SeriesInstanceUID=series,
    )


def storescu(port: int, *files: Path) -> subprocess.CompletedProcess:
    """DCMTK storescu, one association, debug output (each response, its Error Comment)."""
    args = [dcmtk("storescu"), "-d", "-nh", "-aec", "DICOMSTORE", "127.0.0.1", str(port)]
    return subprocess.run(
        [*args, *map(str, files)], env=PEER_ENV, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def server(tmp_path: Path, request):
    options = getattr(request, "param", {})
    archive = Archive(tmp_path / "archive", fsync=False, **options)
    with ServerThread(ServerConfig(port=0, ae_title="DICOMSTORE"), archive) as srv:
        yield srv, archive
    archive.close()


def responses(result: subprocess.CompletedProcess) -> list[str]:
    """The status of each C-STORE-RSP as DCMTK's debug log shows it ("0xa900: Error: ...")."""
    out = result.stdout + result.stderr
    return [line.split(":", 2)[2].strip() for line in out.splitlines() if "DIMSE Status" in line]


def test_series_reused_in_another_patients_study_is_a900(tmp_path: Path, server) -> None:
    srv, archive = server
    first = alpha(tmp_path / "in")
    second = beta(tmp_path / "in", STUDY_B, SERIES)
    result = storescu(srv.port, first, second)
    lines = responses(result)
    assert len(lines) == 2, result.stdout + result.stderr
    assert lines[0].startswith("0x0000")
    assert lines[1].startswith("0xa900"), lines[1]
    # the Error Comment arrives whole (LO, 64 characters)
    assert "Series Instance UID is already filed under another study" in result.stderr
    reader = ArchiveReader(archive.root)
    assert [(s["study_uid"], s["n_instances"]) for s in reader.studies()] == [(STUDY_A, 1)]
    assert [r["patient_name"] for r in reader.instances(StudyInstanceUID=STUDY_B)] == []
    assert archive.check() == []


def test_study_of_another_patient_is_a900(tmp_path: Path, server) -> None:
    srv, archive = server
    first = alpha(tmp_path / "in")
    second = beta(tmp_path / "in", STUDY_A, generate_uid())
    result = storescu(srv.port, first, second)
    lines = responses(result)
    assert lines[0].startswith("0x0000") and lines[1].startswith("0xa900"), lines
    assert "Study Instance UID is already filed under another patient" in result.stderr
    assert [r["patient_id"] for r in archive.instances()] == ["A"]


def test_an_instance_stored_again_under_another_patient_is_a900(tmp_path: Path, server) -> None:
    """review88 F2: DCMTK storescu sends a corrected copy (another Patient ID, the same
    SOP Instance UID): A900 naming the elements, not B000 "kept the copy stored"."""
    import pydicom

    srv, archive = server
    first = alpha(tmp_path / "in")
    ds = pydicom.dcmread(first)
    ds.PatientID, ds.PatientName = "A2", "ALPHA^CORRECTED"
    second = tmp_path / "in" / "2-corrected.dcm"
    ds.save_as(second, enforce_file_format=True)
    result = storescu(srv.port, first, second)
    lines = responses(result)
    assert lines[0].startswith("0x0000") and lines[1].startswith("0xa900"), lines
    assert "SOP Instance UID is already stored under another patient" in result.stderr
    assert "(0008,0018)" in result.stderr and "(0010,0020)" in result.stderr
    assert [r["patient_id"] for r in archive.instances()] == ["A"]


@pytest.mark.parametrize("missing", ["StudyInstanceUID", "SeriesInstanceUID"])
def test_no_study_or_series_uid_is_a900(tmp_path: Path, server, missing: str) -> None:
    srv, archive = server
    attrs = {"PatientID": "A", "StudyInstanceUID": STUDY_A, "SeriesInstanceUID": SERIES}
    attrs[missing] = None
    lines = responses(storescu(srv.port, write(tmp_path / "in", "x.dcm", **attrs)))
    assert len(lines) == 1 and lines[0].startswith("0xa900"), lines
    assert archive.instances() == []


@pytest.mark.parametrize("server", [{"on_relational_mismatch": "accept"}], indirect=True)
def test_accept_files_each_under_its_own_study(tmp_path: Path, server) -> None:
    srv, archive = server
    first = alpha(tmp_path / "in")
    second = beta(tmp_path / "in", STUDY_B, SERIES)
    lines = responses(storescu(srv.port, first, second))
    assert [line[:6] for line in lines] == ["0x0000", "0x0000"], lines
    reader = ArchiveReader(archive.root)
    studies = sorted(
        (s["study_uid"], s["patient_name"], s["n_instances"]) for s in reader.studies()
    )
    assert studies == sorted([(STUDY_A, "ALPHA^A", 1), (STUDY_B, "BETA^B", 1)])
    assert [r["patient_name"] for r in reader.instances(StudyInstanceUID=STUDY_B)] == ["BETA^B"]
