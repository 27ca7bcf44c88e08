"""The event loop a command runs on: asyncio's own, or uvloop's (libuv) when it
is installed (``pip install 'dicomstore[fast]'``), as ASGI servers offer.

The protocol code is the same on both (asyncio's ``BufferedProtocol`` and
transports); uvloop runs the loop itself, the timers and the socket calls in C,
which takes a few per cent off the receiver's CPU per small instance
(``benchmarks/bench_ab.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

#: ``--loop``: uvloop when installed (auto), or the one named.
CHOICES = ("auto", "asyncio", "uvloop")

T = TypeVar("T")


class LoopUnavailable(RuntimeError):
    """The loop asked for is not installed."""


def factory(name: str = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes a new event loop of the kind ``name`` (one of :data:`CHOICES`)."""
    if name not in CHOICES:
        raise ValueError(f"not an event loop: {name!r} (one of {', '.join(CHOICES)})")
    if name == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if name == "uvloop":
            raise LoopUnavailable(
                "--loop uvloop: uvloop is not installed (pip install 'dicomstore[fast]')"
            ) from None
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], loop: str = "auto") -> T:
    """``asyncio.run(main)`` on a new event loop of the kind ``loop``."""
    try:
        make = factory(loop)
    except BaseException:
        main.close()  # (never to run: no "never awaited" warning)
        raise
    with asyncio.Runner(loop_factory=make) as runner:
        return runner.run(main)


def kind(loop: asyncio.AbstractEventLoop) -> str:
    """Which of :data:`CHOICES` ``loop`` is (for the log)."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
