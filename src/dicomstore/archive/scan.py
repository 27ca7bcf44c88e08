"""The header of a received data set, read from the bytes still in memory (fast path).

:class:`~dicomstore.archive.ingest.Ingest` keeps the first :data:`PREFIX_SIZE`
bytes of each data set as they pass through ``write``. :func:`scan_header`
walks the top-level elements of those bytes — header after header, each
starting where the previous value ended (PS3.5 7.1) — up to the Pixel Data,
and keeps the raw values of the elements the index needs
(:data:`~dicomstore.archive.fields.WANTED`), which
:func:`~dicomstore.archive.fields.fields_of_elements` turns into index
columns; an undefined-length sequence is skipped by walking its items when it
frames cleanly, else with pydicom's own ``read_sequence``.

It is a shortcut, never a judge: it returns a result only for a data set
that :func:`~dicomstore.archive.dicomfile.read_header` (pydicom, reading the
file) accepts too, and the same elements; for anything else — a framing
error, a forbidden group, tags out of order, a VR it does not know, a
Specific Character Set pydicom would warn about, a big-endian or deflated
encoding, or a header longer than the prefix — it returns ``None`` and the
caller reads the file with pydicom, which decides (C000 and its comment).
"""

from __future__ import annotations

import io
import struct

from dicomstore.archive.dicomfile import (
    _DELIMITERS,
    FORBIDDEN_GROUPS,
    PIXEL_TAGS,
    HeaderError,
    check_pixel_header,
)
from dicomstore.archive.fields import SPECIFIC_CHARACTER_SET, WANTED
from dicomstore.archive.rawheader import TooDeep, Unsure, Walker
from dicomstore.framing import DEEP_SIZE
from dicomstore.vr import VRS, dictionary_sq

#: Data set bytes an Ingest keeps in memory for this scan.
PREFIX_SIZE = 64 * 1024
#: Sequences open at once beyond which the scan leaves the data set to pydicom.
MAX_DEPTH = 64

#: A wanted element found by the scan: (VR or None when implicit, value bytes, value offset).
Element = tuple[str | None, bytes, int]

_EXPLICIT = struct.Struct("<HH2sH").unpack_from
_IMPLICIT = struct.Struct("<HHL").unpack_from
_U32 = struct.Struct("<L").unpack_from
_ITEM = b"\xfe\xff\x00\xe0"
_UNDEFINED = 0xFFFFFFFF
_FIRST_PIXEL_TAG = min(PIXEL_TAGS)
#: Specific Character Set values pydicom maps without a warning (one term: the keys
#: of ``pydicom.charset.python_encoding``, PS3.3 C.12.1.1.2; a test compares).
CHARSETS = frozenset(
    term.encode()
    for term in (
        "",
        "GB18030",
        "GBK",
        "ISO 2022 58",
        "ISO 2022 GBK",
        *(f"ISO 2022 IR {n}" for n in (6, 13, 58, 87, 100, 101, 109, 110, 126, 127)),
        *(f"ISO 2022 IR {n}" for n in (138, 144, 148, 149, 159, 166)),
        *(f"ISO_IR {n}" for n in (6, 13, 100, 101, 109, 110, 126, 127, 138, 144, 148)),
        "ISO_IR 166",
        "ISO_IR 192",
    )
)
assert {0x0000, 0x0002, 0xFFFE, 0xFFFF} == FORBIDDEN_GROUPS  # tested as ranges below


def scan_header(
    buf: bytes | bytearray, size: int, implicit: bool, deep: list[int] | None = None
) -> dict[int, Element] | None:
    """The wanted top-level elements of a little-endian data set of ``size`` bytes
    whose first ``len(buf)`` bytes are ``buf``; ``None``: read the file instead.

    ``deep`` gets where the header of each top-level element starts that
    ``nesting.py`` walks: one that may hold sequences nested deeper than
    ``framing.MAX_DEPTH`` (a value of ``framing.DEEP_SIZE`` bytes or more), every one
    of undefined length (its end is the walk's to judge), and the Pixel Data when it
    is encapsulated or anything follows it.

    The hot loop of every C-STORE: module globals it reads per element are bound
    to locals first (a local is an array slot, a global a dictionary lookup)."""
    if size == 0:
        return None  # "the data set is empty": read_header says so
    have = len(buf)
    if implicit and have >= 6 and 0x40 < buf[4] < 0x5B and 0x40 < buf[5] < 0x5B:
        return None  # a first length that reads as a VR: pydicom switches to explicit VR
    wanted, vrs, u32 = WANTED, VRS, _U32
    header = _IMPLICIT if implicit else _EXPLICIT
    first_pixel, undefined, charset = _FIRST_PIXEL_TAG, _UNDEFINED, SPECIFIC_CHARACTER_SET
    deep_size, big = DEEP_SIZE, [] if deep is None else deep
    found: dict[int, Element] = {}
    pos = 0
    last = 0x0002FFFF  # groups 0000-0002 are not allowed (nor FFFE/FFFF, below)
    vr: str | None = None
    while pos < size:
        if pos + 8 > have:
            return None  # truncated, or beyond the prefix
        if implicit:
            group, elem, length = header(buf, pos)
            value = pos + 8
        else:  # (inlined, as framing.element_header reads it: a call per element would
            # cost 1.5% of a small instance)
            group, elem, vr_bytes, length = header(buf, pos)
            known = vrs.get(vr_bytes)
            if known is None:
                return None  # a VR pydicom reads by guessing
            vr, long = known
            if long:
                if pos + 12 > have:
                    return None
                (length,) = u32(buf, pos + 8)
                value = pos + 12
            else:
                value = pos + 8
        tag = group << 16 | elem
        if tag <= last or group >= 0xFFFE:
            return None  # out of order or duplicated (pydicom keeps one), or forbidden
        if tag >= first_pixel and tag in PIXEL_TAGS:
            if not _pixel_header_ok(buf, pos, size, implicit):
                return None
            if length == undefined or value + length != size:
                big.append(pos)  # (what follows it, or its fragments: nesting.py)
            return found
        last = tag
        if length == undefined:
            if tag in wanted:
                return None
            end = _skip_sequence(buf, size, tag, vr, value, implicit)
            if end is None:
                return None
            big.append(pos)  # (walked strictly too: nesting.py; review82 F5)
            pos = end
            continue
        if length >= deep_size:
            big.append(pos)
        pos = value + length
        if tag in wanted:
            if pos > have or pos > size:
                return None
            raw = bytes(buf[value:pos])
            if tag == charset and raw.rstrip(b" \0") not in CHARSETS:
                return None
            found[tag] = (vr, raw, value)
    return found if pos == size else None  # else: the last value runs past the end


def _pixel_header_ok(buf: bytes | bytearray, pos: int, size: int, implicit: bool) -> bool:
    if len(buf) < min(pos + 16, size):
        return False
    try:
        check_pixel_header(bytes(buf[pos : pos + 16]), pos, size, implicit, True)
    except HeaderError:
        return False
    return True


def _skip_sequence(
    buf: bytes | bytearray, size: int, tag: int, vr: str | None, value: int, implicit: bool
) -> int | None:
    """Where the undefined-length sequence whose value starts at ``value`` ends (after
    its Sequence Delimitation Item), read as pydicom's reader would; ``None``: unsure.

    A sequence that frames cleanly is walked here (``rawheader.Walker``, the walker
    of the WADO-RS metadata; in implicit VR an element is a sequence when pydicom's
    data dictionary says SQ, or it does not know the tag and the value starts with
    an item: ``Walker.undefined_is_sequence`` with ``vr.dictionary_sq``); any other
    (a UN sequence, anything the walker is unsure of) is read with pydicom's
    ``read_sequence``, but for sequences nested deeper than :data:`MAX_DEPTH`
    (which nest deeper there than pydicom's ``read_header`` of the file can)."""
    walker = _walker(buf, implicit)
    if implicit:
        try:
            if not walker.undefined_is_sequence(tag, value):
                return None  # pydicom reads it up to a delimiter: not a sequence
        except Unsure:
            return None  # (no room for an item: pydicom reading the file decides)
    elif vr == "UN":  # a sequence if pydicom's settings say so (PS3.5 6.2.2)
        return _skip_with_pydicom(buf, size, tag, vr, value, implicit)
    elif vr != "SQ":
        return None  # pydicom reads it up to a delimiter: not a sequence
    try:
        return walker.sequence(value, None)[1]
    except TooDeep:
        return None
    except Unsure:
        return _skip_with_pydicom(buf, size, tag, vr, value, implicit)


def walk_sequence(buf: bytes | bytearray, value: int, implicit: bool) -> int:
    """Where the little endian sequence of undefined length whose items start at
    ``value`` in ``buf`` ends (``rawheader.Unsure``: not exactly as pydicom reads it)."""
    return _walker(buf, implicit).sequence(value, None)[1]


def _walker(buf: bytes | bytearray, implicit: bool) -> Walker:
    """The walker of a received little endian header (pydicom's dictionary rules)."""
    return Walker(buf, implicit, True, dictionary_sq, MAX_DEPTH)


def _skip_with_pydicom(
    buf: bytes | bytearray, size: int, tag: int, vr: str | None, value: int, implicit: bool
) -> int | None:
    """:func:`_skip_sequence` by pydicom's ``read_sequence`` (pydicom loads for it)."""
    from pydicom import config
    from pydicom.datadict import dictionary_VR
    from pydicom.filereader import read_sequence

    if implicit:
        try:
            vr = dictionary_VR(tag)
        except KeyError:  # private: pydicom looks for an item
            vr = "SQ" if buf[value : value + 4] == _ITEM else None
    elif vr == "UN" and config.settings.infer_sq_for_un_vr:
        vr = "SQ"
    if vr != "SQ":
        return None
    stream = io.BytesIO(buf)  # (a copy of a bytearray: rare enough)
    stream.seek(value)
    try:
        read_sequence(stream, implicit, True, _UNDEFINED, ["iso8859"])
    except Exception:  # noqa: BLE001 - malformed: pydicom reading the file decides
        return None
    end = stream.tell()
    if end > len(buf) or (end == len(buf) < size):
        return None  # it may have stopped at the end of the prefix, not at its delimiter
    if buf[end - 8 : end] not in _DELIMITERS:
        return None
    return end
