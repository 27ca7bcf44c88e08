"""The asyncio shell around one association: socket <-> upper layer <-> DIMSE.

The only place (with :mod:`server` and :mod:`client`) that touches sockets and
clocks.  It feeds received bytes to the sans-I/O :class:`Connection`, writes
what the connection queues, runs the ARTIM timer while the connection asks for
it (PS3.8 9.1.5), and fragments outgoing DIMSE messages to the peer's maximum
PDU length (PS3.8 D.1, PS3.7 8.1).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

from dicomstore.dimse import DimseAssembler, command_pdvs, dataset_pdvs
from dicomstore.ul.connection import Connection
from dicomstore.ul.events import ULEvent
from dicomstore.ul.negotiation import Negotiated
from dicomstore.ul.pdu import pdu_size

log = logging.getLogger("dicomstore.association")

#: Initial size of an association's receive buffer; it grows to hold the
#: largest PDU the peer sends (bounded by the maximum we advertise, PS3.8 D.1).
RECV_BUFFER = 512 * 1024
#: Reading pauses when less than this is free at the end of the receive buffer
#: (until the association has consumed what it holds): backpressure.
MIN_FREE = 64 * 1024
#: Drain the writer after this many queued bytes (backpressure on sends).
DRAIN_EVERY = 1024 * 1024
#: At most this many buffers per writev (Linux's IOV_MAX is 1024).
_IOV_MAX = 512


@dataclass
class Timeouts:
    """Timers in seconds; None = wait forever (DCMTK's and PS3.8's knobs).

    ``artim``: association request/release/close timer (PS3.8 9.1.5).
    ``acse``: how long a requestor waits for A-ASSOCIATE-AC/RJ.
    ``dimse``: how long we wait for a DIMSE response.
    ``network``: how long an established association may stay silent.
    ``operation``: how long one incoming DIMSE message may take to arrive.
    """

    artim: float = 30.0
    acse: float = 30.0
    dimse: float | None = None
    network: float | None = 600.0
    connect: float = 30.0
    #: How long one DIMSE message (command and data set) may take to arrive,
    #: so that a peer trickling bytes cannot hold a slot forever.
    operation: float | None = 3600.0


def tune_socket(writer: Stream | asyncio.StreamWriter) -> None:
    """TCP_NODELAY on every socket: DIMSE messages are small and latency-bound."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Stream(asyncio.BufferedProtocol):
    """One connection's socket end: a receive buffer the kernel fills in place,
    and the writing half of a StreamWriter (``write``, ``drain``, ``close`` ...).

    Received bytes land in ``buf[start:end]``; :class:`Transport` decodes the
    complete PDUs there without copying, so PDV data reach the storage sink as
    views into ``buf``.  While :attr:`held` (the events of the last batch may
    still be in use) nothing before ``end`` moves; reading pauses once the
    free space at the end runs low, so a busy association buffers at most
    ``len(buf)`` bytes (backpressure: awaiting the disk stops reading).
    """

    def __init__(
        self, on_connected: Callable[[Stream], Coroutine[Any, Any, None]] | None = None
    ) -> None:
        self.on_connected = on_connected
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray(RECV_BUFFER)
        self.view = memoryview(self.buf)
        self.start = 0
        self.end = 0
        #: Bytes from ``start`` that complete the next PDU (6: its header).
        self.need = 6
        #: The events of the last batch (views into ``buf`` before ``start``)
        #: may still be in use: nothing may move.
        self.held = False
        self.loop = asyncio.get_running_loop()
        #: Loop time of the last arrival (any bytes count as activity for timers).
        self.last_received = -1.0
        self.eof = False
        self.lost = False
        self.reading_paused = False
        self._waiter: asyncio.Future[bool] | None = None
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._task: asyncio.Task | None = None
        self._closed: asyncio.Future[None] = self.loop.create_future()
        self._fd = -1  # plain TCP: PDV data go to the socket with writev, uncopied

    # -- protocol callbacks ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and transport.get_extra_info("sslcontext") is None:
            self._fd = sock.fileno()
        if self.on_connected is not None:
            self._task = self.loop.create_task(self.on_connected(self))
            self._task.add_done_callback(self._served)

    def _served(self, task: asyncio.Task) -> None:
        self._task = None
        exc = None if task.cancelled() else task.exception()
        if exc is not None:  # as asyncio's streams do when their callback fails
            self.loop.call_exception_handler(
                {"message": "unhandled exception serving a connection", "exception": exc}
            )
        if task.cancelled() or exc is not None:
            self.close()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view[self.end :]  # never empty: reading pauses below MIN_FREE

    def buffer_updated(self, nbytes: int) -> None:
        self.end += nbytes
        self.last_received = self.loop.time()
        if len(self.buf) - self.end < MIN_FREE:
            self.transport.pause_reading()  # type: ignore[union-attr]
            self.reading_paused = True
            self._wake()  # the reader makes room (once it no longer holds views)
        elif self.end - self.start >= self.need:
            self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        # Keep a plain TCP connection half open, as asyncio's streams do.
        return self.transport.get_extra_info("sslcontext") is None  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._wake()
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_exception(ConnectionResetError("Connection lost"))
        self._drain_waiters.clear()
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()

    # -- the reading side, for Transport ---------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(False)

    async def wait(self, when: float | None) -> bool:
        """Until ``need`` bytes are buffered, room must be made, or the connection
        ends (False); or until the loop time ``when`` (True)."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = None if when is None else loop.call_at(when, _fire, waiter)
        try:
            return await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def make_room(self) -> None:
        """Compact or grow the buffer for the next PDU and resume reading (not while held)."""
        assert not self.held
        buf = self.buf
        cap = len(buf)
        start, end = self.start, self.end
        if start == end:  # nothing kept: start over, for free
            self.start = self.end = start = end = 0
        if cap - end < MIN_FREE or start + self.need > cap:
            avail = end - start
            want = max(self.need, avail) + MIN_FREE
            if want > cap:  # grow, at most doubling: a length field alone earns no memory
                new = bytearray(min(2 * cap, max(want, 2 * self.need + MIN_FREE)))
                new[:avail] = self.view[start:end]
                self.buf, self.view = new, memoryview(new)
            elif avail > start:  # overlapping move: through a copy
                buf[:avail] = bytes(self.view[start:end])
            elif avail:
                buf[:avail] = self.view[start:end]
            self.start, self.end = 0, avail
        if self.reading_paused and len(self.buf) - self.end >= MIN_FREE:
            self.reading_paused = False
            if not self.lost:
                self.transport.resume_reading()  # type: ignore[union-attr]

    # -- the writing side (what StreamWriter offers) ---------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def write_parts(self, parts: list[bytes | bytearray | memoryview]) -> None:
        """Write buffers in order; long ones go to the kernel without a copy."""
        transport = self.transport
        assert transport is not None
        fd = self._fd
        if fd < 0 or transport.is_closing() or transport.get_write_buffer_size():
            transport.write(b"".join(parts))
            return
        # Nothing queued in asyncio's transport: we may write straight to the
        # (non-blocking) socket, then queue whatever it did not take.
        for first in range(0, len(parts), _IOV_MAX):
            batch = parts[first : first + _IOV_MAX]
            try:
                sent = os.writev(fd, batch)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:  # let the transport meet the error and report it
                transport.write(b"".join(parts[first:]))
                return
            for index, part in enumerate(batch):
                n = len(part)
                if sent < n:
                    rest = memoryview(part)[sent:] if sent else part
                    transport.write(b"".join([rest, *parts[first + index + 1 :]]))
                    return
                sent -= n

    def writelines(self, data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write_parts(list(data))

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its high-water mark."""
        if self.lost:
            raise ConnectionResetError("Connection lost")
        if self.transport.is_closing():  # type: ignore[union-attr]
            await asyncio.sleep(0)  # let connection_lost run
            if self.lost:
                raise ConnectionResetError("Connection lost")
        if not self._write_paused:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(waiter)
        await waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def is_closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if self.transport is None:
            return default
        return self.transport.get_extra_info(name, default)


def _fire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(True)


class Transport:
    """Bytes between a socket :class:`Stream` and a sans-I/O connection."""

    def __init__(self, stream: Stream, conn: Connection, timeouts: Timeouts) -> None:
        self.stream = stream
        #: The StreamWriter-like side (``write``, ``drain``, ``get_extra_info`` ...).
        self.writer = stream
        self.conn = conn
        self.timeouts = timeouts
        self.negotiated: Negotiated | None = None
        self.assembler = DimseAssembler()
        self.peer = stream.get_extra_info("peername")
        self._unflushed = 0
        tune_socket(stream)

    def _send_queued(self) -> bool:
        """Write what the connection queued; False if nothing was."""
        parts = self.conn.parts_to_send()
        if not parts:
            return False
        if len(parts) == 1:
            self.stream.write(parts[0])
            self._unflushed += len(parts[0])
        else:
            self.stream.write_parts(parts)
            self._unflushed += sum(map(len, parts))
        return True

    async def flush(self) -> None:
        """Write whatever the connection queued; close the socket if it asks."""
        if self._send_queued() and (self._unflushed >= DRAIN_EVERY or self.conn.close_requested):
            self._unflushed = 0
            await self.writer.drain()
        if self.conn.close_requested:
            await self.close()

    def write_now(self) -> None:
        """Queue the connection's pending bytes without awaiting the drain."""
        self._send_queued()

    async def drain(self) -> None:
        """Wait until the socket buffer is below its high-water mark."""
        self._unflushed = 0
        await self.writer.drain()

    async def receive(self, idle: float | None = None, until: float | None = None) -> list[ULEvent]:
        """Wait for complete PDUs and return their upper layer events.

        The events' PDV data are views into the receive buffer: valid until
        the next call.  While ARTIM runs it bounds the wait, otherwise ``idle``
        does; either restarts whenever bytes arrive, and running out yields
        Evt18 (ARTIM) or raises TimeoutError (idle).  ``until`` (loop time)
        ends the wait regardless: an empty list if bytes came meanwhile,
        else TimeoutError.
        """
        s = self.stream
        s.held = False
        loop = s.loop
        artim = self.conn.artim_running
        timeout = self.timeouts.artim if artim else idle
        if artim:
            until = None
        called = loop.time()
        while True:
            if s.end - s.start >= s.need:
                events, used = self.conn.receive_view(s.view[s.start : s.end])
                if used:
                    s.start += used
                    s.held = True
                    s.need = pdu_size(s.view[s.start : s.end])
                    await self.flush()
                    return events
            if s.lost or s.eof:
                events = self.conn.transport_closed()
                await self.close()
                return events
            s.make_room()
            when = None if timeout is None else max(called, s.last_received) + timeout
            by_until = until is not None and (when is None or until <= when)
            if by_until:
                when = until
            if not await s.wait(when):
                continue
            now = loop.time()
            if by_until:
                if s.last_received >= called:
                    return []
                raise TimeoutError
            if timeout is not None and s.last_received + timeout > now:
                continue  # bytes came: the timer restarts from them
            if artim:
                events = self.conn.artim_expired()
                await self.flush()
                return events
            raise TimeoutError

    def queue_message(
        self,
        context_id: int,
        command: bytes,
        dataset: bytes | memoryview | None = None,
    ) -> None:
        """Queue a whole (small) DIMSE message, fragmented to the peer's maximum."""
        max_pdu = self.negotiated.peer_max_pdu if self.negotiated else 0
        conn = self.conn
        conn.send_each(command_pdvs(context_id, command, max_pdu))
        if dataset is not None:
            conn.send_each(dataset_pdvs(context_id, dataset, max_pdu, True))
        self.write_now()

    async def send_dataset_chunks(self, context_id: int, chunks: Iterable[bytes]) -> int:
        """Send a data set from an iterable of chunks, streaming; returns bytes sent.

        Each chunk becomes one or more PDVs no larger than the peer allows;
        the last chunk's last PDV carries the "last fragment" bit.
        """
        max_pdu = self.negotiated.peer_max_pdu if self.negotiated else 0
        conn = self.conn
        total = 0
        previous: bytes | None = None
        for chunk in chunks:
            if previous is not None:
                conn.send_each(dataset_pdvs(context_id, previous, max_pdu, False))
                self.write_now()
                if self._unflushed >= DRAIN_EVERY:
                    await self.drain()
            previous = chunk
            total += len(chunk)
        conn.send_each(dataset_pdvs(context_id, previous or b"", max_pdu, True))
        self.write_now()
        return total

    async def close(self) -> None:
        """Close the socket (idempotent)."""
        if self.writer.is_closing():
            return
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass

    def abort_now(self) -> None:
        """A-ABORT (service user) and close: for shutdown and local failures."""
        if self.conn.is_closed:
            return
        try:
            self.conn.abort()
        except Exception:  # noqa: BLE001 - not in a state where abort is defined
            pass
        self.write_now()
        self.writer.close()
