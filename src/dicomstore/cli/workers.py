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
per process. A worker ends when the first process does (SIGINT/SIGTERM: it
stops the workers gracefully and waits for them; a first process killed: each
worker sees its parent gone and stops). Workers start with SIGINT and SIGHUP
ignored (kept across exec until their own handlers are set): a Ctrl-C reaching
the whole process group while a worker starts is the first process's to act on,
not a worker's traceback and exit 1.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import signal
import socket
import sys
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


def start(args: argparse.Namespace, port: int) -> list[BaseProcess]:
    """Start ``args.workers - 1`` workers (the first process is the other one), each
    given its end of a channel made by :func:`share` and the ``port`` the first
    process listens on (the one the system chose, for ``--port 0``)."""
    context = multiprocessing.get_context("spawn")
    values = {**vars(args), **_FIRST_ONLY, "port": port}
    workers: list[BaseProcess] = []
    asks = getattr(args, "metrics_ends", None) or [None] * len(args.worker_ends)
    for number, (end, ask) in enumerate(zip(args.worker_ends, asks, strict=True), start=1):
        worker = context.Process(
            target=_worker, args=(values, number, end, ask), name=f"dicomstore-worker-{number}"
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
        workers.append(worker)
    pids = ", ".join(str(worker.pid) for worker in workers)
    log.info("%d worker process(es) started beside this one: %s", len(workers), pids)
    return workers


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
