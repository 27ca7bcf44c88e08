"""Running the DICOMweb app with uvicorn inside an existing asyncio loop.

``dicomstore serve --http-port PORT`` runs it next to the Storage SCP on the
same loop and the same :class:`~dicomstore.archive.Archive`::

    archive = Archive(args.storage, ...)
    server = Server(config, archive, on_stored=...)
    await server.start()
    http = asyncio.create_task(
        serve_http(archive, "127.0.0.1", args.http_port, store=server.store)
    )  # (STOW-RS stores through the server's service; without store=, the one
    ...  # of the server serving the archive: Archive.store_service)
    http.cancel()            # graceful: in-flight responses get 5 s

The socket is bound here (so a busy port raises ``OSError`` at once, and port
0 works: :attr:`HttpServer.port`), and uvicorn's own signal handlers are not
installed: signals stay with the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from dicomstore.archive import Archive
from dicomstore.http.app import build_app
from dicomstore.http.guard import guarded
from dicomstore.http.limits import DEFAULT, HttpLimits
from dicomstore.http.tls_accept import TlsAcceptor


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, told when it listens and keeping its hands off signals; over
    HTTPS its connections are accepted by ``http/tls_accept.py``, held to ``limits``
    from their accept (:func:`_bound_handshakes`)."""

    def __init__(self, config: uvicorn.Config, limits: HttpLimits = DEFAULT) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()
        self.limits = limits

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()
        token = _LIMITS.set(self.limits)  # (this task's: its create_server)
        _bound_handshakes(loop, +1)
        try:
            await super().startup(sockets)
        finally:
            _bound_handshakes(loop, -1)
            _LIMITS.reset(token)
        if self.started:
            self.listening.set()


#: The limits of the server starting in this task (:class:`_Uvicorn`).
_LIMITS: contextvars.ContextVar[HttpLimits | None] = contextvars.ContextVar("limits", default=None)
#: Servers starting on each loop whose create_server passes it (:func:`_bound_handshakes`).
_STARTING: dict[asyncio.AbstractEventLoop, int] = {}


def _bound_handshakes(loop: asyncio.AbstractEventLoop, change: int) -> None:
    """While servers start on ``loop`` (``change`` +1 / -1), its ``create_server``
    given ``ssl`` and a socket by the starting task (:data:`_LIMITS`) accepts with
    ``http/tls_accept.py`` (each connection counted from its accept, its handshake
    within the request timeout: uvicorn passes none, asyncio's is 60 s); the loop's
    own again when the last has started."""
    starting = _STARTING.get(loop, 0) + change
    if starting and change > 0 and starting == 1:
        create_server = loop.create_server

        async def bounded(factory: Any, *args: Any, **kwargs: Any) -> Any:
            limits = _LIMITS.get()
            context, sock = kwargs.get("ssl"), kwargs.get("sock")
            if context is not None and sock is not None and limits is not None:
                return TlsAcceptor(factory, sock, context, limits)
            return await create_server(factory, *args, **kwargs)

        loop.create_server = bounded  # type: ignore[method-assign,assignment]
    if starting:
        _STARTING[loop] = starting
    else:
        _STARTING.pop(loop, None)
        del loop.create_server  # (the loop's own again)


class HttpServer:
    """An ASGI app served over HTTP/1.1 on ``host``:``port`` (0: any free port);
    over HTTPS with ``ssl_context`` (e.g. :meth:`HttpSecurity.ssl_context
    <dicomstore.http.security.HttpSecurity.ssl_context>`). ``access_log``: also
    uvicorn's own (the app logs each request on ``dicomstore.http.access``)."""

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        access_log: bool = False,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.app = app
        self.host = host
        self.requested_port = port
        self.access_log = access_log
        self.ssl_context = ssl_context
        self._socket: socket.socket | None = None
        self._server: _Uvicorn | None = None
        self._task: asyncio.Task | None = None

    @property
    def url(self) -> str:
        """``http://host:port/`` or ``https://...`` (once started)."""
        scheme = "https" if self.ssl_context is not None else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}/"

    @property
    def port(self) -> int:
        """The port actually bound."""
        assert self._socket is not None, "start() first"
        return self._socket.getsockname()[1]

    async def start(self) -> None:
        """Bind, start serving, return once listening (raises ``OSError`` if bind fails)."""
        self._socket = listening_socket(self.host, self.requested_port)
        context = self.ssl_context
        found = getattr(getattr(self.app, "state", None), "limits", DEFAULT)
        limits = found if isinstance(found, HttpLimits) else DEFAULT
        config = uvicorn.Config(
            self.app,
            # connections at most, and requests not left half sent (http/guard.py)
            http=guarded(limits),
            h11_max_incomplete_event_size=limits.max_head_bytes,
            lifespan="on",
            log_config=None,
            access_log=self.access_log,
            timeout_graceful_shutdown=5,
            # X-Forwarded-* are trusted only as the app is told (--http-trust-forwarded),
            # never by uvicorn from a loopback peer
            proxy_headers=False,
            ssl_context_factory=None if context is None else lambda config, default: context,
        )
        self._server = _Uvicorn(config, limits)
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        listening = asyncio.create_task(self._server.listening.wait())
        await asyncio.wait({self._task, listening}, return_when=asyncio.FIRST_COMPLETED)
        if not listening.done():
            listening.cancel()
            self._socket.close()
            try:
                self._task.result()
            except BaseException as exc:  # uvicorn exits on a failed startup
                raise RuntimeError(f"the HTTP server did not start: {exc!r}") from None
            raise RuntimeError("the HTTP server stopped while starting")

    async def wait(self) -> None:
        """Until the server stops."""
        assert self._task is not None
        await asyncio.shield(self._task)

    async def close(self) -> None:
        """Stop accepting, finish in-flight responses (5 s at most), stop."""
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(BaseException):
                await self._task
        if self._socket is not None:
            self._socket.close()


def listening_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket. Made with ``IPPROTO_TCP`` explicitly: asyncio sets
    TCP_NODELAY only on connections whose socket says so, and without it every small
    response waits for the client's delayed ACK (40 ms) behind Nagle's algorithm."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_http(
    archive: Archive | Path | str,
    host: str,
    port: int,
    *,
    ready: asyncio.Event | None = None,
    access_log: bool = False,
    **options: Any,
) -> None:
    """Serve DICOMweb over ``archive`` until cancelled; ``ready`` is set once listening.

    ``options`` go to :func:`~dicomstore.http.app.build_app` (``ae_title``,
    ``stow_ae``, ``accept_unknown``, ``writable``, ``store``, ``security``: whose
    certificate, if any, makes it HTTPS).
    """
    security = options.get("security")
    context = security.ssl_context() if security is not None else None
    app = build_app(archive, **options)
    server = HttpServer(app, host, port, access_log=access_log, ssl_context=context)
    await server.start()
    if ready is not None:
        ready.set()
    try:
        await server.wait()
    finally:
        await server.close()
