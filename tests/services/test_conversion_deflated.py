"""A deflated data set (PS3.5 A.5) sent to an SCP that does not accept Deflated Explicit
VR Little Endian (send, C-GET, C-MOVE and forwarding share ``store_instance``): to
Explicit VR Little Endian it is its inflated copy, streamed from a temporary file in
bounded memory; to Implicit VR Little Endian pydicom reads that copy; past the
inflated limit it is not sent, with the reason."""

from __future__ import annotations

import asyncio
import gc
import io
import tracemalloc
import warnings
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from tests.conftest import ServerThread, dcmtk_storescp, free_port
from tests.services.retrieve_testlib import pynetdicom_move
from tests.services.test_scu_support import received_by_uid
from tests.services.test_storage_encoding import encode

from dicomstore import uids
from dicomstore.archive import Archive
from dicomstore.archive.dicomfile import dataset_offset
from dicomstore.services import conversion
from dicomstore.services.destinations import parse_destination
from dicomstore.services.scu_send import send
from dicomstore.services.server_config import ServerConfig
from dicomstore.services.sources import NotDicom, file_chunks, scan_file

MiB = 1 << 20
SC = "1.2.840.10008.5.1.4.1.1.7"


def _dataset(uid: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = SC, uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid + ".1", uid + ".2"
    ds.PatientName, ds.PatientID = "Deflated^Daisy", "DFL1"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 8, 8, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.add_new(0x7FE00010, "OW", bytes(range(128)))
    return ds


def dataset_bytes(ds: Dataset) -> bytes:
    """``ds`` in Explicit VR Little Endian."""
    return encode(ds, uids.EXPLICIT_VR_LE)


def _deflated_file(path: Path, uid: str, chunks: list[bytes]) -> Path:
    """A PS3.10 file whose data set (``chunks``) is a raw deflate stream."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SC, uid
    meta.TransferSyntaxUID = uids.DEFLATED_EXPLICIT_VR_LE
    out = io.BytesIO()
    out.write(bytes(128) + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = b"".join(z.compress(c) for c in chunks) + z.flush()
    path.write_bytes(out.getvalue() + data + (b"\0" if len(data) % 2 else b""))
    return path


def _large(path: Path, uid: str, mib: int) -> Path:
    ds = _dataset(uid)
    del ds.PixelData
    ds.Rows = ds.Columns = 1024
    ds.NumberOfFrames = mib // 2
    head = dataset_bytes(ds) + b"\xe0\x7f\x10\x00OW\x00\x00" + (mib * MiB).to_bytes(4, "little")
    return _deflated_file(path, uid, [head, *([bytes(range(256)) * 4096] * mib)])


def _send(port: int, paths: list[Path]) -> list:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return asyncio.run(send("127.0.0.1", port, paths, retry_delay=0.01))


@pytest.mark.parametrize(
    ("extra", "syntax"),
    [((), uids.EXPLICIT_VR_LE), (("+xi",), uids.IMPLICIT_VR_LE)],
)
def test_a_deflated_file_is_inflated_for_an_scp_without_deflate(
    tmp_path: Path, extra: tuple[str, ...], syntax: str
) -> None:
    ds = _dataset("1.2.826.0.1.3680043.10.66.1")
    path = _deflated_file(tmp_path / "in.dcm", ds.SOPInstanceUID, [dataset_bytes(ds)])
    port = free_port()
    with dcmtk_storescp(port, tmp_path / "out", "--bit-preserving", *extra):
        (r,) = _send(port, [path])
    assert r.outcome == "stored" and r.converted, r
    assert r.transfer_syntax == syntax
    (received,) = received_by_uid(tmp_path / "out").values()
    got = pydicom.dcmread(received)
    assert got.file_meta.TransferSyntaxUID == syntax
    if syntax == uids.EXPLICIT_VR_LE:  # the inflated data set, byte for byte
        assert received.read_bytes().endswith(dataset_bytes(ds))
    assert got.PatientName == ds.PatientName and got.PixelData == ds.PixelData


def test_inflating_for_sending_holds_a_chunk_not_the_data_set(tmp_path: Path) -> None:
    path = _large(tmp_path / "large.dcm", "1.2.826.0.1.3680043.10.66.2", 64)
    assert path.stat().st_size < 2 * MiB
    instance = scan_file(path)
    gc.collect()
    tracemalloc.start()
    try:
        spool, size = conversion.inflated(instance)
        sent = sum(len(chunk) for chunk in file_chunks(spool, MiB))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert spool.closed
    assert sent == size > 64 * MiB
    assert peak < 16 * MiB, f"peak {peak / MiB:.1f} MiB"


def test_past_the_inflated_limit_nothing_is_converted(tmp_path: Path) -> None:
    path = _large(tmp_path / "bomb.dcm", "1.2.826.0.1.3680043.10.66.3", 64)
    instance = scan_file(path)
    for convert in (
        lambda: conversion.inflated(instance, 16 * MiB),
        lambda: conversion.converted(instance, uids.IMPLICIT_VR_LE, 16 * MiB),
    ):
        gc.collect()
        tracemalloc.start()
        try:
            with pytest.raises(NotDicom, match=f"inflates to over {16 * MiB} bytes, the limit"):
                convert()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 16 * MiB, f"peak {peak / MiB:.1f} MiB"


@pytest.mark.parametrize(("limit_mib", "sent"), [(2, False), (16, True)])
def test_c_move_inflates_within_the_server_s_own_limit(
    tmp_path: Path, limit_mib: int, sent: bool
) -> None:
    """One home for the limit: a stored deflated instance that inflates to 4 MiB,
    moved to DCMTK storescp (no Deflated context: converted), is sent only when the
    server's ``--max-instance-size`` allows its inflated size (stored before the limit
    was lowered)."""
    uid = "1.2.826.0.1.3680043.10.66.9"
    path = _large(tmp_path / "big.dcm", uid, 4)
    root = tmp_path / "archive"
    with Archive(root, fsync=False) as archive, open(path, "rb") as fp:
        start = dataset_offset(fp)
        fp.seek(start)
        ingest = archive.begin(
            sop_class_uid=SC, sop_instance_uid=uid, transfer_syntax_uid=uids.DEFLATED_EXPLICIT_VR_LE
        )
        ingest.write(fp.read())
        assert ingest.commit().status == 0
    port = free_port()
    config = ServerConfig(
        port=0,
        max_instance_bytes=limit_mib * MiB,
        move_destinations=(parse_destination(f"STORESCP=127.0.0.1:{port}"),),
    )
    query = Dataset()
    query.QueryRetrieveLevel, query.StudyInstanceUID = "STUDY", uid + ".1"
    with (
        dcmtk_storescp(port, tmp_path / "out"),
        ServerThread(config, Archive(root, fsync=False)) as srv,
    ):
        answers = pynetdicom_move(srv.port, uids.STUDY_ROOT_QR_MOVE, query, "STORESCP")
    status, rsp, _identifier = answers[-1]
    received = list((tmp_path / "out").iterdir())
    if sent:
        assert status == 0x0000 and rsp.NumberOfCompletedSuboperations == 1
        assert len(received) == 1
    else:
        assert status != 0x0000 and rsp.NumberOfFailedSuboperations == 1
        assert received == []
