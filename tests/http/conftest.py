"""The STOW-RS tests' server: an archive behind the HTTP app, and a client for it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from http_testlib import HttpThread

from dicomstore.archive import Archive


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[httpx.Client, Archive]]:
    archive = Archive(tmp_path / "archive", fsync=False)
    with HttpThread(archive) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        yield client, archive
    archive.close()


@pytest.fixture
def unchecked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames, rendered images and bulk data without the read of the whole copy through
    its digest before them (``ArchiveReader.check_once``, which finds a file damaged
    since it was stored first): what their own reading finds of a file damaged after
    that read (cut, overwritten) is tested so."""
    from dicomstore.archive.reader import ArchiveReader

    monkeypatch.setattr(ArchiveReader, "check_once", lambda self, row: None)
