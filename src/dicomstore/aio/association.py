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
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from dicomstore.dimse import DimseAssembler, command_pdvs, dataset_pdvs
from dicomstore.ul.connection import Connection
from dicomstore.ul.events import ULEvent
from dicomstore.ul.negotiation import Negotiated

log = logging.getLogger("dicomstore.association")

#: How much we read from the socket at a time.
READ_SIZE = 1024 * 1024
#: Drain the writer after this many queued bytes (backpressure on sends).
DRAIN_EVERY = 1024 * 1024


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


def tune_socket(writer: asyncio.StreamWriter) -> None:
    """TCP_NODELAY on every socket: DIMSE messages are small and latency-bound."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Transport:
    """Bytes between an asyncio stream pair and a sans-I/O connection."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: Connection,
        timeouts: Timeouts,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = conn
        self.timeouts = timeouts
        self.negotiated: Negotiated | None = None
        self.assembler = DimseAssembler()
        self.peer = writer.get_extra_info("peername")
        self._unflushed = 0
        tune_socket(writer)

    async def flush(self) -> None:
        """Write whatever the connection queued; close the socket if it asks."""
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)
            self._unflushed += len(data)
            if self._unflushed >= DRAIN_EVERY or self.conn.close_requested:
                self._unflushed = 0
                await self.writer.drain()
        if self.conn.close_requested:
            await self.close()

    def write_now(self) -> None:
        """Queue the connection's pending bytes without awaiting the drain."""
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)
            self._unflushed += len(data)

    async def drain(self) -> None:
        """Wait until the socket buffer is below its high-water mark."""
        self._unflushed = 0
        await self.writer.drain()

    async def receive(self, idle: float | None = None) -> list[ULEvent]:
        """Read once from the socket and return the upper layer events.

        While ARTIM runs the read is bounded by it; otherwise by ``idle``.
        A timeout yields Evt18 (ARTIM) or raises TimeoutError (idle).
        """
        artim = self.conn.artim_running
        timeout = self.timeouts.artim if artim else idle
        try:
            if timeout is None:
                data = await self.reader.read(READ_SIZE)
            else:
                async with asyncio.timeout(timeout):
                    data = await self.reader.read(READ_SIZE)
        except TimeoutError:
            if artim:
                events = self.conn.artim_expired()
                await self.flush()
                return events
            raise
        except (ConnectionError, OSError):
            data = b""
        if not data:
            events = self.conn.transport_closed()
            await self.close()
            return events
        events = self.conn.receive_data(data)
        await self.flush()
        return events

    def queue_message(
        self,
        context_id: int,
        command: bytes,
        dataset: bytes | memoryview | None = None,
    ) -> None:
        """Queue a whole (small) DIMSE message, fragmented to the peer's maximum."""
        max_pdu = self.negotiated.peer_max_pdu if self.negotiated else 0
        conn = self.conn
        for pdv in command_pdvs(context_id, command, max_pdu):
            conn.send_pdvs([pdv])
        if dataset is not None:
            for pdv in dataset_pdvs(context_id, dataset, max_pdu, True):
                conn.send_pdvs([pdv])
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
                for pdv in dataset_pdvs(context_id, previous, max_pdu, False):
                    conn.send_pdvs([pdv])
                self.write_now()
                if self._unflushed >= DRAIN_EVERY:
                    await self.drain()
            previous = chunk
            total += len(chunk)
        for pdv in dataset_pdvs(context_id, previous or b"", max_pdu, True):
            conn.send_pdvs([pdv])
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
