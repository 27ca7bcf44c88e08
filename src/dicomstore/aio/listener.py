"""The accepting socket: TCP (or TLS) connections handed to an application.

The asyncio shell knows sockets, not services: a :class:`Listener` binds,
accepts, gives each connection's :class:`~dicomstore.aio.association.Stream`
to the ``on_connect`` coroutine it was made with (the way an ASGI server calls
its app), remembers the tasks that serve them, and closes gracefully: stop
accepting, let the application abort what is idle, wait for the rest within a
grace period, cancel what is left (PS3.8 7.3: an A-ABORT, by the application).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

from dicomstore.aio.stream import Stream

log = logging.getLogger("dicomstore.server")

OnConnect = Callable[[Stream], Coroutine[Any, Any, None]]


class Listener:
    """Accepts connections on ``host:port`` and serves each with ``on_connect``."""

    def __init__(
        self,
        host: str,
        port: int,
        on_connect: OnConnect,
        *,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout: float | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.host = host
        #: SO_REUSEPORT: several processes (of this user) listen on the port and the
        #: kernel spreads the connections over them (``dicomstore serve --workers``)
        self.reuse_port = reuse_port
        self.requested_port = port
        self.on_connect = on_connect
        self.ssl_context = ssl_context
        self.handshake_timeout = handshake_timeout
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.base_events.Server | None = None

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def started(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Bind and start accepting connections."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Stream(self._serve),
            self.host,
            self.requested_port,
            ssl=self.ssl_context,
            ssl_handshake_timeout=self.handshake_timeout if self.ssl_context else None,
            reuse_port=self.reuse_port or None,
        )

    async def serve_forever(self) -> None:
        """Start (if needed) and serve until cancelled or closed."""
        if self._server is None:
            await self.start()
        assert self._server is not None
        try:
            await self._server.serve_forever()
        except asyncio.CancelledError:
            pass

    async def _serve(self, stream: Stream) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self.on_connect(stream)
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def close(self, grace: float, abort_idle: Callable[[], None] | None = None) -> None:
        """Stop accepting; ``abort_idle`` ends what may go at once; wait up to
        ``grace`` s for the connections still served; cancel the rest."""
        if self._server is not None:
            self._server.close()
        tasks = set(self._tasks)
        if tasks:
            if abort_idle is not None:
                abort_idle()
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        if self._server is not None:
            await self._server.wait_closed()
