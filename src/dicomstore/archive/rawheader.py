"""The elements of a stored data set read straight from its bytes (PS3.5 7.1, 7.5).

:func:`parse` walks a buffer (a memory map of the file, or the inflated data set)
once and gives each element as ``(tag, vr, start, length, items)``: ``vr`` as
written (Explicit VR) or ``None`` (Implicit VR), where the value lies in the buffer,
and for a sequence its items, each a list of such elements. Values are never
copied here. Anything this walker does not read exactly as pydicom does (a VR that
is not one of PS3.5 Table 6.2-1, an undefined length on something other than a
sequence, a value running past the end, a stray delimiter) raises :class:`Unsure`,
and the caller reads the instance with pydicom instead.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from dicomstore.archive.dicomfile import PIXEL_TAGS
from dicomstore.framing.headers import ITEM, UNDEFINED
from dicomstore.framing.headers import ITEM_DELIMITER as ITEM_END
from dicomstore.framing.headers import SEQUENCE_DELIMITER as SEQ_END
from dicomstore.vr import LONG_VRS, SHORT_VRS

#: ``(tag, vr or None, value start, value length, items or None)``
Element = tuple[int, str | None, int, int, list[list["Element"]] | None]

_CHARSET = 0x00080005  # Specific Character Set: pydicom decodes it as it reads
_VRS = {vr: vr.decode("ascii") for vr in LONG_VRS | SHORT_VRS}
_LONG = frozenset(vr.decode("ascii") for vr in LONG_VRS)
_TAG = {True: struct.Struct("<HHL"), False: struct.Struct(">HHL")}
_EXPLICIT = {True: struct.Struct("<HH2sH"), False: struct.Struct(">HH2sH")}
_LENGTH = {True: struct.Struct("<L"), False: struct.Struct(">L")}


class Unsure(Exception):
    """The bytes hold something read only by pydicom's rules (a fallback is due)."""


class TooDeep(Unsure):
    """Sequences nested deeper than the walker's limit."""


class Walker:
    """Parses one buffer in one encoding; ``is_sequence(tag)`` gives whether an
    Implicit VR element is a sequence (from the dictionary): ``None`` for a tag it
    does not know, which is then a sequence if its value is of undefined length and
    starts with an item (as pydicom reads it). Sequences nested more than
    ``max_depth`` levels are :class:`TooDeep` (pydicom reads them lazily)."""

    def __init__(
        self,
        buf: bytes | bytearray,
        implicit: bool,
        little: bool,
        is_sequence: Callable[[int], bool | None],
        max_depth: int,
    ) -> None:
        self.buf = buf
        self.depth, self.max_depth = 0, max_depth
        self.implicit = implicit
        self.tag = _TAG[little].unpack_from
        self.explicit = _EXPLICIT[little].unpack_from
        self.length = _LENGTH[little].unpack_from
        self.is_sequence = is_sequence

    def dataset(
        self, pos: int, end: int, *, top: bool = False, in_item: bool = False
    ) -> tuple[list[Element], int]:
        """The elements from ``pos`` to ``end`` (top level: up to the Pixel Data;
        an item of undefined length: up to its delimiter), and where reading stopped."""
        buf = self.buf
        out: list[Element] = []
        implicit, explicit, unpack_tag, long_length = (
            self.implicit,
            self.explicit,
            self.tag,
            self.length,
        )
        while pos < end:
            if pos + 8 > end:
                raise Unsure("truncated element header")
            if implicit:
                group, elem, length = unpack_tag(buf, pos)
                tag, vr, start = group << 16 | elem, None, pos + 8
            else:
                group, elem, code, length = explicit(buf, pos)
                tag = group << 16 | elem
                if group == 0xFFFE:  # item tags have no VR
                    (length,), vr, start = long_length(buf, pos + 4), None, pos + 8
                else:
                    vr = _VRS.get(code)
                    if vr is None:
                        raise Unsure(f"VR {code!r}")
                    if vr in _LONG:
                        if pos + 12 > end:
                            raise Unsure("truncated element header")
                        (length,), start = long_length(buf, pos + 8), pos + 12
                    else:
                        start = pos + 8
            if top and tag in PIXEL_TAGS:
                return out, pos
            if tag == ITEM_END and in_item:
                if length:
                    raise Unsure("item delimiter with a length")  # (the framing check's)
                return out, start
            if group == 0xFFFE:
                raise Unsure(f"delimiter {tag:08X} in a data set")
            if tag == _CHARSET and (length == UNDEFINED or vr == "SQ"):
                raise Unsure("a Specific Character Set that is a sequence")  # (pydicom fails)
            if length == UNDEFINED:
                if vr == "SQ" or (vr is None and self.undefined_is_sequence(tag, start)):
                    items, pos = self.sequence(start, None)
                    out.append((tag, vr, start, UNDEFINED, items))
                    continue
                raise Unsure(f"undefined length of {tag:08X}")
            pos = start + length
            if pos > end:
                raise Unsure(f"value of {tag:08X} past the end")
            if vr == "SQ" or (vr is None and length and self.is_sequence(tag)):
                items, _ = self.sequence(start, pos)
                out.append((tag, vr, start, length, items))
            else:
                out.append((tag, vr, start, length, None))
        if in_item:
            raise Unsure("item without its delimiter")
        return out, pos

    def undefined_is_sequence(self, tag: int, start: int) -> bool:
        """An Implicit VR element of undefined length is a sequence (else pydicom reads
        it up to a Sequence Delimitation Item: :class:`Unsure`)."""
        known = self.is_sequence(tag)
        if known is not None:
            return known
        if start + 8 > len(self.buf):
            raise Unsure("truncated item")
        group, elem, _ = self.tag(self.buf, start)
        return bool(group << 16 | elem == ITEM)

    def sequence(self, pos: int, end: int | None) -> tuple[list[list[Element]], int]:
        """The items of a sequence from ``pos`` to ``end`` (None: to its delimiter)."""
        self.depth += 1
        if self.depth > self.max_depth:
            raise TooDeep("sequences nested deeper than the limit")
        try:
            return self._items(pos, end)
        finally:
            self.depth -= 1

    def _items(self, pos: int, end: int | None) -> tuple[list[list[Element]], int]:
        buf = self.buf
        items: list[list[Element]] = []
        limit = len(buf) if end is None else end
        while pos < limit:
            if pos + 8 > limit:
                raise Unsure("truncated item")
            group, elem, length = self.tag(buf, pos)
            tag = group << 16 | elem
            if tag == SEQ_END and end is None:
                if length:
                    raise Unsure("sequence delimiter with a length")  # (the framing check's)
                return items, pos + 8
            if tag != ITEM:
                raise Unsure(f"{tag:08X} in a sequence")
            if length == UNDEFINED:
                item, pos = self.dataset(pos + 8, limit, in_item=True)
            else:
                if pos + 8 + length > limit:
                    raise Unsure("item past the end of its sequence")
                item, pos = self.dataset(pos + 8, pos + 8 + length)
            items.append(item)
        if end is None:
            raise Unsure("sequence without its delimiter")
        return items, pos
