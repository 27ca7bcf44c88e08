"""The performing side of DIMSE operations on an association we invoke on (PS3.7 9.3, 10.3).

On an association we requested the peer may invoke operations too: a Storage
Commitment SCP sends its N-EVENT-REPORT on the association that carried the
N-ACTION (PS3.4 J.3.3). A :class:`Performer` takes such a request from the
association's reader, collects its data set (bounded: beyond ``max_data`` bytes
the rest is discarded and the request answered 0213, resource limitation), and
answers it with what its ``handler`` returns, from a task, so that the reader
keeps reading meanwhile. Without a handler, or when the handler returns None,
the request is answered 0211 (unrecognized operation, PS3.7 C.5.6).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from dicomstore.aio.association import Transport
from dicomstore.dimse import CommandReceived, DatasetFragment, InvalidRequest
from dicomstore.dimse import status as st
from dicomstore.ul.fsm import State

log = logging.getLogger("dicomstore.client")

#: Answers one request: (context ID, request, its data set bytes) -> the response, or None.
RequestHandler = Callable[[int, Any, bytes], Awaitable[Any]]

#: Largest data set of a request we keep (an N-EVENT-REPORT of 65535 references
#: takes about 10 MiB).
MAX_REQUEST_DATA = 64 * 1024 * 1024


def is_request(message: Any) -> bool:
    """True for a request (a response has a Message ID Being Responded To)."""
    return not (
        hasattr(message, "message_id_being_responded_to") or getattr(message, "is_response", False)
    )


class Performer:
    """Requests in, their responses out (see the module notes)."""

    def __init__(
        self,
        transport: Transport,
        handler: RequestHandler | None = None,
        *,
        max_data: int = MAX_REQUEST_DATA,
    ) -> None:
        self.t = transport
        self.handler = handler
        self.max_data = max_data
        self._collecting: tuple[int, Any, bytearray] | None = None
        self._too_large = False
        self._tasks: set[asyncio.Task[None]] = set()

    def handles(self, event: CommandReceived | DatasetFragment) -> bool:
        """True for a request, and for the data set of the request being collected."""
        if isinstance(event, DatasetFragment):
            return self._collecting is not None
        return is_request(event.message)

    def receive(self, event: CommandReceived | DatasetFragment) -> None:
        """Take one event :meth:`handles`; the answer goes out from a task."""
        if isinstance(event, CommandReceived):
            message = event.message
            self._collecting, self._too_large = (event.context_id, message, bytearray()), False
            if getattr(message, "has_dataset", False):
                return
        else:
            assert self._collecting is not None
            data = self._collecting[2]
            if len(data) + len(event.data) > self.max_data:
                self._too_large = True
            elif not self._too_large:
                data += event.data  # a copy: the PDV is a view of the receive buffer
            if not event.is_last:
                return
        context_id, message, data = self._collecting
        self._collecting = None
        task = asyncio.create_task(self._answer(context_id, message, bytes(data), self._too_large))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, context_id: int, message: Any, data: bytes, too_large: bool) -> None:
        name = type(message).__name__
        rsp = None
        if too_large:
            comment = f"data set larger than {self.max_data} bytes"
            rsp = message.response(st.RESOURCE_LIMITATION, comment)
        elif self.handler is not None:
            try:
                rsp = await self.handler(context_id, message, data)
            except Exception:  # noqa: BLE001 - the peer gets an answer all the same
                log.exception("%s: answering %s failed", self.t.peer, name)
                rsp = message.response(st.PROCESSING_FAILURE, "internal error")
        if rsp is None and isinstance(message, InvalidRequest):
            rsp = message.response()  # 0212, naming the field
        elif rsp is None:
            rsp = message.response(st.UNRECOGNIZED_OPERATION, f"{name} is not served here")
        if rsp.status != st.SUCCESS:
            why = rsp.error_comment
            log.warning("%s: answering %s %04X: %s", self.t.peer, name, rsp.status, why)
        if self.t.conn.state not in (State.STA6, State.STA8):  # DT-1 or AR-7 (PS3.8 Table 9-10)
            return
        self.t.queue_message(context_id, rsp.encode())
        try:
            await self.t.drain()
        except (ConnectionError, OSError):
            pass

    async def settle(self) -> None:
        """Wait until every answer being prepared has gone out (before a release)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks))

    async def close(self) -> None:
        """The association ended: answers still being prepared go nowhere."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
