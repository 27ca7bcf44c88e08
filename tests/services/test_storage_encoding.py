"""C-STORE of a data set encoded otherwise than its presentation context says:
C000 with what was found, nothing stored (archive/encoding.py), end to end."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from tests.conftest import PEER_ENV, ServerThread, dcmtk

from dicomstore import uids
from dicomstore.aio.client import associate
from dicomstore.archive import Archive
from dicomstore.cli import main
from dicomstore.services.server import Server, ServerConfig

CT = "1.2.840.10008.5.1.4.1.1.2"
ENCODINGS = {uids.IMPLICIT_VR_LE: (True, True), uids.EXPLICIT_VR_LE: (False, True)}
COMMENT = {
    uids.EXPLICIT_VR_LE: "data set is Implicit VR, context is Explicit VR Little Endian",
    uids.IMPLICIT_VR_LE: "data set is Explicit VR, context is Implicit VR Little Endian",
}


def make_dataset(sop: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.7"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.7.1"
    ds.PatientID = "P1"
    ds.PatientName = "Test^Patient"
    ds.Modality = "CT"
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(32))
    return ds


def encode(ds: Dataset, syntax: str) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = ENCODINGS[syntax]
    write_dataset(buffer, ds)
    return buffer.getvalue()


def part10(path: Path, ds: Dataset, meta_syntax: str, data_syntax: str) -> Path:
    """A PS3.10 file whose meta names ``meta_syntax``, its data set in ``data_syntax``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = meta_syntax
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    buffer.write(bytes(128) + b"DICM")
    write_file_meta_info(buffer, meta)
    path.write_bytes(buffer.getvalue() + encode(ds, data_syntax))
    return path


def dcmdump_reads(path: Path) -> None:
    dump = subprocess.run([dcmtk("dcmdump"), str(path)], capture_output=True, text=True)
    assert dump.returncode == 0 and not dump.stderr, dump.stderr


def assert_only_stored(archive: Archive, root: Path, sops: set[str]) -> None:
    assert {row["sop_instance_uid"] for row in archive.instances()} == sops
    for sop in sops:
        dcmdump_reads(archive.path_of(sop))
    assert not any(archive.tmp_dir.iterdir())


@pytest.mark.parametrize("context", [uids.EXPLICIT_VR_LE, uids.IMPLICIT_VR_LE])
def test_our_client_sending_the_other_encoding_gets_c000(tmp_path: Path, context: str) -> None:
    other = uids.IMPLICIT_VR_LE if context == uids.EXPLICIT_VR_LE else uids.EXPLICIT_VR_LE
    wrong, right = make_dataset("1.2.7.1"), make_dataset("1.2.7.2")
    root = tmp_path / "archive"

    async def main_():
        archive = Archive(root, fsync=False)
        server = Server(ServerConfig(port=0), archive)
        await server.start()
        try:
            assoc = await associate("127.0.0.1", server.port, contexts=[(CT, [context])])
            ctx = assoc.context_for(CT)
            rsps = [
                await assoc.store_stream(ctx, CT, ds.SOPInstanceUID, [encode(ds, syntax)])
                for ds, syntax in ((wrong, other), (right, context))
            ]
            await assoc.release()
            return rsps, archive
        finally:
            await server.close(grace=2)

    (refused, stored), archive = asyncio.run(main_())
    try:
        assert refused.status == 0xC000
        assert refused.error_comment == COMMENT[context]
        assert stored.status == 0x0000
        assert_only_stored(archive, root, {"1.2.7.2"})
    finally:
        archive.close()
    assert main(["check", "--storage", str(root)]) == 0


def test_pynetdicom_sending_a_file_unconverted_gets_c000(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pynetdicom sends a file's data set bytes as they are (chunked sending), on a
    context for the transfer syntax its meta names."""
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)
    explicit = uids.EXPLICIT_VR_LE
    lying = part10(tmp_path / "lying.dcm", make_dataset("1.2.7.3"), explicit, uids.IMPLICIT_VR_LE)
    honest = part10(tmp_path / "honest.dcm", make_dataset("1.2.7.4"), explicit, explicit)
    root = tmp_path / "archive"
    archive = Archive(root, fsync=False)
    try:
        with ServerThread(ServerConfig(port=0), archive) as server:
            ae = AE(ae_title="PYNETDICOM")
            ae.add_requested_context(CT, [explicit])
            assoc = ae.associate("127.0.0.1", server.port, ae_title="DICOMSTORE")
            assert assoc.is_established
            try:
                refused = assoc.send_c_store(lying)
                stored = assoc.send_c_store(honest)
            finally:
                assoc.release()
        assert refused.Status == 0xC000
        assert refused.ErrorComment == COMMENT[explicit]
        assert stored.Status == 0x0000
        assert_only_stored(archive, root, {"1.2.7.4"})
    finally:
        archive.close()
    assert main(["check", "--storage", str(root)]) == 0


def test_dcmtk_storescu_cannot_send_such_a_file_and_sends_good_ones(tmp_path: Path) -> None:
    """DCMTK's storescu parses each file and encodes its data set in the accepted
    transfer syntax: a file whose data set is not encoded as its meta says is one it
    cannot read (so it never sends one); files in either encoding are stored."""
    folder = tmp_path / "in"
    folder.mkdir()
    lying = part10(
        folder / "lying.dcm", make_dataset("1.2.7.5"), uids.EXPLICIT_VR_LE, uids.IMPLICIT_VR_LE
    )
    for n, syntax in enumerate(ENCODINGS):
        part10(folder / f"good{n}.dcm", make_dataset(f"1.2.7.{6 + n}"), syntax, syntax)
    root = tmp_path / "archive"
    archive = Archive(root, fsync=False)
    try:
        with ServerThread(ServerConfig(port=0), archive) as server:
            args = ["-nh", "-aec", "DICOMSTORE", "127.0.0.1", str(server.port)]
            cannot = subprocess.run(
                [dcmtk("storescu"), *args, str(lying)], env=PEER_ENV, capture_output=True, text=True
            )
            good = sorted(str(p) for p in folder.glob("good*.dcm"))
            sent = subprocess.run(
                [dcmtk("storescu"), *args, *good], env=PEER_ENV, capture_output=True, text=True
            )
        assert "Bad DICOM file" in cannot.stderr, cannot.stderr
        assert sent.returncode == 0, sent.stderr
        assert_only_stored(archive, root, {"1.2.7.6", "1.2.7.7"})
    finally:
        archive.close()
    assert main(["check", "--storage", str(root)]) == 0
