"""Walking the element headers of a data set: does it frame, where does it end.

Each element header starts where the previous value ended (PS3.5 7.1). A
defined-length value is skipped by its length without being read (a 2 GiB
Pixel Data costs a comparison with the file size); an undefined-length one
(SQ, UN, encapsulated Pixel Data) by walking its items and their nested data
sets to the matching Sequence Delimitation Item (PS3.5 7.5, A.4), each item
or fragment again skipped by its length when it has one. Only header bytes
are read, through a window of :data:`WINDOW` bytes, and nothing of pydicom
is imported unless a tag has to be named in a message.

:func:`walk` raises :class:`Truncated` when the bytes end before a header is
complete, before the end of a value, or before the delimiter of an open
sequence or item: the data set is cut short, whatever else it holds (a
deflate stream that cannot be inflated raises its base :class:`Corrupt`). What
the walk does not understand (an explicit VR it does not know, an item where
an element goes, nesting deeper than :data:`MAX_DEPTH`) raises the base
:class:`FramingError`: such a data set may still be read by a lenient reader,
and the caller decides.

The bytes come from a :class:`Source`: :class:`FileSource` reads a file with
``os.pread``; :class:`InflatedSource` inflates a Deflated Explicit VR Little
Endian data set (PS3.5 A.5) on the fly, keeping only the window in memory,
and then tells where the deflate stream ended.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from typing import Protocol

from dicomstore.errors import DicomstoreError
from dicomstore.vr import VRS

__all__ = [
    "MAX_DEPTH",
    "WINDOW",
    "Corrupt",
    "FileSource",
    "NotPart10",
    "FramingError",
    "InflatedSource",
    "Source",
    "Truncated",
    "Walked",
    "file_meta",
    "tag_name",
    "walk",
]

#: Bytes read (or inflated) at a time while walking.
WINDOW = 64 * 1024
#: Sequences and items open at once beyond which the walk gives up (FramingError):
#: memory stays bounded whatever the nesting of hostile input.
MAX_DEPTH = 1000

_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_TAG = {True: struct.Struct("<HH").unpack_from, False: struct.Struct(">HH").unpack_from}
_U16 = {True: struct.Struct("<H").unpack_from, False: struct.Struct(">H").unpack_from}
_U32 = {True: struct.Struct("<L").unpack_from, False: struct.Struct(">L").unpack_from}


class FramingError(DicomstoreError):
    """The data set does not frame as the walk understands it (the reason is the message).

    ``tag`` is the element concerned, if known; ``offset`` where its header starts.
    """

    def __init__(self, message: str, tag: int | None = None, offset: int = 0) -> None:
        super().__init__(message)
        self.tag, self.offset = tag, offset


class Corrupt(FramingError):
    """The data set is broken for any reader (cut short, or not inflatable)."""


class Truncated(Corrupt):
    """The data set ends before an element, item or sequence it started is complete.

    ``missing`` is how many bytes are missing at least.
    """

    def __init__(self, message: str, tag: int | None, offset: int, missing: int) -> None:
        super().__init__(message, tag, offset)
        self.missing = missing


@dataclass(frozen=True, slots=True)
class Walked:
    """A data set that framed: where it ended and its last top-level element."""

    end: int  #: position after the last element
    last_tag: int | None  #: tag of the last top-level element (None: no element)
    last_offset: int  #: where the header of that element starts


class Source(Protocol):
    """Bytes of a data set by position; reads only move forward for InflatedSource."""

    def read(self, pos: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``pos``: fewer only where the bytes end."""
        ...

    def has(self, pos: int, size: int) -> int:
        """How many of the ``size`` bytes at ``pos`` exist (without reading them)."""
        ...


class FileSource:
    """``os.pread`` of a file through one cached window; ``end`` is the file size.

    ``head`` (bytes already read at offset ``head_at``) serves as the first window.
    """

    def __init__(self, fd: int, end: int, head: bytes = b"", head_at: int = 0) -> None:
        self.fd, self.end = fd, end
        self.start, self.data = head_at, head[: max(0, end - head_at)]

    def read(self, pos: int, size: int) -> bytes:
        offset = pos - self.start
        if offset >= 0 and offset + size <= len(self.data):
            return self.data[offset : offset + size]
        size = max(0, min(size, self.end - pos))
        self.start = pos
        self.data = os.pread(self.fd, max(size, min(WINDOW, self.end - pos)), pos)
        return self.data[:size]

    def has(self, pos: int, size: int) -> int:
        return size if pos + size <= self.end else max(0, self.end - pos)


class InflatedSource:
    """The inflated bytes of a deflated data set ``fd[start:end]`` (PS3.5 A.5).

    Positions count inflated bytes from 0 and only move forward. Raises
    :class:`Corrupt` when the stream cannot be inflated. After
    :meth:`finish`: ``stream_size`` (compressed bytes up to the end of the
    deflate stream, None if it never ended), ``crc32`` and ``size`` of the
    inflated data.
    """

    def __init__(self, fd: int, start: int, end: int) -> None:
        self.fd, self.next_in, self.end = fd, start, end
        self.start = start
        self._z = zlib.decompressobj(-zlib.MAX_WBITS)
        self.buf = bytearray()
        self.buf_at = 0  # inflated position of buf[0]
        self.size = 0  # inflated bytes produced so far
        self.crc32 = 0
        self.stream_size: int | None = None

    def _produce(self, limit: int) -> bytes:
        """Up to ``limit`` more inflated bytes; b"" at the end of the stream or input."""
        z = self._z
        while True:
            if z.eof:
                return b""
            if z.unconsumed_tail:
                data = z.decompress(z.unconsumed_tail, limit)
            elif self.next_in >= self.end:
                return b""
            else:
                chunk = os.pread(self.fd, min(WINDOW, self.end - self.next_in), self.next_in)
                if not chunk:
                    self.end = self.next_in  # the file is shorter than it was
                    return b""
                self.next_in += len(chunk)
                try:
                    data = z.decompress(chunk, limit)
                except zlib.error as exc:
                    raise Corrupt(f"the deflated data set cannot be inflated: {exc}") from None
            if z.eof and self.stream_size is None:
                # what follows the stream (also left in unconsumed_tail when limited)
                self.stream_size = self.next_in - len(z.unused_data) - self.start
            if data:
                self.size += len(data)
                self.crc32 = zlib.crc32(data, self.crc32)
                return data

    def _advance(self, pos: int) -> None:
        """Drop what is before ``pos`` (inflating up to it): buf then starts at ``pos``,
        or is empty at the end of the stream if that comes first."""
        known = self.buf_at + len(self.buf)
        if pos <= known:
            del self.buf[: pos - self.buf_at]
            self.buf_at = pos
            return
        self.buf.clear()
        self.buf_at = known
        while self.buf_at < pos:
            data = self._produce(min(pos - self.buf_at, WINDOW))
            if not data:
                return
            self.buf_at += len(data)

    def read(self, pos: int, size: int) -> bytes:
        self._advance(pos)
        while len(self.buf) < size:
            data = self._produce(WINDOW)
            if not data:
                break
            self.buf += data
        return bytes(self.buf[:size])

    def has(self, pos: int, size: int) -> int:
        self._advance(pos + size)
        return max(0, min(size, self.buf_at + len(self.buf) - pos))

    def finish(self) -> None:
        """Inflate (and drop) the rest, so that ``stream_size``, ``crc32``, ``size`` are known."""
        self.buf.clear()
        while self._produce(WINDOW):
            pass


def tag_name(tag: int | None) -> str:
    """``(7FE0,0010) PixelData``: the tag and, when pydicom knows it, its keyword."""
    if tag is None:
        return "an element"
    text = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    if tag >> 16 == 0xFFFE:
        return text
    from pydicom.datadict import keyword_for_tag  # only when a message is made

    keyword = keyword_for_tag(tag)
    return f"{text} {keyword}" if keyword else text


def _label(stack: list[_Open], depth: int) -> str:
    """What ``stack[:depth]`` is, for a message: ``item 2 of (0008,1115) ...``."""
    if depth == 0:
        return ""
    here = stack[depth - 1]
    if not here.in_item:  # a sequence, or encapsulated Pixel Data
        outer = _label(stack, depth - 1)
        return tag_name(here.tag) + (f" in {outer}" if outer else "")
    return _item_label(stack, depth - 1)


def _item_label(stack: list[_Open], depth: int) -> str:
    """The current item of the sequence ``stack[depth - 1]`` (a fragment in Pixel Data)."""
    seq = stack[depth - 1]
    if seq.tag in _PIXEL_TAGS and depth == 1:  # PS3.5 A.4
        n = seq.count - 1
        return f"{f'fragment {n}' if n else 'Basic Offset Table'} of {_label(stack, depth)}"
    return f"item {seq.count} of {_label(stack, depth)}"


def _element_label(stack: list[_Open], tag: int) -> str:
    """The element ``tag`` met with ``stack`` open, for a message."""
    if not stack:
        return tag_name(tag)
    if stack[-1].in_item:
        return f"{tag_name(tag)} in {_label(stack, len(stack))}"
    return _item_label(stack, len(stack))


def _header(
    src: Source, pos: int, implicit: bool, little: bool, stack: list[_Open]
) -> tuple[int, str | None, int, int]:
    """(tag, VR or None, value length, value position) of the element at ``pos``."""
    head = src.read(pos, 8)
    if len(head) < 8:
        tag = None
        if len(head) >= 4:
            group, elem = _TAG[little](head)
            tag = group << 16 | elem
        where = f" in {_label(stack, len(stack))}" if stack else ""
        raise Truncated(
            f"the data set ends inside the header of {tag_name(tag)} at offset {pos}"
            f"{where}: {8 - len(head)} of its 8 bytes missing",
            tag,
            pos,
            8 - len(head),
        )
    group, elem = _TAG[little](head)
    tag = group << 16 | elem
    if implicit or group == 0xFFFE:  # items and delimiters have no VR (PS3.5 7.5)
        return tag, None, _U32[little](head, 4)[0], pos + 8
    known = VRS.get(head[4:6])
    if known is None:
        raise FramingError(
            f"{_element_label(stack, tag)} at offset {pos} has a VR the walk does not know:"
            f" {bytes(head[4:6])!r}",
            tag,
            pos,
        )
    vr, long = known
    if not long:
        return tag, vr, _U16[little](head, 6)[0], pos + 8
    size = src.read(pos + 8, 4)
    if len(size) < 4:
        raise Truncated(
            f"the data set ends inside the header of {_element_label(stack, tag)} at offset"
            f" {pos}: {4 - len(size)} of its 12 bytes missing",
            tag,
            pos,
            4 - len(size),
        )
    return tag, vr, _U32[little](size)[0], pos + 12


class _Open:
    """An undefined-length value being walked: a sequence (items follow) or an item."""

    __slots__ = ("count", "implicit", "in_item", "little", "offset", "tag")

    def __init__(self, in_item: bool, implicit: bool, little: bool, tag: int, offset: int) -> None:
        self.in_item, self.implicit, self.little = in_item, implicit, little
        self.tag, self.offset = tag, offset
        self.count = 0  # items seen (in a sequence)


_EXPLICIT_LE = struct.Struct("<HH2sH").unpack_from
_IMPLICIT_LE = struct.Struct("<HHL").unpack_from
_LONG_LENGTH = struct.Struct("<L").unpack_from


def _top_level_run(src: FileSource, pos: int, implicit: bool) -> tuple[int, int | None, int]:
    """Skip the top-level little-endian elements of defined length whose header and value
    lie in the window of ``src``, with no call per element: (position reached, last tag,
    its offset).  :func:`walk` does the rest, and every check, from there on."""
    data, base = src.data, src.start
    end = min(src.end, base + len(data))
    vrs, last_tag, last_offset = VRS, None, pos
    while pos + 12 <= end:
        at = pos - base
        if implicit:
            group, elem, length = _IMPLICIT_LE(data, at)
            value = pos + 8
        else:
            group, elem, vr, length = _EXPLICIT_LE(data, at)
            known = vrs.get(vr)
            if known is None:
                break
            if known[1]:
                (length,) = _LONG_LENGTH(data, at + 8)
                value = pos + 12
            else:
                value = pos + 8
        if group == 0xFFFE or length == _UNDEFINED or value + length > end:
            break
        last_tag, last_offset = group << 16 | elem, pos
        pos = value + length
    return pos, last_tag, last_offset


def walk(src: Source, start: int, implicit: bool, little: bool) -> Walked:
    """Walk the data set whose first element starts at ``start`` to where its bytes end.

    Raises :class:`Truncated` or :class:`FramingError` (see the module docstring).
    Messages name the elements (nothing is named while all goes well: it is slow).
    """
    stack: list[_Open] = []
    pos, last_tag, last_offset = start, None, start
    fast = src if isinstance(src, FileSource) and little else None
    while True:
        if not stack:  # the next top-level element, or the end
            if fast is not None:
                fast.read(pos, 12)  # the window from here
                pos, tag_seen, offset_seen = _top_level_run(fast, pos, implicit)
                if tag_seen is not None:
                    last_tag, last_offset = tag_seen, offset_seen
            if not src.read(pos, 1):
                return Walked(pos, last_tag, last_offset)
            tag, vr, length, value = _header(src, pos, implicit, little, stack)
            if tag >> 16 == 0xFFFE:
                raise FramingError(
                    f"an item or delimiter {tag_name(tag)} where an element goes, at offset {pos}",
                    tag,
                    pos,
                )
            last_tag, last_offset = tag, pos
            enc = (implicit, little)
        else:
            top = stack[-1]
            if not src.read(pos, 1):
                what = "Item" if top.in_item else "Sequence"
                raise Truncated(
                    f"the data set ends at offset {pos} inside {_label(stack, len(stack))}"
                    f" (undefined length, from offset {top.offset}), before its {what}"
                    " Delimitation Item: at least 8 bytes missing",
                    top.tag,
                    top.offset,
                    8,
                )
            tag, vr, length, value = _header(src, pos, top.implicit, top.little, stack)
            if top.in_item:  # an element of a nested data set, or its end
                if tag == _ITEM_DELIMITER:
                    stack.pop()
                    pos = value
                    continue
                if tag >> 16 == 0xFFFE:
                    raise FramingError(
                        f"{tag_name(tag)} where an element goes, at offset {pos}"
                        f" in {_label(stack, len(stack))}",
                        tag,
                        pos,
                    )
            else:  # an item of a sequence (or a fragment), or its end
                if tag == _SEQUENCE_DELIMITER:
                    stack.pop()
                    pos = value
                    continue
                if tag != _ITEM:
                    raise FramingError(
                        f"{tag_name(tag)} where an item goes, at offset {pos}"
                        f" in {_label(stack, len(stack))}",
                        tag,
                        pos,
                    )
                top.count += 1
                if length == _UNDEFINED:
                    stack.append(_Open(True, top.implicit, top.little, tag, pos))
                    pos = value
                    continue
            enc = (top.implicit, top.little)
        if length == _UNDEFINED:
            if vr == "UN":  # PS3.5 6.2.2: its value stays Implicit VR Little Endian
                enc = (True, True)
            stack.append(_Open(False, *enc, tag, pos))
            if len(stack) > MAX_DEPTH:
                raise FramingError(f"more than {MAX_DEPTH} nested sequences", tag, pos)
            pos = value
            continue
        have = src.has(value, length)
        if have < length:
            raise Truncated(
                f"{_element_label(stack, tag)} at offset {pos}: its value of {length} bytes"
                f" runs past the end of the data set, {length - have} bytes missing",
                tag,
                pos,
                length - have,
            )
        pos = value + length


class NotPart10(FramingError):
    """The bytes do not start with a preamble and ``DICM`` (PS3.10 7.1)."""


def file_meta(
    head: bytes | bytearray, *, complete: bool = True
) -> tuple[int, dict[int, bytes]] | None:
    """The File Meta Information of the PS3.10 file whose first bytes are ``head``:
    where the data set starts, and each element's value by element number.

    Group 0002 is Explicit VR Little Endian (PS3.10 7.1); a meta written in
    Implicit VR by a broken writer is tolerated. The walk stops at the first
    element of another group, so a wrong group length does not matter.
    ``None``: ``head`` ends inside the meta and more bytes are to come
    (``complete=False``). Raises :class:`NotPart10` without the ``DICM``
    prefix, :class:`Truncated` when ``head`` is all there is and ends inside
    the meta, :class:`FramingError` for an undefined length in it.
    """
    if len(head) < 132:
        if complete:
            raise NotPart10("not a DICOM PS3.10 file (shorter than preamble and prefix)")
        return None
    if head[128:132] != b"DICM":
        raise NotPart10("not a DICOM PS3.10 file (no DICM prefix)")
    pos = 132
    meta: dict[int, bytes] = {}
    while True:
        if pos + 8 > len(head):
            if pos == len(head) and complete:
                return pos, meta  # a file of meta alone: an empty data set
            break
        group, elem = _TAG[True](head, pos)
        if group != 0x0002:
            return pos, meta
        vr = bytes(head[pos + 4 : pos + 6])
        if vr.isalpha() and vr.isupper():
            known = VRS.get(vr)
            if known is not None and known[1]:
                if pos + 12 > len(head):
                    break
                length, header = _U32[True](head, pos + 8)[0], 12
            else:
                length, header = _U16[True](head, pos + 6)[0], 8
        else:  # implicit VR meta (not conformant, seen in the wild)
            length, header = _U32[True](head, pos + 4)[0], 8
        if length == _UNDEFINED:
            raise FramingError(
                f"File Meta Information element (0002,{elem:04X}) of undefined length"
            )
        if pos + header + length > len(head):
            break
        meta[elem] = bytes(head[pos + header : pos + header + length])
        pos += header + length
    if complete:
        raise Truncated("the File Meta Information is truncated", None, pos, 0)
    return None
