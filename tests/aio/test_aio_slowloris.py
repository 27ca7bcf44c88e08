"""Peers that trickle bytes (issue 12, "Slowloris"): an A-ASSOCIATE-RQ must be
complete within ARTIM of the connection, whatever arrives meanwhile (PS3.8
9.1.5); inside an association each PDU within ``Timeouts.operation`` of its
first byte (A-ABORT, service-provider); and connections still sending their
request take no association slot, so a well-behaved peer is served.

The trickle is paced by waiting for the server's answer (EOF or a PDU) for a
fraction of the timer, never by sleeping; no assertion is on timing."""

from __future__ import annotations

import asyncio
import logging

import pytest

from dicomstore import uids
from dicomstore.aio.association import Timeouts
from dicomstore.aio.client import associate, build_contexts, our_user_information
from dicomstore.services.server import Server, ServerConfig
from dicomstore.ul import pdu as P
from tests.conftest import NullHandler

#: Seconds: the timers under test (the CLI's --artim-timeout/--operation-timeout).
TIMER = 1.0


#: Secondary Capture, proposed beside Verification (context 3)
SC = "1.2.840.10008.5.1.4.1.1.7"


def _rq_bytes(calling_ae: str = "SLOW") -> bytes:
    contexts = build_contexts(
        [(uids.VERIFICATION, (uids.IMPLICIT_VR_LE,)), (SC, (uids.EXPLICIT_VR_LE,))]
    )
    rq = P.AssociateRQ("ANY-SCP", calling_ae, contexts, our_user_information(16384))
    return P.encode(rq)


async def _answer_or_none(reader: asyncio.StreamReader, wait: float) -> bytes | None:
    """The first bytes the server sends within ``wait`` seconds, or None (read(n): a
    timeout loses nothing read; read() would lose what it had)."""
    try:
        return await asyncio.wait_for(reader.read(64), wait)
    except TimeoutError:
        return None


async def _paced(writer, reader, parts: bytes | list[bytes]) -> tuple[int, bytes | None]:
    """Send each of ``parts`` (of bytes: a byte at a time), each after waiting TIMER/4
    for the server to answer: (parts sent, the first bytes it sent back, None if none)."""
    if isinstance(parts, bytes):
        parts = [parts[n : n + 1] for n in range(len(parts))]
    for sent, part in enumerate(parts, 1):
        writer.write(part)
        await writer.drain()
        first = await _answer_or_none(reader, TIMER / 4)
        if first is not None:
            return sent, first
    return len(parts), None


async def _trickle(writer, reader, parts: bytes | list[bytes]) -> tuple[int, bytes | None]:
    """:func:`_paced`, an answer read to the server's close."""
    sent, first = await _paced(writer, reader, parts)
    return sent, None if first is None else first + await reader.read()


async def _start(**kwargs) -> Server:
    server = Server(ServerConfig(port=0, **kwargs), NullHandler())
    await server.start()
    return server


def test_artim_is_not_restarted_by_a_trickled_association_request(caplog) -> None:
    rq = _rq_bytes()
    caplog.set_level(logging.INFO, "dicomstore")

    async def main():
        server = await _start(timeouts=Timeouts(artim=TIMER))
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            # ~4 bytes per ARTIM period: the request would take len(rq)/4 periods
            outcome = await _trickle(writer, reader, rq)
            writer.close()
            return outcome
        finally:
            await server.close(grace=1)

    sent, answer = asyncio.run(main())
    assert answer == b""  # closed (AA-2: no association yet, nothing to answer)
    assert sent < len(rq) // 2
    assert "ARTIM" in caplog.text and "association request" in caplog.text


def test_a_pdu_trickled_inside_an_association_is_aborted_by_the_provider(caplog) -> None:
    caplog.set_level(logging.INFO, "dicomstore")
    echo = P.encode(P.PDataTF([P.PDV(1, True, True, bytes(200))]))

    sent, answer = _on_association(Timeouts(operation=TIMER), lambda r, w: _trickle(w, r, echo))
    assert sent < len(echo) // 2
    # A-ABORT (PS3.8 9.3.8): source 2, the service-provider; reason 0, not specified
    assert answer == bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 2, 0])
    assert "PDU was not complete" in caplog.text


def test_connections_sending_their_request_take_no_association_slot() -> None:
    async def main():
        server = await _start(max_associations=2, timeouts=Timeouts(artim=60))
        try:
            slow = []
            for _ in range(5):  # more than the limit: each has sent part of a request
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(_rq_bytes()[:10])
                await writer.drain()
                slow.append(writer)
            first = await associate("127.0.0.1", server.port)
            second = await associate("127.0.0.1", server.port)
            statuses = [(await a.echo()).status for a in (first, second)]
            for assoc in (first, second):
                await assoc.release()
            for writer in slow:
                writer.close()
            return statuses
        finally:
            await server.close(grace=1)

    assert asyncio.run(main()) == [0, 0]


async def _served(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a new connection from ``host`` is served: its request answered (an
    A-ASSOCIATE-AC), not closed at once."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(host, 0))
    writer.write(_rq_bytes())
    try:
        header = await asyncio.wait_for(reader.read(1), 10)
    finally:
        writer.close()
    return header == b"\x02"


def test_connections_that_send_no_request_are_capped(caplog) -> None:
    caplog.set_level(logging.WARNING, "dicomstore")

    async def main():
        # 8 pending connections at most, 2 of them (a quarter) from one address
        server = await _start(max_pending_connections=8, timeouts=Timeouts(artim=30))
        opened = []

        async def connect(host: str) -> asyncio.StreamReader:
            pair = await asyncio.open_connection("127.0.0.1", server.port, local_addr=(host, 0))
            opened.append(pair)
            await _until(lambda: len(server.associations) == len(opened) or pair[0].at_eof())
            return pair[0]

        try:
            silent = [await connect("127.0.0.1") for _ in range(2)]
            closed_at_once = await asyncio.wait_for((await connect("127.0.0.1")).read(), 10)
            other_address = await _served(server.port, "127.0.0.2")
            opened.pop(-1)  # (the one closed)
            for host in ("127.0.0.3", "127.0.0.4", "127.0.0.5") * 2:
                await connect(host)  # (up to the limit, 8, with the 2 above)
            full = await asyncio.wait_for((await connect("127.0.0.6")).read(), 10)
            opened.pop(-1)
            # a silent one that sends its request is no longer pending: room again
            opened[0][1].write(_rq_bytes())
            assert await silent[0].read(1) == b"\x02"
            again = await _served(server.port, "127.0.0.7")
            for _, writer in opened:
                writer.close()
            return closed_at_once, other_address, full, again
        finally:
            await server.close(grace=1)

    closed_at_once, other_address, full, again = asyncio.run(main())
    assert closed_at_once == b"" and full == b""  # closed at once: EOF, nothing sent
    assert other_address and again
    assert "2 connection(s) from 127.0.0.1 have sent no association request yet" in caplog.text
    assert "8 connection(s) have sent no association request yet" in caplog.text


async def _until(condition, timeout: float = 10.0) -> None:
    """Let the server (on this loop) run until ``condition`` holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met"
        await asyncio.sleep(0)  # (a turn of the loop, not a timed wait)


def test_associations_are_not_pending_connections() -> None:
    async def main():
        server = await _start(max_pending_connections=4)  # one pending per address
        try:
            held = [await associate("127.0.0.1", server.port) for _ in range(3)]
            served = await _served(server.port)  # (associations hold no pending place)
            for assoc in held:
                await assoc.release()
            return served
        finally:
            await server.close(grace=1)

    assert asyncio.run(main())


async def _associated(server: Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(_rq_bytes())
    header = await reader.readexactly(6)
    assert header[0] == 0x02  # A-ASSOCIATE-AC
    await reader.readexactly(int.from_bytes(header[2:], "big"))
    return reader, writer


def _on_association(timeouts: Timeouts, body):
    """``await body(reader, writer)`` on an association with a server of ``timeouts``."""

    async def main():
        server = await _start(timeouts=timeouts)
        try:
            reader, writer = await _associated(server)
            try:
                return await body(reader, writer)
            finally:
                writer.close()
        finally:
            await server.close(grace=1)

    return asyncio.run(main())


#: The least rate under test: TIMER seconds of credit, 500 bytes a second after.
SLOW = Timeouts(min_rate=500, rate_credit=TIMER)


_ECHO = P.encode(P.PDataTF([P.PDV(1, True, True, bytes(200))]))


@pytest.mark.parametrize(
    ("parts", "what"),
    [
        ([_ECHO[n : n + 1] for n in range(len(_ECHO))], "a PDU"),  # (one PDU, a byte at a time)
        ([P.encode(P.PDataTF([P.PDV(1, True, False, b"x")]))] * 200, "a message"),  # (whole PDUs)
    ],
    ids=["bytes-of-a-pdu", "whole-pdus-of-a-message"],
)
def test_a_trickle_slower_than_the_least_rate_is_aborted_long_before_the_operation_timeout(
    caplog, parts: list[bytes], what: str
) -> None:
    """review93 F1: a byte every few seconds held each association slot for the
    --operation-timeout (3600 s; 50 such peers took every slot): a PDU, and a message
    of whole PDUs (each a one-byte fragment of a command: no PDU's own bound runs out),
    must keep up --min-receive-rate, with a few seconds of credit."""
    caplog.set_level(logging.INFO, "dicomstore")

    sent, answer = _on_association(SLOW, lambda r, w: _trickle(w, r, parts))  # (operation 3600)
    assert sent < len(parts) // 2
    assert answer == bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 2, 0])  # (A-ABORT, provider)
    assert f"{what} arriving slower than --min-receive-rate 500 bytes/s" in caplog.text


def test_a_peer_keeping_up_the_least_rate_is_served(caplog) -> None:
    """A message that takes longer than the credit but keeps up the least rate is not
    cut: a C-ECHO-RQ in 8 fragments, TIMER/4 apart (2 x TIMER in all), at about 80
    bytes a second against a least rate of 40; then answered."""
    from dicomstore.dimse.messages import CEchoRQ

    caplog.set_level(logging.INFO, "dicomstore")
    command = CEchoRQ(message_id=1).encode()
    size = -(-len(command) // 8)
    parts = [command[n : n + size] for n in range(0, len(command), size)]
    last = len(parts) - 1
    pdus = [P.encode(P.PDataTF([P.PDV(1, True, n == last, p)])) for n, p in enumerate(parts)]

    async def body(reader, writer):
        _sent, early = await _paced(writer, reader, pdus[:-1])
        if early is not None:
            return early  # (answered before the message was whole: cut)
        writer.write(pdus[-1])
        return await asyncio.wait_for(reader.read(64), 10)

    answer = _on_association(Timeouts(min_rate=40, rate_credit=TIMER), body)
    assert answer[:1] == b"\x04"  # P-DATA-TF: the C-ECHO-RSP
    assert "slower than" not in caplog.text


def _store_pdvs(size: int) -> tuple[P.PDV, P.PDV]:
    """A C-STORE-RQ's command and a data set of about ``size`` bytes (Explicit VR LE,
    context 3), as one PDV each."""
    from dicomstore.dimse.messages import CStoreRQ
    from tests.test_hostile import dataset, element

    data = dataset("1.2.3.4.5", tail=element(0x0009, 0x0010, b"OB", bytes(size)))
    command = CStoreRQ(1, SC, "1.2.3.4.5").encode()
    return P.PDV(3, True, True, command), P.PDV(3, False, True, data)


def test_a_pdu_over_the_least_rate_is_not_cut_however_long_it_takes(caplog) -> None:
    """review95 F1: the reader wakes when a PDU is whole, not per read, so bytes that
    came meanwhile were never credited: a PDU taking longer than the credit was aborted
    at any rate (pynetdicom at 20 kB/s). A C-STORE of 4 KB in one PDU at 1 kB/s, 4 x the
    credit: answered."""
    caplog.set_level(logging.INFO, "dicomstore")
    pdu = P.encode(P.PDataTF(list(_store_pdvs(4000))))

    async def body(reader, writer):
        chunks = [pdu[n : n + 250] for n in range(0, len(pdu), 250)]  # (TIMER/4 apart: 1 kB/s)
        _sent, early = await _paced(writer, reader, chunks)
        return early or await asyncio.wait_for(reader.read(64), 10)

    assert _on_association(SLOW, body)[:1] == b"\x04"  # P-DATA-TF: the C-STORE-RSP, not an A-ABORT
    assert "slower than" not in caplog.text


def test_a_pause_between_a_command_and_its_data_set_is_not_the_rate_s(caplog) -> None:
    """review95 F2: a C-STORE's command, then a pause longer than the credit before its
    data set (PS3.7, PS3.8 set no bound there: a relay fetching it), was aborted "0 bytes
    in 30s"; that gap, as the one between messages, is the idle timeout's."""
    caplog.set_level(logging.INFO, "dicomstore")
    command, data = _store_pdvs(100)

    async def body(reader, writer):
        writer.write(P.encode(P.PDataTF([command])))
        early = await _answer_or_none(reader, 2 * TIMER)  # (twice the credit)
        writer.write(P.encode(P.PDataTF([data])))
        return early, await asyncio.wait_for(reader.read(64), 10)

    early, answer = _on_association(SLOW, body)
    assert early is None and answer[:1] == b"\x04"
    assert "slower than" not in caplog.text


def test_artim_counts_from_the_connection_not_the_first_read() -> None:
    """review107 M3: ARTIM started at the first read, after a TLS handshake, so a client
    that held its ClientHello up to the handshake timeout (ARTIM too) kept its pending
    place for twice ARTIM. It counts from the connection's acceptance (PS3.8 9.1.5):
    a stream accepted long ago (a slow handshake, say) is past its ARTIM at the first
    read."""
    import socket

    from dicomstore.aio.association import Transport
    from dicomstore.aio.stream import Stream
    from dicomstore.ul.connection import Connection, Role

    async def main() -> bool:
        loop = asyncio.get_running_loop()
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        peer = socket.socket()
        peer.setblocking(False)
        connecting = loop.sock_connect(peer, listener.getsockname())
        (sock, _), _ = await asyncio.gather(loop.sock_accept(listener), connecting)
        _transport, stream = await loop.connect_accepted_socket(Stream, sock)
        t = Transport(stream, Connection(Role.ACCEPTOR), Timeouts(artim=30))
        t.conn.transport_connected()  # (Sta2: ARTIM runs)
        stream.opened -= 60  # (accepted a minute ago)
        try:
            await asyncio.wait_for(t.receive(), 10)
            return t.conn.is_closed
        finally:
            peer.close()
            listener.close()

    assert asyncio.run(main())
