"""A node's journal: new instances made durable by one small write (PS3.4 B.1.2).

A batch of new instances committed before its flush (``deferred.py``) is made
durable here instead of by a syncfs: each member's file, whole, with its key,
digest and batch, is appended to ``<node folder>/journal`` in one ``pwritev``
with ``RWF_DSYNC``. The file is made of zeros written (not allocated) and
flushed before its first use, so such a write changes no metadata of the file
system: it costs the data and one device flush (~0.2 ms here), where a syncfs
waits for a commit of the file system's journal (~1 ms, more with many dirty
files). The files, their names and the COMMIT reach the disk later, in one
syncfs for many batches (:meth:`Journal.checkpoint`, by ``publish.py``), after
which their records are no longer needed.

Format (little-endian). Two superblock slots at 0 and 4096, each
``"DSJS", version, checkpoint`` and the xxh3-128 of those 16 bytes: the
records up to ``checkpoint`` (a sequence number) are obsolete; the valid slot
with the larger one counts (a torn write of one slot leaves the other). Records
from :data:`START` on, each at a multiple of 4096: ``"DSJR", version, seq,
len(meta), len(data)``, the xxh3-128 of all of that, the meta (JSON) and the
data, then zeros to the next 4096. After a checkpoint the next record goes to
:data:`START` again, so the records that count are the run of valid ones from
there with sequence numbers past the checkpoint, in order: a record torn by a
crash (never answered) ends the run.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from dicomstore.archive import layout

log = logging.getLogger("dicomstore.archive")

#: The journal's name in a node's folder (``nodes.py``).
NAME = "journal"
ALIGN = 4096
START = 2 * ALIGN
#: The size a journal starts with; a checkpoint forced by a full journal doubles
#: it, up to :data:`MAX_SIZE`.
INITIAL_SIZE = 1 << 20
MAX_SIZE = 64 << 20
_SUPER = struct.Struct("<4sIQ")
_HEAD = struct.Struct("<4sIQII")
_SUM = 16
_VERSION = 1
_ZEROS = bytes(ALIGN)
_PLACEHOLDER = bytes(_HEAD.size + _SUM)
#: Bytes of records held at once before they are written (``Journal.append``),
#: read from their files a chunk at a time.
GROUP = 1 << 20
CHUNK = 256 << 10


@dataclass(slots=True)
class Record:
    """One journaled instance: its file's bytes (``data``) and what ``meta`` says
    of them (the key, the digest, the batch, the trace's name)."""

    seq: int
    meta: dict[str, Any]
    data: bytes


def record_size(data_size: int, meta: bytes) -> int:
    """The bytes a record takes in the journal (aligned)."""
    return -(-(_HEAD.size + _SUM + len(meta) + data_size) // ALIGN) * ALIGN


class Journal:
    """The writer of one node's journal (one thread at a time: the publishing leader).

    Created on first use; :meth:`append` makes records durable; :meth:`checkpoint`
    makes them obsolete (the caller has made what they stand for durable first).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self._fd = -1
        self._head = START
        self._seq = 0
        self._slot = 0
        #: a checkpoint was forced by a full journal: the next one grows it
        self._full = False
        self._dsync = hasattr(os, "RWF_DSYNC")
        #: records appended since the last checkpoint
        self.pending = 0
        #: a write failed (a record, the superblock), or a flush of what the records
        #: stand for did: records may count that no checkpoint will make obsolete in
        #: this process's life (the next start replays them); nothing more is written
        self.broken = False

    def fits(self, sizes: list[int]) -> bool:
        """Whether records of these sizes (``record_size``) fit in the journal at
        its largest, and it is not :attr:`broken` (else the batch is flushed the
        usual way)."""
        return not self.broken and START + sum(sizes) <= MAX_SIZE

    def room(self, nbytes: int) -> bool:
        """Whether ``nbytes`` of records fit before the next checkpoint (False
        also marks the journal to grow at that checkpoint)."""
        if self._fd < 0:
            self._open()
        if self._head + nbytes <= self.size:
            return True
        self._full = True
        return False

    def append(self, entries: list[tuple[bytes, int, int]]) -> None:
        """Write the records, each ``(meta, fd, size)``: the meta (JSON bytes) and
        the first ``size`` bytes of the file open at ``fd``, read a chunk at a time
        (at most :data:`GROUP` bytes held at once). Durable on return: one
        ``pwritev(RWF_DSYNC)`` when the batch fits in one group (the common case),
        else the groups, the headers, one ``fdatasync``. ``OSError`` when that
        failed (then none of them counts as written). :meth:`room` said they fit."""
        try:
            self._append(entries)
        except BaseException as exc:
            self.fail(f"writing records failed: {exc}")
            raise
        self.pending += len(entries)

    def _append(self, entries: list[tuple[bytes, int, int]]) -> None:
        group: list[bytes] = []  # (a record's head and sum: a placeholder until known)
        held = 0
        start = offset = self._head
        heads: list[tuple[int, bytes]] = []  # (offset, head) of records written early
        early = False  # a group written before the last
        for meta, fd, size in entries:
            self._seq += 1
            head = _HEAD.pack(b"DSJR", _VERSION, self._seq, len(meta), size)
            digest = xxhash.xxh3_128(head)
            digest.update(meta)
            slot = len(group)
            group += (_PLACEHOLDER, meta)
            held += len(_PLACEHOLDER) + len(meta)
            record = offset
            done = 0
            while done < size:
                chunk = os.pread(fd, min(CHUNK, size - done), done)
                if not chunk:
                    raise OSError(5, "the file is shorter than its size", str(self.path))
                digest.update(chunk)
                group.append(chunk)
                held += len(chunk)
                done += len(chunk)
                if held >= GROUP:
                    self._write_group(group, start, dsync=False)
                    if slot >= 0:  # (its head, written once known)
                        heads.append((record, b""))
                        slot = -1
                    start += held
                    group, held, early = [], 0, True
            pad = -(_HEAD.size + _SUM + len(meta) + size) % ALIGN
            if pad:
                group.append(_ZEROS[:pad])
                held += pad
            offset = -(-(offset + _HEAD.size + _SUM + len(meta) + size) // ALIGN) * ALIGN
            known = head + digest.digest()
            if slot >= 0:
                group[slot] = known
            else:
                heads[-1] = (record, known)
        if not early:
            self._write_group(group, start, dsync=True)
        else:
            if group:
                self._write_group(group, start, dsync=False)
            for record, known in heads:
                os.pwrite(self._fd, known, record)
            os.fdatasync(self._fd)
        self._head = offset

    def _write_group(self, group: list[bytes], offset: int, *, dsync: bool) -> None:
        if len(group) > 512:  # (IOV_MAX is 1024)
            group = [b"".join(group)]
        if dsync:
            self._write(group, offset)
            return
        self._wrote(os.pwritev(self._fd, group, offset), group)

    def checkpoint(self) -> None:
        """Make every record written so far obsolete: the caller has made durable
        everything they stand for (one syncfs that began after they were
        written). The superblock says so, durably, before the next record may
        overwrite them; a journal found too small grows now."""
        if self._fd < 0 or not self.pending:
            return
        if self.broken:
            raise OSError(5, "the journal is broken: left for the next start", str(self.path))
        block = _SUPER.pack(b"DSJS", _VERSION, self._seq)
        block += xxhash.xxh3_128(block).digest()
        self._slot ^= 1
        try:
            self._write([block], self._slot * ALIGN)
        except BaseException as exc:  # (the block may have landed: no record after it)
            self.fail(f"writing its superblock failed: {exc}")
            raise
        self._head = START
        self.pending = 0
        if self._full and self.size < MAX_SIZE:
            self._grow(min(self.size * 2, MAX_SIZE))
        self._full = False

    def fail(self, why: str) -> None:
        """Mark the journal :attr:`broken` (said once, in the log)."""
        if not self.broken:
            log.error(
                "%s: %s; its records are left for the next start, and instances are"
                " flushed one syncfs each until then",
                self.path,
                why,
            )
        self.broken = True

    def close(self) -> None:
        """Let go of the file; it goes too when nothing in it counts any more."""
        if self._fd < 0:
            return
        os.close(self._fd)
        self._fd = -1
        if not self.pending and not self.broken:
            layout.remove_quietly(self.path)

    def _open(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self._fd = fd
        try:
            self._grow(INITIAL_SIZE)  # (its name: below)
            layout.fsync_dir(self.path.parent)
            layout.fsync_dir(self.path.parent.parent)  # (a node's folder is new)
        except BaseException:
            os.close(fd)
            self._fd = -1
            layout.remove_quietly(self.path)
            raise

    def _grow(self, size: int) -> None:
        """Zeros written up to ``size`` and flushed (data and size): from then on a
        record written in it changes no metadata."""
        chunk = bytes(1 << 20)
        offset = self.size
        while offset < size:
            offset += os.pwrite(self._fd, chunk[: size - offset], offset)
        os.fsync(self._fd)
        self.size = size

    def _write(self, buffers: list[bytes], offset: int) -> None:
        if self._dsync:
            try:
                written = os.pwritev(self._fd, buffers, offset, os.RWF_DSYNC)
            except OSError as exc:
                if exc.errno not in (95, 22):  # EOPNOTSUPP, EINVAL: flushed below
                    raise
                self._dsync = False
            else:
                self._wrote(written, buffers)
                return
        data = b"".join(buffers)
        self._wrote(os.pwrite(self._fd, data, offset), [data])
        os.fdatasync(self._fd)

    def _wrote(self, written: int, buffers: list[bytes]) -> None:
        """``OSError`` when fewer bytes than ``buffers`` hold were written (a file
        of zeros written ahead: only a failing device writes short)."""
        if written != sum(len(b) for b in buffers):
            raise OSError(28, "short write to the journal", str(self.path))


def is_version(row: Mapping[str, Any] | None, meta: Mapping[str, Any]) -> bool:
    """Whether the index row ``row`` is the version a record's ``meta`` holds (filed at
    its key with its digest), not one stored or filed elsewhere since."""
    return row is not None and (row["path"], row["digest"]) == (meta["key"], meta["digest"])


#: How :func:`records` says a journal is damaged (not torn by a crash).
DAMAGED = "the journal is damaged"


def read(path: Path) -> list[Record]:
    """The records of the journal at ``path`` that still count, in order (none when
    there is no journal)."""
    return list(records(path))


def records(path: Path, stored: Callable[[dict[str, Any]], bool] | None = None) -> Iterator[Record]:
    """:func:`read`, one record at a time (at most one in memory). A record that cannot
    be read ends them (torn by a crash before its answer); but with ``stored`` (whether
    the index holds the instance of a record's meta), ``OSError`` when a whole record
    after it is of an instance stored: the bad one was flushed before it, so damaged
    (review115 F2: its answered instance was dropped, said nowhere)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        size = os.fstat(fd).st_size
        checkpoint = 0
        for slot in (0, 1):
            block = os.pread(fd, _SUPER.size + _SUM, slot * ALIGN)
            if len(block) < _SUPER.size + _SUM:
                continue
            magic, _version, seq = _SUPER.unpack_from(block)
            if magic == b"DSJS" and xxhash.xxh3_128(block[: _SUPER.size]).digest() == block[-_SUM:]:
                checkpoint = max(checkpoint, seq)
        offset, last = START, checkpoint
        while offset + _HEAD.size + _SUM <= size:
            found = _record_at(fd, offset, size, last)
            if found is None:  # (torn by a crash, never answered: the end; unless a
                # later record is whole and stored, and this one damaged)
                if stored is not None and _stored_after(fd, offset, size, last, stored):
                    raise OSError(
                        errno.EIO,
                        f"{DAMAGED}: its record at byte {offset} cannot be read, a later"
                        " one can (answered instances would be lost)",
                        str(path),
                    )
                break
            record, end = found
            yield record
            last = record.seq
            offset = -(-end // ALIGN) * ALIGN
    finally:
        os.close(fd)


def _record_at(fd: int, offset: int, size: int, last: int) -> tuple[Record, int] | None:
    """The whole record at ``offset`` after sequence number ``last``, and where it
    ends; None when there is none (torn, damaged, or of an earlier run)."""
    head = os.pread(fd, _HEAD.size + _SUM, offset)
    if len(head) < _HEAD.size + _SUM:
        return None
    magic, _version, seq, meta_len, data_len = _HEAD.unpack_from(head)
    end = offset + _HEAD.size + _SUM + meta_len + data_len
    if magic != b"DSJR" or seq <= last or end > size:
        return None
    body = os.pread(fd, meta_len + data_len, offset + _HEAD.size + _SUM)
    digest = xxhash.xxh3_128(head[: _HEAD.size])
    digest.update(body)
    if digest.digest() != head[_HEAD.size :]:
        return None
    try:
        meta = json.loads(body[:meta_len])
    except ValueError:
        return None
    return Record(seq, meta, body[meta_len:]), end


def _stored_after(
    fd: int, offset: int, size: int, last: int, stored: Callable[[dict[str, Any]], bool]
) -> bool:
    """Whether a whole record after ``last``, of an instance ``stored``, begins at an
    aligned place past ``offset`` (one of the same unflushed write may be whole where
    the bad one was torn: neither was answered, nor indexed)."""
    at = (offset // ALIGN + 1) * ALIGN
    while at + _HEAD.size + _SUM <= size:
        found = _record_at(fd, at, size, last)
        if found is not None and stored(found[0].meta):
            return True
        at += ALIGN
    return False
