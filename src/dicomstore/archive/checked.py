"""A stored copy read through what the index recorded of it: the doors that give a
stored instance whole (C-GET and C-MOVE sub-operations, forwarding, WADO-RS, PS3.4
C.4.2/C.4.3, PS3.18 10.4) read it through :class:`CheckedStream`, so that a copy
damaged since it was stored (a flipped bit, a truncated or swapped file) is never
given on as if it were the one stored.

The stream knows the index row: the file size, the recorded digest of the data set
(``digests.py``: the bytes after the File Meta Information), the transfer syntax. A
size that differs, or a File Meta Information naming another transfer syntax (which
the digest does not cover), is found when it opens
(:class:`DamagedCopy`, before anything is sent); the digest as it is read, each byte
hashed once: the read that would return the file's last bytes hashes them and
compares first, raising :class:`DamagedCopy` instead of returning them. A version
filed at the same key since the row was read (replaced twice, deleted and stored
again) is judged against the row the index has now: no damage.

The receiver never has the whole data set: an association is aborted before its
last fragment (PS3.8 7.3.1), an HTTP answer cut before its last byte. No second
read of the file, no extra copy in memory: one hash update per chunk read.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from dicomstore.archive import digests, layout
from dicomstore.archive.dicomfile import HeaderError, meta_of

log = logging.getLogger("dicomstore.archive.checked")

#: How much a forward seek hashes at a time (the bytes skipped are hashed all the same).
_GAP_READ = 1 << 20


class DamagedCopy(OSError):
    """A stored file is not what was stored: its size, the digest of its data set or
    the transfer syntax its File Meta Information names differs from what the index
    recorded (an ``OSError``:
    the file cannot be read as stored; logged ``archive damage`` once, where it is
    found)."""


class CheckedStream(io.RawIOBase):
    """The stored file ``raw`` of the index row ``row`` (its ``path``, ``file_size``,
    ``digest``, ``transfer_syntax_uid``; its ``sop_instance_uid`` for the log), read
    through them: see the module notes. ``name()``: where it is, for the log;
    ``again()``: the row of the instance as the index has it now (None: not
    stored), asked only when the file
    differs from ``row``: a replace, or a delete and a store, since ``row`` was read
    that filed the new version at the same key is no damage (review104 F1). Reads and
    seeks as ``raw`` does; a seek forward hashes the bytes it skips (the digest stays a
    running hash of the data set from its start)."""

    def __init__(
        self,
        raw: BinaryIO,
        row: Mapping[str, Any],
        *,
        name: Callable[[], str],
        again: Callable[[], Mapping[str, Any] | None] | None = None,
    ) -> None:
        super().__init__()
        self._raw, self._row, self._name, self._again = raw, row, name, again
        self._given = row
        self._uid = str(row["sop_instance_uid"])
        try:
            actual = raw.seek(0, os.SEEK_END)
            if actual != int(row["file_size"]):
                now = self._changed()
                if now is None or int(now["file_size"]) != actual:
                    raise self._damaged(f"file size {actual}, stored {row['file_size']}")
                self._row = now  # (replaced since: its version now, judged as such)
            self._hashed = self._meta_checked()  # (the digest's bytes start here)
            raw.seek(0)
        except BaseException:
            raw.close()
            raise
        self._size = int(self._row["file_size"])
        self._hasher = digests.new(digests.algorithm_of(str(self._row["digest"])))
        self._pos = 0
        self._verdict: DamagedCopy | bool | None = None  # (None: not judged yet)

    def _meta_checked(self) -> int:
        """Where the data set starts, its File Meta Information read and found to name
        the transfer syntax the index has (a flipped bit there is damage the digest does
        not cover: review104 F2, a JPEG 2000 lossless relabelled)."""
        try:
            start, meta = meta_of(self._raw)
        except HeaderError as exc:
            raise self._damaged(f"its File Meta Information: {exc}") from None
        wrong = meta_differs(meta, self._row)
        if wrong is not None:
            now = self._changed()
            if now is None or meta_differs(meta, now) is not None:
                raise self._damaged(wrong)
            self._row = now
        return start

    @property
    def replaced(self) -> bool:
        """Another version than ``row`` is at its key now (of another size or meta, found
        at the open): what its caller read of it before (a scan's sizes) is stale."""
        return self._row is not self._given

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
        if self._verdict is None:  # (judged already at its last read: nothing to read)
            self.seek(self._size)
            self.read(1)  # (at its end: judged)
        self._judge()

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
            elif digests.text(self._hasher) != self._row["digest"] and not self._newer():
                self._verdict = self._damaged("its data set differs from what was stored")
            else:
                self._verdict = True
        if isinstance(self._verdict, DamagedCopy):
            raise self._verdict

    def _changed(self) -> Mapping[str, Any] | None:
        """The instance's row now, when it files another version at this same key."""
        now = None if self._again is None else self._again()
        if now is None or now["path"] != self._row["path"]:
            return None
        same = (now["digest"], now["file_size"]) == (self._row["digest"], self._row["file_size"])
        return None if same else now

    def _newer(self) -> bool:
        """The data set read is, whole, the version the index files here now."""
        now = self._changed()
        if now is None or int(now["file_size"]) != self._size:
            return False
        return str(now["digest"]) == digests.text(self._hasher)

    def _damaged(self, why: str) -> DamagedCopy:
        log.warning("archive damage: instance %s: its file %s: %s", self._uid, self._name(), why)
        return DamagedCopy(f"archive damage: instance {self._uid}: {why}")


def meta_differs(meta: Mapping[int, bytes], row: Mapping[str, Any]) -> str | None:
    """How the File Meta Information values ``meta`` (by element number) name another
    transfer syntax, (0002,0010), than the index row ``row``, in words; None: the same,
    or none (blank). The one judgement of it: the checked stream's, ``check``'s and
    Storage Commitment's. Not its (0002,0003) Media Storage SOP Instance UID: a
    C-STORE whose command names another SOP Instance than its data set (DCMTK storescu
    takes it from a file's meta) is filed by its data set's, its meta keeping the
    command's (sweep106: taken for damage, intact as stored)."""
    said = layout.normalize_uid(meta.get(0x0010, b""))
    if not said or said == layout.normalize_uid(row["transfer_syntax_uid"]):
        return None
    stored = row["transfer_syntax_uid"]
    return f"its File Meta Information names transfer syntax {said}; stored {stored}"


def file_meta_differs(path: Path, row: Mapping[str, Any]) -> str | None:
    """:func:`meta_differs` of the PS3.10 file at ``path`` (``HeaderError``, ``OSError``)."""
    with open(path, "rb") as fp:
        return meta_differs(meta_of(fp)[1], row)


class CheckedOnce:
    """The stored files found whole (read through their digest) while unchanged: a door
    that reads parts of a copy (WADO-RS frames, bulk data, rendered images, PS3.18
    10.4.1.1.3-6) reads it whole through its record first, once for each version of
    its file (device, inode, size, modification time) and recorded digest, so that a
    viewer asking for frame after frame does not read the file each time. The last
    ``most`` versions are remembered (the oldest forgotten first: read again when
    asked for). Damage done to a file in place since it was found whole, leaving its
    size and modification time (a flipped bit on the medium), is found by ``check``
    and by the doors that give the copy whole, not by these until the next start."""

    def __init__(self, most: int = 65536) -> None:
        self._most = most
        self._seen: OrderedDict[tuple[Any, ...], None] = OrderedDict()
        #: the versions being read now, and what their readers set once done
        self._reading: dict[tuple[Any, ...], threading.Event] = {}
        self._lock = threading.Lock()

    def check(self, row: Mapping[str, Any], local: Path | None, open_checked: Any) -> None:
        """Raise :class:`DamagedCopy` when the copy of index row ``row`` is damaged
        since it was stored; ``local``: its file (None: no local file, read whole each
        time); ``open_checked(row, local)``: the checked stream of it. Requests for a
        version being read meanwhile wait for that read (review113 L4: a viewer's
        first frames of one file read it whole each, 6 to 8 times for 16)."""
        if local is None:
            with open_checked(row, local) as stream:
                stream.verify()
            return
        info = os.stat(local)
        version = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        stamp = (str(row["path"]), str(row["digest"]), *version)
        for _ in range(2):  # (a read that failed meanwhile: this one reads it, and says)
            with self._lock:
                if stamp in self._seen:
                    self._seen.move_to_end(stamp)
                    return
                other = self._reading.get(stamp)
                if other is None:
                    self._reading[stamp] = mine = threading.Event()
                    break
            other.wait()
        else:
            mine = threading.Event()  # (read alone: what failed twice is not waited on)
        try:
            with open_checked(row, local) as stream:
                stream.verify()
            with self._lock:
                self._seen[stamp] = None
                while len(self._seen) > self._most:
                    self._seen.popitem(last=False)
        finally:
            with self._lock:
                if self._reading.get(stamp) is mine:
                    del self._reading[stamp]
            mine.set()
