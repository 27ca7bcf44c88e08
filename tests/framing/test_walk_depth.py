"""The one limit of nesting, ``MAX_DEPTH`` sequences (PS3.5 7.5), counted alike by the
walk and the re-encoding (review53 #8: the re-encoding counted items too, and refused
500 levels as "more than 1000 nested sequences")."""

from __future__ import annotations

import io
import struct

import pytest

from dicomstore.framing import MAX_DEPTH, FileSource, TooDeep, walk_element
from dicomstore.framing.reencoding import reencode


def nested(depth: int, defined: bool) -> bytes:
    """Content Sequence nested ``depth`` levels, Explicit VR Little Endian."""
    inner = b""
    for _ in range(depth):
        if defined:
            item = struct.pack("<HHL", 0xFFFE, 0xE000, len(inner)) + inner
            inner = struct.pack("<HH2sHL", 0x0040, 0xA730, b"SQ", 0, len(item)) + item
        else:
            item = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + inner
            item += struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
            inner = struct.pack("<HH2sHL", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF) + item
    return inner


@pytest.mark.parametrize("defined", [True, False])
def test_the_walk_and_the_reencoding_count_alike(defined: bool) -> None:
    for depth, deeper in ((MAX_DEPTH, False), (MAX_DEPTH + 1, True)):
        data = nested(depth, defined)
        src = FileSource(lambda n, at, data=data: data[at : at + n], len(data))
        if deeper:
            with pytest.raises(TooDeep, match="nested deeper than 1000"):
                walk_element(src, 0, False, True)
            with pytest.raises(TooDeep):
                reencode(src, 0, (False, True), (True, True), io.BytesIO())
        else:
            assert walk_element(src, 0, False, True) == len(data)
            reencode(src, 0, (False, True), (True, True), io.BytesIO())
