"""framing.file_meta: where the File Meta Information ends (PS3.10 7.1), one home for
the SCU's file scan, STOW-RS's parts and the archive's stored files."""

from __future__ import annotations

import io
import struct

import pytest

from dicomstore.archive.dicomfile import HeaderError, dataset_offset
from dicomstore.framing import FramingError, NotPart10, Truncated, file_meta

PREFIX = b"\0" * 128 + b"DICM"
TS = b"1.2.840.10008.1.2.1\0"
META = (
    struct.pack("<HH", 2, 0x0001) + b"OB\0\0" + struct.pack("<L", 2) + b"\0\1"
    + struct.pack("<HH", 2, 0x0010) + b"UI" + struct.pack("<H", len(TS)) + TS
)  # fmt: skip
DATA = struct.pack("<HH", 8, 0x0060) + b"CS" + struct.pack("<H", 2) + b"CT"


def test_whole_file() -> None:
    offset, values = file_meta(PREFIX + META + DATA)
    assert offset == len(PREFIX + META)
    assert values == {0x0001: b"\0\1", 0x0010: TS}
    assert dataset_offset(io.BytesIO(PREFIX + META + DATA)) == offset


def test_a_stream_asks_for_more_until_the_meta_is_complete() -> None:
    whole = PREFIX + META + DATA
    ends = [file_meta(whole[:n], complete=False) for n in range(len(whole) + 1)]
    first = next(n for n, found in enumerate(ends) if found is not None)
    assert first == len(PREFIX + META) + 8  # the first header of group 0008 seen
    assert all(found == ends[first] for found in ends[first:])


def test_meta_alone_is_an_empty_data_set() -> None:
    assert file_meta(PREFIX + META)[0] == len(PREFIX + META)
    assert file_meta(PREFIX + META, complete=False) is None


def test_implicit_vr_meta_is_tolerated() -> None:
    implicit = struct.pack("<HHL", 2, 0x0010, len(TS)) + TS
    assert file_meta(PREFIX + implicit + DATA) == (len(PREFIX + implicit), {0x0010: TS})


def test_refusals() -> None:
    with pytest.raises(NotPart10):
        file_meta(b"\0" * 128 + b"DICX" + META)
    with pytest.raises(NotPart10):
        file_meta(b"short")
    with pytest.raises(Truncated):
        file_meta(PREFIX + META[:-3])
    undefined = struct.pack("<HH", 2, 0x0001) + b"OB\0\0" + struct.pack("<L", 0xFFFFFFFF)
    with pytest.raises(FramingError, match="undefined length"):
        file_meta(PREFIX + undefined, complete=False)
    with pytest.raises(HeaderError, match="truncated"):
        dataset_offset(io.BytesIO(PREFIX + META[:-3]))
    with pytest.raises(HeaderError, match="no DICM"):
        dataset_offset(io.BytesIO(b"\0" * 200))
