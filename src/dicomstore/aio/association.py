"""The asyncio shell around one association: socket <-> upper layer <-> DIMSE.

The only place (with :mod:`stream`, :mod:`listener` and :mod:`client`) that
touches sockets and clocks.  It feeds received bytes to the sans-I/O :class:`Connection`, writes
what the connection queues, runs the ARTIM timer while the connection asks for
it (PS3.8 9.1.5), and fragments outgoing DIMSE messages to the peer's maximum
PDU length (PS3.8 D.1, PS3.7 8.1).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from dicomstore.aio import stream as streams
from dicomstore.aio.stream import RECV_BUFFER, RECV_INITIAL, Stream  # noqa: F401 - re-exported
from dicomstore.dimse import DimseAssembler, command_pdvs, dataset_pdvs, max_pdv_data
from dicomstore.errors import LocalProtocolError, RemoteProtocolError
from dicomstore.tls import alert_words, refused_after_handshake
from dicomstore.ul.connection import Connection
from dicomstore.ul.events import AbortIndication, ULEvent
from dicomstore.ul.fsm import State
from dicomstore.ul.negotiation import Negotiated
from dicomstore.ul.pdu import pdu_size

log = logging.getLogger("dicomstore.association")

__all__ = [
    "DRAIN_EVERY",
    "PDVS_PER_TURN",
    "RECV_BUFFER",
    "RECV_INITIAL",
    "StalledPDU",
    "Stream",
    "Timeouts",
    "Transport",
    "tune_socket",
]

#: Seconds an A-ABORT (and what was queued before it) may take to leave at the
#: close that follows it; past them the connection is cut (review123 F1).
ABORT_LINGER = 5.0
#: Drain the writer after this many queued bytes (backpressure on sends).
DRAIN_EVERY = 1024 * 1024
#: Yield to the event loop after this many PDVs sent or received, whatever the
#: socket's state: a peer's tiny Maximum Length Received (PS3.8 D.1) or tiny PDVs
#: cost as many turns, so the other associations and HTTP are served meanwhile.
PDVS_PER_TURN = 1024


@dataclass
class Timeouts:
    """Timers in seconds; None = wait forever (DCMTK's and PS3.8's knobs).

    ``artim``: association request/release/close timer (PS3.8 9.1.5).
    ``acse``: how long a requestor waits for A-ASSOCIATE-AC/RJ.
    ``dimse``: how long we wait for a DIMSE response.
    ``network``: how long an established association may stay silent.
    ``operation``: how long one incoming DIMSE message, and each PDU from its
    first byte, may take to arrive.
    ``min_rate``: bytes a second a message or PDU being received must keep up (0:
    no minimum; see :meth:`Transport.receive`).
    """

    artim: float = 30.0
    acse: float = 30.0
    dimse: float | None = None
    network: float | None = 600.0
    connect: float = 30.0
    #: How long one DIMSE message (command and data set) may take to arrive,
    #: so that a peer trickling bytes cannot hold a slot forever.
    operation: float | None = 3600.0
    #: The least rate of a message or PDU being received (a server's: ``serve
    #: --min-receive-rate``), so that a peer trickling bytes holds a slot for
    #: ``rate_credit`` seconds, not ``operation``'s (review93 F1).
    min_rate: int = 0
    #: Seconds of credit of the least rate: a message or PDU has these from its start,
    #: and each byte adds ``1 / min_rate``, never to more than these ahead.
    rate_credit: float = 30.0


class DeadlinePassed(TimeoutError):
    """:meth:`Transport.receive`'s ``until`` came with no byte meanwhile (told apart
    from the idle timeout by its kind, not by reading the clock again: uvloop's
    timers fire up to a millisecond before their time)."""


class StalledPDU(RemoteProtocolError):
    """A PDU began but was not complete within ``Timeouts.operation`` (a peer
    trickling bytes): answered with an A-ABORT, source service-provider,
    reason not specified (PS3.8 9.3.8; none of its other reasons fits)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 0)


class BelowRate(StalledPDU):
    """A PDU, command set or data set arriving slower than ``Timeouts.min_rate``."""


def tune_socket(writer: Stream | asyncio.StreamWriter) -> None:
    """TCP_NODELAY on every socket: DIMSE messages are small and latency-bound."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


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
        #: PDVs sent or received since we last yielded to the loop (:meth:`pace`).
        self._work = 0
        #: Loop time ARTIM started (PS3.8 9.1.5), while it runs.
        self._artim_since: float | None = None
        #: While a message or PDU is being received at the least rate: its deadline,
        #: the bytes counted then, and when and at what count it began (:meth:`_keep_up`)
        self._span: tuple[float, int, float, int] | None = None
        self._left = 0.0  # (loop time the last receive returned)
        #: A data set is being streamed (:meth:`send_dataset_chunks`): messages queued
        #: meanwhile wait here, for the fragments of two messages never interleave
        #: (PS3.7 8.2, PS3.8 E.1).
        self._streaming = False
        self._held: list[tuple[int, bytes, bytes | memoryview | None]] = []
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
            await self.drain()
        if self.conn.close_requested:
            await self.close()

    def write_now(self) -> None:
        """Queue the connection's pending bytes without awaiting the drain."""
        self._send_queued()

    async def drain(self) -> None:
        """Wait until the socket buffer is below its high-water mark. A peer that
        reads nothing of it for ``Timeouts.network`` seconds (or ``Timeouts.dimse``,
        when shorter: it owes us a response to what it does not read, review123 F2)
        is silent as an idle one is: the connection is closed at once, what waits to
        be sent dropped (no A-ABORT could reach it), and ``ConnectionResetError``
        raised."""
        self._unflushed = 0
        timers = (self.timeouts.network, self.timeouts.dimse)
        limit = min((t for t in timers if t is not None), default=None)
        try:
            await self.writer.drain(limit)
        except TimeoutError:
            log.warning("%s: nothing of what we sent was read for %gs; closing", self.peer, limit)
            try:
                self.conn.abort()  # (the state machine ends the association)
            except Exception:  # noqa: BLE001 - not in a state where abort is defined
                pass
            self.conn.parts_to_send()  # (dropped: nothing more reaches it)
            self.stream.abort()
            raise ConnectionResetError("the peer read nothing we sent") from None

    async def pace(self, pdvs: int = 1) -> None:
        """Count ``pdvs`` handled; every :data:`PDVS_PER_TURN`, yield to the loop
        (bounded work per turn, however small the PDVs: PS3.8 9.3.5.1, E.1)."""
        self._work += pdvs
        if self._work >= PDVS_PER_TURN:
            self._work = 0
            await asyncio.sleep(0)

    async def receive(self, idle: float | None = None, until: float | None = None) -> list[ULEvent]:
        """Wait for complete PDUs and return their upper layer events.

        The events' PDV data are views into the receive buffer: valid until
        the next call.  While ARTIM runs (PS3.8 9.1.5) it alone bounds the
        wait, from when it started: bytes do not restart it, so an association
        request must be complete within ARTIM of the connection; running out
        yields Evt18.  Otherwise ``idle`` bounds the wait, restarting whenever
        bytes arrive (TimeoutError); each PDU must be complete within
        ``Timeouts.operation`` of its first byte (:class:`StalledPDU`), and keep
        up ``Timeouts.min_rate`` (:meth:`_keep_up`), as must a DIMSE message whose
        fragments have begun (the clock stops while we are not reading); and
        ``until`` (loop time) ends the wait regardless: an empty list if bytes
        came meanwhile, else :class:`DeadlinePassed` (a TimeoutError).
        """
        span = self._span
        if span is not None:  # (the rate's clock stood while we did not wait for bytes)
            shift = self.stream.loop.time() - self._left
            self._span = (span[0] + shift, span[1], span[2] + shift, span[3])
        self._left = -1.0
        try:
            return await self._receive(idle, until)
        finally:
            if self._left < 0:  # (else stamped before a flush: nor is that the peer's time)
                self._left = self.stream.loop.time()

    async def _receive(self, idle: float | None, until: float | None) -> list[ULEvent]:
        s = self.stream
        s.held = False
        loop = s.loop
        called = loop.time()
        artim = self.conn.artim_running
        if not artim:
            self._artim_since = None
        elif self._artim_since is None:  # (awaiting the request: from the connection's
            # acceptance, its TLS handshake included, review107 M3; PS3.8 9.1.5)
            self._artim_since = s.opened if self.conn.state is State.STA2 else called
        per_pdu = self.timeouts.operation
        while True:
            if s.end - s.start >= s.need:
                events, used = self.conn.receive_view(s.view[s.start : s.end])
                if used:
                    s.start += used
                    s.held = True
                    # the header of what follows is checked (PDUReader) as soon as it is in
                    s.need = 6
                    s.pdu_began = s.last_received if s.end > s.start else None
                    self._left = loop.time()
                    await self.flush()
                    return events
                s.need = pdu_size(s.view[s.start : s.end])  # its header passed the checks
            if s.lost or s.eof:
                awaiting_ac = self.conn.state is State.STA5
                events = self.conn.transport_closed()
                why = alert_words(s.lost_error)
                if why is None and awaiting_ac and s.transport is not None:
                    why = refused_after_handshake(s.transport.get_extra_info("sslcontext"))
                for event in events if why else ():
                    if isinstance(event, AbortIndication):
                        event.message += f": {why}"
                await self.close()
                return events
            s.make_room()
            kind, when = "", None
            if artim:
                assert self._artim_since is not None
                kind, when = "artim", self._artim_since + self.timeouts.artim
            else:
                if idle is not None:
                    kind, when = "idle", max(called, s.last_received) + idle
                if until is not None and (when is None or until <= when):
                    kind, when = "until", until
                if per_pdu is not None and s.pdu_began is not None:
                    stalled = s.pdu_began + per_pdu
                    if when is None or stalled < when:
                        kind, when = "pdu", stalled
                rate = self.timeouts.min_rate
                if (
                    rate
                    and not s.reading_paused
                    and (s.pdu_began is not None or self.assembler.part_in_progress)
                ):
                    slow = self._keep_up(loop.time(), rate)
                    if when is None or slow < when:
                        kind, when = "rate", slow
                else:
                    self._span = None
                if s.start == s.end and len(s.buf) > RECV_INITIAL:
                    shrink = max(called, s.last_received) + streams.SHRINK_AFTER
                    if when is None or shrink < when:
                        kind, when = "shrink", shrink
            if not await s.wait(when):
                continue
            if kind == "artim":
                log.warning(
                    "%s: ARTIM expired (%gs) awaiting %s; closing",
                    self.peer,
                    self.timeouts.artim,
                    "an association request" if self.conn.state is State.STA2 else "a close",
                )
                events = self.conn.artim_expired()
                await self.flush()
                return events
            if kind == "shrink":  # idle: a few KiB, not the largest PDU's room
                s.shrink()
                continue
            if kind == "rate":
                if s.end - s.start >= s.need or self._span is None:
                    continue  # a PDU just completed: the next turn judges what follows
                now = loop.time()
                if self._keep_up(now, self.timeouts.min_rate) > now:
                    continue  # bytes came meanwhile (the reader wakes per PDU, not per read)
                _deadline, _seen, began, count = self._span
                what = "a PDU" if not self.assembler.part_in_progress else "a message"
                raise BelowRate(
                    f"{what} arriving slower than --min-receive-rate {self.timeouts.min_rate}"
                    f" bytes/s ({s.total - count} bytes in {loop.time() - began:.3g}s)"
                )
            if kind == "pdu":
                if s.end - s.start >= s.need:
                    continue  # it just completed
                raise StalledPDU(
                    f"a PDU was not complete {per_pdu:g}s after its first byte"
                    f" ({s.end - s.start} of {s.need} bytes)"
                )
            if kind == "until":
                if s.last_received >= called:
                    return []
                raise DeadlinePassed
            if kind == "idle" and s.last_received + (idle or 0) > loop.time():
                continue  # bytes came: the idle timer restarts from them
            raise TimeoutError

    def _keep_up(self, now: float, rate: int) -> float:
        """When the message or PDU being received falls behind ``rate`` bytes a second:
        ``Timeouts.rate_credit`` seconds from its start (or since we read again), each
        byte adding ``1 / rate`` seconds, never to more than those seconds ahead (the
        HTTP door's ``--http-min-body-rate``: bursts whose average keeps up are not cut)."""
        total, span, credit = self.stream.total, self._span, self.timeouts.rate_credit
        if span is None:
            self._span = span = (now + credit, total, now, total)
        elif total != span[1]:
            deadline = min(span[0] + (total - span[1]) / rate, now + credit)
            self._span = span = (deadline, total, span[2], span[3])
        return span[0]

    def queue_message(
        self,
        context_id: int,
        command: bytes,
        dataset: bytes | memoryview | None = None,
    ) -> None:
        """Queue a whole (small) DIMSE message, fragmented to the peer's maximum;
        while a data set is being streamed, right after its last fragment."""
        if self._streaming:
            self._held.append((context_id, command, dataset))
            return
        max_pdu = self.negotiated.peer_max_pdu if self.negotiated else 0
        conn = self.conn
        conn.send_each(command_pdvs(context_id, command, max_pdu))
        if dataset is not None:
            conn.send_each(dataset_pdvs(context_id, dataset, max_pdu, True))
        self.write_now()

    async def send_dataset_chunks(
        self,
        context_id: int,
        chunks: Iterable[bytes],
        command: bytes | None = None,
        size: int | None = None,
    ) -> int:
        """Send a data set from an iterable of chunks, streaming; returns bytes sent.

        Each chunk becomes one or more PDVs no larger than the peer allows;
        the last chunk's last PDV carries the "last fragment" bit (PS3.8 E.2).
        With the data set's ``size`` known, each chunk goes out as soon as it
        is read (the last is the one that reaches ``size``; chunks adding up to
        another size raise LocalProtocolError); else one chunk is held back
        until the next shows it was not the last. ``command``, the message's
        command set, goes out in the same write as the first fragment (a small
        message in one system call, and one wake-up of the peer). Messages
        others queue meanwhile (:meth:`queue_message`) follow it; if the stream
        fails they are dropped with it (the association cannot go on: abort it).
        """
        max_pdu = self.negotiated.peer_max_pdu if self.negotiated else 0
        conn = self.conn
        total = 0
        previous: bytes | None = None
        if command is not None:
            conn.send_each(command_pdvs(context_id, command, max_pdu))
        self._streaming = True
        try:
            if size is None:
                for chunk in chunks:
                    if previous is not None:
                        await self._send_fragment(context_id, previous, max_pdu)
                    previous = chunk
                    total += len(chunk)
            else:
                for chunk in chunks:
                    total += len(chunk)
                    if total > size:
                        raise LocalProtocolError(f"the data set runs past its {size} bytes")
                    if total == size:
                        previous = chunk or previous  # (the last: sent below)
                    elif chunk:
                        await self._send_fragment(context_id, chunk, max_pdu)
                if total != size:
                    raise LocalProtocolError(f"the data set ended at {total} of its {size} bytes")
            await self._send_fragment(context_id, previous or b"", max_pdu, True)
        except BaseException:
            self._held.clear()
            raise
        finally:
            self._streaming = False
        held, self._held = self._held, []
        for message in held:
            self.queue_message(*message)
        self.write_now()
        return total

    async def _send_fragment(
        self, context_id: int, chunk: bytes, max_pdu: int, last: bool = False
    ) -> None:
        """Send a data set chunk (``last``: the data set's end), at most
        :data:`PDVS_PER_TURN` PDVs per turn of the loop (a peer's tiny Maximum
        Length Received makes a chunk thousands of PDVs), waiting when much is unsent."""
        step, size = max_pdv_data(max_pdu) * PDVS_PER_TURN, len(chunk)
        view = memoryview(chunk) if size > step else None  # (else one part: no slice)
        for start in range(0, max(size, 1), step):
            end = start + step
            part = chunk if view is None else view[start:end]
            pdvs = dataset_pdvs(context_id, part, max_pdu, last and end >= size)
            self.conn.send_each(pdvs)
            self.write_now()
            if self._unflushed >= DRAIN_EVERY:
                await self.drain()
            await self.pace(len(pdvs))

    async def close(self) -> None:
        """Close the socket (idempotent): what waits to be sent may take ABORT_LINGER
        seconds to leave, then the connection is cut."""
        if self.writer.is_closing():
            return
        self.writer.close_bounded(ABORT_LINGER)
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
        self.writer.close_bounded(ABORT_LINGER)
