"""NumberOfFrames is not trusted beyond the encapsulated Pixel Data (review35a F5): the
frames an instance's fragments cannot hold are 404 before any status is sent, bulk data
gives the frames there are (a header saying 40 million frames built a list of them:
1.5 GiB), and a frame that fails once the answer has begun cuts the answer off with a
log line, not a traceback."""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator

import pytest
from http_testlib import HttpThread, get_or_cut, make_dataset, store
from pydicom.encaps import encapsulate

from dicomstore.archive import Archive

RLE = "1.2.840.10008.1.2.5"
STUDY, SERIES = "1.2.826.0.1.3680043.10.37", "1.2.826.0.1.3680043.10.37.1"
MULTIPART_OCTET = 'multipart/related; type="application/octet-stream"'


def _segment(value: int) -> bytes:
    """One 2x2 8-bit frame in RLE (PS3.5 G.3): four bytes of ``value``."""
    data = struct.pack("<16L", 1, 64, *([0] * 14)) + bytes([257 - 4, value])
    return data + b"\x00" * (len(data) % 2)


def _rle(sop: str, fragments: list[bytes], frames: int) -> object:
    ds = make_dataset(sop, study=STUDY, series=SERIES)
    ds.Rows = ds.Columns = 2
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.NumberOfFrames = frames
    ds.PixelData = encapsulate(fragments)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


@pytest.fixture(scope="module")
def web(tmp_path_factory) -> Iterator[HttpThread]:
    archive = Archive(tmp_path_factory.mktemp("frames") / "archive", fsync=False)
    store(archive, _rle("1.2.37.1", [_segment(16)], 40_000_000), transfer_syntax=RLE)
    store(archive, _rle("1.2.37.2", [_segment(16), b"\x00" * 8], 2), transfer_syntax=RLE)
    # a 2x2 frame whose one fragment is 3 MB (review38mem D7: 400 MiB held 969 MiB)
    store(archive, _rle("1.2.37.3", [b"\x00" * 3_000_000], 1), transfer_syntax=RLE)
    # a small frame with 3 MB after its Pixel Data: not counted (review39 #7)
    trailing = _rle("1.2.37.4", [_segment(16)], 1)
    trailing.add_new(0x7FE10010, "LO", "TRAILER")
    trailing.add_new(0x7FE11010, "OB", b"\x00" * 3_000_000)
    store(archive, trailing, transfer_syntax=RLE)
    # 65,537 tiny fragments before a 3 MB one: not a way past the count (review40 #1)
    hidden = _rle("1.2.37.5", [b"\x00\x00"] * 65_537 + [b"\x00" * 3_000_000], 1)
    store(archive, hidden, transfer_syntax=RLE)
    # a file cut inside its fragment: unreadable, not too large (review40 #12)
    store(archive, _rle("1.2.37.6", [b"\x00" * 2_000], 1), transfer_syntax=RLE)
    cut = archive.path_of("1.2.37.6")
    os.truncate(cut, cut.stat().st_size - 1_000)
    with HttpThread(archive) as srv:
        yield srv
    archive.close()


def _get(web: HttpThread, sop: str, tail: str, accept: str) -> tuple[int, bytes | None]:
    path = f"/studies/{STUDY}/series/{SERIES}/instances/{sop}{tail}"
    return get_or_cut(web.server.port, path, {"Accept": accept})


@pytest.mark.parametrize(
    ("tail", "accept"),
    [
        ("/frames/2", 'multipart/related; type="image/dicom-rle"'),
        ("/frames/1,2", MULTIPART_OCTET),
        ("/frames/39999999/rendered", "image/png"),
    ],
)
def test_frames_the_fragments_cannot_hold_are_404(web, tail, accept) -> None:
    status, body = _get(web, "1.2.37.1", tail, accept)
    assert status == 404 and body is not None and b"does not exist (the instance has 1)" in body


@pytest.mark.parametrize("accept", [MULTIPART_OCTET, MULTIPART_OCTET + "; transfer-syntax=*"])
def test_bulk_data_gives_the_frames_there_are(web, accept) -> None:
    status, body = _get(web, "1.2.37.1", "/bulkdata/7FE00010", accept)
    assert status == 200 and body is not None and body.rstrip().endswith(b"--")


def test_a_frame_that_fails_once_the_answer_has_begun_cuts_it_off(web, caplog) -> None:
    """Frame 2's fragment is not RLE: the answer of frames 1 and 2 decoded is cut
    after frame 1 (status 200 sent), with a log line and no traceback."""
    with caplog.at_level(logging.WARNING):
        status, body = _get(web, "1.2.37.2", "/frames/1,2", MULTIPART_OCTET)
    assert status == 200 and body is None
    assert "cut off: frame 2 cannot be decoded" in caplog.text
    ours = [r for r in caplog.records if not r.name.startswith("pydicom")]  # (serve drops those)
    assert not any(r.exc_info for r in ours)
    assert "Exception in ASGI application" not in caplog.text


@pytest.mark.parametrize(
    ("tail", "accept"),
    [
        ("/frames/1", 'multipart/related; type="image/dicom-rle"'),
        ("/frames/1", MULTIPART_OCTET),
        ("/rendered", "image/png"),
        ("/thumbnail", "image/jpeg"),
    ],
)
def test_a_codestream_far_larger_than_its_frame_is_not_read(web, tail, accept) -> None:
    for sop in ("1.2.37.3", "1.2.37.5"):
        status, body = _get(web, sop, tail, accept)
        assert status == 413 and body is not None, (sop, status, body)
        assert b"twice its 1 frame(s) decoded (4 bytes): not read" in body


def test_what_follows_the_pixel_data_is_not_counted_as_its_codestream(web) -> None:
    status, body = _get(web, "1.2.37.4", "/frames/1", 'multipart/related; type="image/dicom-rle"')
    assert status == 200, body
    status, _body = _get(web, "1.2.37.4", "/rendered", "image/png")
    assert status == 200


@pytest.mark.usefixtures("unchecked")
def test_a_file_cut_inside_a_fragment_is_unreadable_not_too_large(web, caplog) -> None:
    """500, the stored data damaged, logged naming the instance (a 406 before: the
    Accept was not the matter; the frames path's own finding, behind the whole-copy
    check, which finds the cut file damaged first)."""
    with caplog.at_level("WARNING", logger="dicomstore.http"):
        status, body = _get(web, "1.2.37.6", "/frames/1", MULTIPART_OCTET)
    assert status == 500 and body is not None, (status, body)
    said = b"the Pixel Data cannot be read, the stored Pixel Data is damaged: a fragment runs"
    assert said in body and body.count(b"\n") == 1
    (line,) = [m for m in caplog.messages if "the Pixel Data cannot be read" in m]
    assert "1.2.37.6" in line and "stored Pixel Data damaged" in line
