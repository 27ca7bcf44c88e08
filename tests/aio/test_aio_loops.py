"""The event loop a command runs on (aio/loops.py): uvloop when installed (the
test extras install it), asyncio's own when asked or when uvloop is missing, a
clear error when uvloop is asked for and missing."""

from __future__ import annotations

import asyncio
import sys
import warnings

import pytest

from dicomstore.aio import loops


async def _kind() -> str:
    return loops.kind(asyncio.get_running_loop())


def test_each_choice_runs_on_its_loop() -> None:
    assert loops.run(_kind(), "asyncio") == "asyncio"
    assert loops.run(_kind(), "uvloop") == "uvloop"
    assert loops.run(_kind(), "auto") == "uvloop"  # (installed with the test extras)


def test_without_uvloop_auto_is_asyncio_and_uvloop_a_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop: ImportError
    assert loops.run(_kind(), "auto") == "asyncio"
    coro = _kind()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (no "coroutine was never awaited")
        with pytest.raises(loops.LoopUnavailable, match=r"pip install 'dicomstore\[fast\]'"):
            loops.run(coro, "uvloop")
    assert coro.cr_frame is None  # closed


def test_an_unknown_loop_is_refused() -> None:
    with pytest.raises(ValueError, match="not an event loop"):
        loops.factory("trio")
