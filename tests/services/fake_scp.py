"""A Storage SCP that misbehaves on purpose, for the SCU's tests: it accepts every
context (our own negotiation), then follows a script of raw PDUs (on its own loop, in
a thread). ``with FakeSCP(script) as port``."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from dicomstore.dimse import CFindRSP, CStoreRSP
from dicomstore.dimse.decoding import decode_message
from dicomstore.ul import pdu as P
from dicomstore.ul.negotiation import AcceptorPolicy, negotiate

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_pdu(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    header = await reader.readexactly(6)
    return header[0], await reader.readexactly(int.from_bytes(header[2:]))


async def walk_out(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read the first P-DATA-TF, then an A-ABORT and close, reading nothing more: the
    sender is inside a data set, its writes held back."""
    while (await read_pdu(reader))[0] != P.P_DATA_TF:
        pass
    writer.write(P.encode(P.Abort(P.ABORT_SOURCE_USER, 0)))


async def say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read everything, answer nothing, until the requestor leaves."""
    while await reader.read(65536):
        pass


async def requests(reader: asyncio.StreamReader) -> AsyncIterator[tuple[int, Any]]:
    """(context ID, request) for each request whose data set is in, until the
    requestor sends another PDU than P-DATA-TF or leaves."""
    rq, context_id = None, 0
    while True:
        kind, body = await read_pdu(reader)
        if kind != P.P_DATA_TF:
            return
        for pdv in P.decode_pdata(body).pdvs:
            if pdv.is_command:
                rq, context_id = decode_message(bytes(pdv.data)), pdv.context_id
            elif pdv.is_last and rq is not None:
                yield context_id, rq


def answer_for(other: int, context: int | None = None, uid: str | None = None) -> Script:
    """Answer each C-STORE-RQ (once its data set is in) as if it had the Message ID of
    the request plus ``other`` (on presentation context ``context``, for SOP Instance
    ``uid``, if given), until the requestor leaves."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async for context_id, rq in requests(reader):
            rsp = CStoreRSP(
                rq.message_id + other,
                0,
                rq.affected_sop_class_uid,
                uid or rq.affected_sop_instance_uid,
            )
            on = context_id if context is None else context
            writer.write(P.encode(P.PDataTF([P.PDV(on, True, True, rsp.encode())])))

    return script


def find_answers(identifiers: list[bytes]) -> Script:
    """Answer each C-FIND-RQ (once its Identifier is in) with one pending response per
    Identifier given, as given, then 0000."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async for context_id, rq in requests(reader):
            cls, msg_id = rq.affected_sop_class_uid, rq.message_id
            for data in identifiers:
                rsp = CFindRSP(msg_id, 0xFF00, cls, dataset_present=True)
                pdvs = [P.PDV(context_id, True, True, rsp.encode())]
                pdvs.append(P.PDV(context_id, False, True, data))
                writer.write(P.encode(P.PDataTF(pdvs)))
            done = CFindRSP(msg_id, 0x0000, cls).encode()
            writer.write(P.encode(P.PDataTF([P.PDV(context_id, True, True, done)])))

    return script


class FakeSCP:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        kind, body = await read_pdu(reader)
        policy = AcceptorPolicy("ANY-SCP", accept_unknown=True, max_pdu=16384)
        writer.write(P.encode(negotiate(P.decode_pdu(kind, body), policy)[0]))
        try:
            await self.script(reader, writer)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def __enter__(self) -> int:
        self._thread.start()
        start = asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.server = asyncio.run_coroutine_threadsafe(start, self.loop).result(10)
        return int(self.server.sockets[0].getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
