"""serve_http inside a running loop, as ``dicomstore serve --http-port`` will run it."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import httpx
import pytest

from dicomstore.archive import Archive
from dicomstore.http import HttpServer, build_app, serve_http


def test_serve_http_runs_until_cancelled(tmp_path: Path) -> None:
    async def scenario() -> None:
        archive = Archive(tmp_path / "archive", fsync=False)
        with socket.socket() as probe:  # a port that is free now
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        ready = asyncio.Event()
        task = asyncio.create_task(serve_http(archive, "127.0.0.1", port, ready=ready))
        await asyncio.wait_for(ready.wait(), 30)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            r = await client.get("/studies")
            assert (r.status_code, r.json()) == (200, [])
            assert (await client.get("/")).status_code == 200
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with socket.socket() as again:  # the port is free again
            again.bind(("127.0.0.1", port))
        archive.close()

    asyncio.run(scenario())


def test_a_busy_port_raises_at_start(tmp_path: Path) -> None:
    async def scenario() -> None:
        Archive(tmp_path / "archive").close()
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            server = HttpServer(build_app(tmp_path / "archive"), "127.0.0.1", busy.getsockname()[1])
            with pytest.raises(OSError):
                await server.start()

    asyncio.run(scenario())


def test_connections_have_nagle_off(tmp_path: Path) -> None:
    """Small responses are not held back 40 ms by Nagle + delayed ACK."""

    async def scenario() -> None:
        Archive(tmp_path / "archive").close()
        server = HttpServer(build_app(tmp_path / "archive"), "127.0.0.1", 0)
        await server.start()
        try:
            assert server._socket is not None
            assert server._socket.proto == socket.IPPROTO_TCP  # asyncio then sets TCP_NODELAY
        finally:
            await server.close()

    asyncio.run(scenario())
