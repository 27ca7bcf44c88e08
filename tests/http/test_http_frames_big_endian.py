"""Frames of an instance stored in Explicit VR Big Endian (PS3.5 A.3; the archive keeps
what was sent): served as little endian native frames (PS3.18 8.7.3), as OHIF asks."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import httpx
from http_testlib import HttpThread, make_dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from dicomstore import uids
from dicomstore.archive import Archive

STUDY = "1.2.826.0.1.3680043.10.57"


def test_big_endian_frames_are_served_little_endian(tmp_path: Path) -> None:
    """review57: every frame request was 406 'frames of transfer syntax
    1.2.840.10008.1.2.2 are not served': the viewport stayed black."""
    ds = make_dataset(f"{STUDY}.1.1", study=STUDY, series=f"{STUDY}.1", frames=2, rows=300)
    frame = 300 * 3  # samples a frame (16-bit), frame k of value k + 1
    ds.PixelData = b"".join(bytes([0, k + 1]) * frame for k in range(2))  # (big endian)
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = False, False
    write_dataset(buffer, ds)
    with Archive(tmp_path / "archive", fsync=False) as archive:
        ingest = archive.begin(
            sop_class_uid=ds.SOPClassUID,
            sop_instance_uid=ds.SOPInstanceUID,
            transfer_syntax_uid=uids.EXPLICIT_VR_BE,
        )
        ingest.write(buffer.getvalue())
        assert ingest.commit().status == 0
        with HttpThread(archive) as web:
            url = f"{web.url}/studies/{STUDY}/series/{STUDY}.1/instances/{STUDY}.1.1/frames/2"
            accept = 'multipart/related; type="application/octet-stream"'
            reply = httpx.get(url, headers={"Accept": accept})
            rendered = httpx.get(url.replace("/frames/2", "/rendered"))
    assert reply.status_code == 200, reply.text
    assert "transfer-syntax=1.2.840.10008.1.2.1" in reply.text[:300]
    body = reply.content.split(b"\r\n\r\n", 1)[1]  # (after the part's header)
    assert body.startswith(bytes([2, 0]) * frame + b"\r\n--")  # little endian: frame 2
    codecs = importlib.util.find_spec("numpy") is not None  # (the codecs extra)
    assert rendered.status_code == (200 if codecs else 406), rendered.text
