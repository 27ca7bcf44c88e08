"""An in-memory :class:`~dicomstore.archive.storage.Storage` (tests only): the seam test
double that shows the doors read stored instances through the archive, never by a
path of their own (issue 17 item 3). It keeps no local file (``local_path`` is
``None``), so every reader takes its streaming path."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from dicomstore.archive.filestorage import FileStorage


class MemoryStorage:
    """Objects in a dict, by key; every read counted in ``opened``."""

    def __init__(self, objects: dict[str, bytes] | None = None) -> None:
        self.objects: dict[str, bytes] = dict(objects or {})
        self.opened: list[str] = []

    @classmethod
    def copy_of(cls, files: FileStorage) -> MemoryStorage:
        """The stored instances of ``files``, by the same keys."""
        return cls({key: files.path(key).read_bytes() for key in files.keys("")})

    def _check(self, key: str) -> str:
        rel = PurePosixPath(key)
        if not key or rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"not a key of the archive: {key!r}")
        return key

    def open(self, key: str) -> BinaryIO:
        data = self.objects.get(self._check(key))
        if data is None:
            raise FileNotFoundError(2, "no such object", key)
        self.opened.append(key)
        return io.BytesIO(data)

    def local_path(self, key: str) -> Path | None:
        self._check(key)
        return None

    def size(self, key: str) -> int:
        with self.open(key) as f:
            return f.seek(0, io.SEEK_END)

    def version(self, key: str) -> str:
        with self.open(key) as f:
            return hashlib.sha256(f.read()).hexdigest()

    def exists(self, key: str) -> bool:
        return self._check(key) in self.objects

    def keys(self, prefix: str = "") -> Iterator[str]:
        return iter([k for k in sorted(self.objects) if k.startswith(prefix)])

    def delete(self, key: str) -> bool:
        return self.objects.pop(self._check(key), None) is not None

    def free_space(self) -> int | None:
        return None

    def scratch(self) -> Path | None:
        return None
