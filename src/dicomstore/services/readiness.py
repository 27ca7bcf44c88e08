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
An answer waits at most :data:`TIMEOUT` seconds (a hung file system or index: "did
not answer"), and while one check hangs no other is started: one stuck thread, not
one per poll of the load balancer.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
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
            problems.append(f"{short} (below the {floor} of --min-free)")
    own = getattr(store.handler, "cannot_store", None)
    if own is not None:
        problems.extend(own())
    return problems


class Readiness:
    """The problems of ``checks`` (each blocking, returning a line per problem), run
    together in a worker thread, bounded (module notes); each result is handed to
    the :attr:`observers` (the ``dicomstore_ready`` gauge)."""

    def __init__(self, checks: list[Check], *, timeout: float = TIMEOUT) -> None:
        self.checks = checks
        self.timeout = timeout
        self.observers: list[Callable[[list[str]], None]] = []
        self._running = threading.Lock()  # (held by the thread that checks)

    async def problems(self) -> list[str]:
        """Why this node is not ready, one line each (none: ready)."""
        if not self._running.acquire(blocking=False):
            found = [STILL]
        else:
            loop = asyncio.get_running_loop()
            try:
                job = loop.run_in_executor(None, self._run)
            except BaseException:
                self._running.release()
                raise
            try:  # (shielded: the thread runs on and lets go when done, whatever comes)
                found = await asyncio.wait_for(asyncio.shield(job), self.timeout)
            except TimeoutError:
                found = [STILL]
        for observe in self.observers:
            observe(found)
        return found

    def _run(self) -> list[str]:
        try:
            return [line for check in self.checks for line in check()]
        finally:
            self._running.release()
