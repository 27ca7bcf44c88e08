"""The one limit of nesting, ``MAX_DEPTH`` sequences (PS3.5 7.5), counted alike by the
walk and the re-encoding (review53 #8: the re-encoding counted items too, and refused
500 levels as "more than 1000 nested sequences"); the walk's messages deep down, and its
delimiters inside containers of defined length."""

from __future__ import annotations

import io
import struct

import pytest

from dicomstore.framing import (
    MAX_DEPTH,
    FileSource,
    FramingError,
    TooDeep,
    walk_element,
)
from dicomstore.framing.reencoding import reencode


def nested(depth: int, defined: bool, inner: bytes = b"") -> bytes:
    """Content Sequence nested ``depth`` levels, Explicit VR Little Endian (``inner`` in
    the innermost item)."""
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


@pytest.mark.parametrize("defined", [True, False])
def test_an_error_deep_down_is_said_naming_the_innermost_levels(defined: bool) -> None:
    """review70 F3: the message of a framing error 450 levels down recursed past Python's
    limit (RecursionError); it names the innermost levels and how many more."""
    data = nested(MAX_DEPTH - 1, defined, inner=struct.pack("<HH2sH", 9, 0x1010, b"ZZ", 2) + b"ab")
    src = FileSource(lambda n, at, data=data: data[at : at + n], len(data))
    with pytest.raises(FramingError) as error:
        walk_element(src, 0, False, True)
    message = str(error.value)
    assert "has a VR not in PS3.5 6.2: b'ZZ' (readers disagree on its length)" in message
    assert "(0009,1010) in item 1 of (0040,A730) ContentSequence in item 1 of" in message
    assert "... 1989 more levels ... (0040,A730) ContentSequence at offset" in message
    assert len(message) < 1000


@pytest.mark.parametrize("where", ["item", "sequence"])
def test_a_delimiter_inside_a_defined_length_is_no_end(where: str) -> None:
    """review70 F2: an Item or Sequence Delimitation Item before the end of an item or
    sequence of defined length ended it there (a reader that follows the length reads
    on past it); one exactly at its end is tolerated."""
    element = struct.pack("<HH2sH", 0x0008, 0x1155, b"UI", 4) + b"1.2\0"
    delimiter = struct.pack("<HHL", 0xFFFE, 0xE00D if where == "item" else 0xE0DD, 0)
    for inside, frames in ((delimiter + element, False), (element + delimiter, True)):
        if where == "item":
            item = struct.pack("<HHL", 0xFFFE, 0xE000, len(inside)) + inside
        else:
            body = struct.pack("<HHL", 0xFFFE, 0xE000, len(element)) + element
            item = body + delimiter if frames else delimiter + body
        data = struct.pack("<HH2sHL", 0x0008, 0x1199, b"SQ", 0, len(item)) + item
        src = FileSource(lambda n, at, data=data: data[at : at + n], len(data))
        if frames:
            assert walk_element(src, 0, False, True) == len(data)
        else:
            with pytest.raises(
                FramingError, match="a delimiter .* before offset .* of defined length ends"
            ):
                walk_element(src, 0, False, True)
