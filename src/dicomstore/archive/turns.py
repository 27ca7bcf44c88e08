"""Writers of one SQLite index taking turns that wake promptly.

SQLite's write lock (WAL: a byte of the ``-shm`` file) is taken without waiting;
a writer that finds it taken runs SQLite's busy handler, which sleeps 1, 2, 5,
10, 15 ... ms between tries. Two processes writing one index (``serve
--workers``, or a command line writer beside ``serve``) each hold it ~0.1 ms per
batch, and with four senders about every second batch of the one that waited
slept a millisecond or more: a stall of ten batches' time.

:class:`Turns` puts a lock in front of it that a waiting writer gets within tens
of microseconds of its release: ``flock`` of the file ``<index>-writer`` beside
the index, taken around each write transaction (``Index.begin`` to its COMMIT or
ROLLBACK). Only an order, never the guarantee: SQLite's own lock still excludes
every other writer, so a writer that does not take a turn (an older dicomstore,
the ``sqlite3`` shell), a folder where the file cannot be made, or a turn not
given within the index's timeout (a stopped process holding it) leaves the
waiting to SQLite's lock (without its busy handler after a turn not given: the
timeout is spent), as before. ``flock`` locks belong to the open
file, so two indexes of one process take turns too, and closing one leaves the
other's turn alone; the kernel ends a dead process's turn.
"""

from __future__ import annotations

import fcntl
import os
import time

#: The first pause between two tries, doubling up to :data:`LONGEST_PAUSE`.
FIRST_PAUSE = 20e-6
LONGEST_PAUSE = 1e-3


class Turns:
    """The turn of one writer connection to write the SQLite index at ``path``."""

    def __init__(self, path: str) -> None:
        self.path = f"{path}-writer"
        self._fd = -1
        #: turns can be taken here (False: a folder where the file cannot be made,
        #: a file system without flock)
        self.usable = True
        #: this writer has the turn
        self.held = False

    def take(self, timeout: float) -> bool:
        """Wait for the turn, up to ``timeout`` seconds; False (go on without it:
        SQLite's lock decides) when it was not given, or cannot be had here."""
        if self.held:
            return True
        if not self.usable:
            return False
        if self._fd < 0:
            try:
                # (read-only: flock needs no more, and a file another user made serves)
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError:
                self.usable = False  # (a read-only folder: SQLite's lock alone)
                return False
        pause, deadline = FIRST_PAUSE, 0.0
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass
            except OSError:  # (no flock on this file system)
                self.usable = False
                return False
            else:
                self.held = True
                return True
            now = time.monotonic()
            if not deadline:
                deadline = now + timeout
            elif now >= deadline:
                return False
            time.sleep(pause)
            pause = min(2 * pause, LONGEST_PAUSE)

    def give(self) -> None:
        """End the turn (if this writer has it)."""
        if self.held:
            self.held = False
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the file (which ends a turn held)."""
        self.held = False
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:  # (a writer dropped unclosed must not keep its turn)
        if self._fd >= 0:
            os.close(self._fd)
