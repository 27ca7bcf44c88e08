"""The journal's idle checkpoint (``deferred.IdleCheckpoint``) when the checkpoint
itself fails: it is tried again, less and less often, and the log says so once
with the traceback, then in one line a time, not a traceback every half second."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest

from dicomstore.archive import deferred


def _failing(
    outcomes: list[BaseException | None],
) -> Callable[[Callable[[], float | None]], tuple[bool, Any]]:
    """``when_idle`` that raises the next of ``outcomes`` (``None``: it ran and
    nothing more is due)."""

    def when_idle(action: Callable[[], float | None]) -> tuple[bool, Any]:
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome
        return True, None

    return when_idle


def test_a_failing_checkpoint_is_tried_again_ever_less_often_and_said_briefly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    errors: list[BaseException | None] = [OSError(5, "Input/output error") for _ in range(10)]
    idle = deferred.IdleCheckpoint(_failing([*errors, None, OSError(5, "again")]), lambda: None)
    waits: list[float | None] = []
    monkeypatch.setattr(idle, "arm", waits.append)  # (no timer: each run by hand)
    with caplog.at_level(logging.ERROR, logger="dicomstore.archive"):
        for _ in range(10):
            idle._run()
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    records = [r for r in caplog.records if "checkpoint failed" in r.getMessage()]
    assert len(records) == 10 and records[0].exc_info is not None
    assert all(r.exc_info is None and "Input/output" in r.getMessage() for r in records[1:])
    assert "(10 times)" in records[-1].getMessage()
    idle._run()  # (it succeeds: nothing due, no timer)
    idle._run()  # (a new failure starts from the shortest wait again)
    assert waits[-1] == deferred.CHECKPOINT_AFTER and len(waits) == 11


def _idle() -> tuple[deferred.IdleCheckpoint, threading.Event]:
    """An idle checkpoint whose every run succeeds, and the event its run sets."""
    ran = threading.Event()

    def when_idle(action: Callable[[], float | None]) -> tuple[bool, Any]:
        return True, action()

    def due() -> float | None:
        ran.set()
        return None

    return deferred.IdleCheckpoint(when_idle, due), ran


def test_the_timer_runs_the_checkpoint_when_idle_and_stops_at_close() -> None:
    """Armed, the timer thread runs ``checkpoint_due`` through ``when_idle``; a
    closed checkpoint arms no more."""
    idle, ran = _idle()
    idle.arm(0.0)
    assert ran.wait(10)
    idle.close()
    idle.arm(0.0)
    assert idle._timer is None


def test_after_ever_so_many_failures_the_wait_stays_a_minute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """(No overflow of the doubling after a day of failures.)"""
    idle = deferred.IdleCheckpoint(_failing([OSError(5, "Input/output error")]), lambda: None)
    waits: list[float | None] = []
    monkeypatch.setattr(idle, "arm", waits.append)
    idle._failures = 5000
    idle._run()
    assert waits == [deferred.RETRY_MAX]


def test_a_new_batch_brings_a_checkpoint_put_off_by_failures_sooner() -> None:
    """After failures the checkpoint waits up to a minute; a batch journaled then
    (``arm()``) has it run after ``CHECKPOINT_AFTER`` again, the count started
    over; a later deadline never puts off a sooner one."""
    idle, ran = _idle()
    idle.arm(60.0)  # (as after eight failures in a row)
    idle._failures = 8
    backoff = idle._timer
    assert backoff is not None
    idle.arm(120.0)  # (later: changes nothing)
    assert idle._timer is backoff
    idle.arm()  # a new batch
    assert backoff.finished.is_set() and idle._timer is not backoff  # (cancelled)
    assert idle._failures == 0
    assert ran.wait(10)
    idle.close()
