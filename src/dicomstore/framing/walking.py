"""Walking a whole data set's element headers: does it frame, where does it end.

See :mod:`dicomstore.framing` for what is checked and what is raised.
:func:`walk_element` walks one element, into its sequences of defined length too
(PS3.5 7.5), to see that they nest no deeper than :data:`MAX_DEPTH`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from dicomstore.framing.errors import (
    FramingError,
    ReadersDisagree,
    TooDeep,
    Truncated,
    tag_name,
    value_cut,
)
from dicomstore.framing.headers import ITEM as _ITEM
from dicomstore.framing.headers import ITEM_DELIMITER as _ITEM_DELIMITER
from dicomstore.framing.headers import SEQUENCE_DELIMITER as _SEQUENCE_DELIMITER
from dicomstore.framing.headers import TAG as _TAG
from dicomstore.framing.headers import U16 as _U16
from dicomstore.framing.headers import U32 as _U32
from dicomstore.framing.headers import UNDEFINED as _UNDEFINED
from dicomstore.framing.implicit_vr import implicit_vr
from dicomstore.framing.sources import FileSource, Source
from dicomstore.vr import VRS, dictionary_sq

#: The one limit on nesting: sequences (PS3.5 7.5) nested deeper than this, of
#: either length, are :class:`TooDeep` for the walks and the re-encoding (memory
#: stays bounded whatever the input), and the archive refuses them when received.
MAX_DEPTH = 1000
#: A sequence value (or undefined-length sequence) shorter than this cannot nest
#: :data:`MAX_DEPTH` deep: every level takes an item header (8 bytes) and a sequence
#: header (8 bytes in Implicit VR, 12 in Explicit VR), PS3.5 7.5.
DEEP_SIZE = 16 * MAX_DEPTH


def too_deep(tag: int | None, pos: int) -> TooDeep:
    """The :class:`TooDeep` of the sequence ``tag`` opened at ``pos``."""
    return TooDeep(f"sequences nested deeper than {MAX_DEPTH} (PS3.5 7.5)", tag, pos)


_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})


@dataclass(frozen=True, slots=True)
class Walked:
    """A data set that framed: where it ended and its last top-level element."""

    end: int  #: position after the last element
    last_tag: int | None  #: tag of the last top-level element (None: no element)
    last_offset: int  #: where the header of that element starts


#: The levels of nesting a message names, innermost first (then how many more).
_NAMED_LEVELS = 8


def _label(stack: list[_Open], depth: int) -> str:
    """What ``stack[:depth]`` is, for a message: ``item 2 of (0008,1115) ...``; the
    innermost :data:`_NAMED_LEVELS` levels (sequences and items each count) and the
    top-level element (a loop: hundreds of levels recursed past Python's limit, review70
    F3)."""
    text, d, named = "", depth, 0
    while d > 0:
        if named == _NAMED_LEVELS and d > 1:  # (and the top-level one, to look up)
            more = d - 1
            return f"{text}... {more} more level{'s' * (more > 1)} ... {tag_name(stack[0].tag)}"
        here = stack[d - 1]
        if not here.in_item:  # a sequence, or encapsulated Pixel Data
            text += tag_name(here.tag) + (" in " if d > 1 else "")
        else:  # an item (a fragment in Pixel Data): of the sequence below it
            seq = stack[d - 2]
            if seq.tag in _PIXEL_TAGS and d == 2:  # PS3.5 A.4
                n = seq.count - 1
                text += f"{f'fragment {n}' if n else 'Basic Offset Table'} of "
            else:
                text += f"item {seq.count} of "
        d -= 1
        named += 1
    return text


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
        raise ReadersDisagree(
            f"{_element_label(stack, tag)} at offset {pos} has a VR not in PS3.5 6.2:"
            f" {bytes(head[4:6])!r} (readers disagree on its length)",
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
    """A value being walked: a sequence (items follow) or an item; ``end`` where a
    defined-length one ends (None: at its delimiter)."""

    __slots__ = ("count", "end", "implicit", "in_item", "little", "offset", "tag")

    def __init__(
        self, in_item: bool, implicit: bool, little: bool, tag: int, offset: int, end: int | None
    ) -> None:
        self.in_item, self.implicit, self.little = in_item, implicit, little
        self.tag, self.offset, self.end = tag, offset, end
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
    return _walk(src, start, implicit, little, False)


def walk_element(
    src: Source, start: int, implicit: bool, little: bool, strict: bool = False
) -> int:
    """Where the one element whose header starts at ``start`` ends, having walked its
    sequences of either length (PS3.5 7.5) and their items, nested ones too. With
    ``strict``, an undefined length where PS3.5 7.1 allows none raises
    :class:`ReadersDisagree` (as an unknown VR always does).

    A sequence of defined length is one with VR SQ (Explicit VR); in Implicit VR one
    whose value starts with an item and is a sequence for the data dictionary or
    private (as pydicom reads it). Raises :class:`TooDeep` beyond :data:`MAX_DEPTH`
    nested sequences, else as :func:`walk`."""
    return _walk(src, start, implicit, little, True, strict).end


def _may_be_undefined(tag: int, vr: str | None) -> bool:
    """Whether element ``tag`` (``vr``: None in Implicit VR) may have an undefined length
    (PS3.5 7.1.2, 7.1.3): a sequence (in Implicit VR one for the dictionary, or a
    private or unknown element: read as one, PS3.5 6.2.2), UN, or the Pixel Data."""
    if tag in _PIXEL_TAGS:
        return True
    if vr is not None:
        return vr in ("SQ", "UN")
    return dictionary_sq(tag) is not False  # (from the dictionary's file: no pydicom)


def _is_sequence(src: Source, tag: int, vr: str | None, value: int, length: int) -> bool:
    """Whether the defined-length element ``tag`` holds items (:func:`walk_element`)."""
    if vr is not None:
        return vr == "SQ"
    if length < 8 or src.read(value, 4) != b"\xfe\xff\x00\xe0":
        return False
    return tag >> 16 & 1 == 1 or implicit_vr(tag, None, None, None) == "SQ"


def _walk(
    src: Source, start: int, implicit: bool, little: bool, nested: bool, strict: bool = False
) -> Walked:
    """:func:`walk`, or with ``nested`` :func:`walk_element`."""
    stack: list[_Open] = []
    pos, last_tag, last_offset = start, None, start
    fast = src if isinstance(src, FileSource) and little and not nested else None
    while True:
        bound = stack[-1].end if stack else None
        if bound is not None and pos >= bound:  # a defined-length one walked to its end
            if pos > bound:
                raise FramingError(
                    f"{_label(stack, len(stack))} from offset {stack[-1].offset} ends at"
                    f" offset {bound}, inside an element that runs to offset {pos}",
                    stack[-1].tag,
                    stack[-1].offset,
                )
            stack.pop()
            continue
        if not stack:  # the next top-level element, or the end
            if nested and pos != start:
                return Walked(pos, last_tag, last_offset)
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
                    _delimiter_at_end(stack, tag, pos, value)
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
                    _delimiter_at_end(stack, tag, pos, value)
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
                    stack.append(_Open(True, top.implicit, top.little, tag, pos, None))
                    pos = value
                    continue
                if nested and not (len(stack) == 1 and top.tag in _PIXEL_TAGS):
                    _check_value(src, stack, tag, pos, value, length)
                    stack.append(_Open(True, top.implicit, top.little, tag, pos, value + length))
                    pos = value
                    continue
            enc = (top.implicit, top.little)
        if strict and length == _UNDEFINED and not _may_be_undefined(tag, vr):
            raise ReadersDisagree(
                f"{_element_label(stack, tag)} at offset {pos} is {vr or 'an element'} of"
                " undefined length, which only SQ, UN and the Pixel Data may have"
                " (PS3.5 7.1; readers disagree on where it ends)",
                tag,
                pos,
            )
        if length == _UNDEFINED or (nested and _is_sequence(src, tag, vr, value, length)):
            if vr == "UN":  # PS3.5 6.2.2: its value stays Implicit VR Little Endian
                enc = (True, True)
            end = None
            if length != _UNDEFINED:
                _check_value(src, stack, tag, pos, value, length)
                end = value + length
            stack.append(_Open(False, *enc, tag, pos, end))
            # (sequences and their items alternate on the stack: this is sequence n)
            if len(stack) > 2 * MAX_DEPTH - 1:
                raise too_deep(tag, pos)
            pos = value
            continue
        have = src.has(value, length)
        if have < length:
            raise value_cut(_element_label(stack, tag), tag, pos, length, have)
        pos = value + length


def _delimiter_at_end(stack: list[_Open], tag: int, pos: int, value: int) -> None:
    """A delimiter ends a container of undefined length (PS3.5 7.5); in one of defined
    length only where that ends (tolerated), else :class:`FramingError` (a reader that
    followed the length would read on past it: review70 F2)."""
    end = stack[-1].end
    if end is not None and value != end:
        raise FramingError(
            f"a delimiter {tag_name(tag)} at offset {pos}, before offset {end} where"
            f" {_label(stack, len(stack))} of defined length ends",
            tag,
            pos,
        )


def _check_value(
    src: Source, stack: list[_Open], tag: int, pos: int, value: int, length: int
) -> None:
    """Truncated when the value of ``length`` bytes at ``value`` runs past the end."""
    have = src.has(value, length)
    if have < length:
        raise value_cut(_element_label(stack, tag), tag, pos, length, have)
