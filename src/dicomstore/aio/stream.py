"""The socket end of one connection: a receive buffer that grows with need,
and the writing half of a StreamWriter, with backpressure both ways.

:class:`Stream` is the asyncio protocol of every DICOM connection (server and
client): the kernel writes received bytes straight into its buffer, where the
upper layer decodes them in place (PS3.8 9.3.1), so PDV data reach the
storage sink as views without a copy; long PDV data go back to the socket
with ``writev``, uncopied too.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

#: A connection's receive buffer starts this small, so that a silent or idle
#: connection costs a few KiB ...
RECV_INITIAL = 4 * 1024
#: ... and doubles each time the peer fills it, up to this size (bulk transfers
#: then read many PDUs per system call), or to the largest PDU the peer sends
#: (bounded by the maximum we advertise, PS3.8 D.1).
RECV_BUFFER = 512 * 1024
#: A buffer that grew goes back to RECV_INITIAL bytes once it has held nothing
#: for this many seconds: an idle association keeps a few KiB, not room for the
#: largest PDU it was sent (``Transport.receive``).
SHRINK_AFTER = 2.0
#: Reading pauses when less than 1/MIN_FREE_SHARE of the buffer is free at its
#: end (until the association has consumed what it holds): backpressure.
MIN_FREE_SHARE = 8
#: Write backpressure: once more than WRITE_HIGH_WATER bytes wait to be sent,
#: reading stops (a peer that does not read its answers gets no more served)
#: until fewer than WRITE_LOW_WATER do (asyncio's pause_writing/resume_writing).
WRITE_HIGH_WATER = 64 * 1024
WRITE_LOW_WATER = 16 * 1024
#: At most this many buffers per writev (Linux's IOV_MAX is 1024).
_IOV_MAX = 512


class Stream(asyncio.BufferedProtocol):
    """One connection's socket end: a receive buffer the kernel fills in place,
    and the writing half of a StreamWriter (``write``, ``drain``, ``close`` ...).

    Received bytes land in ``buf[start:end]``; :class:`Transport` decodes the
    complete PDUs there without copying, so PDV data reach the storage sink as
    views into ``buf``.  While :attr:`held` (the events of the last batch may
    still be in use) nothing before ``end`` moves.  The buffer starts at
    :data:`RECV_INITIAL` bytes and grows with need (:meth:`make_room`).

    Reading pauses (backpressure) while the free space at the end of the
    buffer runs low, so a busy association buffers at most ``len(buf)`` bytes
    (awaiting the disk stops reading), and while more than
    :data:`WRITE_HIGH_WATER` bytes wait to be sent, so a peer that does not
    read what we answer cannot make us queue answers without end.
    """

    def __init__(
        self, on_connected: Callable[[Stream], Coroutine[Any, Any, None]] | None = None
    ) -> None:
        self.on_connected = on_connected
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray(RECV_INITIAL)
        self.view = memoryview(self.buf)
        self.min_free = RECV_INITIAL // MIN_FREE_SHARE
        self.start = 0
        self.end = 0
        #: Bytes from ``start`` that complete the next PDU (6: its header).
        self.need = 6
        #: The events of the last batch (views into ``buf`` before ``start``)
        #: may still be in use: nothing may move.
        self.held = False
        self.loop = asyncio.get_running_loop()
        #: Loop time the connection was accepted (made: a TLS one before its handshake).
        self.opened = self.loop.time()
        #: Loop time of the last arrival (any bytes count as activity for timers).
        self.last_received = -1.0
        #: Loop time the first byte of the PDU at ``start`` arrived (None: no byte yet).
        self.pdu_began: float | None = None
        #: Bytes received in all (the least receive rate: ``Transport.receive``).
        self.total = 0
        self.eof = False
        self.lost = False
        #: Why the transport was lost (None: closed cleanly; an ``ssl.SSLError``: a TLS
        #: alert, such as a server refusing us for want of a client certificate).
        self.lost_error: Exception | None = None
        #: The buffer filled up (reading paused until the reader makes room).
        self.full = False
        self._reading = True
        self._waiter: asyncio.Future[bool] | None = None
        #: The loop time the current :meth:`wait` ends at (None: no deadline) ...
        self._deadline: float | None = None
        #: ... and the one timer of this stream, armed at ``_armed``: it is moved
        #: only when a wait needs it earlier; a later deadline re-arms it when it fires.
        self._timer: asyncio.TimerHandle | None = None
        self._armed = 0.0
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._task: asyncio.Task | None = None
        self._closed: asyncio.Future[None] = self.loop.create_future()
        self._fd = -1  # plain TCP: PDV data go to the socket with writev, uncopied
        self._linger: asyncio.TimerHandle | None = None  # (close_bounded's cut)

    @property
    def reading_paused(self) -> bool:
        """Reading is paused: the buffer is full, or our answers are not being read."""
        return not self._reading

    # -- protocol callbacks ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(  # type: ignore[attr-defined]
            WRITE_HIGH_WATER, WRITE_LOW_WATER
        )
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
        return self.view[self.end :]  # never empty: reading pauses below min_free

    def buffer_updated(self, nbytes: int) -> None:
        now = self.loop.time()
        began = self.end == self.start
        if began:  # the first byte of a PDU: its timer starts (Transport.receive)
            self.pdu_began = now
        self.end += nbytes
        self.total += nbytes
        self.last_received = now
        if len(self.buf) - self.end < self.min_free:
            self.full = True
            self._update_reading()
            self._wake()  # the reader makes room (once it no longer holds views)
        elif began or self.end - self.start >= self.need:
            self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        # Keep a plain TCP connection half open, as asyncio's streams do.
        return self.transport.get_extra_info("sslcontext") is None  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.lost_error = exc
        if self._linger is not None:
            self._linger.cancel()
        if self._timer is not None:  # (it would keep the stream and its buffer alive)
            self._timer.cancel()
            self._timer = None
        self._wake()
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_exception(ConnectionResetError("Connection lost"))
        self._drain_waiters.clear()
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()

    def _update_reading(self) -> None:
        """Read while there is room and our answers are being taken (backpressure)."""
        want = not (self.full or self._write_paused)
        if want == self._reading or self.lost:
            return
        self._reading = want
        if want:
            self.transport.resume_reading()  # type: ignore[union-attr]
        else:
            self.transport.pause_reading()  # type: ignore[union-attr]

    # -- the reading side, for Transport ---------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(False)

    async def wait(self, when: float | None) -> bool:
        """Until ``need`` bytes are buffered, room must be made, or the connection
        ends (False); or until the loop time ``when`` (True).

        Each PDU's wait has a deadline, usually a little later than the last one:
        rather than schedule and cancel a timer per wait, the stream keeps one
        timer, moved only when a deadline comes earlier than it is armed for;
        when it fires before the current deadline, it is armed again for it.
        """
        waiter = self._waiter = self.loop.create_future()
        self._deadline = when
        if when is not None and (self._timer is None or when < self._armed):
            if self._timer is not None:
                self._timer.cancel()
            self._armed = when
            self._timer = self.loop.call_at(when, self._on_timer)
        try:
            return await waiter
        finally:
            self._waiter = None
            self._deadline = None

    def _on_timer(self) -> None:
        self._timer = None
        deadline, waiter = self._deadline, self._waiter
        if deadline is None or waiter is None or waiter.done():
            return  # no wait, or one without a deadline: the next wait arms it
        if deadline <= self._armed:
            waiter.set_result(True)
        else:
            self._armed = deadline
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def make_room(self) -> None:
        """Compact or grow the buffer for the next PDU and resume reading (not while held).

        The buffer doubles when the PDU being received does not fit, or when
        the peer filled it (up to :data:`RECV_BUFFER`): once per call, so a
        length field alone earns little memory; bytes that arrived do.
        """
        assert not self.held
        buf = self.buf
        cap = len(buf)
        start, end = self.start, self.end
        if start == end:  # nothing kept: start over, for free
            self.start = self.end = start = end = 0
        busy = self.full and cap < RECV_BUFFER
        if busy or cap - end < self.min_free or start + self.need > cap:
            avail = end - start
            want = max(self.need, avail) + self.min_free
            if busy or want > cap:  # grow: double (then at least half of it is free)
                size = 2 * cap
                new = bytearray(size)
                new[:avail] = self.view[start:end]
                self.buf, self.view = new, memoryview(new)
                self.min_free = size // MIN_FREE_SHARE
            elif avail > start:  # overlapping move: through a copy
                buf[:avail] = bytes(self.view[start:end])
            elif avail:
                buf[:avail] = self.view[start:end]
            self.start, self.end = 0, avail
        if self.full and len(self.buf) - self.end >= self.min_free:
            self.full = False
            self._update_reading()

    def shrink(self) -> None:
        """Back to :data:`RECV_INITIAL` bytes, when the buffer holds nothing (not while
        held; views into the old buffer stay valid: it is replaced, not resized)."""
        if self.held or self.start != self.end or len(self.buf) <= RECV_INITIAL:
            return
        self.buf = bytearray(RECV_INITIAL)
        self.view = memoryview(self.buf)
        self.min_free = RECV_INITIAL // MIN_FREE_SHARE
        self.start = self.end = 0

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

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until the transport's buffer is below its high-water mark
        (``TimeoutError`` when it is not within ``timeout`` seconds)."""
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
        async with asyncio.timeout(timeout):
            await waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def close_bounded(self, linger: float) -> None:
        """Close, letting what waits to be sent go for at most ``linger`` seconds; at
        once when the peer reads nothing now (writing paused): a graceful close of a
        peer that reads nothing held its socket, and what the kernel buffered for
        it, for ever (review123 F1)."""
        transport = self.transport
        if transport is None:
            return
        transport.close()
        if not transport.get_write_buffer_size():
            return
        if self._write_paused:
            transport.abort()
        else:  # (let go when the connection is lost first: review125, an ERROR each time)
            self._linger = asyncio.get_running_loop().call_later(linger, transport.abort)

    def abort(self) -> None:
        """Close at once, dropping what waits to be sent (a peer that reads nothing)."""
        if self.transport is not None:
            self.transport.abort()

    def is_closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if self.transport is None:
            return default
        return self.transport.get_extra_info(name, default)
