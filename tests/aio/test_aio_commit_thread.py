"""Where the Storage SCP commits: on the loop for a lone association awaiting each
answer, in a worker thread as soon as others could be served meanwhile."""

from __future__ import annotations

import asyncio
import threading

import pytest

from dicomstore import uids
from dicomstore.aio.client import associate
from dicomstore.services.server import WHEN_BUSY, Server, ServerConfig

CT = "1.2.840.10008.5.1.4.1.1.2"
CONTEXTS = [(CT, [uids.EXPLICIT_VR_LE])]


class Outcome:
    status = 0x0000


class Recording:
    """Records, per SOP Instance UID, whether its commit ran on the loop's thread."""

    def __init__(self) -> None:
        self.loop_thread: threading.Thread | None = None
        self.on_loop: dict[str, bool] = {}

    def begin(self, *, sop_instance_uid: str, **_kw):
        handler = self

        class Sink:
            def write(self, fragment) -> None:
                pass

            def commit(self):
                on_loop = threading.current_thread() is handler.loop_thread
                handler.on_loop[sop_instance_uid] = on_loop
                return Outcome

            def abort(self) -> None:
                pass

        return Sink()


def run(handler: Recording, *, commit_in_thread: bool | str, max_ops: int = 1) -> None:
    async def store(assoc, uid: str) -> int:
        rsp = await assoc.store_stream(assoc.context_for(CT), CT, uid, [b"\x00" * 8])
        return rsp.status

    async def main() -> None:
        handler.loop_thread = threading.current_thread()
        config = ServerConfig(port=0, max_ops=4)
        server = Server(config, handler, commit_in_thread=commit_in_thread)
        await server.start()
        try:
            port = server.port
            one = await associate("127.0.0.1", port, contexts=CONTEXTS, max_ops=max_ops)
            assert await store(one, "1.1") == 0  # alone
            two = await associate("127.0.0.1", port, contexts=CONTEXTS)
            assert await store(one, "1.2") == 0  # another association is open
            assert await store(two, "2.1") == 0
            await two.release()
            await asyncio.wait_for(_until(lambda: len(server.associations) == 1), 10)
            assert await store(one, "1.3") == 0  # alone again
            await one.release()
        finally:
            await server.close(grace=5)

    asyncio.run(main())


async def _until(condition) -> None:
    while not condition():
        await asyncio.sleep(0)


def test_when_busy_a_lone_association_commits_on_the_loop_others_in_threads() -> None:
    handler = Recording()
    run(handler, commit_in_thread=WHEN_BUSY)
    assert handler.on_loop == {"1.1": True, "1.2": False, "2.1": False, "1.3": True}


def test_when_busy_a_pipelining_association_always_commits_in_threads() -> None:
    handler = Recording()
    run(handler, commit_in_thread=WHEN_BUSY, max_ops=4)
    assert handler.on_loop == {"1.1": False, "1.2": False, "2.1": False, "1.3": False}


def test_true_and_false_mean_always_and_never() -> None:
    handler = Recording()
    run(handler, commit_in_thread=True)
    assert set(handler.on_loop.values()) == {False}
    handler = Recording()
    run(handler, commit_in_thread=False)
    assert set(handler.on_loop.values()) == {True}
    with pytest.raises(ValueError):
        Server(ServerConfig(), handler, commit_in_thread="sometimes")
