"""The asynchronous operations window (PS3.7 D.3.3.3) between our SCU and SCP:
several C-STOREs outstanding on one association, and 0210 for a Message ID
that is still being processed."""

from __future__ import annotations

import asyncio
import threading

from dicomstore import uids
from dicomstore.aio.client import associate
from dicomstore.dimse import commands as C
from dicomstore.services.server import Server, ServerConfig

CT = "1.2.840.10008.5.1.4.1.1.2"


class Outcome:
    status = 0
    error_comment = None
    offending_element = None


class GatedHandler:
    """Commits block until the test opens the gate; counts what is in flight."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.waiting = 0
        self.max_waiting = 0
        self.all_waiting = threading.Event()
        self.expect = 0
        self.committed: list[bytes] = []

    def begin(self, **kwargs):
        handler = self

        class Sink:
            def __init__(self) -> None:
                self.data = bytearray()

            def write(self, data) -> None:
                self.data += data

            def commit(self):
                with handler.lock:
                    handler.waiting += 1
                    handler.max_waiting = max(handler.max_waiting, handler.waiting)
                    if handler.waiting >= handler.expect:
                        handler.all_waiting.set()
                handler.gate.wait(30)
                with handler.lock:
                    handler.waiting -= 1
                    handler.committed.append(bytes(self.data))
                return Outcome

            def abort(self) -> None:
                pass

        return Sink()


def test_window_of_four_keeps_four_stores_in_flight() -> None:
    handler = GatedHandler()
    handler.expect = 4

    async def main() -> list[int]:
        server = Server(ServerConfig(port=0, max_ops=4), handler, commit_in_thread=True)
        await server.start()
        assoc = await associate(
            "127.0.0.1", server.port, contexts=[(CT, [uids.EXPLICIT_VR_LE])], max_ops=8
        )
        assert assoc.negotiated.max_ops_invoked == 4
        ctx = assoc.context_for(CT)
        stores = [
            asyncio.create_task(assoc.store_stream(ctx, CT, f"1.2.3.{n}", [b"x" * 100]))
            for n in range(6)
        ]
        # four commits are held at the gate at once, before any answer went out
        await asyncio.to_thread(handler.all_waiting.wait, 30)
        assert not any(t.done() for t in stores)
        handler.gate.set()
        statuses = [rsp.status for rsp in await asyncio.gather(*stores)]
        await assoc.release()
        await server.close(grace=5)
        return statuses

    assert asyncio.run(main()) == [0] * 6
    assert handler.max_waiting == 4
    assert len(handler.committed) == 6


def test_0210_duplicate_invocation_while_the_first_is_in_flight() -> None:
    handler = GatedHandler()
    handler.expect = 1

    async def main():
        server = Server(ServerConfig(port=0, max_ops=4), handler, commit_in_thread=True)
        await server.start()
        assoc = await associate(
            "127.0.0.1", server.port, contexts=[(CT, [uids.EXPLICIT_VR_LE])], max_ops=4
        )
        ctx = assoc.context_for(CT)
        first = asyncio.get_running_loop().create_future()
        assoc._waiting[5] = first

        def rq(uid: str) -> bytes:
            return C.encode_command(
                {
                    C.AFFECTED_SOP_CLASS_UID: CT,
                    C.COMMAND_FIELD: 0x0001,
                    C.MESSAGE_ID: 5,
                    C.PRIORITY: 0,
                    C.COMMAND_DATA_SET_TYPE: 0,
                    C.AFFECTED_SOP_INSTANCE_UID: uid,
                }
            )

        assoc.t.queue_message(ctx.id, rq("1.2.3.1"), b"a" * 10)
        await assoc.t.drain()
        await asyncio.to_thread(handler.all_waiting.wait, 30)
        # the same Message ID again while the first commit is held
        second = asyncio.get_running_loop().create_future()
        assoc._waiting[5] = second
        assoc.t.queue_message(ctx.id, rq("1.2.3.2"), b"b" * 10)
        await assoc.t.drain()
        duplicate = await asyncio.wait_for(second, 30)
        handler.gate.set()
        await assoc.release()
        await server.close(grace=5)
        return duplicate

    duplicate = asyncio.run(main())
    assert duplicate.status == 0x0210
    assert duplicate.error_comment
    assert handler.committed == [b"a" * 10]
