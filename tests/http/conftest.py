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
