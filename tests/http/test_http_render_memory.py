"""Rendering's memory, measured on the real server (review35a F2): a thumbnail of a
large frame costs about the decoded frame, not 26 times it (float64 copies), and
renders at once are few (http/render.py RENDERS_AT_ONCE)."""

from __future__ import annotations

import concurrent.futures
import struct

import httpx
from http_testlib import make_dataset, multipart_body
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite
from tests.bounds_testlib import MiB, served

SIDE = 4096  # one 8-bit frame of 16 MiB decoded, about 300 KiB as RLE
FRAME_MIB = SIDE * SIDE / MiB
RLE = "1.2.840.10008.1.2.5"
STUDY, SERIES, SOP = "1.2.826.0.1.3680043.10.36", "1.2.826.0.1.3680043.10.36.1", "1.2.36.1"


def _rle_frame(rows: int, columns: int) -> bytes:
    """One 8-bit RLE segment (PS3.5 G.3): each row as runs of 128 equal bytes."""
    row, left = b"", columns
    while left:
        n = min(128, left)
        row += bytes([257 - n]) + b"\x10" if n > 1 else b"\x00\x10"
        left -= n
    data = struct.pack("<16L", 1, 64, *([0] * 14)) + row * rows
    return data + (b"\x00" if len(data) % 2 else b"")


def _instance() -> bytes:
    ds = make_dataset(SOP, study=STUDY, series=SERIES)
    ds.Rows = ds.Columns = SIDE
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = encapsulate([_rle_frame(SIDE, SIDE)])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = SOP
    ds.file_meta.TransferSyntaxUID = RLE
    out = DicomBytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def test_rendering_a_large_frame_is_bounded(tmp_path) -> None:
    body, content_type = multipart_body([_instance()])
    with served(tmp_path, http=True) as server:
        url = f"http://127.0.0.1:{server.http_port}"
        stored = httpx.post(f"{url}/studies", content=body, headers={"content-type": content_type})
        assert stored.status_code == 200, stored.text
        path = f"{url}/studies/{STUDY}/series/{SERIES}/instances/{SOP}"
        before = server.peak_mib()
        thumbnail = httpx.get(path + "/thumbnail", timeout=120)
        assert thumbnail.status_code == 200
        after_thumbnail = server.peak_mib()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(
                pool.map(
                    lambda q: httpx.get(f"{path}/rendered?quality={q}", timeout=120), range(50, 54)
                )
            )
        assert [a.status_code for a in answers] == [200] * 4
        after_rendered = server.peak_mib()
    # (before the change: +26 frames for the thumbnail, +100 for the four rendered)
    assert after_thumbnail - before < 4 * FRAME_MIB, f"+{after_thumbnail - before:.0f} MiB"
    assert after_rendered - before < 12 * FRAME_MIB, f"+{after_rendered - before:.0f} MiB"


def test_a_thumbnail_is_windowed_as_the_whole_frame(tmp_path) -> None:
    """review35c: the automatic window came from every n-th pixel of a thumbnail, so
    one bright pixel the view missed changed its contrast from the full image's."""
    import io

    import numpy as np
    from http_testlib import HttpThread, store
    from PIL import Image

    from dicomstore.archive import Archive

    pixels = np.full((512, 512), 10, dtype=np.uint16)
    pixels[1, 1] = 1000  # (an odd row and column: every 2nd pixel misses it)
    ds = make_dataset("1.2.36.9", study=STUDY, series=SERIES, frames=1, rows=512, columns=512)
    ds.PixelData = pixels.tobytes()
    archive = Archive(tmp_path / "archive", fsync=False)
    store(archive, ds)
    path = f"/studies/{STUDY}/series/{SERIES}/instances/1.2.36.9"
    with HttpThread(archive) as web:
        whole = httpx.get(f"{web.url}{path}/rendered", headers={"accept": "image/png"})
        small = httpx.get(f"{web.url}{path}/thumbnail", headers={"accept": "image/png"})
    archive.close()
    grey = [np.asarray(Image.open(io.BytesIO(r.content))).mean() for r in (whole, small)]
    assert grey[0] < 10 and grey[1] < 10  # (from the view alone: 127)
