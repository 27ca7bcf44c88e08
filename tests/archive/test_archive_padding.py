"""The trailing-padding policy (``padding.py``): a top-level Data Set Trailing
Padding (FFFC,FFFC) kept bit for bit (``keep``), or cut off and answered B006
(``discard``, PS3.4 B.2.3), in every uncompressed encoding."""

from __future__ import annotations

import io
import os
import struct
import tempfile
import warnings
from pathlib import Path

import pytest
from archive_testlib import CT, MR, digest_of, store, stored_dataset
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from test_archive_roundtrip import _as_received, _candidates, _id

from dicomstore import framing
from dicomstore.archive import Archive
from dicomstore.archive.dicomfile import HeaderError, encoding_of, read_header
from dicomstore.archive.padding import TRAILING_PADDING_TAG, find_trailing_padding

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
SOP = "1.2.826.0.1.3680043.10.77.1"
UNCOMPRESSED = [EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE]


def raw_element(tag: int, vr: str, value: bytes, ts: str, *, length: int | None = None) -> bytes:
    """One element as ``ts`` encodes it; ``length`` overrides the value length."""
    implicit, little, _ = encoding_of(ts)
    order = "<" if little else ">"
    size = len(value) if length is None else length
    head = struct.pack(order + "HH", tag >> 16, tag & 0xFFFF)
    if implicit or tag >> 16 == 0xFFFE:  # items and delimiters: no VR (PS3.5 7.5)
        return head + struct.pack(order + "L", size) + value
    if vr in ("OB", "OW", "SQ", "UN", "UT"):
        return head + vr.encode() + b"\0\0" + struct.pack(order + "L", size) + value
    return head + vr.encode() + struct.pack(order + "H", size) + value


def trailing_padding(ts: str, size: int = 10) -> bytes:
    """A Data Set Trailing Padding element of ``size`` value bytes."""
    return raw_element(TRAILING_PADDING_TAG, "OB", b"\0" * size, ts)


def encode(ds: Dataset, ts: str) -> bytes:
    implicit, little, _ = encoding_of(ts)
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = little, implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def make_dataset(sop: str = SOP, sop_class: str = CT) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.77"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.77.0"
    ds.PatientID = "PAD"
    ds.PatientName = "Padding^Test"
    ds.Modality = "CT"
    return ds


def with_sequence(ds: Dataset, *, nested_padding: bool = False) -> Dataset:
    """``ds`` with an undefined-length Referenced Image Sequence (0008,1140) of two
    undefined-length items; the first ends with its own trailing padding if asked."""
    items = []
    for n in (1, 2):
        item = Dataset()
        item.ReferencedSOPClassUID = CT
        item.ReferencedSOPInstanceUID = f"1.2.3.{n}"
        item.is_undefined_length_sequence_item = True
        items.append(item)
    if nested_padding:
        items[0].add_new(TRAILING_PADDING_TAG, "OB", b"\0" * 6)
    ds.ReferencedImageSequence = Sequence(items)
    ds["ReferencedImageSequence"].is_undefined_length = True
    return ds


def _find(data: bytes, offset: int, ts: str) -> int | None:
    """find_trailing_padding on ``data`` placed at ``offset`` in a file."""
    with tempfile.TemporaryFile() as f:
        f.write(b"M" * offset + data)
        f.flush()
        return find_trailing_padding(f.fileno(), offset, offset + len(data), ts)


# -- finding the padding ------------------------------------------------------------------


@pytest.mark.parametrize("ts", UNCOMPRESSED)
def test_found_right_before_the_padding(ts: str) -> None:
    body = encode(make_dataset(), ts)
    assert _find(body + trailing_padding(ts), 300, ts) == 300 + len(body)
    assert _find(body + trailing_padding(ts, 0), 0, ts) == len(body)
    assert _find(body, 300, ts) is None


@pytest.mark.parametrize("ts", UNCOMPRESSED)
def test_after_an_undefined_length_sequence(ts: str) -> None:
    body = encode(with_sequence(make_dataset()), ts)
    assert b"\xff\xff\xff\xff" in body  # the sequence and its items are undefined length
    assert _find(body + trailing_padding(ts), 0, ts) == len(body)


@pytest.mark.parametrize("ts", UNCOMPRESSED)
def test_padding_inside_a_sequence_item_is_not_trailing_padding(ts: str) -> None:
    body = encode(with_sequence(make_dataset(), nested_padding=True), ts)
    assert body.count(trailing_padding(ts, 6)) == 1
    assert _find(body, 0, ts) is None  # the item's padding ends the item, not the data set
    assert _find(body + trailing_padding(ts), 0, ts) == len(body)


def test_after_encapsulated_pixel_data() -> None:
    ts = JPEG_BASELINE
    item = 0xFFFEE000
    fragments = (
        raw_element(item, "", b"", ts)  # empty Basic Offset Table
        + raw_element(item, "", b"\xff\xd8" + b"\x11" * 100 + b"\xff\xd9", ts)
        + raw_element(item, "", b"\xff\xd8" + b"\x22" * 50 + b"\xff\xd9", ts)
        + raw_element(0xFFFEE0DD, "", b"", ts)
    )
    pixels = raw_element(0x7FE00010, "OB", fragments, ts, length=0xFFFFFFFF)
    body = encode(make_dataset(), ts) + pixels
    assert _find(body + trailing_padding(ts), 0, ts) == len(body)
    assert _find(body, 0, ts) is None


def test_after_an_undefined_length_un_element_in_implicit_form() -> None:
    """PS3.5 6.2.2: an undefined-length UN keeps its items in Implicit VR Little Endian."""
    inner = raw_element(0x00080100, "SH", b"ABCD", IMPLICIT_LE)  # implicit: no VR
    items = (
        raw_element(0xFFFEE000, "", inner, IMPLICIT_LE, length=0xFFFFFFFF)
        + raw_element(0xFFFEE00D, "", b"", IMPLICIT_LE)
        + raw_element(0xFFFEE0DD, "", b"", IMPLICIT_LE)
    )
    body = encode(make_dataset(), EXPLICIT_LE) + raw_element(
        0x00431001, "UN", items, EXPLICIT_LE, length=0xFFFFFFFF
    )
    assert _find(body + trailing_padding(EXPLICIT_LE), 0, EXPLICIT_LE) == len(body)


def test_what_does_not_frame_is_no_padding() -> None:
    ts = EXPLICIT_LE
    body = encode(make_dataset(), ts) + trailing_padding(ts)
    assert _find(body[:-1], 0, ts) is None  # the padding runs past the end
    assert _find(body + b"\0\0", 0, ts) is None  # stray bytes after it
    item = raw_element(0xFFFEE000, "", raw_element(0x00080100, "SH", b"ABCD", ts), ts)
    unclosed = raw_element(0x0040A730, "SQ", item, ts, length=0xFFFFFFFF)  # no (FFFE,E0DD)
    assert _find(unclosed + trailing_padding(ts), 0, ts) is None
    closed = unclosed + raw_element(0xFFFEE0DD, "", b"", ts)
    assert _find(closed + trailing_padding(ts), 0, ts) == len(closed)
    item_at_top = raw_element(0xFFFEE000, "", b"", ts)
    assert _find(item_at_top + trailing_padding(ts), 0, ts) is None
    assert _find(b"", 0, ts) is None
    assert _find(body, 0, DEFLATED) is None  # deflated: kept as received


def test_a_huge_value_is_skipped_not_read(tmp_path: Path, monkeypatch) -> None:
    """A 2 GiB Pixel Data costs one seek: the bytes read are the headers only."""
    ts = EXPLICIT_LE
    head = encode(make_dataset(), ts)
    pixel_length = 2**31
    pixel_header = raw_element(0x7FE00010, "OW", b"", ts, length=pixel_length)
    path = tmp_path / "sparse.part"
    with open(path, "wb") as f:
        f.write(head + pixel_header)
        f.truncate(len(head) + len(pixel_header) + pixel_length)  # a hole, not 2 GiB of disk
        f.seek(0, os.SEEK_END)
        f.write(trailing_padding(ts))
    size = path.stat().st_size
    reads: list[int] = []
    real_pread = os.pread

    def counting_pread(fd: int, n: int, offset: int) -> bytes:
        data = real_pread(fd, n, offset)
        reads.append(len(data))
        return data

    monkeypatch.setattr(framing.sources.os, "pread", counting_pread)
    fd = os.open(path, os.O_RDONLY)
    try:
        found = find_trailing_padding(fd, 0, size, ts)
    finally:
        os.close(fd)
    assert found == size - len(trailing_padding(ts))
    assert len(reads) <= 3
    assert sum(reads) <= 2 * framing.WINDOW


# -- the policy through the archive -----------------------------------------------------


@pytest.mark.parametrize("ts", UNCOMPRESSED)
def test_discard_cuts_the_padding_and_answers_b006(tmp_path: Path, ts: str) -> None:
    body = encode(with_sequence(make_dataset()), ts)
    pad = trailing_padding(ts, 30)
    with Archive(tmp_path / "root", fsync=False, trailing_padding="discard") as archive:
        outcome = store(archive, body + pad, sop_uid=SOP, ts=ts, chunk=7)
        assert outcome.status == 0xB006
        assert outcome.is_warning and not outcome.is_failure
        assert outcome.error_comment == (
            f"Data Set Trailing Padding (FFFC,FFFC), {len(pad)} bytes, discarded"
        )
        assert outcome.wire_comment == outcome.error_comment  # fits an LO
        assert outcome.offending_element == (0xFFFCFFFC,)
        path = archive.path_of(SOP)
        assert stored_dataset(path) == body  # the received bytes minus the padding
        row = archive.get_instance(SOP)
        assert row["file_size"] == path.stat().st_size
        assert row["digest"] == digest_of(body)
        assert outcome.instance["file_size"] == row["file_size"]
        assert archive.check() == []
        assert archive.reindex() == 1 and archive.check() == []


def test_a_padded_duplicate_of_a_cut_copy_is_answered_b006_too(tmp_path: Path) -> None:
    ts = UNCOMPRESSED[0]
    body = encode(make_dataset(), ts)
    with Archive(tmp_path / "root", fsync=False, trailing_padding="discard") as archive:
        assert store(archive, body + trailing_padding(ts), sop_uid=SOP, ts=ts).status == 0xB006
        again = store(archive, body + trailing_padding(ts, 20), sop_uid=SOP, ts=ts)
        assert again.status == 0xB006  # same data set once cut: kept, and says so
        assert again.offending_element == (0xFFFCFFFC,)
        assert store(archive, body, sop_uid=SOP, ts=ts).status == 0x0000
        assert stored_dataset(archive.path_of(SOP)) == body


@pytest.mark.parametrize("ts", UNCOMPRESSED)
def test_keep_stores_every_byte(tmp_path: Path, ts: str) -> None:
    data = encode(make_dataset(), ts) + trailing_padding(ts)
    with Archive(tmp_path / "root", fsync=False) as archive:
        assert archive.trailing_padding == "keep"
        outcome = store(archive, data, sop_uid=SOP, ts=ts)
        assert outcome.status == 0x0000 and outcome.error_comment is None
        assert stored_dataset(archive.path_of(SOP)) == data
        assert archive.get_instance(SOP)["digest"] == digest_of(data)
        assert archive.check() == []


@pytest.mark.parametrize("ts", UNCOMPRESSED)
def test_discard_without_padding_changes_nothing(tmp_path: Path, ts: str) -> None:
    data = encode(with_sequence(make_dataset(), nested_padding=True), ts)
    with Archive(tmp_path / "root", fsync=False, trailing_padding="discard") as archive:
        outcome = store(archive, data, sop_uid=SOP, ts=ts)
        assert outcome.status == 0x0000
        assert stored_dataset(archive.path_of(SOP)) == data  # the item's padding stays
        assert archive.get_instance(SOP)["digest"] == digest_of(data)
        assert archive.check() == []


def test_discard_after_encapsulated_pixel_data(tmp_path: Path) -> None:
    ts = JPEG_BASELINE
    fragments = (
        raw_element(0xFFFEE000, "", b"", ts)
        + raw_element(0xFFFEE000, "", b"\xff\xd8" + b"\x33" * 64 + b"\xff\xd9", ts)
        + raw_element(0xFFFEE0DD, "", b"", ts)
    )
    body = encode(make_dataset(), ts) + raw_element(
        0x7FE00010, "OB", fragments, ts, length=0xFFFFFFFF
    )
    with Archive(tmp_path / "root", fsync=False, trailing_padding="discard") as archive:
        outcome = store(archive, body + trailing_padding(ts, 100), sop_uid=SOP, ts=ts)
        assert outcome.status == 0xB006
        assert stored_dataset(archive.path_of(SOP)) == body
        assert archive.check() == []


def test_class_mismatch_tolerated_and_padding_discarded(tmp_path: Path) -> None:
    """Both B007 and B006 apply: B007 (about the meaning) is answered, the
    comment and Offending Elements tell of the padding too."""
    body = encode(make_dataset(sop_class=MR), EXPLICIT_LE)
    pad = trailing_padding(EXPLICIT_LE)
    with Archive(
        tmp_path / "root", fsync=False, on_class_mismatch="tolerate", trailing_padding="discard"
    ) as archive:
        outcome = store(archive, body + pad, sop_uid=SOP, sop_class=CT)
        assert outcome.status == 0xB007
        assert outcome.offending_element == (0x00080016, 0xFFFCFFFC)
        assert "SOP Class UID" in outcome.error_comment
        assert f"Data Set Trailing Padding (FFFC,FFFC), {len(pad)} bytes" in outcome.error_comment
        assert stored_dataset(archive.path_of(SOP)) == body
        assert archive.check() == []


def test_a_rejected_data_set_is_not_walked(tmp_path: Path, monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("walked a data set that was refused")

    monkeypatch.setattr("dicomstore.archive.ingest.discard_trailing_padding", fail)
    data = encode(make_dataset(), EXPLICIT_LE) + trailing_padding(EXPLICIT_LE)
    with Archive(tmp_path / "root", fsync=False, trailing_padding="discard") as archive:
        outcome = store(archive, data, sop_uid="1.2.3.999")  # A900: other instance
        assert outcome.status == 0xA900
        assert archive.instances() == []


def test_unknown_policy_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="trailing_padding"):
        Archive(tmp_path / "root", trailing_padding="strip")


# -- real files: pydicom's test files ----------------------------------------------------


def _pydicom_padding_at(data: bytes, ts: str) -> tuple[int | None, bool]:
    """(where pydicom reads a top-level (FFFC,FFFC), whether pydicom had to guess the
    encoding) of a data set; pydicom reads the whole of it."""
    implicit, little, _ = encoding_of(ts)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = read_dataset(io.BytesIO(data), implicit, little)
        except Exception:  # noqa: BLE001 - a broken test file: no padding to find
            return None, True
    guessed = any("Expected" in str(w.message) for w in caught)
    if TRAILING_PADDING_TAG not in ds:
        return None, guessed
    elem = ds.get_item(TRAILING_PADDING_TAG)
    long = not implicit and not guessed
    return elem.value_tell - (12 if long else 8), guessed


@pytest.mark.parametrize("path", _candidates(), ids=_id)
def test_pydicom_test_files(path: str) -> None:
    """Padding the files already have is found where pydicom reads it; padding
    appended to any file pydicom reads in its declared encoding is found too."""
    data, ts, _ = _as_received(path)
    implicit, little, deflated = encoding_of(ts)
    if deflated:
        pytest.skip("deflated: kept as received")
    expected, guessed = _pydicom_padding_at(data, ts)
    if guessed:
        pytest.skip("pydicom guessed the encoding: the walk does not guess")
    assert _find(data, 0, ts) == expected
    appended = data + trailing_padding(ts, 4)
    if read_dataset_ok(data, ts):
        assert _find(appended, 0, ts) == len(data)
    else:
        assert _find(appended, 0, ts) in (None, len(data))


def read_dataset_ok(data: bytes, ts: str) -> bool:
    """The header checks accept the data set (else it is refused before the walk)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            read_header(io.BytesIO(data), 0, len(data), ts)
        except HeaderError:
            return False
    return True


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_expb.dcm", "MR_small_RLE.dcm"])
def test_padded_pydicom_files_through_the_archive(tmp_path: Path, name: str) -> None:
    (path,) = [p for p in _candidates() if Path(p).name == name]
    data, ts, header = _as_received(path)
    at, _ = _pydicom_padding_at(data, ts)
    assert at is not None  # these files end with trailing padding
    sop, sop_class = str(header.SOPInstanceUID), str(header.SOPClassUID)
    with Archive(tmp_path / "keep", fsync=False) as archive:
        kept = store(archive, data, sop_uid=sop, sop_class=sop_class, ts=ts)
        assert kept.status == 0x0000
        assert stored_dataset(archive.path_of(sop)) == data
    with Archive(tmp_path / "cut", fsync=False, trailing_padding="discard") as archive:
        cut = store(archive, data, sop_uid=sop, sop_class=sop_class, ts=ts, chunk=4096)
        assert cut.status == 0xB006
        assert f"{len(data) - at} bytes, discarded" in cut.error_comment
        assert stored_dataset(archive.path_of(sop)) == data[:at]
        assert archive.check() == []


def test_hostile_nesting_gives_up_without_memory(monkeypatch) -> None:
    """Nested sequences after the Pixel Data (which the header checks never read)
    cannot grow the walk's memory: past MAX_DEPTH it reports no padding."""
    ts = EXPLICIT_LE
    monkeypatch.setattr(framing.walking, "MAX_DEPTH", 20)
    open_level = raw_element(0x00091010, "SQ", b"", ts, length=0xFFFFFFFF) + raw_element(
        0xFFFEE000, "", b"", ts, length=0xFFFFFFFF
    )
    close_level = raw_element(0xFFFEE00D, "", b"", ts) + raw_element(0xFFFEE0DD, "", b"", ts)
    for depth, found in ((5, True), (50, False)):
        data = encode(make_dataset(), ts) + open_level * depth + close_level * depth
        expected = len(data) if found else None
        assert _find(data + trailing_padding(ts), 0, ts) == expected
