"""A data set re-encoded in another uncompressed transfer syntax, streaming (PS3.5 A.1
Implicit VR Little Endian, A.2 Explicit VR Little Endian, A.3 Explicit VR Big Endian).

Element by element, through the window of a :class:`~dicomstore.framing.Source`,
written out as it goes: memory stays bounded whatever the instance's size (a 2 GiB
Pixel Data is copied, or byte-swapped, a slice of :data:`SLICE` bytes at a time).
What changes (PS3.5 7.1, 7.3, 7.5):

- the element headers: their byte order, and the VR there (Explicit) or not
  (Implicit). From Implicit, an element's VR is the data dictionary's (PS3.6; a
  private element's by its Private Creator, else UN; a Private Creator is LO, a group
  length UL), an ambiguous one resolved by its data set or the ones around it (US or
  SS by Pixel Representation; OB or OW, as Pixel, Overlay and Waveform Data, is OW
  in Implicit VR, PS3.5 A.1);
  a value too long for its VR's 16-bit length becomes UN (PS3.5 6.2.2); between
  little endian syntaxes a UN of defined length the dictionary knows gets its VR
  when its length fits it (``implicit_vr.written_vr``);
- between byte orders, the values of the binary VRs (PS3.5 7.3: AT, US, SS, UL, SL,
  FL, FD, OW, OF, OL, OD, OV, SV, UV); OB, UN and the text VRs stay as they are.
  OW is swapped by its 16-bit words whatever Bits Allocated says (PS3.5 6.2, 8.1.1:
  a 32-bit pixel cell is two words, as DCMTK swaps it; pydicom reads it otherwise);
- a value of odd length (PS3.5 7.1.1 wants even ones) gets a pad byte, a space in
  the text VRs, else a NUL, as DCMTK writes it;
- the defined lengths of sequences and items, which headers of another size make
  wrong: written again once their content is (the output is a file: the length field
  is patched); undefined lengths stay undefined;
- a delimiter exactly where a sequence or item of defined length ends (which the
  framing walker tolerates: ``walking._delimiter_at_end``) is left out: the length
  written ends it;
- group lengths (gggg,0000): retired (PS3.5 7.2) and wrong once headers change size,
  left out between Implicit and Explicit (swapped between byte orders); elements of
  groups 0000 and 0002 at the top level are no part of a data set and are left out
  (group 0001, which no one may use, PS3.5 7.8.1, is kept: review86 F2).

The value of a UN of undefined length stays Implicit VR Little Endian whatever the
syntax (PS3.5 6.2.2), as does that of an Implicit element of undefined length the
dictionary does not know (written as such a UN). Encapsulated Pixel Data has no
native encoding: the caller decodes it first. A data set that does not frame raises
:class:`FramingError` (:class:`Truncated` when it is cut short).
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from dicomstore.framing.errors import FramingError, Truncated, tag_name, value_cut
from dicomstore.framing.headers import (
    ITEM,
    ITEM_DELIMITER,
    SEQUENCE_DELIMITER,
    U16,
    UNDEFINED,
    UNKNOWN_VR,
    Encoding,
    byteswapped,
    element_header,
    encode_header,
)
from dicomstore.framing.implicit_vr import WIDTH, written_vr
from dicomstore.framing.sources import Source
from dicomstore.framing.walking import MAX_DEPTH, too_deep
from dicomstore.vr import LONG_VRS, PADDED_WITH_SPACE

#: The most bytes of a value read (and written) at a time.
SLICE = 1 << 20
#: The output is written to the file in blocks of about this much.
BLOCK = 256 << 10

#: Elements whose value decides an ambiguous VR (PS3.5 A.1, 8.3).
_PIXEL_REPRESENTATION, _WAVEFORM_BITS = 0x00280103, 0x54001004
_CONTEXT = (_PIXEL_REPRESENTATION, _WAVEFORM_BITS)
#: Private Creators remembered per data set (PS3.5 7.8.1); beyond, their blocks are UN.
MAX_CREATORS = 1024
_PIXEL_DATA = 0x7FE00010
_U32 = {True: struct.Struct("<L").pack, False: struct.Struct(">L").pack}
_ITEM_HEADER = struct.Struct("<HHL").unpack_from


class _Out:
    """The output file through a buffer; a length written earlier can be patched."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.buf, self.flushed = f, bytearray(), 0
        self.origin = f.tell()
        self.silent = 0  # levels open that are left out: nothing is written

    @property
    def pos(self) -> int:
        return self.flushed + len(self.buf)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.silent:
            return
        if len(data) >= BLOCK:  # (a slice, a frame: not copied into the buffer)
            self.flush()
            self.f.write(data)
            self.flushed += len(data)
            return
        self.buf += data
        if len(self.buf) >= BLOCK:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            self.f.write(self.buf)
            self.flushed += len(self.buf)
            self.buf.clear()

    def patch(self, at: int, data: bytes) -> None:
        if self.silent:
            return
        if at >= self.flushed:
            self.buf[at - self.flushed : at - self.flushed + len(data)] = data
            return
        self.flush()
        self.f.seek(self.origin + at)
        self.f.write(data)
        self.f.seek(self.origin + self.flushed)


class _Level:
    """A data set (the top level or an item's) or a sequence being re-encoded."""

    __slots__ = (
        "content_at",
        "context",
        "creators",
        "dst",
        "end",
        "muted",
        "offset",
        "outer",
        "seq",
        "src",
        "tag",
    )

    def __init__(
        self, seq: bool, src: Encoding, dst: Encoding, tag: int, offset: int, end: int | None
    ) -> None:
        self.seq, self.src, self.dst, self.end = seq, src, dst, end
        self.tag, self.offset = tag, offset
        self.content_at = 0  # where its content starts in the output
        self.muted = False  # left out (``Edits.replace``), with all it holds
        self.context: dict[int, int] = {}  # Pixel Representation, Bits Allocated ...
        self.creators: dict[tuple[int, int], str] = {}  # (group, block) -> Private Creator
        self.outer: _Level | None = None  # the data set around this one

    def lookup(self, tag: int) -> int | None:
        """The value of ``tag`` in this data set or the nearest one around it."""
        level: _Level | None = self
        while level is not None:
            if tag in level.context:
                return level.context[tag]
            level = level.outer
        return None


@dataclass
class Edits:
    """Changes to the top level of a data set being re-encoded (a decompression's).

    ``replace``: elements by tag, each written (VR, value already encoded in the
    target's byte order) in place of the one there or inserted in tag order; None
    leaves the element out, with all it holds. ``pixels``: called for an encapsulated
    Pixel Data at the top level, which is left out: the native one to write instead,
    as (VR, value length, the value's chunks in the target's byte order).
    """

    replace: dict[int, tuple[bytes, bytes] | None] = field(default_factory=dict)
    pixels: Callable[[], tuple[bytes, int, Iterable[bytes | memoryview]]] | None = None
    #: The VR a top-level element read from Implicit VR is written with, instead of the
    #: dictionary's choice of an ambiguous one (Pixel Data OB, not OW: PS3.5 A.2 lets
    #: 8-bit Pixel Data be either in Explicit VR; ``equivalence.py``).
    vrs: dict[int, bytes] = field(default_factory=dict)


def reencode(
    src: Source,
    start: int,
    source: Encoding,
    target: Encoding,
    out: BinaryIO,
    edits: Edits | None = None,
) -> int:
    """Write the data set of ``src`` from ``start`` to its end, encoded in ``source``,
    to ``out`` encoded in ``target``, with ``edits`` made; return the bytes written.
    Raises :class:`FramingError` (see the module docstring)."""
    w = _Out(out)
    stack = [_Level(False, source, target, 0, start, None)]
    pending = sorted(edits.replace) if edits is not None else []
    pos = start
    while True:
        level = stack[-1]
        if level.end is not None and pos >= level.end:
            if pos > level.end:
                raise FramingError(
                    f"{_what(level)} from offset {level.offset} ends at offset {level.end},"
                    f" inside an element that runs to offset {pos}",
                    level.tag,
                    level.offset,
                )
            w.patch(_length_at(level), _U32[level.dst[1]](w.pos - level.content_at))
            _close(w, stack)
            continue
        head = src.read(pos, 12)
        if not head:
            if len(stack) > 1:
                raise Truncated(
                    f"the data set ends at offset {pos} inside {_what(level)} from offset"
                    f" {level.offset}",
                    level.tag,
                    level.offset,
                    8,
                )
            if edits is not None:
                _insert(w, edits, pending, 0xFFFFFFFF, target)
            w.flush()
            return w.pos
        implicit, little = level.src
        parsed = element_header(head, 0, implicit, little)
        if parsed is None:
            raise Truncated(
                f"the data set ends inside an element header at offset {pos}", None, pos, 8
            )
        tag, raw_vr, length, skip = parsed
        value = pos + skip
        if length == UNKNOWN_VR:
            raise FramingError(
                f"{tag_name(tag)} at offset {pos} has a VR that is no VR: {raw_vr!r}", tag, pos
            )
        if level.seq:
            pos = _in_sequence(w, stack, level, tag, length, pos, value)
            continue
        if tag >> 16 == 0xFFFE:
            if tag == ITEM_DELIMITER and value == level.end and len(stack) > 1:
                pos = value  # (where a defined-length item ends: its length ends it)
                continue
            if tag != ITEM_DELIMITER or level.end is not None or len(stack) == 1:
                raise FramingError(
                    f"{tag_name(tag)} where an element goes, at offset {pos}", tag, pos
                )
            w.write(encode_header(ITEM_DELIMITER, None, 0, level.dst[1]))
            _close(w, stack)
            pos = value
            continue
        if edits is not None and len(stack) == 1:
            edited = _edit(src, w, stack, edits, pending, tag, raw_vr, length, pos, value)
            if edited is not None:
                pos = edited
                continue
            if raw_vr is None:
                raw_vr = edits.vrs.get(tag)
        pos = _element(src, w, stack, level, tag, raw_vr, length, pos, value)


def _close(w: _Out, stack: list[_Level]) -> None:
    """The innermost sequence or item is complete."""
    if stack.pop().muted:
        w.silent -= 1


def _edit(
    src: Source,
    w: _Out,
    stack: list[_Level],
    edits: Edits,
    pending: list[int],
    tag: int,
    raw_vr: bytes | None,
    length: int,
    pos: int,
    value: int,
) -> int | None:
    """The top-level element ``tag`` as ``edits`` have it, what they insert before it:
    where to go on; None when it is as it is."""
    little = stack[0].dst[1]
    _insert(w, edits, pending, tag, stack[0].dst)
    if tag == _PIXEL_DATA and length == UNDEFINED and edits.pixels is not None:
        vr, size, chunks = edits.pixels()
        w.write(encode_header(tag, None if stack[0].dst[0] else vr, size, little))
        for chunk in chunks:
            w.write(chunk)
        return _past_fragments(src, value)
    if tag not in edits.replace:
        return None
    new = edits.replace[tag]
    if pending and pending[0] == tag:
        pending.pop(0)
    elif new is not None and tag not in pending:
        new = None  # (written already: this one is out of tag order or a repeat, review44)
    if new is not None:
        w.write(encode_header(tag, None if stack[0].dst[0] else new[0], len(new[1]), little))
        w.write(new[1])
    if length != UNDEFINED:
        return _past(src, tag, pos, value, length)
    w.silent += 1  # (an undefined length: walked to its end, and left out)
    _element(src, w, stack, stack[0], tag, raw_vr, length, pos, value)
    stack[-1].muted = True
    return value


def _insert(w: _Out, edits: Edits, pending: list[int], before: int, target: Encoding) -> None:
    """Write the elements ``edits`` insert before tag ``before``."""
    while pending and pending[0] < before:
        tag = pending.pop(0)
        new = edits.replace[tag]
        if new is not None:
            w.write(encode_header(tag, None if target[0] else new[0], len(new[1]), target[1]))
            w.write(new[1])


def _past_fragments(src: Source, pos: int) -> int:
    """Where encapsulated Pixel Data whose items start at ``pos`` ends (PS3.5 A.4)."""
    ((end, _delimiter),) = deque(fragments(src, pos), maxlen=1)  # (the last: its end)
    return end


def fragments(src: Source, pos: int) -> Iterator[tuple[int, int]]:
    """(where its value starts, its length) of each item of encapsulated Pixel Data whose
    items start at ``pos`` (PS3.5 A.4: the Basic Offset Table first), then, for its
    Sequence Delimitation Item, (where the Pixel Data ends, -1). Raises
    :class:`Truncated`, or :class:`FramingError` for what is no item."""
    while True:
        head = src.read(pos, 8)
        if len(head) < 8:
            where = f"the data set ends inside encapsulated Pixel Data, at offset {pos}"
            raise Truncated(where, _PIXEL_DATA, pos, 8 - len(head))
        group, element, length = _ITEM_HEADER(head)
        tag = group << 16 | element
        if tag == SEQUENCE_DELIMITER:
            yield pos + 8, -1
            return
        if tag != ITEM or length == UNDEFINED:
            raise FramingError(
                f"{tag_name(tag)} where a fragment of Pixel Data goes, at offset {pos}", tag, pos
            )
        yield pos + 8, length
        pos = _past(src, tag, pos, pos + 8, length)


def _in_sequence(
    w: _Out, stack: list[_Level], seq: _Level, tag: int, length: int, pos: int, value: int
) -> int:
    """An item of ``seq`` opened, or ``seq`` closed by its delimiter: where to go on."""
    little = seq.dst[1]
    if tag == SEQUENCE_DELIMITER and seq.end is None:
        w.write(encode_header(SEQUENCE_DELIMITER, None, 0, little))
        _close(w, stack)
        return value
    if tag == SEQUENCE_DELIMITER and value == seq.end:
        return value  # (where a defined-length sequence ends: its length ends it)
    if tag != ITEM:
        raise FramingError(
            f"{tag_name(tag)} where an item of {tag_name(seq.tag)} goes, at offset {pos}", tag, pos
        )
    item = _open(stack, False, seq.src, seq.dst, seq.tag, pos, value, length, seq.end)
    item.outer = next(lv for lv in reversed(stack[:-1]) if not lv.seq)
    w.write(encode_header(ITEM, None, UNDEFINED if item.end is None else 0, little))
    item.content_at = w.pos
    return value


def _open(
    stack: list[_Level],
    seq: bool,
    src: Encoding,
    dst: Encoding,
    tag: int,
    pos: int,
    value: int,
    length: int,
    bound: int | None,
) -> _Level:
    """Push a sequence or item whose value starts at ``value``, inside one ending at ``bound``."""
    end = None if length == UNDEFINED else value + length
    if end is not None and bound is not None and end > bound:
        raise FramingError(
            f"{tag_name(tag)} at offset {pos} runs {end - bound} bytes past the end of the"
            " sequence or item that holds it",
            tag,
            pos,
        )
    level = _Level(seq, src, dst, tag, pos, end)
    stack.append(level)
    # (the data set, then sequences and their items alternate: a sequence is number n
    # at 2n; walking.MAX_DEPTH, the one limit, counts sequences, PS3.5 7.5)
    if seq and len(stack) > 2 * MAX_DEPTH:
        raise too_deep(tag, pos)
    return level


def _element(
    src: Source,
    w: _Out,
    stack: list[_Level],
    level: _Level,
    tag: int,
    raw_vr: bytes | None,
    length: int,
    pos: int,
    value: int,
) -> int:
    """One element of the data set ``level`` re-encoded: where the next one starts."""
    (implicit, little), (to_implicit, to_little) = level.src, level.dst
    group = tag >> 16
    creator = level.creators.get((group, tag >> 8 & 0xFF)) if group % 2 else None
    context = level.lookup(_PIXEL_REPRESENTATION), level.lookup(_WAVEFORM_BITS)
    size_or_none = None if length == UNDEFINED else length
    vr = written_vr(tag, raw_vr, size_or_none, creator, context, little and to_little)
    if length != UNDEFINED:
        end = _past(src, tag, pos, value, length)
        dropped = (group in (0x0000, 0x0002) and len(stack) == 1) or (
            tag & 0xFFFF == 0 and implicit != to_implicit
        )
        if dropped:
            return end
        if tag in _CONTEXT and length == 2:
            level.context[tag] = U16[little](_value(src, tag, value, 2))[0]
        elif group % 2 and 0x10 <= tag & 0xFFFF <= 0xFF and length <= 64:  # noqa: SIM102
            if len(level.creators) < MAX_CREATORS:  # (bounded, whatever the data set)
                text = _value(src, tag, value, length).decode("ascii", "replace")
                level.creators[(group, tag & 0xFF)] = text.strip(" \0")
    if vr == "SQ" or length == UNDEFINED:
        if vr not in ("SQ", "UN"):
            raise FramingError(
                f"{tag_name(tag)} at offset {pos} has an undefined length, which a {vr}"
                " cannot have in a native transfer syntax (encapsulated Pixel Data?)",
                tag,
                pos,
            )
        # a UN of undefined length holds an Implicit VR Little Endian sequence (PS3.5 6.2.2)
        inner = (level.src, level.dst) if vr == "SQ" else ((True, True), (True, True))
        seq = _open(stack, True, *inner, tag, pos, value, length, level.end)
        out_vr = None if to_implicit else vr.encode("ascii")
        w.write(encode_header(tag, out_vr, UNDEFINED if seq.end is None else 0, to_little))
        seq.content_at = w.pos
        return value
    if length + length % 2 > 0xFFFF and vr.encode("ascii") not in LONG_VRS:
        vr = "UN"  # too long for its VR's 16-bit length (PS3.5 6.2.2): as it is, unswapped
    size = WIDTH.get(vr, 0) if little != to_little else 0  # (OW: by 16-bit words, PS3.5 6.2)
    if size and length % size:
        raise FramingError(
            f"{tag_name(tag)} at offset {pos}: a {vr} of {length} bytes is no whole number of"
            f" {size}-byte values, which cannot be byte-swapped",
            tag,
            pos,
        )
    pad = length % 2  # (an odd length made even, PS3.5 7.1.1: as DCMTK writes it)
    out_vr = None if to_implicit else vr.encode("ascii")
    w.write(encode_header(tag, out_vr, length + pad, to_little))
    at = value
    while at < end:
        data = _value(src, tag, at, min(SLICE, end - at))
        if size:
            w.write(memoryview(byteswapped(data, size)).cast("B"))
        else:
            w.write(data)
        at += len(data)
    if pad:
        w.write(b" " if vr in PADDED_WITH_SPACE else b"\0")
    return end


def _value(src: Source, tag: int, at: int, size: int) -> bytes:
    """``size`` bytes of a value at ``at``; Truncated when the file has fewer (it was cut
    short since it was measured)."""
    data = src.read(at, size)
    if len(data) < size:
        raise Truncated(
            f"{tag_name(tag)}: the file ends at offset {at + len(data)}, inside its value"
            f" ({size - len(data)} bytes missing: cut short while being read)",
            tag,
            at,
            size - len(data),
        )
    return data


def _past(src: Source, tag: int, pos: int, value: int, length: int) -> int:
    """Where the element left out ends (Truncated when its value is cut short)."""
    have = src.has(value, length)
    if have < length:
        raise value_cut(tag_name(tag), tag, pos, length, have)
    return value + length


def _length_at(level: _Level) -> int:
    """Where the closing ``level``'s defined length goes: the 4 bytes before its content
    (the last of its header in every encoding, PS3.5 7.1.2, 7.5)."""
    return level.content_at - 4


def _what(level: _Level) -> str:
    return f"{'the sequence' if level.seq else 'an item of'} {tag_name(level.tag)}"
