"""Helpers for the DICOMweb tests: a real uvicorn server in a thread, instances
stored through the archive's own ingest (begin → write → commit)."""

from __future__ import annotations

import asyncio
import http.client
import io
import threading
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian

from dicomstore.archive import Archive
from dicomstore.http import HttpServer, build_app

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def make_dataset(
    sop: str,
    *,
    study: str = "1.2.826.0.1.3680043.10.1.1",
    series: str = "1.2.826.0.1.3680043.10.1.1.1",
    sop_class: str = CT,
    patient_id: str = "PID1",
    patient_name: str = "Doe^Jane",
    modality: str = "CT",
    study_date: str = "20240102",
    study_time: str = "093000",
    accession: str = "ACC1",
    number: int = 1,
    series_number: int = 1,
    frames: int = 0,
    rows: int = 4,
    columns: int = 3,
) -> Dataset:
    """A small image; ``frames`` > 0 adds 16-bit pixels, frame k filled with value k."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.Modality = modality
    ds.StudyDate = study_date
    ds.StudyTime = study_time
    ds.AccessionNumber = accession
    ds.StudyDescription = "Head <b>&amp;</b>"
    ds.SeriesDescription = "Axial"
    ds.ReferringPhysicianName = "Ref^Doc"
    ds.StudyID = "S1"
    ds.InstanceNumber = number
    ds.SeriesNumber = series_number
    if frames:
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.NumberOfFrames = frames
        frame = rows * columns * 2
        ds.PixelData = b"".join(bytes([k + 1, 0]) * (frame // 2) for k in range(frames))
    return ds


def dataset_bytes(ds: Dataset) -> bytes:
    """The data set encoded in Explicit VR Little Endian (no file meta)."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return buffer.getvalue()


def part10(ds: Dataset) -> bytes:
    """A whole PS3.10 file of ``ds``."""
    ds = Dataset(ds)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def store(
    archive: Archive,
    ds: Dataset,
    *,
    calling_ae: str = "MODALITY",
    transfer_syntax: str = EXPLICIT_LE,
) -> Any:
    """Store ``ds`` through the archive's ingest, as C-STORE does (its data set in
    Explicit VR Little Endian, as ``transfer_syntax``'s: an encapsulated one's too)."""
    ingest = archive.begin(
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid=ds.SOPInstanceUID,
        transfer_syntax_uid=transfer_syntax,
        calling_ae=calling_ae,
        called_ae="DICOMSTORE",
    )
    data = dataset_bytes(ds)
    for start in range(0, len(data), 1000):
        ingest.write(data[start : start + 1000])
    outcome = ingest.commit()
    assert not outcome.is_failure, outcome
    return outcome


class HttpThread:
    """The DICOMweb app on a real uvicorn server, on its own loop in a thread."""

    def __init__(self, source: Archive | Path, **options: Any) -> None:
        self.app = build_app(source, **options)
        self.loop = asyncio.new_event_loop()
        self.server = HttpServer(self.app, "127.0.0.1", 0)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def __enter__(self) -> HttpThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def multipart_body(parts: list[bytes], boundary: str = "XbOuNdArYx") -> tuple[bytes, str]:
    """A multipart/related body of application/dicom parts and its Content-Type."""
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
        for p in parts
    )
    body += b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow_post(client: Any, parts: list[bytes], path: str = "/studies") -> Any:
    """POST ``parts`` to STOW-RS (PS3.18 10.5) as one multipart/related body."""
    body, content_type = multipart_body(parts)
    return client.post(path, content=body, headers={"content-type": content_type})


def split_multipart(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """Parts of a multipart body (an independent reference parser for the tests)."""
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"').encode()
    pieces = body.split(b"--" + boundary)
    parts = []
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            break
        head, _, data = piece.partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode().split("\r\n"):
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        assert data.endswith(b"\r\n")
        parts.append((headers, data[:-2]))
    return parts


def store_file(archive: Archive, path: Path | str, *, calling_ae: str = "MODALITY") -> Any:
    """Store a PS3.10 file as C-STORE would: its data set bytes, its transfer syntax."""
    from dicomstore.archive.dicomfile import dataset_offset

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    with open(path, "rb") as fp:
        fp.seek(dataset_offset(fp))
        data = fp.read()
    ingest = archive.begin(
        sop_class_uid=ds.SOPClassUID,  # the data set's: some test files' meta differ
        sop_instance_uid=ds.SOPInstanceUID,
        transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
        calling_ae=calling_ae,
    )
    ingest.write(data)
    outcome = ingest.commit()
    assert not outcome.is_failure, outcome
    return outcome


def store_implicit(archive: Archive, ds: Dataset, folder: Path) -> Any:
    """Store ``ds`` as a PS3.10 file in Implicit VR Little Endian (written into
    ``folder`` first): what a retrieve in Explicit VR transcodes."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2"
    path = Path(folder) / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True, implicit_vr=True)
    return store_file(archive, path)


def get_or_cut(port: int, target: str, headers: dict[str, str] | None = None):
    """(status, body) of a GET on 127.0.0.1:``port``; body None when the answer was
    cut off after its status (a damaged archive, a frame that fails midway)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", target, headers=headers or {})
        reply = conn.getresponse()
        try:
            return reply.status, reply.read()
        except http.client.IncompleteRead:
            return reply.status, None
    finally:
        conn.close()
