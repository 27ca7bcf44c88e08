"""Write backpressure on the client side (issue 12): while the peer does not
read what we send (our write buffer above aio.stream.WRITE_HIGH_WATER), the
client's Stream reads nothing from it either, and reads again once the peer
catches up (below WRITE_LOW_WATER). The server's side, on the real server:
tests/test_bounds_rss.py."""

from __future__ import annotations

import asyncio

import pytest

from dicomstore import uids
from dicomstore.aio.client import associate
from dicomstore.ul import pdu as P
from dicomstore.ul.negotiation import AcceptorPolicy, negotiate
from tests.test_hostile import SC

MiB = 1024 * 1024


async def _until(predicate, turns: int = 200_000) -> bool:
    """Yield to the loop until ``predicate()`` holds (no timed sleep)."""
    for _ in range(turns):
        if predicate():
            return True
        await asyncio.sleep(0)
    return predicate()


def test_a_client_whose_writes_back_up_stops_reading() -> None:
    async def main():
        peer_reader: asyncio.StreamReader | None = None
        peer_writer: asyncio.StreamWriter | None = None
        accepted = asyncio.Event()

        async def scp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal peer_reader, peer_writer
            header = await reader.readexactly(6)
            body = await reader.readexactly(int.from_bytes(header[2:], "big"))
            rq = P.decode_pdu(header[0], body)
            policy = AcceptorPolicy("ANY-SCP", {SC: (uids.EXPLICIT_VR_LE,)})
            writer.write(P.encode(negotiate(rq, policy)[0]))
            peer_reader, peer_writer = reader, writer
            accepted.set()

        server = await asyncio.start_server(scp, "127.0.0.1", 0, limit=MiB)
        port = server.sockets[0].getsockname()[1]
        assoc = await associate("127.0.0.1", port, contexts=[(SC, [uids.EXPLICIT_VR_LE])])
        await accepted.wait()
        stream = assoc.t.stream
        # a big data set the peer does not read: our writes back up
        store = asyncio.create_task(
            assoc.store_stream(assoc.context_for(SC), SC, "1.2.3.4", [bytes(64 * MiB)])
        )
        backed_up = await _until(lambda: stream._write_paused)
        paused = stream.reading_paused and not stream.transport.is_reading()
        # the peer catches up: we read again
        assert peer_reader is not None and peer_writer is not None
        drained = asyncio.create_task(peer_reader.read(-1))
        resumed = await _until(lambda: not stream._write_paused and stream.transport.is_reading())
        store.cancel()
        await assoc.abort()
        drained.cancel()
        peer_writer.close()
        server.close()
        return backed_up, paused, resumed

    assert asyncio.run(main()) == (True, True, True)


@pytest.mark.parametrize(
    "timers", [{"network": 0.2}, {"network": 600.0, "dimse": 0.2}], ids=["idle", "dimse"]
)
def test_a_peer_that_reads_nothing_is_closed_after_the_idle_timeout(timers) -> None:
    """A drain waits at most ``Timeouts.network``: a peer that reads none of what we
    send is silent, as an idle one is (the Q/R SCPs' answers, a C-STORE's data set:
    review34a found an association held beyond its window waiting on one for ever).
    The connection is closed at once, what waits to be sent dropped. Or the DIMSE
    timeout, when shorter (review123 F2: a C-MOVE destination reading nothing was cut
    after --idle-timeout, 600 s, not --dimse-timeout)."""
    import socket

    from dicomstore.aio.association import Timeouts, Transport
    from dicomstore.aio.stream import Stream
    from dicomstore.ul.connection import Connection, Role

    async def main():
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        loop = asyncio.get_running_loop()
        port = listener.getsockname()[1]
        peer = socket.socket()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        peer.setblocking(False)
        connecting = loop.sock_connect(peer, ("127.0.0.1", port))
        accepted, _ = await asyncio.gather(loop.sock_accept(listener), connecting)
        sock = accepted[0]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        _transport, stream = await loop.connect_accepted_socket(Stream, sock)
        t = Transport(stream, Connection(Role.ACCEPTOR), Timeouts(**timers))
        stream.write(bytes(8 * MiB))  # far beyond the socket buffers: writes back up
        assert await _until(lambda: stream._write_paused)
        started = loop.time()
        try:
            await t.drain()
        except ConnectionResetError as exc:
            waited, error = loop.time() - started, str(exc)
        assert await _until(lambda: stream.lost)
        peer.close()
        listener.close()
        return waited, error, stream.transport.get_write_buffer_size()

    waited, error, unsent = asyncio.run(main())
    assert waited >= 0.15 and "read nothing" in error
    assert unsent == 0  # dropped: an A-ABORT could not reach it either


def test_an_scp_whose_maximum_length_holds_no_pdv_is_left_at_once() -> None:
    """An A-ASSOCIATE-AC whose Maximum Length Received (1-7) no PDV fits in (PS3.8 D.1):
    the client aborts and says why, where its first request failed as a local error."""
    import pytest

    from dicomstore.errors import AssociationError

    async def main() -> str:
        async def scp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            header = await reader.readexactly(6)
            body = await reader.readexactly(int.from_bytes(header[2:], "big"))
            rq = P.decode_pdu(header[0], body)
            policy = AcceptorPolicy("ANY-SCP", {SC: (uids.EXPLICIT_VR_LE,)}, max_pdu=6)
            writer.write(P.encode(negotiate(rq, policy)[0]))
            await reader.read()  # (until the client goes)
            writer.close()

        server = await asyncio.start_server(scp, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(AssociationError) as failed:
                await associate("127.0.0.1", port, contexts=[(SC, [uids.EXPLICIT_VR_LE])])
            return str(failed.value)
        finally:
            server.close()

    assert "Maximum Length Received, 6," in asyncio.run(main())
