"""An A-RELEASE-RQ followed by another PDU in the same read (review34a #2): the state
machine has moved on by the time the release is answered (PS3.8 Table 9-10: Sta8
then Evt10/Evt12/Evt16), so no A-RELEASE-RP is sent and nothing is logged as an
internal error; the server serves on."""

from __future__ import annotations

import asyncio
import logging

import pytest

from dicomstore import uids
from dicomstore.aio.client import associate
from dicomstore.dimse import CEchoRQ, command_pdvs
from dicomstore.services.server import Server, ServerConfig
from dicomstore.ul import pdu as P

RELEASE = P.encode(P.ReleaseRQ())
FOLLOWERS = {
    "P-DATA": P.encode(P.PDataTF(command_pdvs(1, CEchoRQ(1).encode(), 0))),
    "A-ABORT": P.encode(P.Abort(P.ABORT_SOURCE_USER, 0)),
    "A-RELEASE-RQ": RELEASE,
}


@pytest.mark.parametrize("follower", sorted(FOLLOWERS))
def test_a_release_and_another_pdu_in_one_read(follower, caplog) -> None:
    caplog.set_level(logging.INFO, logger="dicomstore")

    async def main() -> list[bytes]:
        server = Server(ServerConfig(port=0), None)
        await server.start()
        try:
            assoc = await associate(
                "127.0.0.1", server.port, contexts=[(uids.VERIFICATION, [uids.IMPLICIT_VR_LE])]
            )
            sock = assoc.t.stream.transport.get_extra_info("socket")
            reader, writer = await asyncio.open_connection(sock=sock.dup())
            assoc.t.stream.transport.pause_reading()  # (the raw reader below takes it)
            writer.write(RELEASE + FOLLOWERS[follower])
            await writer.drain()
            received = await asyncio.wait_for(reader.read(6), 10)  # its answer, if any
            writer.close()
            await assoc.abort()
            for _ in range(1000):
                if not server.associations:
                    break
                await asyncio.sleep(0.01)
            async with await associate("127.0.0.1", server.port) as again:  # serves on
                assert (await again.echo()).status == 0
            return [received[:1]]
        finally:
            await server.close(grace=2)

    (first,) = asyncio.run(main())
    assert first in (b"", b"\x07")  # nothing, or an A-ABORT: never an A-RELEASE-RP (06)
    assert not [r for r in caplog.records if "internal error" in r.getMessage()]
