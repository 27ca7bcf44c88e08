"""codestreams: what a compressed frame declares, read before a decoder sees it."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames

from dicomstore.codestreams import CodestreamMismatch, check, declared


def _first_frame(name: str) -> tuple[bytes, pydicom.Dataset]:
    ds = pydicom.dcmread(get_testdata_file(name))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return next(generate_frames(ds.PixelData, number_of_frames=frames)), ds


def _reader(data: bytes):
    return lambda at, n: data[at : at + n]


@pytest.mark.parametrize(
    "name",
    [
        "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, an APP0 before its SOF0
        "SC_rgb_jpeg_lossy_gdcm.dcm",
        "JPEG-lossy.dcm",  # SOF1
        "JPEGLSNearLossless_16.dcm",  # JPEG-LS: SOF55
        "JPEG2000.dcm",  # SIZ
    ],
)
def test_a_codestream_declares_the_data_sets_dimensions(name: str) -> None:
    frame, ds = _first_frame(name)
    assert declared(_reader(frame), len(frame)) == (ds.Rows, ds.Columns, ds.SamplesPerPixel)
    check(_reader(frame), len(frame), ds.Rows, ds.Columns, ds.SamplesPerPixel, "frame 1")


def test_other_dimensions_are_refused() -> None:
    frame, ds = _first_frame("SC_rgb_jpeg_dcmtk.dcm")
    with pytest.raises(CodestreamMismatch, match="declares 100 x 100 pixels of 3 .* 64 x 48 of 3"):
        check(_reader(frame), len(frame), 64, 48, 3, "frame 1")
    j2k, _ = _first_frame("JPEG2000.dcm")
    with pytest.raises(CodestreamMismatch, match="1024 x 256 pixels of 1"):
        check(_reader(j2k), len(j2k), 1024, 256, 3, "frame 1")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 20,
        b"\xff\xd8",
        b"\xff\xd8\xff\xda\x00\x02",
        b"\xff\xd8" + b"\xff\xfe\x00\x02" * 300,
    ],
    ids=["empty", "rle", "cut", "scan-first", "endless-comments"],
)
def test_what_declares_nothing_is_none(data: bytes) -> None:
    assert declared(_reader(data), len(data)) is None
