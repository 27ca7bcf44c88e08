"""The PS3.10 file around a received data set.

Before the data set: the 128-byte preamble, ``DICM`` and the File Meta
Information (PS3.10 7.1), the bytes pydicom's ``write_file_meta_info`` would
write (:func:`file_header`) — once per kind of instance: :class:`MetaTemplates`
keeps it and puts each new SOP Instance UID of the same length in place of the
old one.
After it: the header read back with pydicom up to the Pixel Data, plus a check
that the data set is framed correctly — pydicom reads leniently and accepts a
truncated value or header without complaint, so every top-level element is
checked to end where the next begins, inside the data set (PS3.5 7.1), and the
Pixel Data header to fit in the file.
"""

from __future__ import annotations

import enum
import functools
import os
import re
import struct
import tempfile
from typing import TYPE_CHECKING, BinaryIO

from dicomstore import uids
from dicomstore.archive.layout import uid_bytes
from dicomstore.framing import FramingError, file_meta
from dicomstore.framing.headers import encode_header
from dicomstore.inflation import InflateError, inflate_into
from dicomstore.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicomstore.vr import LONG_VRS

if TYPE_CHECKING:  # (pydicom loads when a header is read, not to write one)
    from pydicom.dataset import Dataset

PREAMBLE = bytes(128)
PREFIX = b"DICM"
#: Top-level elements larger than this are skipped, not loaded (values not needed).
DEFER_SIZE = 1 << 20
#: An inflated data set is read from memory up to this size, else from a file.
SPOOL_IN_MEMORY = 8 << 20
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
#: Groups that cannot start a top-level element of a data set: command (0000),
#: file meta (0002), items and delimiters (FFFE), reserved (FFFF). (The odd groups
#: 0001-0007 PS3.5 7.1 also forbids are tolerated: pydicom reads them.)
FORBIDDEN_GROUPS = frozenset({0x0000, 0x0002, 0xFFFE, 0xFFFF})
_DELIMITERS = (b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", b"\xff\xfe\xe0\xdd\x00\x00\x00\x00")
_ITEM_TAGS = (b"\xfe\xff\x00\xe0", b"\xff\xfe\xe0\x00")


class HeaderError(Exception):
    """The data set cannot be understood; ``tag`` is the offending element, if known."""

    def __init__(self, message: str, tag: int | None = None) -> None:
        super().__init__(message)
        self.tag = tag


def file_header(
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    calling_ae: str,
    called_ae: str,
) -> bytes:
    """Preamble, prefix and File Meta Information (PS3.10 7.1) for a received instance.

    Explicit VR Little Endian, the group length first (PS3.10 7.1). Our
    Implementation Class UID and Version Name, and the command's values as
    received, even non-conformant ones (they are checked against the data set at
    commit): a UID as its bytes without leading or trailing white space, padded with
    NUL to an even length, an AE title
    without leading or trailing spaces, padded with a space (PS3.5 6.2). (0002,0016)
    Source AE Title and (0002,0017) Sending AE Title are the calling AE, (0002,0018)
    Receiving AE Title the called AE; an empty AE title is left out. The bytes
    pydicom's ``write_file_meta_info`` writes (a test compares them), without
    pydicom.
    """
    body = bytearray(_element(0x00020001, b"OB", b"\x00\x01"))
    for tag, vr, value in (
        (0x00020002, b"UI", sop_class_uid),
        (0x00020003, b"UI", sop_instance_uid),
        (0x00020010, b"UI", transfer_syntax_uid),
        (0x00020012, b"UI", IMPLEMENTATION_CLASS_UID),
        (0x00020013, b"SH", IMPLEMENTATION_VERSION_NAME),
        (0x00020016, b"AE", calling_ae.strip()),
        (0x00020017, b"AE", calling_ae.strip()),
        (0x00020018, b"AE", called_ae.strip()),
    ):
        if value or vr == b"UI":
            data = uid_bytes(value)
            if vr == b"UI":  # (pydicom's UID strips each value: str.strip, as Latin-1)
                text = data.decode("latin-1")
                data = "\\".join(part.strip() for part in text.split("\\")).encode("latin-1")
            if len(data) % 2:
                data += b"\0" if vr == b"UI" else b" "
            body += _element(tag, vr, data)
    length = _element(0x00020000, b"UL", struct.pack("<L", len(body)))
    return PREAMBLE + PREFIX + length + bytes(body)


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    """One Explicit VR Little Endian element (PS3.5 7.1.2; ``framing.encode_header``)."""
    return encode_header(tag, vr, len(value)) + value


#: A SOP Instance UID :class:`MetaTemplates` may put in a template: printable
#: ASCII without space or backslash, written byte for byte.
_PLAIN_UID = re.compile(rb"[\x21-\x5b\x5d-\x7e]+")
_PLACEHOLDER = b"9"


class _Missing(enum.Enum):
    """No template was tried yet for a key (``None`` means: tried, unusable)."""

    MISSING = enum.auto()


_MISSING = _Missing.MISSING


class MetaTemplates:
    """:func:`file_header` for many instances at the price of a few.

    Per (SOP Class, transfer syntax, AE titles, length of the SOP Instance UID)
    :func:`file_header` writes the header once, for a placeholder UID of that
    length; the header of an instance is that template with its own UID bytes put
    where the placeholder's are (same length, so the same padding and group
    length). A template is kept only after it reproduced :func:`file_header`'s
    output for the first real UID; a UID that is not plain ASCII always goes
    through :func:`file_header`.
    Safe to share between threads (at worst two of them build the same template).
    """

    LIMIT = 1024  #: templates kept before the cache starts again

    def __init__(self) -> None:
        self._templates: dict[tuple[str, str, str, str, int], tuple[bytes, int] | None] = {}

    def header(
        self,
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        calling_ae: str,
        called_ae: str,
    ) -> bytes:
        """The same bytes as :func:`file_header` with these arguments."""
        uid = uid_bytes(sop_instance_uid)
        key = (sop_class_uid, transfer_syntax_uid, calling_ae, called_ae, len(uid))
        entry = self._templates.get(key, _MISSING)
        plain = _PLAIN_UID.fullmatch(uid) is not None
        if plain and isinstance(entry, tuple):
            cached, where = entry
            return cached[:where] + uid + cached[where + len(uid) :]
        fields = {
            "sop_class_uid": sop_class_uid,
            "transfer_syntax_uid": transfer_syntax_uid,
            "calling_ae": calling_ae,
            "called_ae": called_ae,
        }
        real = file_header(sop_instance_uid=sop_instance_uid, **fields)
        if plain and entry is _MISSING:
            if len(self._templates) >= self.LIMIT:
                self._templates.clear()
            placeholder = (_PLACEHOLDER * len(uid)).decode()
            template = file_header(sop_instance_uid=placeholder, **fields)
            at = _instance_uid_at(template, len(uid))
            made = None if at is None else template[:at] + uid + template[at + len(uid) :]
            self._templates[key] = (template, at) if made == real and at is not None else None
        return real


def _instance_uid_at(header: bytes, length: int) -> int | None:
    """Where the value of (0002,0003) starts in a header, if it holds ``length`` bytes
    (plus one byte of padding when odd)."""
    pos = len(PREAMBLE) + len(PREFIX)
    while pos + 8 <= len(header):
        group, elem = struct.unpack_from("<HH", header, pos)
        if group != 0x0002:
            return None
        if header[pos + 4 : pos + 6] in LONG_VRS:
            (size,) = struct.unpack_from("<L", header, pos + 8)
            value = pos + 12
        else:
            (size,) = struct.unpack_from("<H", header, pos + 6)
            value = pos + 8
        if elem == 0x0003:
            return value if size == length + length % 2 else None
        pos = value + size
    return None


@functools.lru_cache(maxsize=64)
def encoding_of(transfer_syntax_uid: str) -> tuple[bool, bool, bool]:
    """(implicit VR, little endian, deflated) of a transfer syntax (PS3.5 10).

    Every other transfer syntax, one we do not know (a private one) too, is read
    as Explicit VR Little Endian, the encoding of every compressed transfer syntax
    (as pydicom decides; a test compares).
    """
    uid = transfer_syntax_uid.strip()
    return uids.is_implicit_vr(uid), uids.is_little_endian(uid), uids.is_deflated(uid)


def _at_pixels(tag: int, vr: str | None, length: int) -> bool:
    return tag in PIXEL_TAGS


def read_header(fp: BinaryIO, start: int, size: int, transfer_syntax_uid: str) -> Dataset:
    """The data set in ``fp[start:size]`` up to (not including) the Pixel Data.

    Elements longer than :data:`DEFER_SIZE` are left unread. A deflated data set
    (PS3.5 A.5) is inflated first, as a stream, into a temporary file beside
    ``fp`` (in memory up to :data:`SPOOL_IN_MEMORY`). Raises :class:`HeaderError`.
    """
    implicit, little, deflated = encoding_of(transfer_syntax_uid)
    fp.seek(start)
    if not deflated:
        return _read_header(fp, start, size, implicit, little)
    name = getattr(fp, "name", None)
    where = os.path.dirname(name) if isinstance(name, str) else None
    with tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY, dir=where) as spool:
        try:
            size = inflate_into(fp, spool)
        except InflateError as exc:
            raise HeaderError(str(exc)) from None
        spool.seek(0)
        return _read_header(spool, 0, size, implicit, little)  # type: ignore[arg-type]


def _read_header(stream: BinaryIO, start: int, size: int, implicit: bool, little: bool) -> Dataset:
    if size <= start:
        raise HeaderError("the data set is empty")
    from pydicom.filereader import read_dataset

    try:
        ds = read_dataset(stream, implicit, little, stop_when=_at_pixels, defer_size=DEFER_SIZE)
    except RecursionError:  # (pydicom reads nested sequences recursively: review53 #8)
        raise HeaderError("sequences nested too deeply to be read (some hundred levels)") from None
    except Exception as exc:  # pydicom raises many types on malformed input
        raise HeaderError(f"the data set cannot be parsed: {exc}") from exc
    stop = stream.tell()
    _check_framing(stream, ds, start, min(stop, size), implicit)
    if stop < size:
        _check_pixel_header(stream, stop, size, implicit, little)
    return ds


def _positions(ds: Dataset, implicit: bool) -> list[tuple[int, int, int | None, bool]]:
    """(value position, tag, length or None, long header?) of each top-level element."""
    from pydicom.dataelem import RawDataElement

    found: list[tuple[int, int, int | None, bool]] = []
    for tag in list(ds.keys()):  # a Dataset iterates over elements, not tags
        elem = ds.get_item(tag, keep_deferred=True)
        length: int | None
        if isinstance(elem, RawDataElement):
            pos, length = elem.value_tell, elem.length
            vr = elem.VR
            if length == 0xFFFFFFFF:
                length = None
        else:  # undefined-length SQ/UN, already parsed into items
            if elem.file_tell is None:  # (pydicom sets it for every element it reads)
                raise HeaderError(f"element {_fmt(int(tag))} has no position in the file", tag)
            pos, length, vr = elem.file_tell, None, elem.VR
        long = not implicit and vr is not None and str(vr).encode() in LONG_VRS
        found.append((pos, int(tag), length, long))
    found.sort()
    return found


def _check_framing(stream: BinaryIO, ds: Dataset, start: int, stop: int, implicit: bool) -> None:
    """Every top-level element starts where the previous one ended, within ``stop``."""
    expected: int | None = start  # None: after an undefined length, ends at a delimiter
    for pos, tag, length, long in _positions(ds, implicit):
        if tag >> 16 in FORBIDDEN_GROUPS:
            raise HeaderError(f"element {_fmt(tag)} is not allowed in a data set", tag)
        header_start = pos - (12 if long else 8)
        if expected is None:
            if not _delimited(stream, header_start):
                raise HeaderError(f"the sequence before {_fmt(tag)} is not delimited", tag)
        elif header_start != expected:
            raise HeaderError(f"the data set is not framed correctly at {_fmt(tag)}", tag)
        if length is None:
            expected = None
        else:
            expected = pos + length
            if expected > stop:
                raise HeaderError(f"element {_fmt(tag)} runs past the end of the data set", tag)
    if expected is None:
        if not _delimited(stream, stop):
            raise HeaderError("the last sequence of the data set is not delimited")
    elif expected != stop:
        raise HeaderError(f"the data set is truncated or has stray bytes at offset {expected}")


def _delimited(stream: BinaryIO, end: int) -> bool:
    """True when the 8 bytes before ``end`` are a Sequence Delimitation Item."""
    if end < 8:
        return False
    stream.seek(end - 8)
    return stream.read(8) in _DELIMITERS


def _check_pixel_header(
    stream: BinaryIO, stop: int, size: int, implicit: bool, little: bool
) -> None:
    """The Pixel Data element header is complete and its value fits in the file."""
    stream.seek(stop)
    check_pixel_header(stream.read(16), stop, size, implicit, little)


def check_pixel_header(head: bytes, stop: int, size: int, implicit: bool, little: bool) -> None:
    """:func:`_check_pixel_header` for the (up to) 16 bytes at ``stop``."""
    order = "<" if little else ">"
    if len(head) < 8:
        raise HeaderError("the Pixel Data element header is truncated", 0x7FE00010)
    group, elem = struct.unpack(order + "HH", head[:4])
    tag = group << 16 | elem
    if tag not in PIXEL_TAGS:
        raise HeaderError(f"unexpected element {_fmt(tag)} at offset {stop}", tag)
    if implicit or not b"AA" <= head[4:6] <= b"ZZ":  # pydicom's implicit VR switch
        (length,), value_start = struct.unpack(order + "L", head[4:8]), stop + 8
    elif head[4:6] in LONG_VRS:
        if len(head) < 12:
            raise HeaderError("the Pixel Data element header is truncated", tag)
        (length,), value_start = struct.unpack(order + "L", head[8:12]), stop + 12
    else:
        (length,), value_start = struct.unpack(order + "H", head[6:8]), stop + 8
    if length == 0xFFFFFFFF:
        if head[value_start - stop : value_start - stop + 4] not in _ITEM_TAGS:
            raise HeaderError("encapsulated Pixel Data does not start with an item", tag)
    elif value_start + length > size:
        raise HeaderError("the Pixel Data value is truncated", tag)


def dataset_offset(fp: BinaryIO) -> int:
    """Where the data set starts in a PS3.10 file (after preamble, prefix, group 0002;
    ``framing.file_meta``)."""
    return meta_of(fp)[0]


def meta_of(fp: BinaryIO) -> tuple[int, dict[int, bytes]]:
    """Where the data set starts in a PS3.10 file, and its File Meta Information's
    values by element number (``framing.file_meta``)."""
    fp.seek(0)
    head = b""
    while True:
        more = fp.read(_META_CHUNK)
        head += more
        try:
            found = file_meta(head, complete=not more)
        except FramingError as exc:
            raise HeaderError(str(exc)) from None
        if found is not None:
            return found


_META_CHUNK = 4096


def _fmt(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
