"""forward_settling.Settling: outcomes recorded every SETTLE_EVERY or SETTLE_AFTER s,
while a reply is awaited too; a record that fails keeps them for the next one
(review59 L2: they were lost, and their instances sent again)."""

from __future__ import annotations

import asyncio

import pytest

from dicomstore.services.forward_queue import Settled
from dicomstore.services.forward_settling import SETTLE_EVERY, Settling


def test_a_failed_record_keeps_its_outcomes_for_the_next() -> None:
    recorded: list[list[int]] = []
    fail = [True]

    async def record(outcomes: list[Settled]) -> None:
        if fail.pop() if fail else False:
            raise OSError("database is locked")
        recorded.append([o.id for o in outcomes])

    async def main() -> None:
        settling = Settling(record)
        settling.outcomes.extend(Settled(n, "sent", 1) for n in range(SETTLE_EVERY))
        with pytest.raises(OSError):
            await settling.when_due()
        settling.outcomes.append(Settled(99, "sent", 1))
        await settling.flush()

    asyncio.run(main())
    assert recorded == [[*range(SETTLE_EVERY), 99]]


def test_outcomes_fall_due_while_a_reply_is_awaited(monkeypatch) -> None:
    from dicomstore.services import forward_settling

    monkeypatch.setattr(forward_settling, "SETTLE_AFTER", 0.0)
    recorded: list[list[int]] = []
    reply = asyncio.Event()

    async def record(outcomes: list[Settled]) -> None:
        recorded.append([o.id for o in outcomes])
        reply.set()  # (the held reply comes once they are recorded)

    async def held() -> str:
        await reply.wait()
        return "answered"

    async def main() -> str:
        settling = Settling(record)
        settling.outcomes.append(Settled(1, "sent", 1))
        return await settling.awaiting(held())

    assert asyncio.run(main()) == "answered"
    assert recorded == [[1]]
