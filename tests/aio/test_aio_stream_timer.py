"""Stream.wait's deadline (aio.stream): one timer per stream, moved only when a
deadline comes earlier, re-armed when it fires before a later one; a wait never
ends before its deadline nor long after, and a closed stream leaves no timer."""

from __future__ import annotations

import asyncio
import gc
import weakref

from dicomstore.aio.stream import Stream

#: A loop's timers may fire this much before their time (its clock's resolution:
#: asyncio's is a nanosecond, uvloop's a millisecond).
EARLY = 0.002


def _feed(stream: Stream, data: bytes) -> None:
    view = stream.get_buffer(len(data))
    view[: len(data)] = data
    stream.buffer_updated(len(data))


async def _ended_by_bytes(s: Stream, when: float) -> None:
    """A wait with the deadline ``when`` (its timer armed) that bytes end first."""
    waiting = asyncio.ensure_future(s.wait(when))
    await asyncio.sleep(0)
    _feed(s, b"\x04\x00")
    assert await waiting is False


def test_a_wait_ends_at_its_deadline() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        s = Stream()
        when = loop.time() + 0.05
        assert await asyncio.wait_for(s.wait(when), 10) is True
        assert loop.time() >= when - EARLY

    asyncio.run(main())


def test_a_later_deadline_re_arms_the_timer_armed_for_an_earlier_one() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        s = Stream()
        first = loop.time() + 0.05
        await _ended_by_bytes(s, first)  # bytes arrive: the wait ends early ...
        later = first + 0.1  # ... and the next one has a later deadline
        assert await asyncio.wait_for(s.wait(later), 10) is True
        assert loop.time() >= later - EARLY  # not ended by the timer armed for `first`

    asyncio.run(main())


def test_an_earlier_deadline_moves_the_timer() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        s = Stream()
        await _ended_by_bytes(s, loop.time() + 3600)
        soon = loop.time() + 0.05
        assert await asyncio.wait_for(s.wait(soon), 10) is True  # not an hour
        assert loop.time() >= soon - EARLY

    asyncio.run(main())


def test_a_wait_without_deadline_is_not_ended_by_an_earlier_timer() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        s = Stream()
        await _ended_by_bytes(s, loop.time() + 0.01)
        untimed = asyncio.ensure_future(s.wait(None))
        await asyncio.sleep(0.05)  # well past the old deadline: the timer fired
        assert not untimed.done()
        s.connection_lost(None)
        assert await untimed is False

    asyncio.run(main())


def test_a_lost_connection_leaves_no_timer_holding_the_stream() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        s = Stream()
        waiting = asyncio.ensure_future(s.wait(loop.time() + 3600))
        await asyncio.sleep(0)
        s.connection_lost(None)
        assert await waiting is False
        ref = weakref.ref(s)
        del s, waiting
        gc.collect()
        assert ref() is None  # the hour-long timer does not keep it (and its buffer)

    asyncio.run(main())
