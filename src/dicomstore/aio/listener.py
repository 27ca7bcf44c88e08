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
import errno
import logging
import socket
import ssl
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

from dicomstore.aio import handoff
from dicomstore.aio.stream import Stream
from dicomstore.tls import handshake_failure

log = logging.getLogger("dicomstore.server")

OnConnect = Callable[[Stream], Coroutine[Any, Any, None]]
#: Seconds a TLS peer is given to answer our close_notify before its socket is closed
#: all the same (review107 M3: asyncio's 30 s held the socket, and a pending slot).
TLS_SHUTDOWN_TIMEOUT = 5.0


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
        share: handoff.Dispatcher | socket.socket | None = None,
        admit: Callable[[str], str | None] | None = None,
        refused: Callable[[str, str], None] | None = None,
    ) -> None:
        self.host = host
        #: ``dicomstore serve --workers`` (``handoff.py``): the first process accepts
        #: and passes connections on (a Dispatcher), a worker serves those passed on
        #: its channel (a socket) and listens on no port
        self.share = share
        self.requested_port = port
        self.on_connect = on_connect
        self.ssl_context = ssl_context
        self.handshake_timeout = handshake_timeout
        #: (TLS) asked before a connection's handshake, with its peer's address: why it
        #: is closed at once (the server's pending-connection limits), or None
        self.admit = admit
        #: (TLS) told of each handshake refused, with the peer's address and why (the
        #: server's audit record)
        self.refused = refused
        #: (TLS) the peer address of each connection in its handshake (counted by the
        #: server's limits as a connection that has sent no association request yet)
        self.handshaking: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._adopting: set[asyncio.Task[None]] = set()
        self._server: asyncio.base_events.Server | None = None
        self._sockets: list[socket.socket] = []  # (accepting for a Dispatcher)
        self._closed: asyncio.Event | None = None
        #: (a worker) connections ended and not yet said so: the channel was full
        self._unsaid = 0
        self._awaiting_room = False  # (a writer callback waits for room on the channel)

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0); a worker's: the first's."""
        if self._sockets:
            return int(self._sockets[0].getsockname()[1])
        if self._server is None:
            return self.requested_port
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def started(self) -> bool:
        return self._server is not None or self._closed is not None

    async def start(self) -> None:
        """Bind and start accepting connections (a worker: start taking those the
        first process passes)."""
        loop = asyncio.get_running_loop()
        if self.share is not None:
            self._closed = asyncio.Event()
            if isinstance(self.share, handoff.Dispatcher):
                self._sockets = bound(self.host, self.requested_port)
                for sock in self._sockets:
                    loop.add_reader(sock.fileno(), self._accept_ready, sock)
                self.share.attach(loop)
            else:
                self.share.setblocking(False)
                loop.add_reader(self.share.fileno(), self._passed)
            return
        if self.ssl_context is not None:
            # TLS: accepted here, each handshake awaited (``_connect``) so that a failed
            # one is logged; asyncio's server drops it without a word (review45 M4: a
            # modality whose certificate was refused left no line in the log)
            self._closed = asyncio.Event()
            self._sockets = bound(self.host, self.requested_port)
            for sock in self._sockets:
                loop.add_reader(sock.fileno(), self._accept_ready, sock)
            return
        self._server = await loop.create_server(
            lambda: Stream(self._serve), self.host, self.requested_port
        )

    async def serve_forever(self) -> None:
        """Start (if needed) and serve until cancelled or closed."""
        if not self.started:
            await self.start()
        try:
            if self._closed is not None:
                await self._closed.wait()
                return
            assert self._server is not None
            await self._server.serve_forever()
        except asyncio.CancelledError:
            pass

    def _accept_ready(self, listening: socket.socket) -> None:
        """Take what is waiting: (the first process of several) each connection is
        passed to a worker or served here (``handoff.Dispatcher``); (TLS) served here."""
        share = self.share
        for _ in range(100):
            try:
                conn, _address = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    if exc.errno != errno.ECONNABORTED:
                        log.warning("accepting a connection: %s", exc)
                    continue
                # out of descriptors or memory: pause accepting for a second
                log.error("accepting a connection: %s; paused for 1 s", exc)
                loop = asyncio.get_running_loop()
                loop.remove_reader(listening.fileno())
                loop.call_later(1.0, self._resume_accepting, listening)
                return
            busy = len(self._tasks) + len(self._adopting)
            if not isinstance(share, handoff.Dispatcher) or not share.pass_on(conn, busy):
                self._adopt(conn)

    def _resume_accepting(self, listening: socket.socket) -> None:
        if listening.fileno() >= 0:
            loop = asyncio.get_running_loop()
            loop.add_reader(listening.fileno(), self._accept_ready, listening)

    def _passed(self) -> None:
        """(A worker.) Serve the connections the first process passed."""
        assert isinstance(self.share, socket.socket)
        try:
            connections, lost = handoff.receive(self.share)
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(self.share.fileno())
            return  # (the first process is gone: the worker stops with it)
        for conn in connections:
            self._adopt(conn)
        if lost:
            log.error("%d connection(s) passed without their descriptor (out of them?)", lost)
            for _ in range(lost):
                self._ended()

    def _adopt(self, conn: socket.socket) -> None:
        """Serve a connection accepted here or passed from the first process; (TLS) one
        the server's limits take (:attr:`admit`), counted while in its handshake
        (review107 M2: handshakes held open escaped --max-pending-connections)."""
        counted: list[str] = []
        if self.ssl_context is not None:
            address = _address(conn)
            why = self.admit(address) if self.admit is not None else None
            if why is not None:
                log.warning("%s: connection closed at once: %s", _peer(conn), why)
                conn.close()
                self._ended()
                return
            self.handshaking[address] += 1
            counted.append(address)
        task = asyncio.get_running_loop().create_task(self._connect(conn, counted))
        self._adopting.add(task)
        task.add_done_callback(self._adopting.discard)

    def _uncount(self, counted: list[str]) -> None:
        """The connection's handshake is over (done or failed): counted no more."""
        if counted:
            address = counted.pop()
            self.handshaking[address] -= 1
            if self.handshaking[address] <= 0:
                del self.handshaking[address]

    async def _connect(self, conn: socket.socket, counted: list[str]) -> None:
        loop = asyncio.get_running_loop()  # (TCP_NODELAY: association.tune_socket)
        # (now: a failed handshake closes the socket before we hear)
        address, port = _peername(conn)
        peer = address if port is None else f"{address}:{port}"

        async def serve(stream: Stream) -> None:
            self._uncount(counted)  # (before the server counts it as pending itself)
            await self._serve(stream)

        tls = self.ssl_context is not None
        try:
            await loop.connect_accepted_socket(
                lambda: Stream(serve),
                conn,
                ssl=self.ssl_context,
                ssl_handshake_timeout=self.handshake_timeout if tls else None,
                # a peer that does not answer our close_notify holds its socket no
                # longer than this (asyncio's default: 30 s; review107 M3)
                ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT if tls else None,
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            why = handshake_failure(exc) if self.ssl_context is not None else None
            if why is not None:
                log.warning("TLS connection from %s refused: %s", peer, why)
                if self.refused is not None:
                    self.refused(address, why)
            else:  # (a probe that connects and closes, say: no TLS was tried)
                why = str(exc) or type(exc).__name__
                log.info("connection from %s closed before it was served: %s", peer, why)
            conn.close()
            self._ended()
        except asyncio.CancelledError:  # (closing: loads no longer matter, and the
            conn.close()  # connection may have reached _serve, which says it ended)
            raise
        finally:
            self._uncount(counted)

    def _ended(self) -> None:
        """(A worker.) Tell the first process a connection it passed has ended; with
        its channel full, once it has room (a byte dropped would count that
        connection as served here for as long as the server runs)."""
        if isinstance(self.share, socket.socket):
            self._unsaid += 1
            if not self._awaiting_room:
                self._say_ended()

    def _say_ended(self) -> None:
        share = self.share
        assert isinstance(share, socket.socket)
        try:
            self._unsaid -= share.send(handoff.ENDED * self._unsaid)
        except BlockingIOError:
            pass
        except OSError:
            self._unsaid = 0  # (the first process is gone)
        if self._unsaid and not self._awaiting_room:
            asyncio.get_running_loop().add_writer(share.fileno(), self._say_ended)
            self._awaiting_room = True
        elif not self._unsaid and self._awaiting_room:
            asyncio.get_running_loop().remove_writer(share.fileno())
            self._awaiting_room = False

    async def _serve(self, stream: Stream) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self.on_connect(stream)
        finally:
            if task is not None:
                self._tasks.discard(task)
            self._ended()

    async def close(self, grace: float, abort_idle: Callable[[], None] | None = None) -> None:
        """Stop accepting; ``abort_idle`` ends what may go at once; wait up to
        ``grace`` s for the connections still served; cancel the rest."""
        if self._server is not None:
            self._server.close()
        self._stop_sharing()
        for connecting in set(self._adopting):
            connecting.cancel()
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

    def _stop_sharing(self) -> None:
        """Stop accepting (or taking passed connections): what ``close`` does first."""
        if self._closed is None:
            return
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            if sock.fileno() >= 0:
                loop.remove_reader(sock.fileno())
            sock.close()
        self._sockets = []
        if isinstance(self.share, handoff.Dispatcher):
            self.share.detach(loop)
        elif self.share is not None and self.share.fileno() >= 0:
            loop.remove_reader(self.share.fileno())
        self._closed.set()


def _address(conn: socket.socket) -> str:
    """The IP address of a connection's peer (as ``Transport.peer`` gives it), or ``?``."""
    host, _port = _peername(conn)
    return host


def _peer(conn: socket.socket) -> str:
    """``host:port`` of a connection's peer (``?`` when it has none to tell: gone, or
    a socket of another family)."""
    host, port = _peername(conn)
    return host if port is None else f"{host}:{port}"


def _peername(conn: socket.socket) -> tuple[str, object | None]:
    """A connection's peer: its host and port (None: not an IP socket); ``?``: gone."""
    try:
        name = conn.getpeername()
    except OSError:
        return "?", None
    if isinstance(name, tuple) and len(name) >= 2:
        return str(name[0]), name[1]
    return str(name or "?"), None


def bound(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address of ``host`` (all interfaces, IPv4 and IPv6,
    for an empty one), non-blocking, as ``loop.create_server`` binds them: the
    :class:`Listener`'s, and a start's try of its port before it creates anything
    (review100 W12: the OSError of a port in use, an address not of this machine)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # (the IPv4 socket takes the IPv4 addresses)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:  # (every address on the first one's port)
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(100)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets
