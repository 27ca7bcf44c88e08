"""The functions a user hands the server (``on_stored``, ``on_ready``,
``on_study_stable``, ``StoredEvents`` listeners): each a plain or an async function."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any


async def call_hook(hook: Callable[..., object], *args: Any) -> None:
    """``hook(*args)``, awaited when it returns an awaitable."""
    result = hook(*args)
    if inspect.isawaitable(result):
        await result
