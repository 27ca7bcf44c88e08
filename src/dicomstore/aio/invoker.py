"""The invoking side of DIMSE operations on one association (PS3.7 9.3, PS3.8 E.1).

An :class:`Invoker` sends requests on a :class:`~dicomstore.aio.association.Transport`
with Message IDs of its own and matches each response the association's reader
hands it (:meth:`Invoker.deliver`) by Message ID Being Responded To, so several
requests can be outstanding within the asynchronous operations window (PS3.7
D.3.3.3). One message at a time goes on the wire. The client uses one on the
associations it requests; the acceptor one for the C-STORE sub-operations of a
C-GET, which go out on the association it accepted (PS3.4 C.4.3).

A request answered by several responses (C-FIND, C-MOVE, C-GET: pending ones,
then a final one, PS3.7 9.1.2.1.6) gets a :class:`Responses` stream with their
data sets (:meth:`Invoker.invoke`); its C-CANCEL-RQ is :meth:`Invoker.cancel`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from dicomstore.aio.association import Transport
from dicomstore.dimse import (
    CEchoRQ,
    CEchoRSP,
    CStoreRQ,
    CStoreRSP,
    DatasetFragment,
    UnknownCommand,
)
from dicomstore.dimse import status as st
from dicomstore.errors import (
    AssociationAborted,
    AssociationError,
    DicomstoreError,
    DimseTimeout,
    RemoteProtocolError,
)
from dicomstore.ul import pdu as P
from dicomstore.ul.negotiation import AcceptedContext

log = logging.getLogger("dicomstore.client")

if TYPE_CHECKING:  # (the normalized family loads when used: not for a C-STORE SCU)
    from dicomstore.dimse.normalized_messages import NActionRSP, NEventReportRSP

_RSP = TypeVar("_RSP", CEchoRSP, CStoreRSP, "NActionRSP", "NEventReportRSP")

#: Largest data set of one response we hold (an Identifier is a few hundred bytes, a
#: Failed SOP Instance UID List of 65535 UIDs some 4 MiB): beyond, the peer is in
#: breach and the association is aborted (there is no refusing a response).
MAX_RESPONSE_DATASET = 16 << 20
#: Responses waiting for their reader before we stop reading the socket ...
RESPONSES_BUFFERED = 256
#: ... or the bytes of their data sets.
RESPONSES_BUFFERED_BYTES = 16 << 20


class Request(Protocol):
    """A DIMSE request message (C-FIND-RQ, C-MOVE-RQ, C-GET-RQ ...)."""

    @property
    def message_id(self) -> int: ...

    def encode(self) -> bytes: ...


class Responses:
    """The responses to one request answered in several (PS3.7 9.1.2.1.6), in order.

    ``async for rsp, data in responses``: each response message and its data set
    (the bytes, in the context's transfer syntax) or ``None``; the iteration ends
    after the first response whose status is not Pending (FF00, FF01). Each
    response must come within the DIMSE timeout. While more than
    :data:`RESPONSES_BUFFERED` responses, or :data:`RESPONSES_BUFFERED_BYTES`
    bytes of their data sets, wait to be read, the association stops reading
    the socket (TCP backpressure, :meth:`Invoker.room`) until half of that is
    left. :meth:`close` stops listening: later responses to the request are
    dropped.
    """

    def __init__(self, invoker: Invoker, message_id: int, context_id: int) -> None:
        self.invoker = invoker
        self.message_id = message_id
        self.context_id = context_id
        self._items: deque[tuple[Any, bytes | None]] = deque()
        #: the bytes of the data sets in ``_items``
        self.buffered = 0
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._error: BaseException | None = None
        self._final_seen = False

    @property
    def full(self) -> bool:
        """Too many responses, or too many bytes of them, wait to be read."""
        return len(self._items) >= RESPONSES_BUFFERED or self.buffered >= RESPONSES_BUFFERED_BYTES

    def _put(self, rsp: Any, data: bytes | None) -> None:
        self._items.append((rsp, data))
        self.buffered += len(data) if data is not None else 0
        self._arrived.set()
        if self.full:
            self._room.clear()

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        self._arrived.set()

    def __aiter__(self) -> Responses:
        return self

    async def __anext__(self) -> tuple[Any, bytes | None]:
        if self._final_seen:
            raise StopAsyncIteration
        while not self._items:
            if self._error is not None:
                raise self._error
            self._arrived.clear()
            timeout = self.invoker.t.timeouts.dimse
            try:
                async with asyncio.timeout(timeout):
                    await self._arrived.wait()
            except TimeoutError:
                self.close()
                await self.invoker._abort()
                raise DimseTimeout(
                    f"no response to message {self.message_id} within {timeout}s"
                ) from None
        rsp, data = self._items.popleft()
        self.buffered -= len(data) if data is not None else 0
        if (
            len(self._items) < RESPONSES_BUFFERED // 2
            and self.buffered < RESPONSES_BUFFERED_BYTES // 2
        ):
            self._room.set()
        if not _pending(rsp):
            self._final_seen = True
            self.close()
        return rsp, data

    def close(self) -> None:
        """Stop listening (what is buffered stays readable); later responses to the
        request, up to its final one, are dropped (not a peer that lost track:
        :meth:`Invoker.deliver`)."""
        streams = self.invoker.streams
        if streams.get(self.message_id) is self:
            del streams[self.message_id]
            final_in = any(not _pending(rsp) for rsp, _data in self._items)
            if not (self._final_seen or final_in):  # (its final one still to come)
                self.invoker.draining(self)
        self._room.set()


#: streams closed early whose late responses are still expected (Invoker.draining)
MAX_DRAINING = 1024


def _pending(rsp: Any) -> bool:
    return getattr(rsp, "status", None) in (st.PENDING, st.PENDING_WARNING)


class Invoker:
    """Requests out, their responses matched (see the module notes).

    ``abort`` ends the association when a response is late (``Timeouts.dimse``)
    or of the wrong type; it must call :meth:`end`.
    """

    def __init__(self, transport: Transport, abort: Callable[[], Awaitable[None]]) -> None:
        self.t = transport
        self._abort = abort
        self._ids = itertools.count(1)
        #: Futures of the requests awaiting their response, by Message ID.
        self.waiting: dict[int, asyncio.Future[Any]] = {}
        #: Why the association can no longer be used (set by :meth:`end`).
        self.ended: BaseException | None = None
        #: Operations we may have outstanding (PS3.7 D.3.3.3): see :meth:`open`.
        self.window = asyncio.Semaphore(1)
        #: PS3.8 E.1 forbids interleaving the fragments of different messages.
        self.send_lock = asyncio.Lock()
        #: Requests answered by several responses, by Message ID.
        self.streams: dict[int, Responses] = {}
        #: streams closed before their final response, whose responses are dropped
        self._draining: dict[int, None] = {}  # (Message IDs only: review40 #3)
        self._dropped = Responses(self, 0, 0)  # (collects what is dropped: never listed)
        self._cancels: set[asyncio.Task[None]] = set()
        #: The response whose data set is arriving, and its bytes so far.
        self._collecting: tuple[Responses, Any, bytearray] | None = None

    def open(self, window: int) -> None:
        """The association is established with this window (0: unlimited)."""
        self.window = asyncio.Semaphore(window or 1024)

    def next_id(self) -> int:
        """A Message ID (PS3.7 9.3.1.1: unique among those outstanding), 1 to 65535."""
        while True:
            msg_id = next(self._ids) & 0xFFFF
            if msg_id and not (
                msg_id in self.waiting or msg_id in self.streams or msg_id in self._draining
            ):
                return msg_id

    def draining(self, stream: Responses) -> None:
        """``stream`` was closed before its final response (its reader stopped): the
        responses still coming to it are dropped, up to the final one (the last
        :data:`MAX_DRAINING` such streams are remembered)."""
        self._draining[stream.message_id] = None
        while len(self._draining) > MAX_DRAINING:
            del self._draining[next(iter(self._draining))]
        # and the peer is asked to stop (PS3.7 9.3.2.3; review40 #2: it went on, and a
        # next request on the association waited for it)
        try:
            task = asyncio.get_running_loop().create_task(self._cancel_quietly(stream))
        except RuntimeError:  # (closed outside the loop: nothing to send with)
            return
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def _cancel_quietly(self, stream: Responses) -> None:
        try:
            await self.cancel(stream)
        except (OSError, DicomstoreError):  # (the association ended meanwhile)
            pass

    def check_usable(self) -> None:
        if self.ended is not None:
            raise self.ended
        if not self.t.conn.is_established:
            raise AssociationError("the association is not established")

    def deliver(self, rsp: Any, *, dataset_follows: bool = False) -> bool:
        """Hand a response to the request it answers; False if none awaits it.

        With ``dataset_follows`` a response of a :class:`Responses` stream waits
        for its data set (:meth:`deliver_fragment`).
        """
        msg_id = getattr(rsp, "message_id_being_responded_to", None)
        if msg_id is None and isinstance(rsp, UnknownCommand) and rsp.is_response:
            msg_id = rsp.message_id  # a response type we do not model (e.g. N-ACTION-RSP)
        stream = self.streams.get(msg_id) if msg_id is not None else None
        if stream is None and msg_id in self._draining:  # (closed early: dropped)
            if not _pending(rsp):
                del self._draining[msg_id]
            if dataset_follows:  # (its fragments are read and let go: deliver_fragment)
                self._collecting = (self._dropped, rsp, bytearray())
            return True
        if stream is not None:
            if dataset_follows:
                self._collecting = (stream, rsp, bytearray())
            else:
                stream._put(rsp, None)
            return True
        future = self.waiting.pop(msg_id, None) if msg_id is not None else None
        if future is None:
            return False
        if not future.done():
            future.set_result(rsp)
        return True

    def deliver_fragment(self, event: DatasetFragment) -> bool:
        """A fragment of the data set of a response delivered with ``dataset_follows``;
        False if no response is collecting one (the fragment is not ours)."""
        if self._collecting is None:
            return False
        stream, rsp, data = self._collecting
        if stream is self._dropped:  # (a response to a stream closed early: let go)
            if event.is_last:
                self._collecting = None
            return True
        if len(data) + len(event.data) > MAX_RESPONSE_DATASET:
            raise RemoteProtocolError(
                f"the data set of a response to message {stream.message_id} is over "
                f"{MAX_RESPONSE_DATASET} bytes",
                P.ABORT_INVALID_PDU_PARAMETER_VALUE,
            )
        data += event.data  # a copy: the PDV is a view of the receive buffer
        if event.is_last:
            self._collecting = None
            if self.streams.get(stream.message_id) is stream:
                stream._put(rsp, bytes(data))
        return True

    async def room(self) -> None:
        """Wait while the reader of some stream is behind (the caller stops reading)."""
        for stream in list(self.streams.values()):
            await stream._room.wait()

    def end(self, exc: BaseException) -> None:
        """The association is over: every request still waiting fails with ``exc``."""
        if self.ended is None:
            self.ended = exc
        self._collecting = None
        for stream in list(self.streams.values()):
            stream._fail(self.ended)
            stream.close()
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(self.ended)
        self.waiting.clear()

    async def _response(
        self,
        msg_id: int,
        future: asyncio.Future,
        expected: type[_RSP],
        timeout: float | None = None,
    ) -> _RSP:
        timeout = self.t.timeouts.dimse if timeout is None else timeout
        try:
            async with asyncio.timeout(timeout):
                rsp = await future
        except TimeoutError:
            self.waiting.pop(msg_id, None)
            await self._abort()
            raise DimseTimeout(f"no response to message {msg_id} within {timeout}s") from None
        if not isinstance(rsp, expected):  # PS3.7 9.3: the response of the request's type
            why = f"the peer answered message {msg_id} with {type(rsp).__name__}"
            log.warning("%s, not a %s: aborting", why, expected.__name__)
            await self._abort()
            raise AssociationAborted(f"{why}, not a {expected.__name__}")
        return rsp

    async def echo(self, context_id: int) -> CEchoRSP:
        """C-ECHO (PS3.7 9.3.5) on ``context_id``; the C-ECHO-RSP."""
        return await self.call(context_id, CEchoRQ, CEchoRSP)

    async def call(
        self,
        context_id: int,
        request: Callable[[int], Any],
        expected: type[_RSP],
        dataset: bytes | None = None,
        *,
        timeout: float | None = None,
    ) -> _RSP:
        """One request whose data set (if any) is small, e.g. an N-ACTION-RQ
        (PS3.7 10.3.4) or an N-EVENT-REPORT-RQ (10.3.1): ``request(message_id)``
        builds it; waits for a slot of the operations window and returns the
        response of type ``expected``, within ``timeout`` (default
        ``Timeouts.dimse``) or the association is aborted (:class:`DimseTimeout`).
        """
        self.check_usable()
        async with self.window:
            self.check_usable()
            msg_id = self.next_id()
            future = asyncio.get_running_loop().create_future()
            self.waiting[msg_id] = future
            try:
                async with self.send_lock:
                    self.check_usable()
                    self.t.queue_message(context_id, request(msg_id).encode(), dataset)
                    await self.t.drain()
            except BaseException:
                self._forget(msg_id, future)
                raise
            return await self._response(msg_id, future, expected, timeout)

    def _forget(self, msg_id: int, future: asyncio.Future) -> None:
        """A request that could not be sent awaits no response."""
        self.waiting.pop(msg_id, None)
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()  # retrieved: the caller gets the send error

    async def invoke(self, context_id: int, rq: Request, dataset: bytes | None = None) -> Responses:
        """Send a request answered by several responses (C-FIND, C-MOVE, C-GET) on
        ``context_id``, with its (small) data set; the stream of its responses.
        ``rq.message_id`` comes from :meth:`next_id`."""
        self.check_usable()
        msg_id = rq.message_id
        if msg_id in self.streams or msg_id in self.waiting:
            raise ValueError(f"message {msg_id} is already outstanding")
        stream = Responses(self, msg_id, context_id)
        self.streams[msg_id] = stream
        try:
            async with self.send_lock:
                self.check_usable()
                self.t.queue_message(context_id, rq.encode(), dataset)
                await self.t.drain()
        except BaseException:
            stream.close()
            raise
        return stream

    async def cancel(self, responses: Responses) -> None:
        """C-CANCEL-RQ for the request of ``responses`` (PS3.7 9.3.2.3): the peer
        ends it with a final response (FE00 Cancel), or has already."""
        if self.ended is not None or not self.t.conn.is_established:
            return
        async with self.send_lock:
            from dicomstore.dimse.query_messages import CCancelRQ

            self.t.queue_message(responses.context_id, CCancelRQ(responses.message_id).encode())
            await self.t.drain()

    async def store_stream(
        self,
        context: AcceptedContext,
        sop_class_uid: str,
        sop_instance_uid: str,
        chunks: Iterable[bytes],
        *,
        priority: int = 0,
        move_originator: tuple[str, int] | None = None,
        size: int | None = None,
    ) -> CStoreRSP:
        """C-STORE (PS3.7 9.3.1) of a data set given as chunks in ``context``'s syntax
        (of ``size`` bytes, when known: each chunk is sent as soon as it is read).

        Waits for a slot of the operations window, sends the request and the
        data set, and returns the C-STORE-RSP when it arrives.
        """
        self.check_usable()
        async with self.window:
            self.check_usable()
            msg_id = self.next_id()
            rq = CStoreRQ(
                msg_id,
                sop_class_uid,
                sop_instance_uid,
                priority,
                move_originator[0] if move_originator else None,
                move_originator[1] if move_originator else None,
            )
            future = asyncio.get_running_loop().create_future()
            self.waiting[msg_id] = future
            try:
                async with self.send_lock:
                    self.check_usable()
                    await self.t.send_dataset_chunks(context.id, chunks, rq.encode(), size)
                    await self.t.drain()
            except BaseException:
                self._forget(msg_id, future)
                raise
            return await self._response(msg_id, future, CStoreRSP)
