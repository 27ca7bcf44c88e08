"""Bytes of a data set by position, for the walk: from a file, or inflated on the fly."""

from __future__ import annotations

import functools
import io
import os
import zlib
from collections.abc import Callable
from typing import Any, Protocol

from dicomstore.framing.errors import Corrupt

#: Bytes read (or inflated) at a time while walking.
WINDOW = 64 * 1024

#: ``pread(size, offset)``: up to ``size`` bytes at ``offset`` (``os.pread`` of a file).
Pread = Callable[[int, int], bytes]


def preader(fd: int | Pread) -> Pread:
    """``os.pread`` of file descriptor ``fd``, or ``fd`` itself when it is one already
    (a stream's, :func:`stream_pread`)."""
    return functools.partial(os.pread, fd) if isinstance(fd, int) else fd


def stream_pread(f: Any) -> Pread:
    """``pread`` of a seekable binary stream (one that has no file descriptor)."""

    def pread(size: int, offset: int) -> bytes:
        f.seek(offset)
        return bytes(f.read(size))

    return pread


def file_pread(f: Any) -> Pread:
    """``pread`` of an opened file: its file descriptor's (``os.pread``: its position
    stays where it is), else by seeking (a stream that has no descriptor)."""
    try:
        return preader(f.fileno())
    except (AttributeError, OSError, io.UnsupportedOperation):
        return stream_pread(f)


class Source(Protocol):
    """Bytes of a data set by position; reads only move forward for InflatedSource."""

    def read(self, pos: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``pos``: fewer only where the bytes end."""
        ...

    def has(self, pos: int, size: int) -> int:
        """How many of the ``size`` bytes at ``pos`` exist (without reading them)."""
        ...


class FileSource:
    """``os.pread`` of a file (``fd``, or a :data:`Pread`) through one cached window;
    ``end`` is the file size.

    ``head`` (bytes already read at offset ``head_at``) serves as the first window.
    """

    def __init__(self, fd: int | Pread, end: int, head: bytes = b"", head_at: int = 0) -> None:
        self.pread, self.end = preader(fd), end
        self.start, self.data = head_at, head[: max(0, end - head_at)]

    def read(self, pos: int, size: int) -> bytes:
        offset = pos - self.start
        if offset >= 0 and offset + size <= len(self.data):
            return self.data[offset : offset + size]
        size = max(0, min(size, self.end - pos))
        self.start = pos
        self.data = self.pread(max(size, min(WINDOW, self.end - pos)), pos)
        return self.data[:size]

    def has(self, pos: int, size: int) -> int:
        return size if pos + size <= self.end else max(0, self.end - pos)


class InflatedSource:
    """The inflated bytes of a deflated data set ``fd[start:end]`` (PS3.5 A.5).

    Positions count inflated bytes from 0 and only move forward. Raises
    :class:`Corrupt` when the stream cannot be inflated. After
    :meth:`finish`: ``stream_size`` (compressed bytes up to the end of the
    deflate stream, None if it never ended), ``crc32`` and ``size`` of the
    inflated data.
    """

    def __init__(self, fd: int | Pread, start: int, end: int) -> None:
        self.pread, self.next_in, self.end = preader(fd), start, end
        self.start = start
        self._z = zlib.decompressobj(-zlib.MAX_WBITS)
        self.buf = bytearray()
        self.buf_at = 0  # inflated position of buf[0]
        self.size = 0  # inflated bytes produced so far
        self.crc32 = 0
        self.stream_size: int | None = None

    def _produce(self, limit: int) -> bytes:
        """Up to ``limit`` more inflated bytes; b"" at the end of the stream or input."""
        z = self._z
        while True:
            if z.eof:
                return b""
            if z.unconsumed_tail:
                data = z.decompress(z.unconsumed_tail, limit)
            elif self.next_in >= self.end:
                # what zlib held back for an earlier limit, its input all consumed (else
                # the last bytes were lost: a walk starting past 0 found the data short)
                data = z.decompress(b"", limit)
                if not data:
                    return b""
            else:
                chunk = self.pread(min(WINDOW, self.end - self.next_in), self.next_in)
                if not chunk:
                    self.end = self.next_in  # the file is shorter than it was
                    return b""
                self.next_in += len(chunk)
                try:
                    data = z.decompress(chunk, limit)
                except zlib.error as exc:
                    raise Corrupt(f"the deflated data set cannot be inflated: {exc}") from None
            if z.eof and self.stream_size is None:
                # what follows the stream (also left in unconsumed_tail when limited)
                self.stream_size = self.next_in - len(z.unused_data) - self.start
            if data:
                self.size += len(data)
                self.crc32 = zlib.crc32(data, self.crc32)
                return data

    def _advance(self, pos: int) -> None:
        """Inflate up to ``pos`` and keep at most :data:`WINDOW` bytes before it (a walk
        may look back that far: an item's end after an element that overran it, review82
        F5); :class:`Corrupt` for a read further behind, never other bytes."""
        if pos < self.buf_at:
            raise Corrupt(
                f"the inflated data set was read at offset {pos}, more than {WINDOW} bytes"
                f" behind offset {self.buf_at + WINDOW}"
            )
        known = self.buf_at + len(self.buf)
        while known < pos:
            data = self._produce(min(pos - known, WINDOW))
            if not data:
                break
            self.buf += data
            known += len(data)
            self._trim(min(pos, known))
        self._trim(pos)

    def _trim(self, pos: int) -> None:
        """Drop what is more than :data:`WINDOW` bytes before ``pos``."""
        drop = pos - WINDOW - self.buf_at
        if drop > 0:
            del self.buf[:drop]
            self.buf_at += drop

    def read(self, pos: int, size: int) -> bytes:
        self._advance(pos)
        at = pos - self.buf_at
        while len(self.buf) - at < size:
            data = self._produce(WINDOW)
            if not data:
                break
            self.buf += data
        return bytes(self.buf[at : at + size])

    def has(self, pos: int, size: int) -> int:
        self._advance(pos + size)
        return max(0, min(size, self.buf_at + len(self.buf) - pos))

    def finish(self) -> None:
        """Inflate (and drop) the rest, so that ``stream_size``, ``crc32``, ``size`` are known."""
        self.buf.clear()
        while self._produce(WINDOW):
            pass
