"""The walker of a data set's elements (archive/rawheader.py): what it is unsure of."""

from __future__ import annotations

import struct

import pytest

from dicomstore.archive.rawheader import TooDeep, Unsure, Walker

SQ = b"\x08\x00\x15\x11SQ\0\0\xff\xff\xff\xff"
END = b"\xfe\xff\xdd\xe0" + bytes(4)


def _walk(buf: bytes, implicit: bool = False) -> int:
    return Walker(buf, implicit, True, lambda tag: None, 4).sequence(12, None)[1]


def test_an_item_running_past_the_bytes_is_unsure_not_a_struct_error() -> None:
    item = b"\xfe\xff\x00\xe0" + struct.pack("<L", 4000) + b"\x08\x00\x00\x01SH\x02\x00X "
    with pytest.raises(Unsure, match="past the end"):
        _walk(SQ + item)
    long_header = b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + b"\x09\x00\x10\x10OB\0\0\x10"
    with pytest.raises(Unsure, match="truncated"):
        _walk(SQ + long_header)


def test_delimiters_with_a_length_are_unsure() -> None:
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + b"\xfe\xff\x0d\xe0" + bytes(4)
    assert _walk(SQ + item + END) == len(SQ + item + END)
    with pytest.raises(Unsure, match="sequence delimiter"):
        _walk(SQ + item + END[:4] + b"\x01\0\0\0")
    with pytest.raises(Unsure, match="item delimiter"):
        _walk(SQ + item[:12] + b"\x01\0\0\0" + END)


def test_nesting_beyond_the_limit_is_too_deep() -> None:
    inner = b""
    for _ in range(6):
        inner = SQ + b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + inner + b"\xfe\xff\x0d\xe0"
        inner += bytes(4) + END
    with pytest.raises(TooDeep):
        _walk(inner)
