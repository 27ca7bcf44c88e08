"""Inflating a deflated data set (PS3.5 A.5) as a stream, in bounded memory.

A Deflated Explicit VR Little Endian data set is a raw deflate stream (RFC
1951): a megabyte of it may inflate to a gigabyte (a "deflate bomb"). Nothing
here holds more than :data:`CHUNK` inflated bytes at once:
:class:`InflatedSize` counts what the stream inflates to as its bytes arrive,
so that a door can refuse it once beyond a limit (the store service, for
C-STORE and STOW-RS alike: A700), :func:`inflate_into` writes the inflated
data set to a file (the archive reads its header from there), and
:func:`inflated_temporary` is the one way every reader of a stored deflated
data set gets it whole (WADO-RS metadata, bulk data and frames, the browse
page, ``show``, conversion for C-GET/C-MOVE and forwarding): inflated into an
unnamed temporary file, up to a limit (:class:`TooLarge` beyond it), and read
or memory-mapped from there as a data set that was never deflated.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO, Protocol

from dicomstore.sizes import binary_size

__all__ = [
    "CHUNK",
    "DEFAULT_MAX_INFLATED",
    "InflatedSize",
    "InflateError",
    "TooLarge",
    "inflate_into",
    "inflate_to_temporary",
    "inflated_temporary",
]

#: What a deflated data set may inflate to when no ``--max-instance-size`` is
#: set (with one, that limit counts the inflated bytes instead).
DEFAULT_MAX_INFLATED = 256 * 1024 * 1024
#: Inflated bytes produced per step.
CHUNK = 1024 * 1024
#: Deflated bytes given to zlib per step: what it keeps unconsumed (copied on
#: each step) stays this small whatever the size of the fragment.
_STEP_IN = 64 * 1024


def _pieces(z: zlib._Decompress, data: bytes | memoryview) -> Iterator[bytes]:
    """What ``data`` inflates to, CHUNK bytes at most at a time."""
    out = z.decompress(data, CHUNK)
    while out:
        yield out
        if z.eof or (len(out) < CHUNK and not z.unconsumed_tail):
            return
        out = z.decompress(z.unconsumed_tail, CHUNK)


class _Target(Protocol):
    def write(self, data: bytes, /) -> object: ...


class InflateError(ValueError):
    """The bytes are not a raw deflate stream, or it ends too soon."""


class TooLarge(InflateError):
    """The stream inflates to more than the limit (a deflate bomb, or a limit set
    lower than when the instance was stored)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the deflated data set inflates to over {limit} bytes, the limit")
        self.limit = limit


class InflatedSize:
    """What a raw deflate stream fed in pieces inflates to (:attr:`size`), up to
    ``limit``: :meth:`feed` returns False once beyond it and inflates no more.

    Bytes that do not inflate stop the count silently (:attr:`broken`): the
    reader of the data set reports that (C000), not the counter.
    """

    __slots__ = ("_z", "broken", "limit", "size")

    def __init__(self, limit: int) -> None:
        self._z = zlib.decompressobj(-zlib.MAX_WBITS)
        self.limit = limit
        self.size = 0
        self.broken = False

    @property
    def over(self) -> bool:
        return self.size > self.limit

    def feed(self, data: bytes | bytearray | memoryview) -> bool:
        """Count what ``data`` inflates to; False once the total is beyond ``limit``."""
        z = self._z
        if self.broken or z.eof or self.over:
            return not self.over
        view = memoryview(data).cast("B")
        try:
            for at in range(0, len(view), _STEP_IN):
                for out in _pieces(z, view[at : at + _STEP_IN]):
                    self.size += len(out)
                    if self.size > self.limit:
                        return False
                if z.eof:
                    break
        except zlib.error:
            self.broken = True
        return not self.over


def inflate_into(source: BinaryIO, target: _Target, limit: int | None = None) -> int:
    """Inflate the raw deflate stream read from ``source`` into ``target``, CHUNK
    bytes at a time; the inflated size. Raises :class:`TooLarge` once beyond
    ``limit`` inflated bytes (None: no limit), else :class:`InflateError`."""
    z = zlib.decompressobj(-zlib.MAX_WBITS)
    size = 0
    try:
        while not z.eof and (data := source.read(_STEP_IN)):
            for out in _pieces(z, data):
                size += len(out)
                if limit is not None and size > limit:
                    raise TooLarge(limit)
                target.write(out)
    except zlib.error as exc:
        raise InflateError(f"the deflated data set cannot be inflated: {exc}") from exc
    if not z.eof:
        raise InflateError("the deflated data set is truncated")
    return size


#: Folders whose file system keeps bytes free (``serve --min-free``, the archive's
#: ``.tmp``: :func:`keep_free`): the floor of each server on it, the highest kept.
_FLOORS: dict[str, list[int]] = {}


class NoRoom(OSError):
    """A temporary file would leave less free than its folder's floor: not made."""


def keep_free(folder: object, floor: int, *, keep: bool = True) -> None:
    """Temporary files in ``folder`` (conversions, inflations: each a copy of an
    instance) are refused while its file system has less than ``floor`` bytes free,
    as stores are (review103 F3: a few KB of JPEG 2000 made 3.6 GiB of them each
    time it was converted, and the stores were refused for want of space);
    ``keep=False``: that floor is let go (another server's on the folder stays:
    review105 L2)."""
    if floor <= 0:
        return
    key = os.path.realpath(str(folder))
    floors = _FLOORS.setdefault(key, [])
    if keep:
        floors.append(floor)
    elif floor in floors:
        floors.remove(floor)
    if not floors:
        del _FLOORS[key]


def temporary_file(where: str | None = None, expected: int = 0) -> BinaryIO:
    """An unnamed temporary file in folder ``where`` (None, or one that cannot take
    it: the system's); the caller closes it, and it is gone. :class:`NoRoom` when
    ``where`` keeps a floor of free bytes (:func:`keep_free`) that ``expected`` more
    bytes would go below."""
    floors = _FLOORS.get(os.path.realpath(where)) if where is not None and _FLOORS else None
    if floors and where is not None:
        floor = max(floors)
        try:
            free = shutil.disk_usage(where).free
        except OSError:
            free = floor + expected  # (cannot be told: as for stores, not refused)
        if free - expected < floor:
            need = f", {binary_size(expected)} needed" if expected else ""
            why = f"--min-free {binary_size(floor)}: only {binary_size(free)} free{need}"
            raise NoRoom(errno.ENOSPC, why)
    try:
        return tempfile.TemporaryFile(dir=where)  # noqa: SIM115 - the caller closes it
    except OSError:
        if where is None:
            raise
        return tempfile.TemporaryFile()  # noqa: SIM115 - the caller closes it


def inflate_to_temporary(
    source: BinaryIO, limit: int, where: str | None = None
) -> tuple[BinaryIO, int]:
    """(an unnamed temporary file holding what the raw deflate stream read from
    ``source`` inflates to, rewound; its size), in folder ``where`` (None, or one
    that cannot take it: the system's); the caller closes it, and it is gone.

    Memory stays :data:`CHUNK` bytes whatever the size; beyond ``limit``
    inflated bytes :class:`TooLarge` is raised (nothing more is written), a
    stream that does not inflate :class:`InflateError`."""
    spool = temporary_file(where)
    try:
        size = inflate_into(source, spool, limit)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return spool, size


@contextmanager
def inflated_temporary(
    source: BinaryIO, limit: int, where: str | None = None
) -> Iterator[tuple[BinaryIO, int]]:
    """:func:`inflate_to_temporary` for the time of a block."""
    spool, size = inflate_to_temporary(source, limit, where)
    with spool:
        yield spool, size
