"""The socket end of an association (aio.association.Stream): data sets arrive
intact through the zero-copy receive buffer whatever the PDU size (growth,
compaction), over TLS too, and a server awaiting a commit stops reading."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import subprocess
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from dicomstore import uids
from dicomstore.aio.association import RECV_BUFFER
from dicomstore.aio.client import associate
from dicomstore.aio.stream import Stream
from dicomstore.dimse import commands as C
from dicomstore.services.server import Server, ServerConfig
from dicomstore.tls import client_context, server_context

CT = "1.2.840.10008.5.1.4.1.1.2"
MiB = 1024 * 1024


class Outcome:
    status = 0
    error_comment = None
    offending_element = None


class Collecting:
    """Keeps each instance's bytes; commits wait for ``gate`` (open by default)."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.committing = threading.Event()
        self.stored: dict[str, bytes] = {}

    def begin(self, *, sop_instance_uid: str, **_kw):
        handler = self
        data = bytearray()

        class Sink:
            def write(self, fragment) -> None:
                data.extend(fragment)

            def commit(self):
                handler.committing.set()
                handler.gate.wait(30)
                handler.stored[sop_instance_uid] = bytes(data)
                return Outcome

            def abort(self) -> None:
                pass

        return Sink()


def pattern(size: int, seed: int) -> bytes:
    """Bytes that differ everywhere, so a misplaced fragment shows."""
    out = bytearray()
    block = 0
    while len(out) < size:
        out += hashlib.sha512(b"%d-%d" % (seed, block)).digest() * 64
        block += 1
    return bytes(out[:size])


async def _store_all(port: int, sizes: list[int], **kwargs) -> list[int]:
    assoc = await associate("127.0.0.1", port, contexts=[(CT, [uids.EXPLICIT_VR_LE])], **kwargs)
    ctx = assoc.context_for(CT)
    statuses = []
    for n, size in enumerate(sizes):
        data = pattern(size, n)
        chunks = [data[i : i + 3 * MiB + 2] for i in range(0, size, 3 * MiB + 2)]
        rsp = await assoc.store_stream(ctx, CT, f"1.2.3.{n}", chunks)
        statuses.append(rsp.status)
    await assoc.release()
    return statuses


def test_pdus_larger_than_the_receive_buffer_grow_it_and_arrive_intact() -> None:
    handler = Collecting()
    sizes = [10, 3 * RECV_BUFFER + 6, 9 * MiB + 2, 0, 2]

    async def main() -> list[int]:
        server = Server(ServerConfig(port=0, max_pdu=4 * MiB), handler, commit_in_thread=False)
        await server.start()
        try:
            return await _store_all(server.port, sizes)
        finally:
            await server.close(grace=5)

    assert asyncio.run(main()) == [0] * len(sizes)
    for n, size in enumerate(sizes):
        assert handler.stored[f"1.2.3.{n}"] == pattern(size, n)


def test_small_and_odd_pdus_arrive_intact() -> None:
    handler = Collecting()
    sizes = [5 * MiB + 4, 70000]

    async def main() -> list[int]:
        server = Server(ServerConfig(port=0, max_pdu=16384 + 7), handler, commit_in_thread=False)
        await server.start()
        try:
            return await _store_all(server.port, sizes)
        finally:
            await server.close(grace=5)

    assert asyncio.run(main()) == [0, 0]
    for n, size in enumerate(sizes):
        assert handler.stored[f"1.2.3.{n}"] == pattern(size, n)


def test_over_tls(tmp_path: Path) -> None:
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    handler = Collecting()
    sizes = [6 * MiB + 2, 10]

    async def main() -> list[int]:
        config = ServerConfig(
            port=0, ssl=server_context(tmp_path / "cert.pem", tmp_path / "key.pem")
        )
        server = Server(config, handler, commit_in_thread=False)
        await server.start()
        try:
            return await _store_all(server.port, sizes, ssl=client_context(tmp_path / "cert.pem"))
        finally:
            await server.close(grace=5)

    assert asyncio.run(main()) == [0, 0]
    for n, size in enumerate(sizes):
        assert handler.stored[f"1.2.3.{n}"] == pattern(size, n)


def _rq(message_id: int, uid: str) -> bytes:
    return C.encode_command(
        {
            C.AFFECTED_SOP_CLASS_UID: CT,
            C.COMMAND_FIELD: 0x0001,
            C.MESSAGE_ID: message_id,
            C.PRIORITY: 0,
            C.COMMAND_DATA_SET_TYPE: 0,
            C.AFFECTED_SOP_INSTANCE_UID: uid,
        }
    )


def test_a_server_awaiting_a_commit_stops_reading() -> None:
    handler = Collecting()
    handler.gate.clear()
    size = 24 * MiB

    async def main():
        server = Server(ServerConfig(port=0), handler, commit_in_thread=True)
        await server.start()
        assoc = await associate("127.0.0.1", server.port, contexts=[(CT, [uids.EXPLICIT_VR_LE])])
        ctx = assoc.context_for(CT)
        loop = asyncio.get_running_loop()
        answers = []
        for n in (1, 2):  # two requests at once, ignoring the window of one
            answers.append(loop.create_future())
            assoc._waiting[n] = answers[-1]
            assoc.t.queue_message(ctx.id, _rq(n, f"1.2.3.{n}"), pattern(size, n))
        await asyncio.to_thread(handler.committing.wait, 30)
        (acceptor,) = server.associations
        stream = acceptor.t.stream
        for _ in range(1000):  # until the buffer is full and reading paused
            if stream.reading_paused:
                break
            await asyncio.sleep(0.01)
        assert stream.reading_paused
        held = len(stream.buf)
        await asyncio.sleep(0.1)
        # bounded: the rest waits in the kernel and in the sender's buffer
        assert len(stream.buf) == held <= 2 * MiB + 2 * RECV_BUFFER
        assert assoc.t.writer.transport.get_write_buffer_size() > 0
        assert "1.2.3.2" not in handler.stored
        handler.gate.set()
        statuses = [(await asyncio.wait_for(a, 30)).status for a in answers]
        await assoc.release()
        await server.close(grace=5)
        return statuses

    assert asyncio.run(main()) == [0, 0]
    assert handler.stored == {"1.2.3.1": pattern(size, 1), "1.2.3.2": pattern(size, 2)}


def test_an_idle_association_gives_back_its_buffer(monkeypatch) -> None:
    """A buffer that grew for a large PDU goes back to a few KiB once the association
    has been quiet for ``SHRINK_AFTER`` seconds, and grows again for the next one."""
    from dicomstore.aio import stream as streams

    monkeypatch.setattr(streams, "SHRINK_AFTER", 0.05)
    handler = Collecting()

    async def main():
        server = Server(ServerConfig(port=0, max_pdu=0), handler)
        await server.start()
        try:
            assoc = await associate(
                "127.0.0.1", server.port, contexts=[(CT, [uids.EXPLICIT_VR_LE])]
            )
            ctx = assoc.context_for(CT)
            sizes = []
            for n in (1, 2):
                rsp = await assoc.store_stream(ctx, CT, f"1.2.3.{n}", [pattern(3 * MiB, n)])
                assert rsp.status == 0
                (acceptor,) = server.associations
                sizes.append(len(acceptor.t.stream.buf))
                for _ in range(1000):  # until the server's receive loop has shrunk it
                    if len(acceptor.t.stream.buf) == streams.RECV_INITIAL:
                        break
                    await asyncio.sleep(0.01)
                sizes.append(len(acceptor.t.stream.buf))
            await assoc.release()
            return sizes
        finally:
            await server.close(grace=5)

    grown, shrunk, grown_again, shrunk_again = asyncio.run(main())
    assert grown > MiB and grown_again > MiB
    assert shrunk == shrunk_again == streams.RECV_INITIAL
    assert handler.stored == {f"1.2.3.{n}": pattern(3 * MiB, n) for n in (1, 2)}


@contextlib.asynccontextmanager
async def _connected(rcvbuf: int = 0) -> AsyncIterator[tuple[socket.socket, Stream]]:
    """A peer's plain socket (its receive buffer ``rcvbuf`` when given) and our
    Stream of the connection it made."""
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    peer = socket.create_connection(listener.getsockname())
    if rcvbuf:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    try:
        conn, _ = await loop.sock_accept(listener)
        _, stream = await loop.connect_accepted_socket(Stream, conn)
        yield peer, stream
    finally:
        peer.close()
        listener.close()


def test_a_close_with_a_peer_that_reads_nothing_is_cut_not_held() -> None:
    """review123 F1: an association aborted (idle) whose peer had stopped reading kept
    its socket open for ever, megabytes queued: a graceful close waits for a flush
    that never comes. The close lets them go for a while, then cuts the connection
    (at once when the peer reads nothing now)."""

    async def main() -> None:
        async with _connected(rcvbuf=4096) as (_peer, stream):  # (a peer that never reads)
            for _ in range(1000):  # (until the socket's buffers are full, and ours)
                stream.write(bytes(64 * 1024))
                if stream._write_paused:
                    break
            assert stream._write_paused
            stream.close_bounded(30.0)  # (writing paused: cut at once, not in 30 s)
            await asyncio.wait_for(stream.wait_closed(), 10)

    asyncio.run(main())


def test_a_close_lets_what_waits_go_for_its_linger_then_cuts() -> None:
    async def main() -> None:
        async with _connected() as (_peer, stream):
            stream.transport.set_write_buffer_limits(high=1 << 30)  # (never paused)
            for _ in range(256):  # (16 MiB: more than the socket's buffers hold)
                stream.write(bytes(64 * 1024))
            assert not stream._write_paused and stream.transport.get_write_buffer_size()
            stream.close_bounded(0.2)
            await asyncio.wait_for(stream.wait_closed(), 10)

    asyncio.run(main())


def test_a_close_whose_data_left_lets_go_of_its_cut() -> None:
    """review125: the cut armed by a close fired after a normal end too (an ERROR
    logged by the default loop, each time)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with _connected() as (peer, stream):
            stream.transport.set_write_buffer_limits(high=1 << 30)
            for _ in range(256):
                stream.write(bytes(64 * 1024))
            stream.close_bounded(30.0)
            assert stream._linger is not None

            def read_all() -> None:
                while peer.recv(1 << 20):
                    pass

            reading = loop.run_in_executor(None, read_all)
            await asyncio.wait_for(stream.wait_closed(), 30)  # (the peer read it all)
            await reading
            assert stream._linger.cancelled()

    asyncio.run(main())
