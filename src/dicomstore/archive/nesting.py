"""Received data sets nest their sequences no deeper than ``framing.MAX_DEPTH``.

Sequences may nest (PS3.5 7.5), of defined length as deep as the bytes allow;
the re-encoding that C-GET, C-MOVE and WADO-RS use to deliver an instance in
another transfer syntax follows them down to ``framing.MAX_DEPTH``, the one
limit of nesting. An instance nested deeper is refused when received (C000,
"sequences nested deeper than 1000 (PS3.5 7.5)"), through every door: the
check is part of ``Ingest.commit``, which C-STORE, STOW-RS and imports share.

Almost every header pays nothing: nesting ``MAX_DEPTH`` deep takes at least
``framing.DEEP_SIZE`` bytes of item and sequence headers, so only a top-level
element of that size or more, of defined or undefined length, can, and only
what may follow the Pixel Data. ``scan.scan_header`` notes where those
elements start as it reads the header; :func:`too_deep` walks them alone, with
``framing.walk_element`` (the framing walker, into sequences of defined length
too), from the bytes in memory and then the file. When the scan did not read
the header (pydicom does), the whole data set is walked.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from dicomstore.archive.dicomfile import PIXEL_TAGS
from dicomstore.framing import (
    DEEP_SIZE,
    FileSource,
    FramingError,
    InflatedSource,
    Pread,
    Source,
    TooDeep,
    walk_element,
)
from dicomstore.framing.headers import TAG as _TAG

__all__ = ["too_deep"]


def too_deep(
    path: str,
    start: int,
    size: int,
    encoding: tuple[bool, bool, bool],
    head: bytes | bytearray,
    where: Sequence[int] | None,
) -> TooDeep | None:
    """The :class:`~dicomstore.framing.TooDeep` of the data set of ``size`` bytes at
    ``start`` in the file ``path`` (its first bytes ``head``), else ``None``.

    ``encoding``: (implicit VR, little endian, deflated). ``where``: the data set
    offsets of the top-level elements to walk (``scan.scan_header``'s ``deep``:
    after the Pixel Data, all that follows it too); ``None``: every element. What
    does not frame is no concern here (the header checks judged it): ``None``.
    Raises ``OSError``."""
    if size < DEEP_SIZE or (where is not None and not where):
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
        _walk(src, size, implicit, little, where)
    except TooDeep as exc:
        return exc
    except FramingError:
        return None
    finally:
        os.close(fd)
    return None


def _walk(
    src: Source, size: int, implicit: bool, little: bool, where: Sequence[int] | None
) -> None:
    """Walk the elements at ``where`` (all when ``None``), each into its sequences."""
    for pos in [0] if where is None else where:
        if where is None or _is_pixel_data(src, pos, little):
            while pos < size and src.read(pos, 1):  # (all that follows, in turn)
                pos = walk_element(src, pos, implicit, little)
        else:
            walk_element(src, pos, implicit, little)


def _is_pixel_data(src: Source, pos: int, little: bool) -> bool:
    """Whether the element at ``pos`` is the Pixel Data (or Float, Double Float)."""
    head = src.read(pos, 4)
    if len(head) < 4:
        return False
    group, element = _TAG[little](head)
    return (group << 16 | element) in PIXEL_TAGS


def _pread(fd: int, start: int) -> Pread:
    """``pread`` of the data set in ``fd``: offsets count from ``start``."""

    def pread(count: int, offset: int) -> bytes:
        return os.pread(fd, count, start + offset)

    return pread
