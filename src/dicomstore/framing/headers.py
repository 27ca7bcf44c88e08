"""One element header (PS3.5 7.1): tag, VR, value length, where the value starts.

The byte layouts of the three encodings, in one place: Implicit VR (tag,
32-bit length), Explicit VR with a 16-bit length, and Explicit VR with two
reserved bytes and a 32-bit length (the long VRs of :data:`dicomstore.vr.VRS`).
Items and delimiters (group FFFE) have no VR in any encoding (PS3.5 7.5).
"""

from __future__ import annotations

import array
import struct

from dicomstore import uids
from dicomstore.vr import LONG_VRS, VRS

#: (implicit VR?, little endian?) of a transfer syntax (PS3.5 A.1-A.3).
Encoding = tuple[bool, bool]
#: The uncompressed transfer syntaxes (PS3.5 A.1-A.3): what ``reencoding.reencode``
#: reads and writes.
NATIVE: dict[str, Encoding] = {
    uids.IMPLICIT_VR_LE: (True, True),
    uids.EXPLICIT_VR_LE: (False, True),
    uids.EXPLICIT_VR_BE: (False, False),
}

UNDEFINED = 0xFFFFFFFF
#: Item, Item Delimitation Item and Sequence Delimitation Item (PS3.5 7.5): group
#: FFFE, no VR in any encoding.
ITEM, ITEM_DELIMITER, SEQUENCE_DELIMITER = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
TAG = {True: struct.Struct("<HH").unpack_from, False: struct.Struct(">HH").unpack_from}
U16 = {True: struct.Struct("<H").unpack_from, False: struct.Struct(">H").unpack_from}
U32 = {True: struct.Struct("<L").unpack_from, False: struct.Struct(">L").unpack_from}

#: ``element_header`` for a VR it does not know: the length layout is a guess.
UNKNOWN_VR = -1
#: The array codes of unsigned numbers of 2, 4 and 8 bytes.
_ARRAY_CODE = {2: "H", 4: "I", 8: "Q"}


def byteswapped(data: bytes | bytearray | memoryview, width: int) -> array.array:
    """``data``'s numbers of ``width`` bytes (2, 4 or 8; ``data`` a whole number of them)
    in the other byte order (PS3.5 7.3), a copy."""
    numbers = array.array(_ARRAY_CODE[width])
    numbers.frombytes(data)
    numbers.byteswap()
    return numbers


def element_header(
    buf: bytes | bytearray | memoryview, pos: int, implicit: bool, little: bool
) -> tuple[int, bytes | None, int, int] | None:
    """(tag, VR bytes or None, value length, value offset) of the header at ``pos``.

    ``None`` when ``buf`` ends inside the header. The VR is None when implicit
    and for items and delimiters. An explicit VR not in the table gives the
    length :data:`UNKNOWN_VR` (and the offset after its 8 bytes): the caller decides.
    """
    if pos + 8 > len(buf):
        return None
    group, elem = TAG[little](buf, pos)
    tag = group << 16 | elem
    if implicit or group == 0xFFFE:
        return tag, None, U32[little](buf, pos + 4)[0], pos + 8
    vr = bytes(buf[pos + 4 : pos + 6])
    known = VRS.get(vr)
    if known is None:
        return tag, vr, UNKNOWN_VR, pos + 8
    if not known[1]:
        return tag, vr, U16[little](buf, pos + 6)[0], pos + 8
    if pos + 12 > len(buf):
        return None
    return tag, vr, U32[little](buf, pos + 8)[0], pos + 12


def encode_header(tag: int, vr: bytes | None, length: int, little: bool = True) -> bytes:
    """The header of an element whose value is ``length`` bytes: Implicit VR when
    ``vr`` is None, else Explicit VR, where a value too long for its VR's 16-bit
    length is written as UN (as pydicom does, PS3.5 6.2.2)."""
    order = "<" if little else ">"
    if vr is None:
        return struct.pack(order + "HHL", tag >> 16, tag & 0xFFFF, length)
    if len(vr) != 2:  # (struct would cut it to two letters, with the wrong length's size)
        raise ValueError(f"not a VR: {vr!r}")
    if vr not in LONG_VRS and length > 0xFFFF:
        vr = b"UN"
    if vr in LONG_VRS:
        return struct.pack(order + "HH2sHL", tag >> 16, tag & 0xFFFF, vr, 0, length)
    return struct.pack(order + "HH2sH", tag >> 16, tag & 0xFFFF, vr, length)
