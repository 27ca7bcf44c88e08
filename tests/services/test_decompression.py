"""services.decompression: a compressed instance decoded a frame at a time into an
uncompressed syntax, as pydicom's own ``decompress`` would make it."""

from __future__ import annotations

import io
import struct
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
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


def _rle_file(tmp_path: Path, frames: int, icon: str = "") -> Path:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns, ds.NumberOfFrames = 256, 256, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    pixels = (np.arange(frames * 256 * 256, dtype="<u2") % 997).reshape(frames, 256, 256)
    if icon:  # (an icon of native pixels: kept; of encapsulated ones: left out)
        item = Dataset()
        item.Rows = item.Columns = 2
        item.BitsAllocated = 8
        item.add_new(0x7FE00010, "OB", b"\0" * 4)
        if icon == "encapsulated":
            item.PixelData = encapsulate([b"\0" * 70])
            item["PixelData"].is_undefined_length = True
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


def test_an_encapsulated_icon_and_the_extended_offset_table_are_left_out(
    tmp_path: Path,
) -> None:
    for icon in ("native", "encapsulated"):
        path = _rle_file(tmp_path, 2, icon=icon)
        assert {"IconImageSequence", "ExtendedOffsetTable"} <= set(pydicom.dcmread(path).dir())
        got = _converted(path, uids.IMPLICIT_VR_LE)
        assert ("IconImageSequence" in got) == (icon == "native") and got.NumberOfFrames == 2
        assert "ExtendedOffsetTable" not in got and "ExtendedOffsetTableLengths" not in got
    assert got.pixel_array.shape == (2, 256, 256)


def test_a_frame_over_the_limit_is_not_decoded(tmp_path: Path) -> None:
    path = _rle_file(tmp_path, 2)
    with pytest.raises(sources.NotDicom, match="frames of 131072 bytes, over the limit of 1000"):
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


def _with_sof(path: Path, tmp_path: Path, height: int, width: int) -> Path:
    """A JPEG baseline test file whose codestream's SOF0 claims other dimensions."""
    ds = pydicom.dcmread(path)
    frame = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    at = frame.index(b"\xff\xc0")
    frame[at + 5 : at + 9] = struct.pack(">HH", height, width)
    ds.PixelData = encapsulate([bytes(frame)])
    out = tmp_path / "sof.dcm"
    ds.save_as(out)
    return out


def test_a_codestream_declaring_other_dimensions_is_not_decoded(tmp_path: Path) -> None:
    """review42 #1: an 8 KB JPEG whose SOF claimed 40000 x 40000 took 9 GB to decode."""
    path = _with_sof(Path(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")), tmp_path, 40000, 40000)
    tracemalloc.start()
    with pytest.raises(sources.NotDicom, match="declares 40000 x 40000 pixels of 3"):
        conversion.converted(sources.scan_file(path), uids.EXPLICIT_VR_LE)
    assert tracemalloc.get_traced_memory()[1] < 16 << 20
    tracemalloc.stop()


def test_frames_are_found_by_their_items_not_a_lying_offset_table(tmp_path: Path) -> None:
    """review42 #2: an Extended Offset Table with its offsets swapped gave the frames
    swapped, silently."""
    path = _rle_file(tmp_path, 2)
    ds = pydicom.dcmread(path)
    fragments = list(generate_frames(ds.PixelData, number_of_frames=2))
    ds.PixelData, table, lengths = encapsulate_extended(fragments)
    ds.ExtendedOffsetTable = table[8:] + table[:8]  # (frame 2's offset first)
    ds.ExtendedOffsetTableLengths = lengths[8:] + lengths[:8]
    ds.save_as(path)
    got = _converted(path, uids.EXPLICIT_VR_LE)
    want = (np.arange(2 * 256 * 256, dtype="<u2") % 997).reshape(2, 256, 256)
    assert np.array_equal(got.pixel_array, want)


def test_a_lossless_ybr_full_is_not_made_rgb(tmp_path: Path) -> None:
    """review42 #4: RLE YBR_FULL was converted to RGB, its values changed; a lossless
    syntax is decoded as it is (as DCMTK's dcmdrle does)."""
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_rle.dcm"))
    ds.decompress()
    raw = ds.pixel_array.copy()
    ds.PhotometricInterpretation = "YBR_FULL"  # (the same bytes, called YBR_FULL)
    ds.compress(RLELossless, raw, photometric_interpretation="YBR_FULL", encoding_plugin="pydicom")
    path = tmp_path / "ybr.dcm"
    ds.save_as(path)
    got = _converted(path, uids.EXPLICIT_VR_LE)
    assert got.PhotometricInterpretation == "YBR_FULL"
    assert got.PixelData == raw.tobytes()


def test_decoded_from_a_lossy_syntax_says_so(tmp_path: Path) -> None:
    """review42 #6: Lossy Image Compression (0028,2110) 01 where it was missing (PS3.3
    C.7.6.1.1.5, as DCMTK sets it); kept where it is."""
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    del ds.LossyImageCompression
    path = tmp_path / "lossy.dcm"
    ds.save_as(path)
    assert _converted(path, uids.EXPLICIT_VR_LE).LossyImageCompression == "01"
    assert "LossyImageCompression" not in _converted(
        get_testdata_file("MR_small_RLE.dcm"), uids.EXPLICIT_VR_LE
    )


@pytest.mark.parametrize("frames", ["0", "2.5", "-1"])
def test_a_number_of_frames_that_is_no_count_is_refused(tmp_path: Path, frames: str) -> None:
    path = _rle_file(tmp_path, 2)
    ds = pydicom.dcmread(path)
    ds["NumberOfFrames"].VR = "CS"  # (so that pydicom writes any text)
    ds.NumberOfFrames = frames
    ds["NumberOfFrames"].VR = "IS"
    ds.save_as(path)
    with warnings.catch_warnings(), pytest.raises(sources.NotDicom, match="Number of Frames"):
        warnings.simplefilter("ignore")
        conversion.converted(sources.scan_file(path), uids.EXPLICIT_VR_LE)


def test_rle_fragments_other_than_one_per_frame_are_refused(tmp_path: Path) -> None:
    """review42 #8: PS3.5 A.4.2 wants one fragment per RLE frame; three for two frames
    were decoded as two, the third dropped, silently."""
    path = _rle_file(tmp_path, 2)
    ds = pydicom.dcmread(path)
    fragments = list(generate_frames(ds.PixelData, number_of_frames=2))
    ds.PixelData = encapsulate([*fragments, fragments[1]])
    ds.save_as(path)
    with pytest.raises(sources.NotDicom, match="3 RLE fragments for 2 frames"):
        conversion.converted(sources.scan_file(path), uids.EXPLICIT_VR_LE)


def test_an_image_pixel_value_that_is_no_one_number_is_refused(tmp_path: Path) -> None:
    """review44 #1: Rows of two values (a 4-byte US frames fine) raised TypeError, which
    no caller catches: `send` ended whole. Now NotDicom: that one is not sent."""
    path = _rle_file(tmp_path, 2)
    ds = pydicom.dcmread(path)
    ds.Rows = [256, 256]
    ds.save_as(path)
    with pytest.raises(sources.NotDicom, match="its Rows is .*256, 256.*not one number"):
        conversion.converted(sources.scan_file(path), uids.EXPLICIT_VR_LE)


def test_a_stored_instance_read_from_a_stream_with_an_icon(tmp_path: Path) -> None:
    """review44 #2: from a storage stream (no file name), pydicom read the deferred icon
    from the stream the decoder was taking frames from: frame 2 did not decode."""
    path = _rle_file(tmp_path, 2)
    ds = pydicom.dcmread(path)
    icon = Dataset()
    icon.Rows = icon.Columns = 64
    icon.BitsAllocated = 8
    icon.add_new(0x7FE00010, "OB", bytes(range(256)) * 16)  # (4 KiB: deferred)
    ds.IconImageSequence = [icon]
    ds.save_as(path)
    data = path.read_bytes()
    instance = sources.scan_stream(lambda: io.BytesIO(data))
    out, _size = conversion.converted(instance, uids.EXPLICIT_VR_LE)
    with out:
        got = read_dataset(io.BytesIO(out.read()), False, True)
    got.file_meta = FileMetaDataset()
    got.file_meta.TransferSyntaxUID = uids.EXPLICIT_VR_LE
    want = (np.arange(2 * 256 * 256, dtype="<u2") % 997).reshape(2, 256, 256)
    assert np.array_equal(got.pixel_array, want) and len(got.IconImageSequence) == 1
