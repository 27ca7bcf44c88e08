"""The performing side of DIMSE operations on an association we invoke on (PS3.7 9.3, 10.3).

On an association we requested the peer may invoke operations too: the C-STORE
sub-operations of a C-GET (PS3.4 C.4.3), the N-EVENT-REPORT of a Storage
Commitment SCP (J.3.3). A :class:`Performer` takes each request from the
association's reader and hands it to an :class:`Incoming` made by its
``on_request`` factory: the request's data set fragments as they arrive (a
C-STORE streams to the archive, never held whole), then ``finish()`` gives the
response, which goes out from a task so that the reader keeps reading. Without
a factory the request is answered 0211 (unrecognized operation, PS3.7 C.5.6;
0212 for a command missing a field).

:class:`Collecting` is the factory for requests with small data sets: the data
set is kept (beyond ``max_data`` bytes the rest is discarded and the request
answered 0213, resource limitation) and a handler answers (context ID, request,
data set bytes).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from dicomstore.aio.association import Transport
from dicomstore.dimse import CommandReceived, DatasetFragment, InvalidRequest
from dicomstore.dimse import status as st
from dicomstore.errors import LocalProtocolError
from dicomstore.ul.fsm import State

log = logging.getLogger("dicomstore.client")

#: Largest data set of a request :class:`Collecting` keeps (an N-EVENT-REPORT of
#: 65535 references takes about 10 MiB).
MAX_REQUEST_DATA = 64 * 1024 * 1024


class Incoming(Protocol):
    """One request of the peer: its data set fragments, then its response."""

    def write(self, data: bytes | bytearray | memoryview) -> None: ...

    async def finish(self) -> Any:
        """The response to send (None: none)."""
        ...

    def abort(self) -> None:
        """The association ended inside the request's data set."""
        ...


#: Makes the :class:`Incoming` of one request: (context ID, request message).
RequestFactory = Callable[[int, Any], Incoming]
#: Answers one request: (context ID, request, its data set bytes) -> the response, or None.
RequestHandler = Callable[[int, Any, bytes], Awaitable[Any]]


def is_request(message: Any) -> bool:
    """True for a request (a response has a Message ID Being Responded To)."""
    return not (
        hasattr(message, "message_id_being_responded_to") or getattr(message, "is_response", False)
    )


def refusal(message: Any) -> Any:
    """The answer to a request we do not perform: 0212 for a command missing a
    field, else 0211; None for a message that has no response."""
    if isinstance(message, InvalidRequest):
        return message.response()
    try:
        comment = f"{type(message).__name__} is not served here"
        return message.response(st.UNRECOGNIZED_OPERATION, comment)
    except (AttributeError, LocalProtocolError):
        return None


class Refused:
    """A request we do not perform: its data set discarded, then :func:`refusal`."""

    def __init__(self, message: Any) -> None:
        self.message = message

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    async def finish(self) -> Any:
        return refusal(self.message)

    def abort(self) -> None:
        pass


class Collecting:
    """A :data:`RequestFactory` keeping each data set (bounded) for ``handler``."""

    def __init__(self, handler: RequestHandler, *, max_data: int = MAX_REQUEST_DATA) -> None:
        self.handler = handler
        self.max_data = max_data

    def __call__(self, context_id: int, message: Any) -> Incoming:
        return _Collected(self, context_id, message)


class _Collected:
    def __init__(self, owner: Collecting, context_id: int, message: Any) -> None:
        self.owner = owner
        self.context_id = context_id
        self.message = message
        self.data = bytearray()
        self.too_large = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if len(self.data) + len(data) > self.owner.max_data:
            self.too_large = True
            self.data = bytearray()
        elif not self.too_large:
            self.data += data  # a copy: the PDV is a view of the receive buffer

    async def finish(self) -> Any:
        if self.too_large:
            comment = f"data set {st.OVER_SIZE_LIMIT} of {self.owner.max_data} bytes"
            return self.message.response(st.RESOURCE_LIMITATION, comment)
        rsp = await self.owner.handler(self.context_id, self.message, bytes(self.data))
        return rsp if rsp is not None else refusal(self.message)

    def abort(self) -> None:
        self.data = bytearray()


class Performer:
    """Requests in, their responses out (see the module notes). ``send_lock`` is
    the association's (shared with its Invoker: one message at a time)."""

    def __init__(
        self,
        transport: Transport,
        on_request: RequestFactory | None = None,
        *,
        send_lock: asyncio.Lock | None = None,
    ) -> None:
        self.t = transport
        self.on_request = on_request
        self.send_lock = send_lock if send_lock is not None else asyncio.Lock()
        self._receiving: tuple[int, Any, Incoming] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def handles(self, event: CommandReceived | DatasetFragment) -> bool:
        """True for a request, and for the data set of the request being received."""
        if isinstance(event, DatasetFragment):
            return self._receiving is not None
        return is_request(event.message)

    def receive(self, event: CommandReceived | DatasetFragment) -> None:
        """Take one event :meth:`handles`; the answer goes out from a task."""
        if isinstance(event, CommandReceived):
            message = event.message
            make = self.on_request
            incoming = make(event.context_id, message) if make is not None else Refused(message)
            self._receiving = (event.context_id, message, incoming)
            if self.t.assembler.dataset_in_progress:
                return
        else:
            assert self._receiving is not None
            self._receiving[2].write(event.data)
            if not event.is_last:
                return
        context_id, message, incoming = self._receiving
        self._receiving = None
        task = asyncio.create_task(self._answer(context_id, message, incoming))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, context_id: int, message: Any, incoming: Incoming) -> None:
        name = type(message).__name__
        try:
            rsp = await incoming.finish()
        except Exception:  # noqa: BLE001 - the peer gets an answer all the same
            log.exception("%s: answering %s failed", self.t.peer, name)
            rsp = message.response(st.PROCESSING_FAILURE, "internal error")
        if rsp is None:
            return
        if rsp.status not in (st.SUCCESS, st.PENDING, st.PENDING_WARNING):
            why = rsp.error_comment
            log.warning("%s: answering %s %04X: %s", self.t.peer, name, rsp.status, why)
        try:
            async with self.send_lock:
                # DT-1 in Sta6, or in Sta8 (a release asked for: answers still go, AR-7)
                if self.t.conn.state in (State.STA6, State.STA8):
                    self.t.queue_message(context_id, rsp.encode())
                    await self.t.drain()
        except (ConnectionError, OSError) as exc:  # the reader sees the end too
            log.warning("%s: cannot answer %s: %s", self.t.peer, name, exc)

    async def settle(self) -> None:
        """Wait until every request received so far is answered (before a release)."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    def end(self) -> None:
        """The association ended: a request inside its data set is abandoned."""
        if self._receiving is not None:
            self._receiving[2].abort()
            self._receiving = None

    async def close(self) -> None:
        """The association ended: answers still being prepared go nowhere."""
        self.end()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
