"""The ``trailing_padding="discard"`` policy: Data Set Trailing Padding cut off.

Data Set Trailing Padding (FFFC,FFFC) may be the last element of a data set
"if padding of a Data Set is desired when a file is written"; its value "has
no significance and shall be ignored by all DICOM implementations reading
this Data Set" (PS3.10 7.2, which allows it at the end of data sets nested
in a sequence too). Digital signatures never cover it: PS3.3 C.12.1.1.3.1.1 (Data
Elements Signed, the MAC calculation that the Digital Signature Profiles of
PS3.15 Annex C use) excludes Data Set Trailing Padding (FFFC,FFFC) from the
MAC, so a file without it keeps every signature valid. Discarding it is no
coercion of a value (B000) and does not lower the conformance level (PS3.4
B.4.1: it is no Attribute of any IOD); it is reported with the Warning
"Elements Discarded" B006 (PS3.4 B.2.3) and (FFFC,FFFC) as Offending Element.

:func:`find_trailing_padding` walks the top-level elements of the data set in
the file (PS3.5 7.1: each header starts where the previous value ended):
a defined-length value is skipped by its length (a 2 GiB Pixel Data costs
one seek, never a read), an undefined-length one (SQ, UN, encapsulated Pixel
Data) by walking its items and their nested data sets to the matching
Sequence Delimitation Item (PS3.5 7.5, A.4). Only the header bytes are read,
through a small window of :data:`WINDOW` bytes. Only a top-level (FFFC,FFFC)
counts: one inside a sequence item ends that item's data set, not the data
set received. Anything that does not frame (the header checks decided what
matters already) means "no padding found". Deflated data sets are kept as
received.

:func:`discard_trailing_padding` cuts the still open temporary file right
before the padding (``os.ftruncate``) and recomputes the SHA-256 of the kept
data set bytes by reading them back in chunks.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass

from dicomstore.archive.dicomfile import encoding_of, hash_from
from dicomstore.archive.outcome import WARNING_ELEMENTS_DISCARDED
from dicomstore.vr import VRS

__all__ = [
    "TRAILING_PADDING_TAG",
    "Discarded",
    "discard_trailing_padding",
    "find_trailing_padding",
    "merge_warning",
]

#: Data Set Trailing Padding (PS3.10 7.2, PS3.6 Table 6-1).
TRAILING_PADDING_TAG = 0xFFFCFFFC
#: Header bytes read at a time while walking.
WINDOW = 64 * 1024
#: Sequences and items open at once beyond which the walk gives up (no padding
#: found): memory stays bounded whatever the nesting of hostile input.
MAX_DEPTH = 1000

_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_TAG = {True: struct.Struct("<HH").unpack_from, False: struct.Struct(">HH").unpack_from}
_U16 = {True: struct.Struct("<H").unpack_from, False: struct.Struct(">H").unpack_from}
_U32 = {True: struct.Struct("<L").unpack_from, False: struct.Struct(">L").unpack_from}


class _Unframed(Exception):
    """The bytes do not frame as a data set: no padding is reported."""


class _Window:
    """``pread`` of a file through one cached window of :data:`WINDOW` bytes."""

    def __init__(self, fd: int, end: int) -> None:
        self.fd, self.end = fd, end
        self.start, self.data = 0, b""

    def read(self, pos: int, size: int) -> bytes:
        if pos + size > self.end:
            raise _Unframed
        offset = pos - self.start
        if offset < 0 or offset + size > len(self.data):
            self.start = pos
            self.data = os.pread(self.fd, max(size, min(WINDOW, self.end - pos)), pos)
            offset = 0
            if len(self.data) < size:
                raise _Unframed  # the file is shorter than we were told
        return self.data[offset : offset + size]


def _element(
    window: _Window, pos: int, implicit: bool, little: bool
) -> tuple[int, str | None, int, int]:
    """(tag, VR or None, value length, value position) of the element at ``pos``."""
    head = window.read(pos, 8)
    group, elem = _TAG[little](head)
    tag = group << 16 | elem
    if implicit or group == 0xFFFE:  # items and delimiters have no VR (PS3.5 7.5)
        return tag, None, _U32[little](head, 4)[0], pos + 8
    known = VRS.get(head[4:6])
    if known is None:
        raise _Unframed  # a VR pydicom does not know
    vr, long = known
    if long:
        return tag, vr, _U32[little](window.read(pos + 8, 4))[0], pos + 12
    return tag, vr, _U16[little](head, 6)[0], pos + 8


def find_trailing_padding(fd: int, start: int, end: int, transfer_syntax_uid: str) -> int | None:
    """Where a top-level (FFFC,FFFC) that is the last element of the data set in
    ``fd[start:end]`` starts; ``None``: there is none, the data set does not
    frame, or it is deflated. ``fd`` must be readable (``os.pread``)."""
    implicit, little, deflated = encoding_of(transfer_syntax_uid)
    if deflated or end <= start:
        return None
    window = _Window(fd, end)
    # open undefined-length values: (in an item?, implicit, little) of each level
    stack: list[tuple[bool, bool, bool]] = []
    pos, last = start, -1
    try:
        while stack or pos < end:
            if not stack:  # the next top-level element
                tag, vr, length, value = _element(window, pos, implicit, little)
                if tag >> 16 == 0xFFFE:
                    return None  # an item or delimiter cannot start a top-level element
                last = pos if tag == TRAILING_PADDING_TAG else -1
                enc = (implicit, little)
            else:
                in_item, imp, lit = stack[-1]
                tag, vr, length, value = _element(window, pos, imp, lit)
                if in_item:  # an element of a nested data set, or its end
                    if tag == _ITEM_DELIMITER:
                        stack.pop()
                        pos = value
                        continue
                    if tag >> 16 == 0xFFFE:
                        return None  # an item or sequence delimiter where an element goes
                    enc = (imp, lit)
                else:  # an item of a sequence (or a fragment), or its end
                    if tag == _SEQUENCE_DELIMITER:
                        stack.pop()
                        pos = value
                        continue
                    if tag != _ITEM:
                        return None
                    if length == _UNDEFINED:
                        stack.append((True, imp, lit))
                        pos = value
                        continue
                    enc = (imp, lit)
            if length == _UNDEFINED:
                if vr == "UN":  # PS3.5 6.2.2: its value stays Implicit VR Little Endian
                    enc = (True, True)
                stack.append((False, *enc))
                pos = value
                if len(stack) > MAX_DEPTH:
                    return None
            else:
                pos = value + length
            if pos > end:
                return None
    except _Unframed:
        return None
    return last if last >= 0 else None


@dataclass(frozen=True, slots=True)
class Discarded:
    """What :func:`discard_trailing_padding` cut: the new file size and data set digest."""

    removed: int  #: bytes cut (the whole (FFFC,FFFC) element, header and value)
    file_size: int  #: the file's size now
    digest: str  #: SHA-256 (hex) of the data set bytes kept

    @property
    def comment(self) -> str:
        """The Error Comment of the B006 answer."""
        return f"Data Set Trailing Padding (FFFC,FFFC), {self.removed} bytes, discarded"


def discard_trailing_padding(
    fd: int, path: str, start: int, end: int, transfer_syntax_uid: str
) -> Discarded | None:
    """Cut the file ``path`` (open for writing as ``fd``) right before the trailing
    padding of its data set ``[start:end]``; ``None``: nothing to cut.

    The data set is read back (header bytes only) to find the padding; when
    something is cut, the kept data set bytes are read again in chunks for
    their digest. ``OSError`` propagates (an I/O failure: A700).
    """
    with open(path, "rb", buffering=0) as fp:
        at = find_trailing_padding(fp.fileno(), start, end, transfer_syntax_uid)
        if at is None:
            return None
        os.ftruncate(fd, at)
        digest = hashlib.sha256()
        kept = hash_from(fp, start, digest.update)
    if start + kept != at:
        raise OSError(f"the data set changed while it was cut ({start + kept} != {at})")
    return Discarded(end - at, at, digest.hexdigest())


def merge_warning(
    warning: tuple[int, str, tuple[int, ...]] | None, discarded: Discarded
) -> tuple[int, str, tuple[int, ...]]:
    """The warning to answer once the padding is discarded (``Staged.warning``).

    Alone: B006 with :attr:`Discarded.comment`. With a warning already due (B007
    under the class-mismatch policy "tolerate") that warning stays, being about
    the meaning of the data set, and its comment and Offending Elements mention
    the padding too: a C-STORE response carries a single Status.
    """
    if warning is None:
        return WARNING_ELEMENTS_DISCARDED, discarded.comment, (TRAILING_PADDING_TAG,)
    status, comment, tags = warning
    return status, f"{comment}; {discarded.comment}", (*tags, TRAILING_PADDING_TAG)
