"""HTTPS connections counted from their accept, TLS handshake included (RFC 8446).

Given ``ssl=``, the event loop does each connection's TLS handshake before it makes
the HTTP protocol's acquaintance, so ``http/guard.py`` counted a connection only once
its handshake was done: a flood of handshakes begun and never finished held a
descriptor and the loop's TLS buffers (256 KiB) each, bounded in time only.
Refusing from the protocol factory is no way out (uvloop then stops accepting), nor
is a protocol of ours calling ``loop.start_tls`` (uvloop loses a ClientHello that
arrives before it). So an HTTPS server accepts itself (:class:`TlsAcceptor`, the part
of ``asyncio.Server`` uvicorn uses): it counts each connection toward
``--http-max-connections`` and ``--http-max-per-address``, closes one too many at once
(nothing can be answered before TLS; logged), and hands the others to
``loop.connect_accepted_socket`` with the TLS context and the handshake timeout; a
connection leaves the count when its handshake fails (logged, with why) or when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable

from dicomstore.http.limits import HttpLimits
from dicomstore.tls import handshake_failure

log = logging.getLogger("dicomstore.http.limits")


class TlsAcceptor:
    """Accepts on ``sock`` for the protocols ``factory`` makes, over TLS."""

    def __init__(
        self,
        factory: Callable[[], asyncio.Protocol],
        sock: socket.socket,
        context: ssl.SSLContext,
        limits: HttpLimits,
    ) -> None:
        self.factory = factory
        self.sock = sock
        self.context = context
        self.limits = limits
        #: connections open (handshaking or not) per client address
        self.open: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        sock.setblocking(False)
        self._accepting = asyncio.get_running_loop().create_task(self._accept())

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(self.sock)
            except OSError as exc:  # (out of descriptors: the connection waits its turn)
                log.warning("HTTPS: cannot accept a connection: %s", exc)
                await asyncio.sleep(0.1)
                continue
            host = str(peer[0]) if peer else "?"
            why = self.limits.too_many(sum(self.open.values()), host, self.open.get(host, 0))
            if why:
                log.warning("HTTPS connection from %s refused (closed): %s", host, why)
                conn.close()
                continue
            self.open[host] = self.open.get(host, 0) + 1
            task = loop.create_task(self._serve(conn, host))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: socket.socket, host: str) -> None:
        left = False

        def leave() -> None:
            nonlocal left
            if not left:
                left = True
                self.open[host] -= 1
                if not self.open[host]:
                    del self.open[host]

        def protocol() -> asyncio.Protocol:
            app = self.factory()
            lost = app.connection_lost

            def connection_lost(exc: Exception | None) -> None:
                leave()
                lost(exc)

            app.connection_lost = connection_lost  # type: ignore[method-assign]
            return app

        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                protocol, conn, ssl=self.context, ssl_handshake_timeout=self.limits.request_timeout
            )
        except Exception as exc:  # noqa: BLE001 - however it failed (timeout, alert, reset)
            why = handshake_failure(exc)
            if why is not None:
                log.warning("HTTPS connection from %s refused: %s", host, why)
            else:  # (a probe that connects and closes, say: no TLS was tried)
                log.info("HTTPS connection from %s closed before its handshake: %s", host, exc)
            leave()
            conn.close()

    # -- what uvicorn uses of asyncio.Server ---------------------------------------------

    def close(self) -> None:
        self._accepting.cancel()

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._accepting

    def __repr__(self) -> str:
        return f"<TlsAcceptor {self.sock!r} open={sum(self.open.values())}>"
