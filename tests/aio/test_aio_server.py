"""The server under load and abuse: association limit, silent peers, garbage."""

from __future__ import annotations

import asyncio
import os

from dicomstore import uids
from dicomstore.aio.association import Timeouts
from dicomstore.aio.client import associate
from dicomstore.errors import AssociationRejected
from dicomstore.services.server import Server, ServerConfig
from dicomstore.ul import pdu as P
from tests.conftest import NullHandler


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _start(**kwargs) -> Server:
    server = Server(ServerConfig(port=0, **kwargs), NullHandler())
    await server.start()
    return server


def test_200_associations_against_a_limit_of_50() -> None:
    async def main() -> tuple[int, int, int]:
        # (200 connections at once from one address: beyond a quarter of the pending
        # connections' limit some would be closed before their request is read)
        server = await _start(max_associations=50, max_pending_connections=800)
        gate = asyncio.Event()
        fds_before = _open_fds()

        async def one() -> str:
            try:
                assoc = await associate("127.0.0.1", server.port)
            except AssociationRejected as exc:
                assert exc.transient and exc.source == 3 and exc.reason == 1
                return "rejected"
            await gate.wait()  # hold the association until everyone has an answer
            assert (await assoc.echo()).status == 0
            await assoc.release()
            return "ok"

        tasks = [asyncio.create_task(one()) for _ in range(200)]
        # Everyone either holds an association or was rejected: then let go.
        while sum(t.done() for t in tasks) < 150:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        gate.set()
        results = await asyncio.gather(*tasks)
        await server.close(grace=5)
        leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not leftover, leftover
        return results.count("ok"), results.count("rejected"), _open_fds() - fds_before

    ok, rejected, fd_delta = asyncio.run(main())
    assert ok == 50
    assert rejected == 150
    assert fd_delta <= 0


def test_silent_peer_is_dropped_when_artim_expires_and_others_are_served() -> None:
    async def main() -> None:
        server = await _start(timeouts=Timeouts(artim=0.3))
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        # Meanwhile another peer is served normally.
        async with await associate("127.0.0.1", server.port) as assoc:
            assert (await assoc.echo()).status == 0
        data = await asyncio.wait_for(reader.read(), timeout=10)  # EOF when dropped
        assert data == b""
        writer.close()
        await server.close(grace=1)

    asyncio.run(main())


def test_garbage_gets_an_abort_and_the_server_keeps_serving() -> None:
    async def main() -> None:
        server = await _start()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"\x42\x00\x00\x00\x00\x04GARBAGE-GARBAGE")
        await writer.drain()
        reply = await asyncio.wait_for(reader.readexactly(10), timeout=10)
        pdus, used = P.PDUReader().parse(memoryview(reply))
        assert pdus == [P.Abort(P.ABORT_SOURCE_PROVIDER, P.ABORT_UNRECOGNIZED_PDU)]
        assert used == len(reply)
        writer.close()
        async with await associate("127.0.0.1", server.port) as assoc:
            assert (await assoc.echo()).status == 0
        await server.close(grace=1)

    asyncio.run(main())


def test_oversized_pdata_is_refused_before_it_is_buffered() -> None:
    async def main() -> None:
        server = await _start(max_pdu=4096)
        assoc = await associate("127.0.0.1", server.port)
        # A P-DATA-TF header announcing 1 GiB: the server must abort at once.
        assoc.t.writer.write(bytes([4, 0]) + (1 << 30).to_bytes(4, "big") + b"\0" * 64)
        await assoc.t.writer.drain()
        reader_task = assoc._reader
        assert reader_task is not None
        await asyncio.wait_for(reader_task, timeout=10)
        assert isinstance(assoc._ended, Exception)
        assert "invalid PDU parameter value" in str(assoc._ended)
        await assoc.abort()
        await server.close(grace=1)

    asyncio.run(main())


def test_refused_contexts_are_named_in_the_log(caplog) -> None:
    private = "1.2.826.0.1.3680043.9.9999.7"

    async def main() -> None:
        server = Server(ServerConfig(port=0), NullHandler(), commit_in_thread=False)
        await server.start()
        try:
            contexts = [
                ("1.2.840.10008.1.1", [uids.IMPLICIT_VR_LE]),
                (private, [uids.IMPLICIT_VR_LE]),
            ]
            assoc = await associate("127.0.0.1", server.port, contexts=contexts)
            await assoc.release()
        finally:
            await server.close(grace=2)

    with caplog.at_level("INFO", logger="dicomstore.server"):
        asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if "contexts refused" in r.getMessage()]
    assert len(lines) == 1 and lines[0].endswith(f"{private} (abstract syntax not supported)")


def test_a_peer_gone_while_its_admission_is_judged_is_no_internal_error(
    caplog, monkeypatch
) -> None:
    """review107 L3: after a stall, an association whose peer had left (the connection
    closed while it was judged) got an ERROR and a traceback (A-ASSOCIATE-RSP "not
    allowed in Sta1"): an INFO line now, and the server serves on."""
    import logging

    from dicomstore.services import acceptance
    from tests.aio.test_aio_slowloris import _rq_bytes

    caplog.set_level(logging.INFO, "dicomstore")
    admit = acceptance.admit

    async def main() -> int:
        server = await _start()

        async def leaving(srv, rq, answer, address, subject):  # (the peer leaves now)
            for assoc in srv.associations:
                if assoc.request is rq:
                    assoc.t.conn.transport_closed()
            return await admit(srv, rq, answer, address, subject)

        try:
            monkeypatch.setattr(acceptance, "admit", leaving)
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(_rq_bytes())
            await reader.read()  # (closed, nothing answered)
            writer.close()
            monkeypatch.setattr(acceptance, "admit", admit)
            async with await associate("127.0.0.1", server.port) as assoc:
                return (await assoc.echo()).status
        finally:
            await server.close(grace=1)

    assert asyncio.run(main()) == 0
    assert "internal error" not in caplog.text
    assert "the peer left before its association was answered" in caplog.text
