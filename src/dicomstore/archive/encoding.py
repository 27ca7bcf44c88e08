"""Is a received data set encoded as its presentation context says? (PS3.5 7.1, A.5)

The File Meta of a stored file names the transfer syntax negotiated for the
presentation context (PS3.10 7.1); a data set encoded otherwise — Implicit VR
on an Explicit VR context, Big Endian on a Little Endian one, a Deflated
context whose bytes are not a raw deflate stream — would be stored behind a
meta that lies about it: pydicom silently switches VR encoding when the
first element looks like the other one, DCMTK refuses the file. So
:func:`encoding_mismatch` reads the first element headers of the data set
(from the prefix :class:`~dicomstore.archive.ingest.Ingest` keeps in memory,
no file read, no pydicom parse: microseconds) in each candidate encoding —
Implicit VR Little Endian, Explicit VR Little Endian, Explicit VR Big Endian
(PS3.5 A.1-A.3; encapsulated and private syntaxes encode the data set as
Explicit VR Little Endian, A.4) — and answers a short Error Comment when the
context's encoding does not fit and another does.

How a reading is judged (:func:`_walk`): up to :data:`HEADERS` element
headers, each where the previous value ends; a header fits when its group is
not one a data set cannot hold (0000, 0002, FFFE, FFFF), when, explicit, its
VR is two uppercase letters (pydicom's and DCMTK's test), when its value ends
inside the data set, and, of undefined length, when its value starts with an
Item or Sequence Delimitation tag in that byte order (PS3.5 7.5). A reading
that fits :data:`HEADERS` headers with a value (an empty one reads alike in
both byte orders and is not counted), or ends exactly at the end of the data
set, is settled; one whose next header lies beyond the prefix, or has a VR not in
the table, is unsure (an implicit element of 0x4144 bytes has "DA" where a VR
would be: the following headers are the tiebreak). The context wins every
tie, so a data set that reads in its own encoding is never refused:

* Explicit VR contexts: refused when the context's reading does not fit (the
  first element has no VR: pydicom would read it as implicit) and another
  reading fits; or when it is unsure and the other byte order is settled.
* Implicit VR Little Endian: refused when the first element's bytes 4..6 are
  two uppercase letters (pydicom would read it as explicit) and an explicit
  reading gets further than the implicit one.
* Deflated Explicit VR Little Endian: the first bytes must inflate, as a raw
  deflate stream (RFC 1951, no zlib header), to bytes (at most
  :data:`INFLATED_PREFIX` of them are made) that read as Explicit VR Little
  Endian, judged as above.

Left to the header read that follows (``read_header``'s own Error Comments):
an empty data set, a truncated first header, and bytes that fit no encoding
(garbage, a first element in group 0000 or FFFE/FFFF). When the context's
reading does not fit and no other does, three sender mistakes get their own
comment: File Meta Information (group 0002, always Explicit VR Little Endian)
or a whole PS3.10 file (preamble, ``DICM``) sent as the data set, and a
deflated data set on a context that is not Deflated.
"""

from __future__ import annotations

import logging
import struct
import zlib

from dicomstore.archive.dicomfile import FORBIDDEN_GROUPS, encoding_of
from dicomstore.vr import VRS

log = logging.getLogger("dicomstore.archive")

#: Element headers (with a value: empty ones are not counted) a reading must fit
#: to be settled, and the most headers read.
HEADERS = 3
_MOST_HEADERS = 16
#: Deflated bytes inflated for the check, and the most they may inflate to.
DEFLATED_INPUT = 8192
INFLATED_PREFIX = 4096

#: (implicit VR, little endian), as :func:`~dicomstore.archive.dicomfile.encoding_of` says.
Encoding = tuple[bool, bool]
IMPLICIT_LE: Encoding = (True, True)
EXPLICIT_LE: Encoding = (False, True)
EXPLICIT_BE: Encoding = (False, False)
_CANDIDATES = (IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE)
_NAMES = {
    IMPLICIT_LE: "Implicit VR Little Endian",
    EXPLICIT_LE: "Explicit VR Little Endian",
    EXPLICIT_BE: "Explicit VR Big Endian",
}
_UNDEFINED = 0xFFFFFFFF
_UNSETTLED = -1  #: a reading that does not fit
_HEAD = {
    (True, True): struct.Struct("<HHL").unpack_from,
    (False, True): struct.Struct("<HH2sH").unpack_from,
    (False, False): struct.Struct(">HH2sH").unpack_from,
}
_U32 = {True: struct.Struct("<L").unpack_from, False: struct.Struct(">L").unpack_from}
_LE_GROUP = struct.Struct("<H").unpack_from
#: (FFFE,E000) Item and (FFFE,E0DD) Sequence Delimitation Item, by byte order.
_ITEM_TAGS = {
    True: (b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0"),
    False: (b"\xff\xfe\xe0\x00", b"\xff\xfe\xe0\xdd"),
}
_PREAMBLE_END = 128


def encoding_mismatch(
    buf: bytes | bytearray, size: int, transfer_syntax_uid: str, instance: str = ""
) -> str | None:
    """An Error Comment (at most 64 characters) when the data set of ``size``
    bytes, whose first ones are ``buf``, is not encoded as ``transfer_syntax_uid``
    says; ``None`` when it is, or when this check cannot tell. Logs the refusal."""
    comment = _mismatch(buf, size, transfer_syntax_uid)
    if comment is not None:
        log.warning(
            "%s: %s (transfer syntax %s; first element header %s)",
            instance or "data set",
            comment,
            transfer_syntax_uid,
            bytes(buf[:8]).hex(" "),  # a tag, VR and length: no value (no patient data)
        )
    return comment


def _mismatch(buf: bytes | bytearray, size: int, transfer_syntax_uid: str) -> str | None:
    if size == 0 or len(buf) < 8:
        return None  # empty or truncated: read_header says so
    implicit, little, deflated = encoding_of(transfer_syntax_uid)
    if deflated:
        return _deflated_mismatch(buf, size)
    context = (implicit, little)
    found, ours = _detect(buf, size, context)
    if found is not None:
        return _comment(found, context, transfer_syntax_uid)
    if ours != _UNSETTLED:
        return None
    return _misplaced(buf) or (
        f"data set is deflated, context is {_context_name(context, transfer_syntax_uid)}"
        if _inflates_to_explicit(buf)
        else None
    )


def _detect(
    buf: bytes | bytearray, size: int | None, context: Encoding
) -> tuple[Encoding | None, int]:
    """The encoding the first elements of ``buf`` are in when it is not ``context``
    and the data set would be read wrongly under ``context`` (``None``: it is
    ``context``'s, or cannot be told), and how far the context's own reading got.
    ``size`` is that of the whole data set (``None``: unknown, an inflated prefix)."""
    ours = _walk(buf, size, context)
    if context[0]:  # implicit: readers switch to explicit when the first element has a VR
        if not _looks_explicit(buf):
            return None, ours
        rivals = [c for c in _CANDIDATES if c != context]
    elif ours == _UNSETTLED:  # explicit, no VR (or nothing fits): any other reading
        rivals = [c for c in _CANDIDATES if c != context]
    elif ours < HEADERS:  # explicit, unsure: only a settled other byte order beats it
        swapped = (False, not context[1])
        return (swapped if _walk(buf, size, swapped) == HEADERS else None), ours
    else:
        return None, ours
    best, best_score = None, max(ours, 0)
    for candidate in rivals:
        score = _walk(buf, size, candidate)
        if score > best_score:
            best, best_score = candidate, score
    return best, ours


def _misplaced(buf: bytes | bytearray) -> str | None:
    """A comment for File Meta Information, or a whole PS3.10 file, sent as the data set."""
    if _LE_GROUP(buf, 0)[0] == 0x0002:
        return "data set starts with File Meta Information (group 0002)"
    if buf[_PREAMBLE_END : _PREAMBLE_END + 4] == b"DICM":
        return "data set is a PS3.10 file (preamble, DICM, File Meta)"
    return None


def _looks_explicit(buf: bytes | bytearray) -> bool:
    """Bytes 4..6 of the first element are two uppercase letters: pydicom and DCMTK
    then read the data set as explicit VR whatever the transfer syntax says."""
    return 0x41 <= buf[4] <= 0x5A and 0x41 <= buf[5] <= 0x5A


def _walk(buf: bytes | bytearray, size: int | None, encoding: Encoding) -> int:
    """How far the first element headers of ``buf`` fit ``encoding``: :data:`_UNSETTLED`
    (they do not), the number of headers that fit before the prefix ran out, or
    :data:`HEADERS` (settled: that many fit, or they end exactly at ``size``)."""
    implicit, little = encoding
    head, u32, have = _HEAD[encoding], _U32[little], len(buf)
    pos = fitted = read = 0
    while fitted < HEADERS and read < _MOST_HEADERS:
        if pos == size:
            return HEADERS  # exactly the whole data set
        if pos + 8 > have:  # cut short, or beyond the prefix
            return fitted if size is None or pos + 8 <= size else _UNSETTLED
        if implicit:
            group, _elem, length = head(buf, pos)
            value = pos + 8
        else:
            group, _elem, vr, length = head(buf, pos)
            if not (0x41 <= vr[0] <= 0x5A and 0x41 <= vr[1] <= 0x5A):
                return _UNSETTLED
            known = VRS.get(vr)
            if known is None:
                return fitted  # a VR we do not know: its length layout is a guess
            if known[1]:
                if pos + 12 > have:
                    return fitted if size is None or pos + 12 <= size else _UNSETTLED
                (length,) = u32(buf, pos + 8)
                value = pos + 12
            else:
                value = pos + 8
        if group in FORBIDDEN_GROUPS:
            return _UNSETTLED
        read += 1
        if length:  # (an empty value reads alike in both byte orders: not counted)
            fitted += 1
        if length == _UNDEFINED:  # a sequence or encapsulated pixels: not followed here,
            if value + 4 > have:  # but its value starts with an item or a delimiter
                return fitted
            return fitted if buf[value : value + 4] in _ITEM_TAGS[little] else _UNSETTLED
        pos = value + length
        if size is not None and pos > size:
            return _UNSETTLED  # the value runs past the end of the data set
    return HEADERS


def _inflate_prefix(buf: bytes | bytearray) -> tuple[bytes, bool] | None:
    """(the first :data:`INFLATED_PREFIX` bytes ``buf`` inflates to, whether that is
    all of it) for a raw deflate stream (PS3.5 A.5); ``None`` if it is not one."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = inflater.decompress(bytes(buf[:DEFLATED_INPUT]), INFLATED_PREFIX)
    except zlib.error:
        return None
    return out, inflater.eof


def _inflates_to_explicit(buf: bytes | bytearray) -> bool:
    inflated = _inflate_prefix(buf)
    if inflated is None or len(inflated[0]) < 8:
        return False
    out, whole = inflated
    return _walk(out, len(out) if whole else None, EXPLICIT_LE) >= 1


def _deflated_mismatch(buf: bytes | bytearray, size: int) -> str | None:
    """The Error Comment for a Deflated Explicit VR Little Endian context (PS3.5 A.5)."""
    inflated = _inflate_prefix(buf)
    if inflated is None:
        if _is_zlib_header(buf):
            return "data set has a zlib header: deflate it raw (PS3.5 A.5)"
        if any(_walk(buf, size, c) >= 1 for c in _CANDIDATES):
            return "data set is not deflated, context is Deflated Explicit VR LE"
        return _misplaced(buf)  # or None: read_header says it cannot inflate it
    out, whole = inflated
    if len(out) < 8:
        return None  # empty or cut short: read_header says so
    found, _ = _detect(out, len(out) if whole else None, EXPLICIT_LE)
    if found is None:
        return None
    return f"inflated data set is {_found_name(found, EXPLICIT_LE)}, not Explicit VR LE"


def _is_zlib_header(buf: bytes | bytearray) -> bool:
    """A zlib (RFC 1950) header: deflate method, window <= 32K, check bits."""
    return (
        len(buf) >= 2
        and buf[0] & 0x0F == 8
        and buf[0] >> 4 <= 7
        and (buf[0] << 8 | buf[1]) % 31 == 0
    )


def _found_name(found: Encoding, context: Encoding) -> str:
    """What differs from the context, shortly: "Implicit VR", "Big Endian", ..."""
    vr_differs, order_differs = found[0] != context[0], found[1] != context[1]
    vr = "Implicit VR" if found[0] else "Explicit VR"
    order = "Little Endian" if found[1] else "Big Endian"
    if vr_differs and order_differs:
        return f"{vr} {'LE' if found[1] else 'BE'}"
    return vr if vr_differs else order


def _context_name(context: Encoding, transfer_syntax_uid: str) -> str:
    name = _NAMES[context]
    if context == EXPLICIT_LE and transfer_syntax_uid != "1.2.840.10008.1.2.1":
        return "Explicit VR LE (compressed)"  # encapsulated or private (PS3.5 A.4)
    return name


def _comment(found: Encoding, context: Encoding, transfer_syntax_uid: str) -> str:
    return (
        f"data set is {_found_name(found, context)}, "
        f"context is {_context_name(context, transfer_syntax_uid)}"
    )
