"""The asyncio client: open an association and use it (PS3.8 7.1, PS3.7 9.3).

    async with dicomstore.connect("127.0.0.1", 11112, called_ae="STORESCP") as assoc:
        rsp = await assoc.echo()

A reader task feeds the upper layer and matches responses to requests by
Message ID Being Responded To, so several requests can be outstanding when
the peer grants an asynchronous operations window (PS3.7 D.3.3.3). A request
answered by several responses (C-FIND, C-MOVE, C-GET: pending ones, then a
final one, PS3.7 9.1.2.1.6) gets a :class:`Responses` stream with its data
sets; its C-CANCEL-RQ is :meth:`ClientAssociation.cancel`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import ssl as ssl_module
from collections import deque
from collections.abc import Callable, Generator, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, TypeVar, Unpack

from dicomstore import uids
from dicomstore.aio.association import Timeouts, Transport
from dicomstore.aio.stream import Stream
from dicomstore.dimse import (
    CCancelRQ,
    CEchoRQ,
    CEchoRSP,
    CommandReceived,
    CStoreRQ,
    CStoreRSP,
    DatasetFragment,
    UnknownCommand,
)
from dicomstore.dimse import status as st
from dicomstore.errors import (
    AssociationAborted,
    AssociationError,
    AssociationRejected,
    DimseTimeout,
    RemoteProtocolError,
)
from dicomstore.ul import items as I
from dicomstore.ul import pdu as P
from dicomstore.ul.connection import Connection, Role
from dicomstore.ul.events import (
    AbortIndication,
    AssociateAccepted,
    AssociateRejected,
    DataIndication,
    ReleaseConfirmation,
    ReleaseIndication,
)
from dicomstore.ul.negotiation import (
    DEFAULT_MAX_PDU,
    AcceptedContext,
    Negotiated,
    our_user_information,
    requested,
)

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger("dicomstore.client")

_RSP = TypeVar("_RSP", CEchoRSP, CStoreRSP)

ContextSpec = tuple[str, Sequence[str]]  # (abstract syntax, transfer syntaxes)


class Incoming(Protocol):
    """A request the peer sends us on our association (a C-STORE sub-operation of a
    C-GET, PS3.4 C.4.3): its data set fragments, then its response."""

    def write(self, data: bytes | bytearray | memoryview) -> None: ...

    async def finish(self) -> Request | None: ...

    def abort(self) -> None: ...


class Request(Protocol):
    """A DIMSE request message (C-FIND-RQ, C-MOVE-RQ, C-GET-RQ ...)."""

    @property
    def message_id(self) -> int: ...

    def encode(self) -> bytes: ...


#: Largest data set of one response we hold (an Identifier is a few hundred bytes).
MAX_RESPONSE_DATASET = 16 << 20
#: Responses waiting for their reader before we stop reading the socket.
RESPONSES_BUFFERED = 256


def build_contexts(specs: Iterable[ContextSpec]) -> list[I.PresentationContextRQ]:
    """Presentation contexts with odd IDs 1, 3, 5 ... (at most 128, PS3.8 9.3.2.2)."""
    contexts = [
        I.PresentationContextRQ(2 * n + 1, abstract, list(transfers))
        for n, (abstract, transfers) in enumerate(specs)
    ]
    if len(contexts) > 128:
        raise ValueError(f"{len(contexts)} presentation contexts; at most 128 fit one association")
    return contexts


class Responses:
    """The responses to one request answered in several (PS3.7 9.1.2.1.6), in order.

    ``async for rsp, data in responses``: each response message and its data set
    (the bytes, in the context's transfer syntax) or ``None``; the iteration ends
    after the first response whose status is not Pending (FF00, FF01). Each
    response must come within the DIMSE timeout. While more than
    :data:`RESPONSES_BUFFERED` wait to be read, the association stops reading
    the socket (TCP backpressure). :meth:`close` stops listening: later
    responses to the request are dropped.
    """

    def __init__(self, assoc: ClientAssociation, message_id: int, context_id: int) -> None:
        self.assoc = assoc
        self.message_id = message_id
        self.context_id = context_id
        self._items: deque[tuple[Any, bytes | None]] = deque()
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._error: BaseException | None = None
        self._final_seen = False

    @property
    def full(self) -> bool:
        """Too many responses wait to be read."""
        return len(self._items) >= RESPONSES_BUFFERED

    def _put(self, rsp: Any, data: bytes | None) -> None:
        self._items.append((rsp, data))
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
            timeout = self.assoc.t.timeouts.dimse
            try:
                async with asyncio.timeout(timeout):
                    await self._arrived.wait()
            except TimeoutError:
                self.close()
                await self.assoc.abort()
                raise DimseTimeout(
                    f"no response to message {self.message_id} within {timeout}s"
                ) from None
        rsp, data = self._items.popleft()
        if len(self._items) < RESPONSES_BUFFERED // 2:
            self._room.set()
        if not _pending(rsp):
            self._final_seen = True
            self.close()
        return rsp, data

    def close(self) -> None:
        """Stop listening (what is buffered stays readable)."""
        if self.assoc._streams.get(self.message_id) is self:
            del self.assoc._streams[self.message_id]
        self._room.set()


def _pending(rsp: Any) -> bool:
    return getattr(rsp, "status", None) in (st.PENDING, st.PENDING_WARNING)


class ClientAssociation:
    """An association we requested, ready for DIMSE operations."""

    def __init__(self, transport: Transport, request: P.AssociateRQ) -> None:
        self.t = transport
        self.request = request
        self.negotiated: Negotiated | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._released: asyncio.Future | None = None
        self._ended: BaseException | None = None
        self._reader: asyncio.Task | None = None
        self._window: asyncio.Semaphore | None = None
        #: One message at a time on the wire: PS3.8 E.1 forbids interleaving
        #: the fragments of different messages (concurrent C-STOREs share it).
        self._send_lock = asyncio.Lock()
        #: requests answered by several responses, by Message ID
        self._streams: dict[int, Responses] = {}
        #: the response whose data set is arriving, and its bytes so far
        self._collecting: tuple[Responses, Any, bytearray] | None = None
        #: takes the requests the peer sends us (context ID, message): see Incoming;
        #: without it they are logged and ignored
        self.on_request: Callable[[int, Any], Incoming] | None = None
        self._incoming: Incoming | None = None
        self._answering: set[asyncio.Task[None]] = set()

    # -- establishment ----------------------------------------------------

    async def _establish(self) -> None:
        t = self.t
        t.conn.transport_connected()  # Evt2: send the A-ASSOCIATE-RQ
        await t.flush()
        try:
            async with asyncio.timeout(t.timeouts.acse):
                while True:
                    events = await t.receive(None)
                    for event in events:
                        if isinstance(event, AssociateAccepted):
                            self.negotiated = requested(self.request, event.accept)
                            t.negotiated = self.negotiated
                            window = self.negotiated.max_ops_invoked
                            self._window = asyncio.Semaphore(window or 1024)
                            self._reader = asyncio.create_task(self._read_loop())
                            return
                        if isinstance(event, AssociateRejected):
                            rj = event.reject
                            raise AssociationRejected(rj.result, rj.source, rj.reason)
                        if isinstance(event, AbortIndication):
                            raise AssociationAborted(event.message, event.source, event.reason)
                    if t.conn.is_closed:
                        raise AssociationAborted("the peer closed the connection")
        except TimeoutError:
            t.abort_now()
            raise AssociationError(
                f"no answer to the association request within {t.timeouts.acse}s"
            ) from None

    # -- the reader task --------------------------------------------------

    async def _read_loop(self) -> None:
        t = self.t
        try:
            while not t.conn.is_closed:
                events = await t.receive(t.timeouts.network)
                for event in events:
                    self._on_event(event)
                await t.flush()
                for stream in list(self._streams.values()):
                    await stream._room.wait()  # its reader is behind: stop reading
            self._end(AssociationAborted("the association ended"))
        except RemoteProtocolError as exc:
            t.conn.protocol_error(exc)
            await t.flush()
            self._end(AssociationAborted(f"protocol error from the peer: {exc}"))
        except TimeoutError:
            t.abort_now()
            self._end(AssociationAborted("the peer was silent for too long"))
        except asyncio.CancelledError:
            self._end(AssociationAborted("the association was closed"))
            raise
        except Exception as exc:  # noqa: BLE001
            log.exception("reader failed")
            t.abort_now()
            self._end(AssociationAborted(f"internal error: {exc}"))

    def _on_event(self, event: Any) -> None:
        if isinstance(event, DataIndication):
            for pdv in event.pdvs:
                for dimse_event in self.t.assembler.receive(pdv):
                    self._on_dimse(dimse_event)
        elif isinstance(event, ReleaseConfirmation):
            if self._released is not None and not self._released.done():
                self._released.set_result(None)
        elif isinstance(event, ReleaseIndication):
            self.t.conn.release_response()
        elif isinstance(event, AbortIndication):
            self._end(AssociationAborted(event.message, event.source, event.reason))

    def _on_dimse(self, event: Any) -> None:
        if isinstance(event, DatasetFragment):
            self._on_fragment(event)  # (responses to C-ECHO/C-STORE carry none)
            return
        assert isinstance(event, CommandReceived)
        rsp = event.message
        msg_id = getattr(rsp, "message_id_being_responded_to", None)
        if msg_id is None and isinstance(rsp, UnknownCommand) and rsp.is_response:
            msg_id = rsp.message_id  # a response type we do not model (e.g. N-ACTION-RSP)
        if msg_id is None and self.on_request is not None and not isinstance(rsp, UnknownCommand):
            incoming = self.on_request(event.context_id, rsp)
            if self.t.assembler.dataset_in_progress:
                self._incoming = incoming
            else:
                self._answer(event.context_id, incoming)
            return
        stream = self._streams.get(msg_id) if msg_id is not None else None
        if stream is not None:
            if self.t.assembler.dataset_in_progress:
                self._collecting = (stream, rsp, bytearray())
            else:
                stream._put(rsp, None)
            return
        future = self._waiting.pop(msg_id, None) if msg_id is not None else None
        if future is None:
            log.warning("unexpected DIMSE message %r ignored", rsp)
        elif not future.done():
            future.set_result(rsp)

    def _on_fragment(self, event: DatasetFragment) -> None:
        if self._incoming is not None:
            self._incoming.write(event.data)
            if event.is_last:
                incoming, self._incoming = self._incoming, None
                self._answer(event.context_id, incoming)
            return
        if self._collecting is None:
            return
        stream, rsp, data = self._collecting
        if len(data) + len(event.data) > MAX_RESPONSE_DATASET:
            raise RemoteProtocolError(
                f"a response data set over {MAX_RESPONSE_DATASET} bytes",
                P.ABORT_INVALID_PDU_PARAMETER_VALUE,
            )
        data += event.data  # a copy: the PDV is a view of the receive buffer
        if event.is_last:
            self._collecting = None
            if self._streams.get(stream.message_id) is stream:
                stream._put(rsp, bytes(data))

    def _answer(self, context_id: int, incoming: Incoming) -> None:
        """Send the response to a request of the peer once it is ready (a C-STORE
        commits first), from a task: the reader goes on reading."""

        async def answer() -> None:
            rsp = await incoming.finish()
            if rsp is None:  # a request we do not serve: no answer
                return
            try:
                async with self._send_lock:
                    if self.t.conn.is_established:
                        self.t.queue_message(context_id, rsp.encode())
                        await self.t.drain()
            except (ConnectionError, OSError) as exc:  # the reader sees the end too
                log.warning("cannot answer the peer's request: %s", exc)

        task = asyncio.create_task(answer())
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    async def answered(self) -> None:
        """Wait until every request of the peer received so far is answered."""
        while self._answering:
            await asyncio.wait(list(self._answering))

    def _end(self, exc: BaseException) -> None:
        if self._incoming is not None:
            self._incoming.abort()  # the association ended inside its data set
            self._incoming = None
        if self._ended is None:
            self._ended = exc
        for stream in list(self._streams.values()):
            stream._fail(self._ended)
            stream.close()
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(self._ended)
        self._waiting.clear()
        if self._released is not None and not self._released.done():
            if (
                self.t.conn.is_closed
                and isinstance(exc, AssociationAborted)
                and (exc.source is None)
            ):
                self._released.set_result(None)
            else:
                self._released.set_exception(exc)

    # -- operations -------------------------------------------------------

    def context_for(
        self, abstract_syntax: str, transfer_syntax: str | None = None
    ) -> AcceptedContext | None:
        """An accepted context for this abstract (and transfer) syntax, or None."""
        assert self.negotiated is not None
        return self.negotiated.context_for(abstract_syntax, transfer_syntax)

    def _check_usable(self) -> None:
        if self._ended is not None:
            raise self._ended
        if not self.t.conn.is_established:
            raise AssociationError("the association is not established")

    async def _await_response(
        self, msg_id: int, future: asyncio.Future, expected: type[_RSP]
    ) -> _RSP:
        try:
            async with asyncio.timeout(self.t.timeouts.dimse):
                rsp = await future
        except TimeoutError:
            self._waiting.pop(msg_id, None)
            await self.abort()
            raise DimseTimeout(
                f"no response to message {msg_id} within {self.t.timeouts.dimse}s"
            ) from None
        if not isinstance(rsp, expected):  # PS3.7 9.3: the response of the request's type
            why = f"the peer answered message {msg_id} with {type(rsp).__name__}"
            log.warning("%s, not a %s: aborting", why, expected.__name__)
            await self.abort()
            raise AssociationAborted(f"{why}, not a {expected.__name__}")
        return rsp

    async def echo(self) -> CEchoRSP:
        """C-ECHO (PS3.7 9.3.5); returns the C-ECHO-RSP."""
        self._check_usable()
        ctx = self.context_for(uids.VERIFICATION)
        if ctx is None:
            raise AssociationError("the peer did not accept the Verification SOP Class")
        msg_id = next(self._ids) & 0xFFFF
        future = asyncio.get_running_loop().create_future()
        self._waiting[msg_id] = future
        async with self._send_lock:
            self.t.queue_message(ctx.id, CEchoRQ(msg_id).encode())
            await self.t.drain()
        return await self._await_response(msg_id, future, CEchoRSP)

    def next_message_id(self) -> int:
        """A Message ID for a new request (1 .. 65535, PS3.7 9.1)."""
        return next(self._ids) & 0xFFFF or next(self._ids) & 0xFFFF

    async def invoke(self, context_id: int, rq: Request, dataset: bytes | None = None) -> Responses:
        """Send a request answered by several responses (C-FIND, C-MOVE, C-GET) on
        ``context_id``, with its (small) data set; the stream of its responses.
        ``rq.message_id`` comes from :meth:`next_message_id`."""
        self._check_usable()
        msg_id = rq.message_id
        if msg_id in self._streams:
            raise ValueError(f"message {msg_id} is already outstanding")
        stream = Responses(self, msg_id, context_id)
        self._streams[msg_id] = stream
        try:
            async with self._send_lock:
                self._check_usable()
                self.t.queue_message(context_id, rq.encode(), dataset)
                await self.t.drain()
        except BaseException:
            stream.close()
            raise
        return stream

    async def cancel(self, responses: Responses) -> None:
        """C-CANCEL-RQ for the request of ``responses`` (PS3.7 9.3.2.3): the peer
        ends it with a final response (FE00 Cancel), or has already."""
        if self._ended is not None or not self.t.conn.is_established:
            return
        async with self._send_lock:
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
    ) -> CStoreRSP:
        """C-STORE (PS3.7 9.3.1) of a data set given as chunks in ``context``'s syntax.

        Waits for a slot of the operations window, sends the request and the
        data set, and returns the C-STORE-RSP when it arrives.
        """
        self._check_usable()
        assert self._window is not None
        async with self._window:
            self._check_usable()
            msg_id = next(self._ids) & 0xFFFF or next(self._ids)
            rq = CStoreRQ(
                msg_id,
                sop_class_uid,
                sop_instance_uid,
                priority,
                move_originator[0] if move_originator else None,
                move_originator[1] if move_originator else None,
            )
            future = asyncio.get_running_loop().create_future()
            self._waiting[msg_id] = future
            try:
                async with self._send_lock:
                    self._check_usable()
                    self.t.queue_message(context.id, rq.encode())
                    await self.t.send_dataset_chunks(context.id, chunks)
                    await self.t.drain()
            except BaseException:
                self._waiting.pop(msg_id, None)
                if not future.done():
                    future.cancel()
                elif not future.cancelled():
                    future.exception()  # retrieved: the caller gets the send error
                raise
            return await self._await_response(msg_id, future, CStoreRSP)

    async def store(
        self,
        dataset_or_path: Dataset | str | os.PathLike[str],
        *,
        convert: bool = True,
        priority: int = 0,
        move_originator: tuple[str, int] | None = None,
    ) -> CStoreRSP:
        """C-STORE (PS3.4 B.2.1) a pydicom Dataset or a PS3.10 file; the C-STORE-RSP.

        The context is the accepted one for the instance's SOP Class in its own
        transfer syntax (a file is streamed unchanged); else, with ``convert``,
        an accepted uncompressed one, the instance re-encoded.  Raises
        :class:`~dicomstore.NotDicom` (:class:`~dicomstore.CorruptFile` for a
        file cut short) and :class:`~dicomstore.NotSendable` (no accepted
        context fits: propose the SOP Class in ``connect(contexts=...)``).
        """
        from dicomstore.services.storage_scu import as_instance, store_instance

        instance = await asyncio.to_thread(as_instance, dataset_or_path)  # reads the file
        rsp, _ctx, _converted, _nbytes = await store_instance(
            self, instance, convert=convert, priority=priority, move_originator=move_originator
        )
        return rsp

    # -- ending -----------------------------------------------------------

    async def release(self) -> None:
        """A-RELEASE (PS3.8 7.2): ask the peer to release, wait, close."""
        t = self.t
        if t.conn.is_closed or self._ended is not None:
            await self._stop()
            return
        self._released = asyncio.get_running_loop().create_future()
        t.conn.release()
        await t.flush()
        try:
            async with asyncio.timeout(t.timeouts.artim):
                await self._released
        except TimeoutError:
            t.abort_now()
        except AssociationError:
            pass
        await self._stop()

    async def abort(self) -> None:
        """A-ABORT (PS3.8 7.3) and close."""
        self.t.abort_now()
        self._end(AssociationAborted("aborted by us"))
        await self._stop()

    async def _stop(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        await self.t.close()

    async def __aenter__(self) -> ClientAssociation:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.release()
        else:
            await self.abort()


async def associate(
    host: str,
    port: int,
    *,
    called_ae: str = "ANY-SCP",
    calling_ae: str = "DICOMSTORE",
    contexts: Iterable[ContextSpec] = ((uids.VERIFICATION, (uids.IMPLICIT_VR_LE,)),),
    max_pdu: int = DEFAULT_MAX_PDU,
    max_ops: int | None = None,
    roles: Iterable[I.RoleSelection] = (),
    extended: Iterable[I.SOPClassExtended] = (),
    identity: I.UserIdentityRQ | None = None,
    timeouts: Timeouts | None = None,
    ssl: ssl_module.SSLContext | None = None,
) -> ClientAssociation:
    """Open a TCP (or TLS, PS3.15 B.9) connection and request an association (PS3.8 7.1.2)."""
    timeouts = timeouts or Timeouts()
    user = our_user_information(max_pdu)
    if max_ops is not None:
        user.async_ops = (max_ops, 1)
    user.roles = list(roles)
    user.extended = list(extended)
    user.identity_rq = identity
    rq = P.AssociateRQ(called_ae, calling_ae, build_contexts(contexts), user)
    conn = Connection(Role.REQUESTOR, max_pdata=max_pdu)
    conn.request(rq)  # Evt1 -> Sta4
    try:
        async with asyncio.timeout(timeouts.connect):
            _, stream = await asyncio.get_running_loop().create_connection(
                Stream, host, port, ssl=ssl
            )
    except TimeoutError:
        raise AssociationError(f"connecting to {host}:{port} timed out") from None
    assoc = ClientAssociation(Transport(stream, conn, timeouts), rq)
    try:
        await assoc._establish()
    except BaseException:
        await assoc.t.close()
        raise
    return assoc


class AssociateOptions(TypedDict, total=False):
    """The keyword arguments of :func:`associate`, for :class:`connect`."""

    called_ae: str
    calling_ae: str
    contexts: Iterable[ContextSpec]
    max_pdu: int
    max_ops: int | None
    roles: Iterable[I.RoleSelection]
    extended: Iterable[I.SOPClassExtended]
    identity: I.UserIdentityRQ | None
    timeouts: Timeouts | None
    ssl: ssl_module.SSLContext | None


class connect:  # noqa: N801 - used as `async with dicomstore.connect(...)`
    """``async with connect(host, port, ...) as assoc``: associate, then release."""

    def __init__(self, host: str, port: int, **kwargs: Unpack[AssociateOptions]) -> None:
        self._args = (host, port)
        self._kwargs = kwargs
        self._assoc: ClientAssociation | None = None

    def __await__(self) -> Generator[Any, None, ClientAssociation]:
        return associate(*self._args, **self._kwargs).__await__()

    async def __aenter__(self) -> ClientAssociation:
        self._assoc = await associate(*self._args, **self._kwargs)
        return self._assoc

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._assoc is not None
        await self._assoc.__aexit__(exc_type, exc, tb)
