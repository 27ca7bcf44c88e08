"""A zip archive written as a stream (``application/zip``, PS3.18 8.7.3.5).

:mod:`zipfile` writes to an unseekable sink by using data descriptors; each
file is stored (DICOM pixel data rarely deflates well) and copied in chunks,
so memory stays at one chunk whatever the study's size.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

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


def zip_files(files: Iterable[tuple[str, Path]]) -> Iterator[bytes]:
    """The bytes of a zip holding each ``(name, path)``; files that vanished are skipped."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, path in files:
            try:
                source = open(path, "rb")  # noqa: SIM115 - closed by the with below
            except OSError:
                continue
            with source, archive.open(name, "w", force_zip64=True) as target:
                while block := source.read(CHUNK):
                    target.write(block)
                    yield sink.drain()
            yield sink.drain()
    yield sink.drain()
