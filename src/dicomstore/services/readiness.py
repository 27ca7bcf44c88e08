"""Whether this node can store now: ``GET /readyz`` and the ``dicomstore_ready`` gauge
(review58 M2: a load balancer kept sending modalities to a node that refused every
store, below ``--min-free``, on a read-only file system, with a damaged index).

The judgements are the store path's own, asked without storing:

free space
    :meth:`StoreService.short_of_space <dicomstore.services.storage.StoreService.short_of_space>`,
    the ``--min-free`` floor below which C-STORE and STOW-RS are refused (A700);
the archive
    :meth:`Archive.cannot_store <dicomstore.archive.Archive.cannot_store>`: its index
    file removed while it serves, damage a store met (``index_health.py``), and a
    file created, written and removed in this node's temporary folder (where every
    instance is received first: read-only or full, it fails);
the checks of the door
    (:class:`Readiness` ``checks``): HTTP's read of the index (a query's), the DICOM
    listener (``serve``).

Cheap and bounded: a few system calls and one indexed SELECT, in a worker thread.
An answer waits at most :data:`TIMEOUT` seconds from the start of the check it
waits for (a hung file system or index: "did not answer"), and while one check
runs no other is started: a poll or scrape that comes meanwhile waits for the
running check's result (review59 M1: it answered "did not answer" at once, so a
scrape overlapping a probe made a healthy node not ready), and one that comes
after that check ran past its timeout answers so at once (one stuck thread, not
one per poll of the load balancer).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

#: Seconds an answer waits for the checks.
TIMEOUT = 2.0
#: What is said while a check that did not answer still runs.
STILL = "the readiness checks did not answer (a file system or the index hangs?)"

Check = Callable[[], list[str]]


def cannot_store(store: Any) -> list[str]:
    """Why no store through ``store`` (a :class:`~dicomstore.services.storage.StoreService`)
    can succeed now, one line each; none when one can. Blocking."""
    problems = []
    root = getattr(store.handler, "root", None)
    floor = store.limits.min_free_bytes
    if floor and root is not None:
        short = store.short_of_space(root)
        if short is not None:
            problems.append(short)
    own = getattr(store.handler, "cannot_store", None)
    if own is not None:
        problems.extend(own())
    return problems


class Readiness:
    """The problems of ``checks`` (each blocking, returning a line per problem), run
    together in a worker thread, one run at a time shared by every caller meanwhile,
    bounded (module notes); each answer is handed to the :attr:`observers` (the
    ``dicomstore_ready`` gauge)."""

    def __init__(self, checks: list[Check], *, timeout: float = TIMEOUT) -> None:
        self.checks = checks
        self.timeout = timeout
        self.observers: list[Callable[[list[str]], None]] = []
        self._lock = threading.Lock()  # (guards the two below)
        self._job: Future[list[str]] | None = None  # the run under way, if one is
        self._started = 0.0  # when it began (time.monotonic)

    async def problems(self) -> list[str]:
        """Why this node is not ready, one line each (none: ready)."""
        job, deadline = self._join()
        left = deadline - time.monotonic()
        found = [STILL]
        if left > 0:
            try:  # (shielded: the run goes on for the others, whatever comes to this one)
                shared = asyncio.wrap_future(job)
                found = list(await asyncio.wait_for(asyncio.shield(shared), left))  # (a copy)
            except TimeoutError:
                pass
        for observe in self.observers:
            observe(found)
        return found

    def _join(self) -> tuple[Future[list[str]], float]:
        """The run under way, else a new one started; and when its answer is late."""
        with self._lock:
            if self._job is None:
                job: Future[list[str]] = Future()
                job.set_running_or_notify_cancel()  # (no waiter can cancel it)
                worker = threading.Thread(
                    target=self._run, args=(job,), name="dicomstore-readiness", daemon=True
                )
                worker.start()
                self._job, self._started = job, time.monotonic()
            return self._job, self._started + self.timeout

    def _run(self, job: Future[list[str]]) -> None:
        try:
            found = [line for check in self.checks for line in check()]
        except BaseException as exc:
            self._done()
            job.set_exception(exc)
        else:
            self._done()
            job.set_result(found)

    def _done(self) -> None:
        with self._lock:
            self._job = None
