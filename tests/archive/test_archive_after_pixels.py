"""What follows the Pixel Data (review76 F1): the header scan and pydicom's header
reader stop there, so ``nesting.refusal`` walks it, and refuses (C000) elements that
repeat or precede an earlier tag (PS3.5 7.1) -- a reader keeping the last of two would
file the stored instance under another patient or study than the index -- and what
does not frame there, encapsulated fragments included. What frames in order stays
stored, byte for byte."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pydicom
import pytest
from archive_testlib import EXPLICIT_LE, IMPLICIT_LE, dataset, element, store, stored_dataset

from dicomstore.archive import Archive

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
DEFLATED = "1.2.840.10008.1.2.1.99"
PIXELS = 4096


@pytest.fixture
def archive(tmp_path: Path):
    with Archive(tmp_path / "a", fsync=False) as archive:
        yield archive


def refused(
    archive: Archive, data: bytes, *words: str, ts: str = EXPLICIT_LE, uid: str = "1.2.3.4.5.6.7"
) -> str:
    before = archive.instances()
    out = store(archive, data, ts=ts, sop_uid=uid)
    assert out.status == 0xC000, out
    assert not out.error_comment.startswith("cannot understand")  # (the status says it)
    for word in words:
        assert word in out.error_comment
    assert archive.instances() == before
    return out.error_comment


def encapsulated(*fragments: bytes) -> bytes:
    out = struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF)
    out += struct.pack("<HHL", 0xFFFE, 0xE000, 0)  # Basic Offset Table
    for fragment in fragments:
        out += struct.pack("<HHL", 0xFFFE, 0xE000, len(fragment)) + fragment
    return out + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)


def implicit(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)) + value


def test_another_patient_and_study_after_the_pixels_are_refused(archive: Archive) -> None:
    """The reviewer's case: the index would hold PID1 / 1.2.3.4, pydicom reads the last."""
    tail = element(0x00100020, "LO", "VICTIM") + element(0x0020000D, "UI", "1.5.1")
    data = dataset(pixels=PIXELS) + tail
    comment = refused(
        archive,
        data,
        "(0010,0020) PatientID out of order",
        "than (7FE0,0010)",
        "ascending",
        "PS3.5 7.1",
    )
    assert f"offset {len(dataset(pixels=PIXELS))}" in comment
    # (what pydicom makes of it: the second Patient ID wins)
    ds = pydicom.filereader.read_dataset(__import__("io").BytesIO(data), False, True)
    assert ds.PatientID == "VICTIM"


def test_a_second_pixel_data_or_a_repeated_private_element_is_refused(archive: Archive) -> None:
    again = dataset(pixels=PIXELS) + element(0x7FE00010, "OW", bytes(8))
    refused(archive, again, "(7FE0,0010) PixelData out of order", "than (7FE0,0010)")
    private = element(0x7FE10010, "LO", "ACME") + element(0x7FE11010, "OB", b"ab")
    refused(archive, dataset(pixels=PIXELS) + private + private, "(7FE1,0010)")


def test_two_part10_files_in_one_are_refused(archive: Archive) -> None:
    """A second file appended (its preamble, DICM, meta) is no element that frames."""
    second = bytes(128) + b"DICM" + element(0x00020010, "UI", EXPLICIT_LE) + dataset("9.9")
    refused(archive, dataset(pixels=PIXELS) + second)


def test_in_order_after_the_pixels_is_stored_as_received(archive: Archive) -> None:
    tail = (
        element(0x7FE10010, "LO", "ACME")
        + element(0x7FE11010, "OB", b"ab")
        + element(0xFFFCFFFC, "OB", bytes(6))  # Data Set Trailing Padding
    )
    data = dataset(pixels=PIXELS) + tail
    assert store(archive, data).status == 0
    (row,) = archive.instances()
    assert stored_dataset(archive.root / row["path"]) == data


def test_encapsulated_fragments_that_do_not_frame_are_refused(archive: Archive) -> None:
    good = encapsulated(b"\xff\xd8" + bytes(100) + b"\xff\xd9")
    assert store(archive, dataset("1.9") + good, ts=JPEG_BASELINE, sop_uid="1.9").status == 0
    broken = good[:-8] + struct.pack("<HHL", 0x0010, 0x0010, 4) + b"Doe^" + good[-8:]
    refused(archive, dataset() + broken, "fragment 1 of (7FE0,0010)", ts=JPEG_BASELINE)
    cut = good[:-8]  # no Sequence Delimitation Item
    refused(archive, dataset() + cut, ts=JPEG_BASELINE)
    after = good + element(0x00100020, "LO", "VICTIM")
    refused(archive, dataset() + after, "out of order", ts=JPEG_BASELINE)


def test_read_by_pydicom_the_same(archive: Archive) -> None:
    """A header the scan leaves to pydicom (tags out of order before the Pixel Data),
    and Implicit VR: what follows the Pixel Data is walked all the same."""
    swapped = element(0x00180050, "DS", "1.5") + element(0x00080070, "LO", "ACME")
    unordered = dataset() + swapped + element(0x7FE00010, "OW", bytes(PIXELS))
    refused(archive, unordered + element(0x00100020, "LO", "VICTIM"), "(0010,0020)")
    assert store(archive, unordered).status == 0  # (out of order before it: pydicom judges)
    ids = [
        (0x00080016, b"1.2.840.10008.5.1.4.1.1.2\0"),
        (0x00080018, b"1.2.3.4.5.6.8\0"),
        (0x0020000D, b"1.2.3.9\0"),
        (0x0020000E, b"1.2.3.9.5\0"),
    ]
    head = b"".join(implicit(tag, value) for tag, value in ids)
    pixels = implicit(0x7FE00010, bytes(PIXELS))
    victim = implicit(0x00100020, b"VICTIM")
    uid = "1.2.3.4.5.6.8"
    refused(archive, head + pixels + victim, "(0010,0020)", ts=IMPLICIT_LE, uid=uid)
    assert store(archive, head + pixels, ts=IMPLICIT_LE, sop_uid=uid).status == 0


def test_deflated_the_same(archive: Archive) -> None:
    def deflate(data: bytes) -> bytes:
        z = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        out = z.compress(data) + z.flush()
        return out + b"\0" * (len(out) % 2)

    data = dataset(pixels=PIXELS)
    refused(
        archive, deflate(data + element(0x00100020, "LO", "VICTIM")), "(0010,0020)", ts=DEFLATED
    )
    assert store(archive, deflate(data), ts=DEFLATED).status == 0


def undefined_ob(*items: bytes) -> bytes:
    """A private OB element of undefined length (what the framing walker does not frame,
    but pydicom reads to its delimiter)."""
    out = struct.pack("<HH2sHL", 0x0029, 0x1010, b"OB", 0, 0xFFFFFFFF)
    for item in items:
        out += struct.pack("<HHL", 0xFFFE, 0xE000, len(item)) + item
    return out + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)


@pytest.mark.parametrize("odd", [undefined_ob(b"abcd"), undefined_ob()], ids=["item", "empty"])
def test_an_undefined_length_ob_before_the_pixels_is_refused(archive: Archive, odd: bytes) -> None:
    """Stop 46's Left: the walk of every element stopped at an undefined-length element
    it could not frame, so what followed the Pixel Data went unread (indexed as PID1,
    read by pydicom as VICTIM). Such an OB is refused itself now (review80 F5: DCMTK
    cannot read it); with or without a tail."""
    pixels = struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, 8) + bytes(8)
    victim = element(0x00100020, "LO", "VICTIM")
    for data in (dataset() + odd + pixels + victim, dataset() + odd + pixels):
        refused(archive, data, "(0029,1010) at offset", "OB of undefined length")
