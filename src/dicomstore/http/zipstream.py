"""A zip archive written as a stream (``application/zip``, PS3.18 8.7.3.5).

:mod:`zipfile` writes to an unseekable sink by using data descriptors; each
file is stored (DICOM pixel data rarely deflates well) and copied in chunks,
so memory stays at one chunk whatever the study's size.
"""

from __future__ import annotations

import functools
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, BinaryIO

from dicomstore.archive.layout import copy_name
from dicomstore.archive.reader import ArchiveReader
from dicomstore.http.answer import unless_gone

CHUNK = 1 << 20


class _Sink:
    """A write-only file object collecting what zipfile writes, drained by the generator."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:  # (zipfile never closes a file object it was given)
        pass

    def drain(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


def instance_files(
    reader: ArchiveReader, rows: Iterable[Mapping[str, Any]]
) -> list[tuple[str, Callable[[], BinaryIO]]]:
    """:func:`zip_files`'s entries for instance ``rows``: named as the archive files
    them (``layout.copy_name``), opened through the archive (its storage) when their
    turn comes (:func:`open_stored`)."""
    return [(copy_name(row), functools.partial(_open_now, reader, row)) for row in rows]


def _open_now(reader: ArchiveReader, row: Mapping[str, Any]) -> BinaryIO:
    """:func:`open_stored`, or of the instance's row now when it was replaced since
    (``ArchiveReader.follow``: the ZIP left it out, review51 #1)."""
    try:
        return open_stored(reader, row)
    except OSError:
        moved = reader.follow(row)
        if moved is None:
            raise
        return open_stored(reader, moved)


def open_stored(reader: ArchiveReader, row: Mapping[str, Any]) -> BinaryIO:
    """The stored file of ``row``, read through its indexed size and digest
    (``ArchiveReader.open_checked``: a copy damaged since raises ``DamagedCopy``
    instead of its last bytes, and the answer is cut off: ``answer.EndsBroken``);
    ``OSError`` when it was deleted since the query (then it is left out),
    :class:`AnswerBroken` when it is still indexed but cannot be read or is of
    another size (a damaged archive: the answer is cut off, with a WARNING naming
    it, not given without it as if whole: review35b F10)."""
    try:
        return reader.open_checked(row)
    except (OSError, ValueError) as exc:
        unless_gone(reader.indexed, row, exc)
        raise OSError(f"{row['sop_instance_uid']} was deleted or replaced") from None


def zip_files(files: Iterable[tuple[str, Callable[[], BinaryIO]]]) -> Iterator[bytes]:
    """The bytes of a zip holding each ``(name, open)``: ``open()`` gives the stream
    of its bytes (an instance's, ``ArchiveReader.open``); those that vanished
    (``OSError``, ``ValueError``) are skipped."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, opener in files:
            try:
                source = opener()
            except (OSError, ValueError):
                continue
            with source, archive.open(name, "w", force_zip64=True) as target:
                while block := source.read(CHUNK):
                    target.write(block)
                    yield sink.drain()
            yield sink.drain()
    yield sink.drain()
