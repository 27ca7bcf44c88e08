"""A-RELEASE-RQ in the middle of a C-GET (review34c F1): the requestor, awaiting the
A-RELEASE-RP (PS3.8 Sta7), sends no C-STORE-RSP any more, so the sub-operations
still to come fail at once, the C-GET is answered (AR-7) and the association is
released; it waited for ever on the response, reading nothing, holding its slot."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.archive.archive_testlib import CT, MR
from tests.services.query_testlib import fill, identifier

from dicomstore import uids
from dicomstore.aio.association import Timeouts
from dicomstore.aio.client import associate
from dicomstore.archive import Archive
from dicomstore.dimse import CGetRQ, command_pdvs, dataset_pdvs
from dicomstore.services.conversion import encode_dataset
from dicomstore.services.server import Server, ServerConfig
from dicomstore.ul import pdu as P
from dicomstore.ul.items import RoleSelection

GET, EV = uids.STUDY_ROOT_QR_GET, uids.EXPLICIT_VR_LE


async def _pdus(reader: asyncio.StreamReader) -> list[int]:
    """The types of the PDUs read until the server closes (or 10 s pass)."""
    types = []
    while True:
        try:
            header = await asyncio.wait_for(reader.readexactly(6), 10)
        except (asyncio.IncompleteReadError, TimeoutError):
            return types
        await reader.readexactly(int.from_bytes(header[2:], "big"))
        types.append(header[0])
        if header[0] == 6:  # A-RELEASE-RP
            return types


def test_a_release_instead_of_a_c_store_rsp_ends_the_c_get(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    fill(root)

    async def main() -> tuple[list[int], int]:
        archive = Archive(root, fsync=False)
        server = Server(ServerConfig(port=0, timeouts=Timeouts(network=30.0)), archive)
        await server.start()
        try:
            roles = [RoleSelection(c, scu_role=False, scp_role=True) for c in (CT, MR)]
            contexts = [(GET, (EV,)), (CT, (EV,)), (MR, (EV,))]
            assoc = await associate("127.0.0.1", server.port, contexts=contexts, roles=roles)
            ctx, max_pdu = assoc.context_for(GET), assoc.negotiated.peer_max_pdu
            sock = assoc.t.stream.transport.get_extra_info("socket")
            reader, writer = await asyncio.open_connection(sock=sock.dup())
            assoc.t.stream.transport.pause_reading()  # (the raw reader takes what comes)
            ds = identifier("SERIES", StudyInstanceUID="1.2.9.1", SeriesInstanceUID="1.2.9.1.1")
            rq = command_pdvs(ctx.id, CGetRQ(7, GET).encode(), max_pdu)
            data = dataset_pdvs(ctx.id, encode_dataset(ds, EV), max_pdu, True)
            writer.write(P.encode(P.PDataTF(rq)) + P.encode(P.PDataTF(data)))
            header = await asyncio.wait_for(reader.readexactly(6), 10)  # the first C-STORE-RQ
            await reader.readexactly(int.from_bytes(header[2:], "big"))
            writer.write(P.encode(P.ReleaseRQ()))  # instead of its C-STORE-RSP
            types = [header[0], *await _pdus(reader)]
            writer.close()
            assoc.t.stream.transport.abort()
            for _ in range(500):
                if not server.associations:
                    break
                await asyncio.sleep(0.01)
            return types, len(server.associations)
        finally:
            await asyncio.wait_for(server.close(grace=2), 30)
            archive.close()

    types, still_open = asyncio.run(main())
    assert types[0] == 4 and types[-1] == 6  # P-DATA ... then the A-RELEASE-RP
    assert still_open == 0
