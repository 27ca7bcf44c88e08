"""One limit of nesting (review53 #8): a received data set whose sequences nest deeper
than ``framing.MAX_DEPTH`` is refused (C000) whatever their lengths and wherever they
are; one at the limit is stored and converts to another transfer syntax."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from archive_testlib import EXPLICIT_LE, IMPLICIT_LE, dataset, element, store, stored_dataset

from dicomstore.archive import Archive
from dicomstore.archive.scan import scan_header
from dicomstore.framing import DEEP_SIZE, MAX_DEPTH, FileSource, walk_element
from dicomstore.framing.reencoding import reencode

CONTENT = 0x0040A730  # Content Sequence
COMMENT = "sequences nested deeper than 1000 (PS3.5 7.5)"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
CT = "1.2.840.10008.5.1.4.1.1.2"


def nested(
    depth: int, *, defined: bool = True, implicit: bool = False, tag: int = CONTENT
) -> bytes:
    """``tag`` nested ``depth`` levels, one item each (PS3.5 7.5), from the inside out."""
    inner = b""
    for _ in range(depth):
        if defined:
            item = struct.pack("<HHL", 0xFFFE, 0xE000, len(inner)) + inner
            length = len(item)
        else:
            item = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + inner
            item += struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
            length = 0xFFFFFFFF
        head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
        head += struct.pack("<L", length) if implicit else b"SQ\0\0" + struct.pack("<L", length)
        inner = head + item
    return inner


def implicit_dataset(tail: bytes) -> bytes:
    """The identity of an instance in Implicit VR Little Endian, then ``tail``."""
    out = b""
    for tag, value in (
        (0x00080016, CT),
        (0x00080018, "1.2.3.4.5.6.7"),
        (0x0020000D, "1.2.3.4"),
        (0x0020000E, "1.2.3.4.5"),
    ):
        raw = value.encode() + b"\0" * (len(value) % 2)
        out += struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(raw)) + raw
    return out + tail


@pytest.fixture
def archive(tmp_path: Path):
    with Archive(tmp_path / "a", fsync=False) as archive:
        yield archive


def refused(archive: Archive, data: bytes, **options: str) -> None:
    out = store(archive, data, **options)
    assert (out.status, out.error_comment) == (0xC000, COMMENT)
    assert archive.instances() == []


@pytest.mark.parametrize("implicit", [False, True])
def test_defined_lengths_one_level_too_deep_are_refused(archive: Archive, implicit) -> None:
    if implicit:
        refused(archive, implicit_dataset(nested(MAX_DEPTH + 1, implicit=True)), ts=IMPLICIT_LE)
    else:
        refused(archive, dataset() + nested(MAX_DEPTH + 1))


@pytest.mark.parametrize("implicit", [False, True])
def test_at_the_limit_stored_and_converted(archive: Archive, tmp_path: Path, implicit) -> None:
    if implicit:
        data, ts = implicit_dataset(nested(MAX_DEPTH, implicit=True)), IMPLICIT_LE
    else:
        data, ts = dataset() + nested(MAX_DEPTH), EXPLICIT_LE
    assert store(archive, data, ts=ts).status == 0
    (row,) = archive.instances()
    raw = stored_dataset(archive.root / row["path"])
    out = io.BytesIO()
    source, target = (implicit, True), (not implicit, True)
    reencode(FileSource(lambda n, at: raw[at : at + n], len(raw)), 0, source, target, out)
    converted = out.getvalue()
    src = FileSource(lambda n, at: converted[at : at + n], len(converted))
    pos = 0
    while pos < len(converted):  # every level there, still within the limit
        pos = walk_element(src, pos, not implicit, True)
    assert converted.count(b"\x40\x00\x30\xa7") == MAX_DEPTH


def test_undefined_lengths_too_deep_say_the_limit(archive: Archive) -> None:
    """Not the header reader's failure (pydicom's recursion, some hundred levels)."""
    refused(archive, dataset() + nested(MAX_DEPTH + 1, defined=False))


def test_undefined_lengths_inside_defined_ones(archive: Archive) -> None:
    inner = nested(MAX_DEPTH // 2 + 1, defined=False)
    outer = inner
    for _ in range(MAX_DEPTH // 2):
        item = struct.pack("<HHL", 0xFFFE, 0xE000, len(outer)) + outer
        outer = struct.pack("<HH2sHL", 0x0040, 0xA730, b"SQ", 0, len(item)) + item
    refused(archive, dataset() + outer)


def private_after_pixels(depth: int) -> bytes:
    creator = element(0x7FE10010, "LO", "DEEP")
    return creator + nested(depth, tag=0x7FE11010)


def test_after_native_pixel_data(archive: Archive) -> None:
    refused(archive, dataset(pixels=4096) + private_after_pixels(MAX_DEPTH + 1))
    assert store(archive, dataset(pixels=4096) + private_after_pixels(MAX_DEPTH)).status == 0


def test_after_encapsulated_pixel_data(archive: Archive) -> None:
    pixels = struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF)
    pixels += struct.pack("<HHL", 0xFFFE, 0xE000, 0)  # Basic Offset Table
    pixels += struct.pack("<HHL", 0xFFFE, 0xE000, 20000) + bytes(20000)
    pixels += struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    refused(archive, dataset() + pixels + private_after_pixels(MAX_DEPTH + 1), ts=JPEG_BASELINE)
    assert store(archive, dataset() + pixels, ts=JPEG_BASELINE).status == 0


def test_the_scan_notes_only_big_elements() -> None:
    """What ``nesting.py`` walks: nothing in an ordinary header."""
    deep: list[int] = []
    small = dataset(pixels=4096)
    assert scan_header(small, len(small), False, deep) is not None and deep == []
    big = dataset(extra={0x00091010: ("OB", bytes(DEEP_SIZE))}, pixels=4096)
    assert scan_header(big, len(big), False, deep) is not None
    assert deep == [big.index(b"\x09\x00\x10\x10")]
