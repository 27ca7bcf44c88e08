"""C-ECHO is answered Success only on a Verification context (PS3.7 9.1.5.1.4: 0122
otherwise), and a PDV on a presentation context that was not accepted aborts the
association (PS3.8 7.1.1.13, 9.3.5.1: invalid PDU parameter value). A raw client:
ours, with its requests written by hand onto chosen context IDs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from dicomstore import uids
from dicomstore.aio.client import ClientAssociation, associate
from dicomstore.archive import Archive
from dicomstore.dimse import CEchoRQ, CStoreRQ
from dicomstore.errors import AssociationAborted
from dicomstore.services.server import Server, ServerConfig
from dicomstore.ul import pdu as P

CT = "1.2.840.10008.5.1.4.1.1.2"
UNKNOWN = "1.2.826.0.1.3680043.10.99.1"  # not a SOP class: its context is refused
CONTEXTS = [
    (uids.VERIFICATION, [uids.EXPLICIT_VR_LE]),  # id 1
    (CT, [uids.EXPLICIT_VR_LE]),  # id 3
    (UNKNOWN, [uids.EXPLICIT_VR_LE]),  # id 5, refused
]


def run(root: Path, scenario: Callable[[ClientAssociation], Awaitable[Any]]) -> tuple[Any, list]:
    async def main() -> tuple[Any, list]:
        archive = Archive(root, fsync=False)
        server = Server(ServerConfig(port=0), archive, commit_in_thread=False)
        await server.start()
        try:
            async with await associate("127.0.0.1", server.port, contexts=CONTEXTS) as assoc:
                assert assoc.negotiated is not None
                assert sorted(assoc.negotiated.contexts) == [1, 3]
                result = await scenario(assoc)
            async with await associate("127.0.0.1", server.port) as assoc:  # still serving
                assert (await assoc.echo()).status == 0
            return result, archive.instances()
        finally:
            await server.close(grace=2)
            archive.close()

    return asyncio.run(main())


async def raw(assoc: ClientAssociation, context_id: int, command: bytes, msg_id: int) -> Any:
    """Send one command set on ``context_id``; the response, or the abort raised."""
    future = asyncio.get_running_loop().create_future()
    assoc._waiting[msg_id] = future
    assoc.t.queue_message(context_id, command)
    await assoc.t.drain()
    return await asyncio.wait_for(future, 10)


def test_echo_on_a_storage_context_is_0122(tmp_path: Path, caplog) -> None:
    async def scenario(assoc: ClientAssociation) -> list:
        refused = await raw(assoc, 3, CEchoRQ(7).encode(), 7)
        named_ct = await raw(assoc, 1, CEchoRQ(8, CT).encode(), 8)
        fine = await assoc.echo()  # the association goes on
        return [refused, named_ct, fine]

    (refused, named_ct, fine), _ = run(tmp_path, scenario)
    assert refused.status == 0x0122 and refused.message_id_being_responded_to == 7
    assert refused.error_comment == f"not a Verification context: {CT}"
    assert named_ct.status == 0x0122
    assert named_ct.error_comment == f"C-ECHO of SOP class {CT}"
    assert fine.status == 0
    assert any("answering 0122" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("context_id", [5, 99])
def test_echo_on_an_unaccepted_context_aborts(tmp_path: Path, context_id: int, caplog) -> None:
    """5 was proposed and refused, 99 never proposed: was answered 0000."""
    caplog.set_level(logging.WARNING, logger="dicomstore.server")

    async def scenario(assoc: ClientAssociation) -> AssociationAborted:
        with pytest.raises(AssociationAborted) as exc:
            await raw(assoc, context_id, CEchoRQ(9).encode(), 9)
        return exc.value

    aborted, _ = run(tmp_path, scenario)
    assert aborted.source == P.ABORT_SOURCE_PROVIDER
    assert aborted.reason == P.ABORT_INVALID_PDU_PARAMETER_VALUE
    assert any(
        f"presentation context {context_id}, which was not accepted" in r.getMessage()
        for r in caplog.records
    )


def test_store_on_an_unaccepted_context_aborts_and_stores_nothing(tmp_path: Path) -> None:
    """Was answered 0122 on the context that does not exist."""

    async def scenario(assoc: ClientAssociation) -> AssociationAborted:
        rq = CStoreRQ(11, UNKNOWN, "1.2.826.0.1.3680043.10.99.2")
        with pytest.raises(AssociationAborted) as exc:
            await raw(assoc, 5, rq.encode(), 11)
        return exc.value

    aborted, rows = run(tmp_path, scenario)
    assert aborted.reason == P.ABORT_INVALID_PDU_PARAMETER_VALUE
    assert rows == []
