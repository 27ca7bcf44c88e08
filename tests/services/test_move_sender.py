"""The C-MOVE sub-operations' association (services/move_sender.py): how it ends."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from dicomstore.services.destinations import Destination
from dicomstore.services.move_sender import DestinationSender


class _Assoc:
    def __init__(self, waiting: dict) -> None:
        self.invoker = SimpleNamespace(waiting=waiting)
        self.ended: list[str] = []

    async def release(self) -> None:
        self.ended.append("release")

    async def abort(self) -> None:
        self.ended.append("abort")


def _sender(assoc: _Assoc) -> DestinationSender:
    sender = DestinationSender(
        Destination("DEST", "127.0.0.1", 104), calling_ae="DICOMSTORE", service="C-MOVE"
    )
    sender.assoc = assoc  # type: ignore[assignment]
    return sender


def test_an_association_with_a_c_store_unanswered_is_aborted_not_released() -> None:
    """review123 F3: the requester gone while the destination held a C-STORE, the
    association to it was released: a destination that answers nothing answered no
    A-RELEASE-RQ either, and it stayed open for the ACSE timeout."""
    held = _Assoc({7: asyncio.Future})  # (message 7 unanswered)
    asyncio.run(_sender(held).close())
    assert held.ended == ["abort"]
    done = _Assoc({})
    asyncio.run(_sender(done).close())
    assert done.ended == ["release"]
