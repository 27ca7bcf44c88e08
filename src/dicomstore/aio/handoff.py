"""Connections spread over the processes of ``dicomstore serve --workers`` by load.

The first process accepts every connection. It serves it itself, or passes it
to the worker serving the fewest (:class:`Dispatcher`): over a Unix socket pair
per worker, the descriptor goes with one byte (SCM_RIGHTS, ``socket.send_fds``).
The worker serves it as if it had accepted it (``Listener`` with ``adopt_from``:
the TLS handshake, if any, happens there), and sends one byte back when that
connection ends, so the first process knows every process's load. Ties go
round: four connections at once into two processes are served two and two.

SO_REUSEPORT, used before, let the kernel spread them by a hash of the
addresses: with four senders and two processes, a 2/2 split in three runs of
eight, all four in one process in one run of eight.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable

log = logging.getLogger("dicomstore.server")

#: What a worker sends back when a connection it was passed ends.
ENDED = b"-"


def channels(count: int) -> list[tuple[socket.socket, socket.socket]]:
    """``count`` (first process's end, worker's end) pairs of connected Unix sockets."""
    return [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(count)]


class Dispatcher:
    """(The first process.) For each accepted connection: serve it here, or pass it
    to the worker with the fewest connections; ties go round."""

    def __init__(self, ends: list[socket.socket]) -> None:
        self._ends = ends
        #: connections passed to each worker and not yet ended
        self.loads = [0] * len(ends)
        self._alive = [True] * len(ends)
        self._next = 0  # slot 0 is this process, slot i + 1 worker i
        #: the workers are being stopped: their ending is expected
        self.stopping = False
        #: called with a worker's number (from 0) when it ended unasked
        self.on_gone: Callable[[int], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # (attach's)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start reading what the workers say (in the loop that accepts)."""
        self._loop = loop
        for number, end in enumerate(self._ends):
            end.setblocking(False)
            loop.add_reader(end.fileno(), self._ended, number)

    def detach(self, loop: asyncio.AbstractEventLoop) -> None:
        for end in self._ends:
            if end.fileno() >= 0:
                loop.remove_reader(end.fileno())
                end.close()

    def _ended(self, number: int) -> None:
        try:
            said = self._ends[number].recv(4096)
        except BlockingIOError:
            return
        except OSError:
            said = b""
        if not said:  # the worker is gone: no more connections for it
            self._gone(number)
            return
        self.loads[number] = max(0, self.loads[number] - len(said))

    def _gone(self, number: int) -> None:
        if self._alive[number]:
            self._alive[number] = False
            log.log(
                logging.INFO if self.stopping else logging.WARNING,
                "worker %d is gone: connections are served by the others",
                number + 1,
            )
            if self._loop is not None:
                self._loop.remove_reader(self._ends[number].fileno())
            if not self.stopping and self.on_gone is not None:
                self.on_gone(number)

    def replace(self, number: int, end: socket.socket) -> None:
        """Worker ``number`` (from 0), gone, has a successor on ``end``."""
        old, self._ends[number] = self._ends[number], end
        old.close()
        self.loads[number], self._alive[number] = 0, True
        if self._loop is not None:
            end.setblocking(False)
            self._loop.add_reader(end.fileno(), self._ended, number)

    def pass_on(self, conn: socket.socket, here: int) -> bool:
        """Pass ``conn`` to a worker if one serves fewer connections than this process
        (``here``), or as many and it is its turn; True when passed (then this
        process's descriptor of it is closed). False once the workers are being
        stopped (:attr:`stopping`): they would not serve it."""
        if self.stopping:
            return False
        workers = zip(self.loads, self._alive, strict=True)
        slots = [here, *(load if alive else None for load, alive in workers)]
        fewest = min(load for load in slots if load is not None)
        count = len(slots)
        for step in range(count):
            slot = (self._next + step) % count
            if slots[slot] == fewest:
                break
        self._next = slot + 1
        if slot == 0:
            return False
        number = slot - 1
        try:
            socket.send_fds(self._ends[number], [b"c"], [conn.fileno()])
        except (BlockingIOError, InterruptedError):
            return False  # (its channel is full for now, the worker busy: served here)
        except OSError as exc:
            if exc.errno == errno.ETOOMANYREFS:
                return False  # (descriptors in flight beyond the limit: served here)
            log.warning("cannot pass a connection to worker %d: %s", number + 1, exc)
            self._gone(number)
            return False
        self.loads[number] += 1
        conn.close()
        return True


def receive(channel: socket.socket) -> tuple[list[socket.socket], int]:
    """(A worker.) The connections the first process passed on ``channel`` since the
    last call (none when there is nothing; ``EOFError`` when it is gone), and how
    many more were passed whose descriptors did not arrive (the kernel drops them
    when this process has no descriptor left, ``MSG_CTRUNC``): to be said ended."""
    adopted: list[socket.socket] = []
    lost = 0
    while True:
        try:
            message, fds, _flags, _address = socket.recv_fds(channel, 64, 64)
        except BlockingIOError:
            return adopted, lost
        adopted.extend(socket.socket(fileno=fd) for fd in fds)
        lost += max(0, len(message) - len(fds))  # (one byte goes with each descriptor)
        if not message:
            if adopted or lost:
                return adopted, lost
            raise EOFError("the first process is gone")


# -- /metrics of every process (the first asks, each worker answers) ----------------

#: Seconds the first process waits for a worker's exposition before leaving it out.
ASK_TIMEOUT = 2.0


class Asker:
    """(The first process.) Asks one worker for its exposition over ``channel``: a
    question is a 4-byte number, the answer that number, a 4-byte length and the
    text; an answer to an earlier question (one that came too late) is skipped."""

    def __init__(self, channel: socket.socket, number: int) -> None:
        self.number = number
        self._lock = asyncio.Lock()  # (one question at a time: concurrent scrapes)
        self.rebind(channel)

    def rebind(self, channel: socket.socket) -> None:
        """Ask on ``channel`` from now (a worker started again in the place of one
        gone); the old channel is closed."""
        old = getattr(self, "channel", None)
        if old is not None:
            old.close()
        channel.setblocking(False)
        self.channel = channel
        self._asked = 0
        self._midway = False  # (an answer partly read: the stream cannot be followed)

    async def ask(self) -> bytes | None:
        """The worker's exposition; None when it is gone, or does not answer within
        ASK_TIMEOUT (a worker still starting, or busy)."""
        loop = asyncio.get_running_loop()
        async with self._lock:
            channel = self.channel  # (the one asked on, should the worker be replaced)
            if channel.fileno() < 0:
                return None
            self._asked += 1
            try:
                async with asyncio.timeout(ASK_TIMEOUT):
                    await loop.sock_sendall(channel, self._asked.to_bytes(4, "big"))
                    while True:
                        number, text = await self._answer(loop, channel)
                        if number == self._asked:
                            return text
            except TimeoutError:
                log.warning("no metrics from worker %d within %gs", self.number, ASK_TIMEOUT)
                if self._midway:  # (cut inside an answer: where the next starts is lost)
                    channel.close()
            except (OSError, EOFError) as exc:
                log.warning("no metrics from worker %d: %s", self.number, exc)
                channel.close()
            return None

    async def _answer(
        self, loop: asyncio.AbstractEventLoop, channel: socket.socket
    ) -> tuple[int, bytes]:
        """The next answer: (its question's number, the text)."""
        first = await loop.sock_recv(channel, 8)  # (waits for an answer to begin)
        if not first:
            raise EOFError("the worker is gone")
        self._midway = True
        head = first + await _exactly(loop, channel, 8 - len(first))
        text = await _exactly(loop, channel, int.from_bytes(head[4:], "big"))
        self._midway = False
        return int.from_bytes(head[:4], "big"), text


async def answer(channel: socket.socket, exposition: Callable[[], bytes]) -> None:
    """(A worker.) Answer each question on ``channel`` with ``exposition()``, until
    the first process is gone."""
    loop = asyncio.get_running_loop()
    channel.setblocking(False)
    while True:
        try:
            asked = await _exactly(loop, channel, 4)
        except EOFError:
            return
        text = exposition()
        await loop.sock_sendall(channel, asked + len(text).to_bytes(4, "big") + text)


async def _exactly(loop: asyncio.AbstractEventLoop, channel: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await loop.sock_recv(channel, size - len(data))
        if not chunk:
            raise EOFError("the other process is gone")
        data += chunk
    return bytes(data)
