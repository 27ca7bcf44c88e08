"""A peer sending P-DATA-TF PDUs packed with empty PDVs (review53 #2): PS3.8
9.3.5.1 and E.1 allow them (a fragment of even length, none included), so they
are taken, but with bounded work per turn of the event loop: the server's loop
serves others every PDVS_PER_TURN PDVs, and the data set is stored as sent."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from tests.aio.test_aio_pacing import Ticker
from tests.test_hostile import SC, dataset

from dicomstore import uids
from dicomstore.aio.association import PDVS_PER_TURN
from dicomstore.archive import Archive
from dicomstore.dimse import CStoreRQ, decode_message
from dicomstore.dimse.assembler import DimseAssembler
from dicomstore.services.server import Server, ServerConfig
from dicomstore.ul import items as I
from dicomstore.ul import pdu as P


async def read_pdu(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    header = await reader.readexactly(6)
    return header[0], await reader.readexactly(int.from_bytes(header[2:], "big"))


async def associated(
    port: int, sop_class: str, syntax: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw connection with an association accepted on context 1 (16 KiB PDUs)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    rq = P.AssociateRQ(
        "DICOMSTORE",
        "FLOODER",
        [I.PresentationContextRQ(1, sop_class, [syntax])],
        I.UserInformation(max_length=16384, implementation_class_uid="1.2.3"),
    )
    writer.write(P.encode(rq))
    assert (await read_pdu(reader))[0] == P.ASSOCIATE_AC
    return reader, writer


def empty_pdvs(n: int, header: int = 0) -> bytes:
    """Empty fragments (item length 2), of a data set (0) or of a command (1)."""
    body = bytes([0, 0, 0, 2, 1, header]) * n
    return bytes([P.P_DATA_TF, 0]) + len(body).to_bytes(4, "big") + body


def test_empty_pdvs_are_taken_a_turn_of_the_loop_at_a_time(tmp_path: Path, monkeypatch) -> None:
    seen: list[int] = []
    receive = DimseAssembler.receive
    ticker = Ticker()

    def counting(self, pdv):  # type: ignore[no-untyped-def]
        seen.append(ticker.turns)
        return receive(self, pdv)

    monkeypatch.setattr(DimseAssembler, "receive", counting)
    per_pdu = 80_000  # (480 KB: within our Maximum Length Received)
    uid = generate_uid()
    data = dataset(uid)

    async def main() -> int:
        archive = Archive(tmp_path, fsync=False)
        server = Server(ServerConfig(port=0), archive, commit_in_thread=False)
        await server.start()
        try:
            reader, writer = await associated(server.port, SC, uids.EXPLICIT_VR_LE)
            command = CStoreRQ(1, SC, uid).encode()
            writer.write(P.encode(P.PDataTF([P.PDV(1, True, True, command)])))
            async with ticker:
                writer.write(empty_pdvs(per_pdu) * 2)
                writer.write(P.encode(P.PDataTF([P.PDV(1, False, True, data)])))
                kind, body = await read_pdu(reader)
            assert kind == P.P_DATA_TF
            rsp = decode_message(bytes(P.decode_pdata(body).pdvs[0].data))
            writer.write(P.encode(P.Abort()))
            writer.close()
            assert archive.instances()[0]["sop_instance_uid"] == uid
            return rsp.status  # type: ignore[union-attr]
        finally:
            await server.close(grace=2)
            archive.close()

    assert asyncio.run(main()) == 0
    flood = seen[1:-1]  # (the command's and the data set's PDVs apart)
    assert len(flood) == 2 * per_pdu
    # about a turn of the loop per PDVS_PER_TURN PDVs: not one per PDU or per read
    assert len(set(flood)) >= len(flood) // PDVS_PER_TURN // 2


@pytest.mark.parametrize("where", ["first", "later"])
def test_a_bad_pdv_among_many_aborts(where: str) -> None:
    """A PDV on an even context (PS3.8 9.3.5.1): A-ABORT, invalid PDU parameter value."""
    n = 4 * PDVS_PER_TURN
    flood = bytearray(empty_pdvs(n, 1))  # (of a command set that never ends)
    at = 6 + 6 * (1 if where == "first" else n - 1)
    flood[at + 4] = 2

    async def main() -> tuple[int, bytes]:
        server = Server(ServerConfig(port=0), None)
        await server.start()
        try:
            reader, writer = await associated(server.port, uids.VERIFICATION, uids.IMPLICIT_VR_LE)
            writer.write(bytes(flood))
            answer = await read_pdu(reader)
            writer.close()
            return answer
        finally:
            await server.close(grace=2)

    kind, body = asyncio.run(main())
    assert kind == P.ABORT and body[2:4] == bytes([2, 6])
