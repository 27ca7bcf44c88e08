"""The invoking side of DIMSE operations on one association (PS3.7 9.3, PS3.8 E.1).

An :class:`Invoker` sends requests on a :class:`~dicomstore.aio.association.Transport`
with Message IDs of its own and matches each response the association's reader
hands it (:meth:`Invoker.deliver`) by Message ID Being Responded To, so several
requests can be outstanding within the asynchronous operations window (PS3.7
D.3.3.3). One message at a time goes on the wire. The client uses one on the
associations it requests; the acceptor one for the C-STORE sub-operations of a
C-GET, which go out on the association it accepted (PS3.4 C.4.3).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from dicomstore.aio.association import Transport
from dicomstore.dimse import (
    CEchoRQ,
    CEchoRSP,
    CStoreRQ,
    CStoreRSP,
    NActionRSP,
    NEventReportRSP,
    UnknownCommand,
)
from dicomstore.errors import AssociationAborted, AssociationError, DimseTimeout
from dicomstore.ul.negotiation import AcceptedContext

log = logging.getLogger("dicomstore.client")

_RSP = TypeVar("_RSP", CEchoRSP, CStoreRSP, NActionRSP, NEventReportRSP)


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

    def open(self, window: int) -> None:
        """The association is established with this window (0: unlimited)."""
        self.window = asyncio.Semaphore(window or 1024)

    def next_id(self) -> int:
        """A Message ID (PS3.7 9.3.1.1: unique among those outstanding), 1 to 65535."""
        while True:
            msg_id = next(self._ids) & 0xFFFF
            if msg_id and msg_id not in self.waiting:
                return msg_id

    def check_usable(self) -> None:
        if self.ended is not None:
            raise self.ended
        if not self.t.conn.is_established:
            raise AssociationError("the association is not established")

    def deliver(self, rsp: Any) -> bool:
        """Hand a response to the request it answers; False if none awaits it."""
        msg_id = getattr(rsp, "message_id_being_responded_to", None)
        if msg_id is None and isinstance(rsp, UnknownCommand) and rsp.is_response:
            msg_id = rsp.message_id  # a response type we do not model (e.g. N-ACTION-RSP)
        future = self.waiting.pop(msg_id, None) if msg_id is not None else None
        if future is None:
            return False
        if not future.done():
            future.set_result(rsp)
        return True

    def end(self, exc: BaseException) -> None:
        """The association is over: every request still waiting fails with ``exc``."""
        if self.ended is None:
            self.ended = exc
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
        return await self.invoke(context_id, CEchoRQ, CEchoRSP)

    async def invoke(
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
                    self.t.queue_message(context.id, rq.encode())
                    await self.t.send_dataset_chunks(context.id, chunks)
                    await self.t.drain()
            except BaseException:
                self._forget(msg_id, future)
                raise
            return await self._response(msg_id, future, CStoreRSP)
