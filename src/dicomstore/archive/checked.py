"""A stored copy read through what the index recorded of it: the doors that give a
stored instance whole (C-GET and C-MOVE sub-operations, forwarding, WADO-RS, PS3.4
C.4.2/C.4.3, PS3.18 10.4) read it through :class:`CheckedStream`, so that a copy
damaged since it was stored (a flipped bit, a truncated or swapped file) is never
given on as if it were the one stored.

The stream knows the indexed file size and the recorded digest of the data set
(``digests.py``: the bytes after the File Meta Information). A size that differs
is found when it opens (:class:`DamagedCopy`, before anything is sent); the digest
as it is read, each byte hashed once: the read that would return the file's last
bytes hashes them and compares first, raising :class:`DamagedCopy` instead of
returning them. The receiver never has the whole data set: an association is aborted
before its last fragment (PS3.8 7.3.1), an HTTP answer cut before its last byte. No
second read of the file, no extra copy in memory: one hash update per chunk read.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

from dicomstore.archive import digests
from dicomstore.archive.dicomfile import HeaderError, dataset_offset

log = logging.getLogger("dicomstore.archive.checked")

#: How much a forward seek hashes at a time (the bytes skipped are hashed all the same).
_GAP_READ = 1 << 20


class DamagedCopy(OSError):
    """A stored file is not what was stored: its size, or the digest of its data set,
    differs from what the index recorded (an ``OSError``: the file cannot be read as
    stored; logged ``archive damage`` once, where it is found)."""


class CheckedStream(io.RawIOBase):
    """The stored file ``raw`` of the instance ``uid``, read through ``recorded`` (its
    indexed digest) and ``size`` (its indexed file size): see the module notes.
    Reads and seeks as ``raw`` does; a seek forward hashes the bytes it skips (the
    digest stays a running hash of the data set from its start)."""

    def __init__(
        self,
        raw: BinaryIO,
        *,
        recorded: str,
        size: int,
        uid: str,
        name: Callable[[], str],
        start: int | None = None,
    ) -> None:
        super().__init__()
        self._raw, self._recorded, self._size = raw, recorded, size
        self._uid, self._name = uid, name
        try:
            actual = raw.seek(0, os.SEEK_END)
            if actual != size:
                raise self._damaged(f"file size {actual}, stored {size}")
            if start is None:
                try:
                    start = dataset_offset(raw)  # (the digest's bytes start here)
                except HeaderError as exc:
                    raise self._damaged(f"its File Meta Information: {exc}") from None
            self._hashed = start
            raw.seek(0)
        except BaseException:
            raw.close()
            raise
        self._hasher = digests.new(digests.algorithm_of(recorded))
        self._pos = 0
        self._verdict: DamagedCopy | bool | None = None  # (None: not judged yet)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        target = offset + (self._pos if whence == os.SEEK_CUR else 0)
        if whence == os.SEEK_END:
            target = self._size + offset
        if target > self._hashed:  # (skipped bytes are hashed: the digest runs on)
            self._raw.seek(self._hashed)
            while self._hashed < target:
                block = self._raw.read(min(_GAP_READ, target - self._hashed))
                if not block:
                    break
                self._take(block, self._hashed)
        self._pos = self._raw.seek(target)
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = max(self._size - self._pos, 0)
        data = self._raw.read(size)
        self._take(data, self._pos)
        self._pos += len(data)
        if self._pos >= self._size or (size and not data):
            self._judge()
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def verify(self) -> None:
        """Read what is left (hashing it) and judge the copy: :class:`DamagedCopy`, or
        it is the one stored."""
        self.seek(self._size)
        self.read(1)  # (at its end: judged)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()

    def _take(self, data: bytes, at: int) -> None:
        """Hash what of ``data`` (read at ``at``) lies past the bytes hashed already."""
        end = at + len(data)
        if end > self._hashed >= at:
            self._hasher.update(memoryview(data)[self._hashed - at :])
            self._hashed = end

    def _judge(self) -> None:
        """At the end of the file: the digest of all of its data set, compared (once)."""
        if self._verdict is None:
            if self._hashed != self._size:
                why = f"it ends at byte {self._hashed}, stored {self._size}"
                self._verdict = self._damaged(why)
            elif digests.text(self._hasher) != self._recorded:
                self._verdict = self._damaged("its data set differs from what was stored")
            else:
                self._verdict = True
        if isinstance(self._verdict, DamagedCopy):
            raise self._verdict

    def _damaged(self, why: str) -> DamagedCopy:
        log.warning("archive damage: instance %s: its file %s: %s", self._uid, self._name(), why)
        return DamagedCopy(f"archive damage: instance {self._uid}: {why}")


def open_checked(
    raw: BinaryIO, row: Mapping[str, Any], name: Callable[[], str], start: int | None = None
) -> BinaryIO:
    """``raw``, the stored file of the index row ``row`` (``digest``, ``file_size``,
    ``sop_instance_uid``; ``name()``: where it is, for the log), read through its
    digest; :class:`DamagedCopy` now for a size that differs. ``start``: where its data
    set starts, when its File Meta Information was read already (else read here)."""
    stream = CheckedStream(
        raw,
        recorded=str(row["digest"]),
        size=int(row["file_size"]),
        uid=str(row["sop_instance_uid"]),
        name=name,
        start=start,
    )
    return stream  # type: ignore[return-value]  # (io.RawIOBase: a binary stream)
