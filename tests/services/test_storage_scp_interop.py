"""Storage SCP against real senders (PS3.4 B.2): DCMTK storescu and pynetdicom.

Every instance a sender reports as stored must be in the archive with its data
set byte-identical to the file that was sent.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from tests.conftest import PEER_ENV, ServerThread, dcmtk, dcmtk_storescp, free_port

from dicomstore.archive import Archive
from dicomstore.services.server import ServerConfig


def dataset_bytes(path: Path) -> bytes:
    """The data set of a PS3.10 file: everything after the File Meta Information."""
    raw = path.read_bytes()
    if raw[128:132] != b"DICM":
        return raw
    offset = 132
    while offset + 8 <= len(raw) and raw[offset : offset + 2] == b"\x02\x00":
        vr = raw[offset + 4 : offset + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV"):
            length = int.from_bytes(raw[offset + 8 : offset + 12], "little")
            offset += 12 + length
        else:
            length = int.from_bytes(raw[offset + 6 : offset + 8], "little")
            offset += 8 + length
    return raw[offset:]


TESTFILES = Path(pydicom.data.__file__).parent / "test_files"


def sendable_testfiles(dest: Path, *, uncompressed_only: bool = False) -> dict[str, Path]:
    """pydicom's Part-10 test files that name a SOP instance, copied to ``dest``."""
    dest.mkdir()
    by_uid: dict[str, Path] = {}
    for name in sorted(TESTFILES.glob("*.dcm")):
        try:
            ds = pydicom.dcmread(name, stop_before_pixels=True)
            uid = str(ds.file_meta.MediaStorageSOPInstanceUID)
            sop_class = str(ds.file_meta.MediaStorageSOPClassUID)
            syntax = ds.file_meta.TransferSyntaxUID
        except Exception:  # noqa: BLE001 - deliberately broken files are not sendable
            continue
        if not uid or not sop_class or uid in by_uid:
            continue
        if uncompressed_only and syntax.is_compressed:
            continue
        target = dest / Path(name).name
        shutil.copyfile(name, target)
        by_uid[uid] = target
    return by_uid


def stored_datasets(root: Path) -> dict[str, Path]:
    out = {}
    for path in root.rglob("*"):
        if not path.is_file() or path.name == "index.sqlite" or "sqlite" in path.name:
            continue
        with path.open("rb") as f:
            if f.read(132)[128:] != b"DICM":
                continue
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out[str(ds.file_meta.MediaStorageSOPInstanceUID)] = path
    return out


@pytest.fixture
def archive_server(tmp_path: Path):
    # pydicom's test files reuse one Study Instance UID for three patients (4MR1,
    # 8NM1, 13US1): byte identity is tested here, the relational policy elsewhere
    archive = Archive(tmp_path / "archive", fsync=False, on_relational_mismatch="accept")
    with ServerThread(ServerConfig(port=0), archive) as srv:
        yield srv, archive
    archive.close()


def _compare(stored: dict[str, Path], reference: dict[str, Path], sent: dict[str, Path]) -> None:
    """Byte-identical data sets where both receivers negotiated the same transfer
    syntax (the bytes on the wire were then the same); equal data sets otherwise."""
    same_syntax = 0
    for uid, path in stored.items():
        ours = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        ref = pydicom.dcmread(reference[uid], stop_before_pixels=True).file_meta
        if ours == ref.TransferSyntaxUID:
            same_syntax += 1
            assert dataset_bytes(path) == dataset_bytes(reference[uid]), sent[uid].name
        else:  # the sender converted for one receiver: same pixels, same attributes
            # The sender decompressed for one receiver and not the other: what its
            # decoder makes of the pixels (pynetdicom 3.0.4 even rewrites Number of
            # Frames) is out of our hands, everything else must match.
            a, b = pydicom.dcmread(path), pydicom.dcmread(reference[uid])
            outside_pixels = [e for e in a if e.tag.group not in (0x0028, 0x7FE0)]
            assert outside_pixels == [e for e in b if e.tag.group not in (0x0028, 0x7FE0)]
    assert same_syntax >= len(stored) * 3 // 4


def _storescu(port: int, folder: Path) -> subprocess.CompletedProcess:
    args = ["-nh", "+sd", "+r", "-aec", "DICOMSTORE", "127.0.0.1", str(port), str(folder)]
    return subprocess.run(
        [dcmtk("storescu"), *args], env=PEER_ENV, capture_output=True, text=True, timeout=300
    )


def test_dcmtk_storescu_testfiles_are_stored_byte_identical(tmp_path, archive_server) -> None:
    """DCMTK's storescu re-encodes some data sets as it sends them (explicit
    sequence lengths, byte order), so "what was sent" is what DCMTK's own
    storescp --bit-preserving writes when it receives the same files."""
    srv, archive = archive_server
    # storescu proposes uncompressed syntaxes only (it would decompress)
    sent = sendable_testfiles(tmp_path / "in", uncompressed_only=True)
    result = _storescu(srv.port, tmp_path / "in")
    port = free_port()
    with dcmtk_storescp(port, tmp_path / "reference", "--bit-preserving"):
        _storescu(port, tmp_path / "in")
    reference = stored_datasets(tmp_path / "reference")
    stored = stored_datasets(tmp_path / "archive")
    assert set(stored) == set(reference), result.stderr
    assert len(stored) >= len(sent) * 3 // 4, f"{len(stored)} of {len(sent)}"
    _compare(stored, reference, sent)
    assert len(archive.instances()) == len(stored)


def _pynetdicom_storescu(port: int, folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pynetdicom",
            "storescu",
            "127.0.0.1",
            str(port),
            str(folder),
            "-r",
            "-cx",
            "-aec",
            "DICOMSTORE",
        ],
        env=PEER_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_pynetdicom_storescu_testfiles_are_stored_byte_identical(tmp_path, archive_server) -> None:
    """pynetdicom decodes and re-encodes what it sends; the reference for "what
    was sent" is DCMTK storescp --bit-preserving receiving the same files."""
    srv, archive = archive_server
    sent = sendable_testfiles(tmp_path / "in")
    result = _pynetdicom_storescu(srv.port, tmp_path / "in")
    port = free_port()
    with dcmtk_storescp(port, tmp_path / "reference", "--bit-preserving", "+xa"):
        _pynetdicom_storescu(port, tmp_path / "in")
    reference = stored_datasets(tmp_path / "reference")
    stored = stored_datasets(tmp_path / "archive")
    # storescp keeps what has no Study/Series IE; we answer A900 (PS3.4 B.1.1)
    orphans = {uid for uid, path in reference.items() if not has_study_and_series(path)}
    assert orphans, "pydicom's JPEG-LS near-lossless files have no Study Instance UID"
    assert set(stored) == set(reference) - orphans, result.stderr
    assert len(stored) >= len(sent) * 3 // 4, f"{len(stored)} of {len(sent)}"
    _compare(stored, reference, sent)
    assert len(archive.instances()) == len(stored)


def has_study_and_series(path: Path) -> bool:
    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    return bool(ds.get("StudyInstanceUID") and ds.get("SeriesInstanceUID"))


#: Storage SOP Classes whose names do not end in "Storage" (PS3.4 Table B.5-1).
PROJECTION_CLASSES = {
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray - For Presentation
    "DX-proc": "1.2.840.10008.5.1.4.1.1.1.1.1",
    "MG": "1.2.840.10008.5.1.4.1.1.1.2",  # Digital Mammography - For Presentation
    "MG-proc": "1.2.840.10008.5.1.4.1.1.1.2.1",
    "IO": "1.2.840.10008.5.1.4.1.1.1.3",  # Digital Intra-Oral - For Presentation
    "IO-proc": "1.2.840.10008.5.1.4.1.1.1.3.1",
}  # (DCMTK 3.6.7's storescu does not know Breast Projection X-Ray yet)


def _projection_file(folder: Path, n: int, modality: str, sop_class: str) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset

    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.543.9.{n}"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.543.9"
    ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.10.543.9.0.{n}"
    ds.PatientID, ds.PatientName, ds.Modality = "PROJ", "Projection^Test", modality[:2]
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel = 15, 0, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(range(32))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    path = folder / f"{modality}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dx_mammography_and_intraoral_are_stored(tmp_path, archive_server) -> None:
    """Classes named "... Image Storage - For Presentation/Processing" are Storage
    SOP Classes too: DCMTK's storescu offers them and each is stored."""
    srv, archive = archive_server
    folder = tmp_path / "in"
    folder.mkdir()
    sent = {
        path: path.read_bytes()
        for n, (modality, sop_class) in enumerate(PROJECTION_CLASSES.items())
        for path in [_projection_file(folder, n, modality, sop_class)]
    }
    result = _storescu(srv.port, folder)
    assert result.returncode == 0, result.stderr
    stored = stored_datasets(tmp_path / "archive")
    assert len(stored) == len(sent), result.stderr
    for path in sent:
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert dataset_bytes(stored[uid]) == dataset_bytes(path)
    classes = {row["sop_class_uid"] for row in archive.instances()}
    assert classes == set(PROJECTION_CLASSES.values())


@pytest.mark.parametrize(
    ("order", "expected"),
    [("ours", pydicom.uid.ExplicitVRLittleEndian), ("proposed", pydicom.uid.JPEGLosslessSV1)],
)
def test_transfer_syntax_order_with_pynetdicom_proposing_jpeg_first(
    tmp_path, order, expected
) -> None:
    """A modality proposing JPEG Lossless then uncompressed in one context: we take
    uncompressed by default, the JPEG it has with --transfer-syntax-order proposed;
    the instance is stored in the syntax chosen, its data set as sent."""
    from pynetdicom import AE

    path = TESTFILES / "SC_rgb_jpeg_gdcm.dcm"
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGLosslessSV1
    archive = Archive(tmp_path / "archive", fsync=False)
    config = ServerConfig(port=0, prefer_proposed_transfer_syntax=order == "proposed")
    try:
        with ServerThread(config, archive) as srv:
            ae = AE(ae_title="MODALITY")
            ae.add_requested_context(
                ds.SOPClassUID, [pydicom.uid.JPEGLosslessSV1, pydicom.uid.ExplicitVRLittleEndian]
            )
            assoc = ae.associate("127.0.0.1", srv.port, ae_title="DICOMSTORE")
            assert assoc.is_established
            try:
                assert assoc.accepted_contexts[0].transfer_syntax[0] == expected
                if order == "proposed":  # sent as it is: no decoder needed on either side
                    assert assoc.send_c_store(ds).Status == 0
            finally:
                assoc.release()
        if order == "proposed":
            (stored,) = stored_datasets(tmp_path / "archive").values()
            assert dataset_bytes(stored) == dataset_bytes(path)
    finally:
        archive.close()
