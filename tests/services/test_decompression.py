"""services.decompression: a compressed instance decoded a frame at a time into an
uncompressed syntax, as pydicom's own ``decompress`` would make it."""

from __future__ import annotations

import io
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate_extended, generate_frames
from pydicom.filereader import read_dataset
from pydicom.uid import RLELossless, generate_uid

from dicomstore import uids
from dicomstore.services import conversion, decompression, sources

TARGETS = [uids.EXPLICIT_VR_LE, uids.IMPLICIT_VR_LE, uids.EXPLICIT_VR_BE]


def _converted(path: Path | str, ts: str, limit: int = 1 << 30) -> Dataset:
    out, size = conversion.converted(sources.scan_file(path), ts, limit)
    with out:
        data = out.read()
    assert len(data) == size and size % 2 == 0
    ds = read_dataset(io.BytesIO(data), ts == uids.IMPLICIT_VR_LE, ts != uids.EXPLICIT_VR_BE)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    return ds


@pytest.mark.parametrize("ts", TARGETS)
@pytest.mark.parametrize(
    "name", ["MR_small_RLE.dcm", "SC_rgb_rle.dcm", "SC_rgb_rle_2frame.dcm", "SC_rgb_rle_16bit.dcm"]
)
def test_decoded_as_pydicom_decompresses_it(name: str, ts: str) -> None:
    path = get_testdata_file(name)
    want = pydicom.dcmread(path)
    want.decompress(generate_instance_uid=False)
    got = _converted(path, ts)
    for keyword in ("PhotometricInterpretation", "PlanarConfiguration", "NumberOfFrames"):
        assert got.get(keyword) == want.get(keyword), keyword
    assert got.SOPInstanceUID == want.SOPInstanceUID
    assert np.array_equal(got.pixel_array, want.pixel_array)
    if ts == uids.EXPLICIT_VR_LE:
        assert got["PixelData"].VR == want["PixelData"].VR


def _rle_file(tmp_path: Path, frames: int, icon: bool = False) -> Path:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns, ds.NumberOfFrames = 256, 256, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    pixels = (np.arange(frames * 256 * 256, dtype="<u2") % 997).reshape(frames, 256, 256)
    if icon:
        item = Dataset()
        item.Rows = item.Columns = 2
        ds.IconImageSequence = [item]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.compress(RLELossless, pixels, encoding_plugin="pydicom")
    if icon:  # (and an Extended Offset Table, of encapsulated frames only)
        fragments = list(generate_frames(ds.PixelData, number_of_frames=frames))
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(
            fragments
        )
    path = tmp_path / f"rle{frames}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_one_frame_at_a_time_in_memory(tmp_path: Path) -> None:
    path = _rle_file(tmp_path, 48)  # 6 MiB decoded, 128 KiB a frame
    instance = sources.scan_file(path)
    tracemalloc.start()
    out, size = conversion.converted(instance, uids.EXPLICIT_VR_LE)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    out.close()
    assert size > 48 * 256 * 256 * 2
    assert peak < 2 << 20, peak  # (pydicom's decompress: the 6 MiB, and more)


def test_the_icon_image_sequence_and_the_extended_offset_table_are_left_out(
    tmp_path: Path,
) -> None:
    path = _rle_file(tmp_path, 2, icon=True)
    assert {"IconImageSequence", "ExtendedOffsetTable"} <= set(pydicom.dcmread(path).dir())
    got = _converted(path, uids.IMPLICIT_VR_LE)
    assert "IconImageSequence" not in got and got.NumberOfFrames == 2
    assert "ExtendedOffsetTable" not in got and "ExtendedOffsetTableLengths" not in got
    assert got.pixel_array.shape == (2, 256, 256)


def test_a_frame_over_the_limit_is_not_decoded(tmp_path: Path) -> None:
    path = _rle_file(tmp_path, 2)
    with pytest.raises(sources.NotDicom, match="a frame of 131072 bytes, over the limit"):
        decompression.decompressed(
            sources.scan_file(path), uids.EXPLICIT_VR_LE, (False, True), 1000, None
        )


def test_a_fragment_that_does_not_decode_is_named(tmp_path: Path) -> None:
    path = _rle_file(tmp_path, 2)
    data = bytearray(path.read_bytes())
    data[-300:-200] = b"\x80" * 100  # (RLE: no-op bytes in place of runs: frame 2 short)
    path.write_bytes(bytes(data))
    with warnings.catch_warnings(), pytest.raises(sources.NotDicom, match="cannot convert"):
        warnings.simplefilter("ignore")
        conversion.converted(sources.scan_file(path), uids.EXPLICIT_VR_LE)


def test_one_bit_is_left_to_pydicom(tmp_path: Path) -> None:
    path = _rle_file(tmp_path, 2)
    ds = pydicom.dcmread(path)
    ds.BitsAllocated = ds.BitsStored = 1
    ds.HighBit = 0
    ds.save_as(path)
    instance = sources.scan_file(path)
    assert (
        decompression.decompressed(instance, uids.EXPLICIT_VR_LE, (False, True), 1 << 30, None)
        is None
    )
