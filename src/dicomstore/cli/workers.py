"""``dicomstore serve --workers N``: N processes receive on one port and store into
one archive, so that several senders use every core (issue 13).

The first process (the one started) opens the archive, listens, and starts N-1
workers (``multiprocessing``'s spawn: fresh interpreters, the parsed options
given to each, and a Unix socket to the first process). The first process
accepts every connection and serves it or passes it to the worker serving the
fewest (``aio/handoff.py``), and each process is a node of the archive
(issue 17: its own folder of temporaries, every decision under the index write
lock — SQLite's on one host, or PostgreSQL's): they store into the same files
and index as one process would.

What runs once runs in the first process: DICOMweb and /metrics (which asks
each worker for its counts and adds them up: ``handoff.Asker``), forwarding
(it forwards the workers' stores too, read from the index:
``services/arrivals.py``), the study-complete events (a worker takes them over
if the first process ends first). The association limits
(``--max-associations``, per calling AE and address, pending connections) hold
per process. A worker that ends unasked is started again in its place
(:class:`Pool`). A worker ends when the first process does (SIGINT/SIGTERM: it
stops the workers gracefully and waits for them; a first process killed: each
worker sees its parent gone and stops). Workers start with SIGINT and SIGHUP
ignored (kept across exec until their own handlers are set): a Ctrl-C reaching
the whole process group while a worker starts is the first process's to act on,
not a worker's traceback and exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from multiprocessing.process import BaseProcess
from typing import Any

log = logging.getLogger("dicomstore")

#: Options a worker does not take over from the first process (what runs once).
_FIRST_ONLY = {
    "http_port": None,
    "forward": None,
    "workers": 1,
    "worker_ends": None,
    "metrics_ends": None,
    "metrics_asks": None,
}


def share(args: argparse.Namespace) -> Any:
    """The server's share of the connections (``ServerConfig.share``): in the first
    process of several, the Dispatcher of the channels to the workers it will start
    (their ends kept in ``args.worker_ends`` for :func:`start`); in a worker, its
    channel; None alone."""
    from dicomstore.aio import handoff

    if getattr(args, "channel", None) is not None:
        return args.channel
    if args.workers <= 1:
        return None
    pairs = handoff.channels(args.workers - 1)
    args.worker_ends = [worker_end for _, worker_end in pairs]
    if args.http_port is not None:  # (/metrics: the first asks each worker for its counts)
        asks = handoff.channels(args.workers - 1)
        args.metrics_ends = [worker_end for _, worker_end in asks]
        args.metrics_asks = [handoff.Asker(end, n) for n, (end, _) in enumerate(asks, 1)]
    return handoff.Dispatcher([first_end for first_end, _ in pairs])


#: A worker that ends unasked is started again, unless it was itself started again
#: less than this many seconds before: one that cannot run is not restarted in a loop.
MIN_LIFE = 10.0


class Pool:
    """The workers of the first process: started beside it, stopped with it; one that
    ends unasked (killed, crashed) is said, reaped and started again in its place
    (review119 F2: the server ran on with one process fewer, a zombie beside it)."""

    def __init__(self, args: argparse.Namespace, port: int, dispatcher: Any = None) -> None:
        self.args, self.port = args, port
        self.values = {**vars(args), **_FIRST_ONLY, "port": port}
        self.workers: list[BaseProcess] = []
        self._born: list[float] = []  # (when each was started)
        self._again: list[bool] = []  # (each started in the place of one gone)
        #: a worker ended unasked (or could not be started again): the exit is a failure
        self.failed = False
        #: the first process's ``handoff.Dispatcher`` (:func:`share`)
        self.dispatcher = dispatcher
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Start ``args.workers - 1`` workers, each given its end of a channel made by
        :func:`share` and the ``port`` the first process listens on."""
        asks = getattr(self.args, "metrics_ends", None) or [None] * len(self.args.worker_ends)
        ends = zip(self.args.worker_ends, asks, strict=True)
        for number, (end, ask) in enumerate(ends, start=1):
            self.workers.append(self._spawn(number, end, ask))
            self._born.append(time.monotonic())
            self._again.append(False)
        pids = ", ".join(str(worker.pid) for worker in self.workers)
        log.info("%d worker process(es) started beside this one: %s", len(self.workers), pids)
        if self.dispatcher is not None:
            self.dispatcher.on_gone = self._replace

    def _spawn(self, number: int, end: socket.socket, ask: socket.socket | None) -> BaseProcess:
        context = multiprocessing.get_context("spawn")
        worker = context.Process(
            target=_worker, args=(self.values, number, end, ask), name=f"dicomstore-worker-{number}"
        )
        kept = {sig: signal.signal(sig, signal.SIG_IGN) for sig in _GROUP_SIGNALS}
        try:
            worker.start()  # (ignored in the worker until its loop handles them)
        finally:
            for sig, handler in kept.items():
                signal.signal(sig, handler)
        for mine in (end, ask):  # (the worker has its own descriptors of them now)
            if mine is not None:
                mine.close()
        return worker

    def _replace(self, index: int) -> None:
        """(On the loop, the Dispatcher saw worker ``index + 1`` gone.) Reap it and,
        unless it died young, start another on new channels (:meth:`_replace_later`)."""
        self.failed = True
        task = asyncio.get_running_loop().create_task(self._replace_later(index))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replace_later(self, index: int) -> None:
        old, number = self.workers[index], index + 1
        await asyncio.to_thread(old.join, 5)  # (its channel closed as it exited)
        if self.dispatcher.stopping:
            return
        lived = time.monotonic() - self._born[index]
        if old.is_alive() or (self._again[index] and lived < MIN_LIFE):
            why = "did not end" if old.is_alive() else f"ended {lived:.1f}s after its start"
            log.error("worker %d (pid %s) %s: not started again", number, old.pid, why)
            return
        first, end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        mine = ask = None
        askers = getattr(self.args, "metrics_asks", None)
        if askers:
            mine, ask = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            worker = self._spawn(number, end, ask)
        except (OSError, RuntimeError) as exc:  # (review121: its channels were left open)
            log.error("worker %d could not be started again: %s", number, exc)
            for left in (first, end, mine, ask):
                if left is not None:
                    left.close()
            return
        if askers and mine is not None:
            askers[index].rebind(mine)  # (only now: a scrape meanwhile waited on no one)
        self.dispatcher.replace(index, first)
        self.workers[index], self._born[index] = worker, time.monotonic()
        self._again[index] = True
        log.warning(
            "worker %d (pid %s) ended unasked (exit %s): worker %d started again, pid %s",
            number, old.pid, old.exitcode, number, worker.pid,
        )  # fmt: skip

    def cancel(self) -> None:
        """(On the loop, before :meth:`stop`.) No worker is started again from now."""
        if self.dispatcher is not None:
            self.dispatcher.on_gone = None
        for task in self._tasks:
            task.cancel()

    def stop(self, grace: float) -> bool:
        """Stop the workers (:func:`stop`); whether none failed, before or now."""
        return stop(self.workers, grace) and not self.failed


def start(args: argparse.Namespace, port: int, dispatcher: Any = None) -> Pool:
    """The workers of ``args`` started (:class:`Pool`), passed connections by
    ``dispatcher`` (:func:`share`'s)."""
    pool = Pool(args, port, dispatcher)
    pool.start()
    return pool


def stop(workers: list[BaseProcess], grace: float) -> bool:
    """Stop the workers gracefully (SIGTERM), within ``grace`` seconds, then kill;
    whether none failed. A worker ended well exits 0; one the SIGTERM ended before
    it set its handler (while starting: nothing of its own yet) did not fail
    either. Any other end is a failure, with a WARNING: killed here after the
    grace, dead of a signal (a crash, out of memory), an exit code of its own (1:
    its audit trail not whole, an error)."""
    for worker in workers:
        if worker.is_alive():
            worker.terminate()
    killed = []
    for worker in workers:
        worker.join(grace)
        if worker.is_alive():
            log.warning("worker %s did not stop within %gs: killed", worker.pid, grace)
            worker.kill()
            worker.join()
            killed.append(worker)
    failed = [w for w in workers if w.exitcode not in (0, -signal.SIGTERM) and w not in killed]
    for worker in failed:
        log.warning("worker %s exited %s", worker.pid, worker.exitcode)
    return not (failed or killed)


#: Signals a terminal sends the whole process group.
_GROUP_SIGNALS = (signal.SIGINT, signal.SIGHUP)


def parent_gone() -> int | None:
    """(In a worker.) A descriptor that becomes readable when the first process
    ends, None elsewhere."""
    parent = multiprocessing.parent_process()
    return None if parent is None else int(parent.sentinel)


def _worker(
    values: dict[str, Any], number: int, channel: socket.socket, metrics: socket.socket | None
) -> None:
    from dicomstore.cli import _run
    from dicomstore.cli.allocator import keep_freed_memory
    from dicomstore.cli.logs import setup_logging

    keep_freed_memory()  # (as the first process: C-MOVE and C-GET send from here too)
    args = argparse.Namespace(**values, channel=channel, metrics_channel=metrics)
    setup_logging(args.log_level, args.log_format)
    logging.getLogger().handlers[0].addFilter(_Tagged(number))
    sys.exit(_run(args))


class _Tagged(logging.Filter):
    """Says which worker a log line comes from."""

    def __init__(self, number: int) -> None:
        super().__init__()
        self.tag = f"[worker {number}, pid {os.getpid()}] "

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and not record.msg.startswith("[worker"):
            record.msg = self.tag + record.msg
        return True
