"""Native frames whose size is not rows x columns x samples x bytes: YBR_FULL_422
(PS3.3 C.7.6.3.1.2, two samples a pixel) and 1-bit (PS3.5 8.1.1, frames packed bit
after bit, not on byte boundaries), served as stored (PS3.18 8.7.3) and rendered."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import httpx
import pytest
from http_testlib import HttpThread, make_dataset, split_multipart, store
from pydicom.dataset import Dataset

from dicomstore.archive import Archive

STUDY = "1.2.826.0.1.3680043.10.58"
OCTET = 'multipart/related; type="application/octet-stream"'
CODECS = importlib.util.find_spec("numpy") is not None  # (the codecs extra)


def _frames(archive: Archive, sop: str, numbers: str) -> tuple[httpx.Response, list[bytes]]:
    with HttpThread(archive) as web:
        base = f"{web.url}/studies/{STUDY}/series/{STUDY}.1/instances/{sop}"
        reply = httpx.get(f"{base}/frames/{numbers}", headers={"Accept": OCTET})
        rendered = httpx.get(f"{base}/frames/2/rendered")
        thumbnail = httpx.get(f"{base}/thumbnail")
    assert rendered.status_code == (200 if CODECS else 406), rendered.text
    assert thumbnail.status_code == (200 if CODECS else 406), thumbnail.text
    assert reply.status_code == 200, reply.text
    parts = split_multipart(reply.content, reply.headers["content-type"])
    return reply, [body for _, body in parts]


def _one_bit(number: int, frames: int, rows: int, columns: int, pixels: bytes) -> Dataset:
    """Instance ``{STUDY}.1.<number>``: ``frames`` 1-bit frames of ``rows`` x ``columns``."""
    ds = make_dataset(f"{STUDY}.1.{number}", study=STUDY, series=f"{STUDY}.1", frames=frames,
                      rows=rows, columns=columns)  # fmt: skip
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
    ds.PixelData = pixels
    return ds


@pytest.mark.parametrize("photometric", ["YBR_FULL_422", "YBR_PARTIAL_422"])
def test_native_ybr_422_frames_are_two_samples_a_pixel(tmp_path: Path, photometric: str) -> None:
    """review57: every frame, rendered and thumbnail request of a native YBR_FULL_422
    instance was 406 'the native Pixel Data is shorter than its frames' (a black viewport);
    the retired YBR_PARTIAL_422 too (review59 L3)."""
    ds = make_dataset(f"{STUDY}.1.1", study=STUDY, series=f"{STUDY}.1", frames=2, rows=4,
                      columns=6)  # fmt: skip
    ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    frame = 4 * 6 * 2  # Y0 Y1 Cb Cr for each pair of pixels
    ds.PixelData = bytes(range(1, frame + 1)) + bytes(range(101, frame + 101))
    with Archive(tmp_path / "archive", fsync=False) as archive:
        store(archive, ds)
        _, parts = _frames(archive, f"{STUDY}.1.1", "2,1")
    assert parts == [bytes(range(101, frame + 101)), bytes(range(1, frame + 1))]


def test_one_bit_frames_are_cut_on_bits_and_start_on_a_byte(tmp_path: Path) -> None:
    """A 1-bit multi-frame (a SEG's) of 3x3 frames: frame 2 starts at bit 9 of the Pixel
    Data; it is served from its first bit, padded to a whole byte (it was 406)."""
    bits = "101010101" + "110000011" + "011111110"  # frames 1, 2, 3, pixel by pixel
    packed = int(bits[::-1], 2).to_bytes(4, "little")  # (the first pixel in the lowest bit)
    ds = _one_bit(2, frames=3, rows=3, columns=3, pixels=packed)
    with Archive(tmp_path / "archive", fsync=False) as archive:
        store(archive, ds)
        _, parts = _frames(archive, f"{STUDY}.1.2", "1,2,3")
    expected = [int(f[::-1], 2).to_bytes(2, "little") for f in (bits[:9], bits[9:18], bits[18:])]
    assert parts == expected


def test_one_bit_frames_on_byte_boundaries_are_sliced(tmp_path: Path) -> None:
    """A 1-bit 4x4 multi-frame: each frame is 2 whole bytes, sliced as stored."""
    ds = _one_bit(3, frames=2, rows=4, columns=4, pixels=b"\x0f\xf0\x81\x18")
    with Archive(tmp_path / "archive", fsync=False) as archive:
        store(archive, ds)
        _, parts = _frames(archive, f"{STUDY}.1.3", "2,1")
    assert parts == [b"\x81\x18", b"\x0f\xf0"]


def test_one_bit_pixel_data_shorter_than_its_frames_is_refused(tmp_path: Path) -> None:
    """3 frames of 3x3 need 27 bits (4 bytes); 2 bytes are refused, not padded."""
    ds = _one_bit(4, frames=3, rows=3, columns=3, pixels=b"\xff\xff")
    with Archive(tmp_path / "archive", fsync=False) as archive:
        store(archive, ds)
        with HttpThread(archive) as web:
            base = f"{web.url}/studies/{STUDY}/series/{STUDY}.1/instances/{STUDY}.1.4"
            reply = httpx.get(f"{base}/frames/1", headers={"Accept": OCTET})
    assert reply.status_code == 500  # (review63 L3: damaged, 406 before)
    assert "shorter than its 3 frame(s)" in reply.text and "damaged" in reply.text
