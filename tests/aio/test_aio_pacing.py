"""Bounded work per turn of the event loop (review53 #1, #2): however small the
peer's Maximum Length Received (PS3.8 D.1) or its PDVs (PS3.8 9.3.5.1), an
association sending or receiving lets the loop serve the others every
PDVS_PER_TURN PDVs, whatever the socket's buffer state."""

from __future__ import annotations

import asyncio

from dicomstore.aio.association import PDVS_PER_TURN
from dicomstore.ul.negotiation import LEAST_MAX_LENGTH
from tests.aio.test_aio_invoker import accepted_transport, pdvs


class Ticker:
    """Counts turns of the loop (a task that only yields)."""

    def __init__(self) -> None:
        self.turns = 0
        self.task: asyncio.Task | None = None

    async def _run(self) -> None:
        while True:
            self.turns += 1
            await asyncio.sleep(0)

    async def __aenter__(self) -> Ticker:
        self.task = asyncio.create_task(self._run())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()


def test_a_tiny_maximum_length_lets_the_loop_turn_while_sending() -> None:
    t, stream = accepted_transport()
    assert t.negotiated is not None
    t.negotiated.peer_max_pdu = LEAST_MAX_LENGTH  # 2 data bytes a PDV
    seen: list[int] = []
    write, write_parts = stream.write, stream.write_parts
    data = bytes(range(256)) * 512  # 128 KiB: 65,536 PDVs

    async def main() -> int:
        async with Ticker() as ticker:
            stream.write = lambda b: (seen.append(ticker.turns), write(b))  # type: ignore[method-assign]
            stream.write_parts = lambda p: (seen.append(ticker.turns), write_parts(p))  # type: ignore[method-assign]
            return await t.send_dataset_chunks(3, [data[:65536], data[65536:]])

    assert asyncio.run(main()) == len(data)
    # the loop turned about once per PDVS_PER_TURN PDVs sent, the socket never full
    assert len(set(seen)) >= len(data) // 2 // PDVS_PER_TURN - 2
    out = pdvs(bytes(stream.written))
    assert b"".join(bytes(p.data) for p in out) == data
    assert {len(p.data) for p in out} == {2}
    assert [p.is_last for p in out] == [False] * (len(out) - 1) + [True]


def test_the_usual_maximum_length_sends_as_before() -> None:
    t, stream = accepted_transport()  # 16 KiB PDUs
    data = bytes(3 * 1024 * 1024 + 6)
    assert asyncio.run(t.send_dataset_chunks(3, [data[:1_000_000], data[1_000_000:]])) == len(data)
    out = pdvs(bytes(stream.written))
    assert b"".join(bytes(p.data) for p in out) == data
    assert [p.is_last for p in out] == [False] * (len(out) - 1) + [True]
