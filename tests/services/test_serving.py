"""A server's life (``services/serving.py``): what it runs beside the doors."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from dicomstore.archive import Archive
from dicomstore.services import serving
from dicomstore.services.server import ServerConfig


def test_the_archive_s_index_session_is_looked_at_while_it_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review50 #13: an idle node's PostgreSQL session, ended by a server restart,
    was made anew (with the archive's lock) only at its next store."""
    monkeypatch.setattr(serving, "KEEP_HELD_EVERY", 0.01)
    archive = Archive(tmp_path / "root", fsync=False)
    looked = threading.Event()
    real = archive.keep_held

    def keep_held() -> None:
        real()
        looked.set()

    archive.keep_held = keep_held  # type: ignore[method-assign]

    async def main() -> None:
        async with serving.running(archive, ServerConfig(port=0)):
            assert await asyncio.to_thread(looked.wait, 30)

    try:
        asyncio.run(main())
    finally:
        archive.close()
