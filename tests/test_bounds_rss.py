"""Memory per connection, measured on the real server (``dicomstore serve``,
/proc/PID/status) (issue 12): idle TCP connections cost a few KiB each, and
are given back when they close; a peer that sends requests and never reads
the answers is no longer read from (write backpressure), so the server's
memory stays flat instead of growing with every request.

The issue's figures (2,000 connections; 60 s of a peer that never reads) are
measured by hand and reported; these tests assert the same bounds at a scale
that keeps them fast, and would show the old linear growth."""

from __future__ import annotations

import asyncio
import select
import socket

from dicomstore.aio.client import associate, build_contexts, our_user_information
from dicomstore.dimse import CEchoRQ, command_pdvs
from dicomstore.ul import pdu as P
from tests.bounds_testlib import MiB, read_pdu, served

#: Idle connections opened (the issue's figure: 2,000) and the RSS growth allowed.
IDLE = 2000
IDLE_GROWTH_MIB = 100


async def _echo(port: int) -> int:
    """One well-behaved association; when it is answered, the server has also
    taken every connection made before it (the accept queue is in order)."""
    async with await associate("127.0.0.1", port) as assoc:
        return (await assoc.echo()).status


def test_idle_connections_cost_a_few_kib_and_are_given_back(tmp_path) -> None:
    # (what each costs, so without the cap on them: by default a quarter of
    # --max-pending-connections from one address are held, later ones closed at once)
    no_cap = ("--max-pending-connections", "0")
    with served(tmp_path, "--log-level", "warning", *no_cap) as server:
        assert asyncio.run(_echo(server.port)) == 0
        before = server.rss_mib()
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(IDLE)]
        try:
            assert asyncio.run(_echo(server.port)) == 0
            held = server.rss_mib()
        finally:
            for sock in idle:
                sock.close()
        assert asyncio.run(_echo(server.port)) == 0
        after = server.rss_mib()
    assert held - before < IDLE_GROWTH_MIB, f"{IDLE} idle connections: +{held - before:.1f} MiB"
    assert after - before < IDLE_GROWTH_MIB / 2, f"after closing: +{after - before:.1f} MiB"


#: Requests the never-reading peer tries to send, and the growth allowed meanwhile.
FLOOD_BYTES = 48 * MiB
FLOOD_GROWTH_MIB = 16
#: Seconds the peer's sending may block before the server counts as "not reading".
STALLED = 3.0


def _echo_flood(total: int) -> bytes:
    pdus = b"".join(
        P.encode(P.PDataTF(command_pdvs(1, CEchoRQ(n).encode(), 0))) for n in range(1, 1001)
    )
    return pdus * (total // len(pdus) + 1)


def test_a_peer_that_never_reads_is_no_longer_read_from(tmp_path) -> None:
    flood = memoryview(_echo_flood(FLOOD_BYTES))
    with served(tmp_path, "--log-level", "warning") as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # we never read
        sock.connect(("127.0.0.1", server.port))
        try:
            contexts = build_contexts([("1.2.840.10008.1.1", ("1.2.840.10008.1.2",))])
            sock.sendall(P.encode(P.AssociateRQ("ANY", "FLOOD", contexts, our_user_information(0))))
            assert read_pdu(sock)[0] == 0x02  # A-ASSOCIATE-AC
            before = server.rss_mib()
            sock.setblocking(False)
            sent = 0
            while sent < len(flood):
                _, writable, _ = select.select([], [sock], [], STALLED)
                if not writable:
                    break  # the server stopped reading
                sent += sock.send(flood[sent : sent + 256 * 1024])
            grown = server.rss_mib() - before
        finally:
            sock.close()
    assert sent < len(flood), "the server read every request without sending an answer"
    assert grown < FLOOD_GROWTH_MIB, f"+{grown:.1f} MiB after {sent / MiB:.1f} MiB of requests"
