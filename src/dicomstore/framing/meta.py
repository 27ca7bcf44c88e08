"""Where the File Meta Information of a PS3.10 file ends, and its values (PS3.10 7.1)."""

from __future__ import annotations

from dicomstore.framing.errors import FramingError, NotPart10, Truncated
from dicomstore.framing.headers import TAG as _TAG
from dicomstore.framing.headers import U16 as _U16
from dicomstore.framing.headers import U32 as _U32
from dicomstore.framing.headers import UNDEFINED as _UNDEFINED
from dicomstore.vr import VRS


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
