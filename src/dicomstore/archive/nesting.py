"""What the header checks do not read: nesting no deeper than ``framing.MAX_DEPTH``,
and from the Pixel Data on, elements that frame in ascending order.

Sequences may nest (PS3.5 7.5), of defined length as deep as the bytes allow;
the re-encoding that C-GET, C-MOVE and WADO-RS use to deliver an instance in
another transfer syntax follows them down to ``framing.MAX_DEPTH``, the one
limit of nesting. An instance nested deeper is refused when received (C000,
"sequences nested deeper than 1000 (PS3.5 7.5)"), through every door: the
check is part of ``Ingest.commit``, which C-STORE, STOW-RS and imports share.

The header scan and pydicom's header reader both stop at the Pixel Data; what
follows it is walked here, and refused (C000) where it does not frame (the
fragments of encapsulated Pixel Data too) or where a tag is not greater than
the one before (PS3.5 7.1): an element repeated there, which a reader keeping
the last of two (pydicom, dcm4che) would take over the one the index holds, could
file the instance under another patient or study (review76 F1).

Most headers pay nothing: nesting ``MAX_DEPTH`` deep takes at least
``framing.DEEP_SIZE`` bytes of item and sequence headers, so only a top-level
element of that size or more, of defined or undefined length, can; and only an
element of undefined length can hide where it ends (``framing.ReadersDisagree``).
The scan notes where those elements start as it reads the header, and the Pixel Data
when anything follows it or it is encapsulated (a native one ending the data
set, the usual case, is not walked); :func:`refusal` walks them alone, with
``framing.walk_element`` (the framing walker, into sequences of defined length
too), from the bytes in memory and then the file. When the scan did not read
the header (pydicom does), the whole data set is walked.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from dicomstore.archive.dicomfile import PIXEL_TAGS
from dicomstore.archive.scan import Element, scan_header
from dicomstore.framing import (
    FileSource,
    FramingError,
    InflatedSource,
    Pread,
    ReadersDisagree,
    Source,
    TooDeep,
    Truncated,
    element_header,
    tag_name,
    walk_element,
)
from dicomstore.framing.headers import TAG as _TAG
from dicomstore.framing.headers import UNDEFINED, UNKNOWN_VR

__all__ = ["judged", "refusal", "scanned"]


def scanned(
    head: bytes | bytearray, size: int, encoding: tuple[bool, bool, bool]
) -> tuple[dict[int, Element] | None, list[int]]:
    """The header scan of a data set of ``size`` bytes whose first bytes are ``head``
    (``scan.scan_header``: little endian, not deflated; else not scanned, ``None``),
    and where it saw elements to walk (its ``deep``): what :func:`judged` walks."""
    implicit, little, deflated = encoding
    deep: list[int] = []
    elements = scan_header(head, size, implicit, deep) if little and not deflated else None
    return elements, deep


def judged(
    path: str,
    start: int,
    size: int,
    encoding: tuple[bool, bool, bool],
    head: bytes | bytearray,
    scan: tuple[dict[int, Element] | None, list[int]],
) -> FramingError | None:
    """:func:`refusal` as every door judges a data set (``Ingest._check``) and
    ``check`` judges a stored one (``maintenance.misframed``), alike: of the elements
    the scan (:func:`scanned`) saw to walk, else, when it did not read the header,
    of every element. Raises ``OSError``."""
    elements, deep = scan
    if elements is not None and not deep:
        return None
    return refusal(path, start, size, encoding, head, deep if elements is not None else None)


def refusal(
    path: str,
    start: int,
    size: int,
    encoding: tuple[bool, bool, bool],
    head: bytes | bytearray,
    where: Sequence[int] | None,
) -> FramingError | None:
    """Why the data set of ``size`` bytes at ``start`` in the file ``path`` (its first
    bytes ``head``) is refused, else ``None``: a :class:`~dicomstore.framing.TooDeep`
    anywhere; a :class:`~dicomstore.framing.ReadersDisagree` anywhere (an unknown VR,
    an undefined length where none may be, an undefined-length element that does not
    frame as a sequence: readers would each read another data set after it); from the
    Pixel Data on, a :class:`~dicomstore.framing.FramingError` where the elements do
    not frame or are not in ascending order (PS3.5 7.1).

    ``encoding``: (implicit VR, little endian, deflated). ``where``: the data set
    offsets of the top-level elements to walk (``scan.scan_header``'s ``deep``: those
    big enough to nest deep, every one of undefined length, and after the Pixel Data
    all that follows it); ``None``: every element. What else does not frame inside an
    element of defined length before the Pixel Data is no concern here (its length
    says where it ends for every reader; the header checks judged it). Raises
    ``OSError``."""
    if where is not None and not where:
        return None
    implicit, little, deflated = encoding
    fd = os.open(path, os.O_RDONLY)
    try:
        src: Source
        if deflated:  # (a Deflated Explicit VR Little Endian data set, PS3.5 A.5)
            src = InflatedSource(fd, start, start + size)
            size = 1 << 62  # (the inflated size is known at its end)
        else:
            src = FileSource(_pread(fd, start), size, bytes(head))
        return _walk(src, size, implicit, little, where)
    except TooDeep as exc:
        return exc
    finally:
        os.close(fd)


def _walk(
    src: Source, size: int, implicit: bool, little: bool, where: Sequence[int] | None
) -> FramingError | None:
    """Walk the elements at ``where`` (all when ``None``), each into its sequences, and
    from the Pixel Data all that follows (:func:`_from_pixel_data`)."""
    for pos in [0] if where is None else where:
        while pos < size and src.read(pos, 1):
            tag = _tag(src, pos, little)
            if tag in PIXEL_TAGS:
                return _from_pixel_data(src, pos, size, implicit, little)
            # (where it ends by its length, read before its walk, as reads move forward,
            # in case the walk meets what it cannot frame inside it)
            end, undefined = _defined_end(src, pos, implicit, little)
            try:
                end = walk_element(src, pos, implicit, little, strict=True)
            except TooDeep:
                raise
            except ReadersDisagree as exc:  # (what follows is another data set for each)
                return exc
            except Truncated:  # (cut short: every reader ends it where the bytes end)
                pass
            except FramingError as exc:  # (inside it: tolerated; walked on past its length)
                if undefined:  # (no length to walk on by: review82 F5, as plain or deflated)
                    return ReadersDisagree(
                        f"{tag_name(tag)} of undefined length at offset {pos} does not frame"
                        f" as a sequence ({exc}): readers disagree on where it ends (PS3.5 7.5)",
                        tag,
                        pos,
                    )
            if where is not None or end is None:
                break
            pos = end
    return None


def _from_pixel_data(
    src: Source, pos: int, size: int, implicit: bool, little: bool
) -> FramingError | None:
    """The Pixel Data at ``pos`` and every element after it frame, each tag greater
    than the one before (PS3.5 7.1: in ascending order, each at most once): what
    neither the header scan nor pydicom's header reader (both stop at the Pixel
    Data) reads, and what a reader that keeps the last of a repeated element
    (pydicom) would take for the instance's patient or study (review76 F1)."""
    last = -1
    try:
        while pos < size and src.read(pos, 1):
            tag = _tag(src, pos, little)
            if tag <= last:
                return FramingError(
                    f"{tag_name(tag)} out of order after the Pixel Data, at offset {pos}:"
                    f" not greater than {tag_name(last)} before it (PS3.5 7.1: data"
                    " elements are in ascending order, each at most once)",
                    tag,
                    pos,
                )
            last = tag
            pos = walk_element(src, pos, implicit, little, strict=True)
    except TooDeep:
        raise
    except FramingError as exc:
        return exc
    return None


def _tag(src: Source, pos: int, little: bool) -> int:
    """The tag of the element at ``pos`` (-1 when the bytes end inside it: the walk
    then says so)."""
    head = src.read(pos, 4)
    if len(head) < 4:
        return -1
    group, element = _TAG[little](head)
    return int(group << 16 | element)


def _defined_end(src: Source, pos: int, implicit: bool, little: bool) -> tuple[int | None, bool]:
    """Where the top-level element at ``pos`` ends by its defined length (None: an
    undefined one, or no header there), and whether its length is undefined."""
    parsed = element_header(src.read(pos, 12), 0, implicit, little)
    if parsed is None or parsed[2] in (UNDEFINED, UNKNOWN_VR):
        return None, parsed is not None and parsed[2] == UNDEFINED
    return pos + parsed[3] + parsed[2], False


def _pread(fd: int, start: int) -> Pread:
    """``pread`` of the data set in ``fd``: offsets count from ``start``."""

    def pread(count: int, offset: int) -> bytes:
        return os.pread(fd, count, start + offset)

    return pread
