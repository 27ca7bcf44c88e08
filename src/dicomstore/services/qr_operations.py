"""Query/Retrieve operations of one association: a request, its Identifier, its answer
from a task, and C-CANCEL (PS3.7 9.1.2, 9.1.3, 9.1.4, 9.3.2.3).

:class:`QROperations` is what the C-FIND SCP (``query_scp.py``) and the retrieve
SCPs (``retrieve_scp.py``) share. The acceptor hands it the requests it
:meth:`~QROperations.handles`, the Identifier's PDVs and the C-CANCEL-RQs for
an operation in progress; once the Identifier is complete the request is
answered from a task (so that the association keeps reading a C-CANCEL-RQ
meanwhile), or at once with the refusal decided when the command arrived
(0122 wrong context, 0124 not allowed, 0210 its Message ID that of an operation in
progress on the association, of this SCP or another: :attr:`QROperations.in_use`).
A C-CANCEL-RQ cancels the operation it names on its own presentation context.

An Identifier is kept up to :attr:`QROperations.max_data` bytes
(:data:`MAX_IDENTIFIER`, 1 MiB): a peer cannot make us hold an endless one.
Beyond it what was kept is dropped, the rest is read and discarded, and once
its last fragment arrives the request is answered with the service's *Refused:
Out of Resources* (:attr:`QROperations.too_large`) and an Error Comment; the
association goes on.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from dicomstore import uids
from dicomstore.aio.association import Transport
from dicomstore.dimse import CCancelRQ, CommandReceived, DatasetFragment
from dicomstore.dimse import status as st
from dicomstore.ul.fsm import State

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger("dicomstore.server")

#: The most bytes of a request's Identifier kept (a C-FIND, C-MOVE or C-GET): real
#: ones are a few hundred bytes, a C-MOVE of 10000 listed UIDs some 650 KiB.
MAX_IDENTIFIER = 1 << 20


@dataclass
class Operation:
    """One request being received or answered."""

    context_id: int
    rq: Any  # CFindRQ, CMoveRQ, CGetRQ: has message_id, affected_sop_class_uid, response()
    identifier: bytearray = field(default_factory=bytearray)
    refusal: Any = None  # the response decided before the Identifier arrived
    cancel: asyncio.Event = field(default_factory=asyncio.Event)  # set by a C-CANCEL-RQ
    ended: bool = False  # its final response is sent

    @property
    def cancelled(self) -> bool:
        return self.cancel.is_set()


@dataclass(kw_only=True)
class Tally:
    """C-STORE sub-operations of a C-MOVE or C-GET counted by their status's category
    (PS3.4 C.4.2.1.5: Completed, Failed, Warning), and the failed SOP Instance UIDs:
    the SCP's own (``retrieve.Retrieval``) and a C-GET SCU's answers (``Received``)."""

    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)

    def count(self, status: int, sop_instance_uid: str) -> None:
        category = st.category(status)
        if category == "success":
            self.completed += 1
        elif category == "warning":
            self.warning += 1
        else:
            self.failed += 1
            self.failed_uids.append(sop_instance_uid)


def decode_identifier(
    data: bytes | bytearray, transfer_syntax: str, *, check: bool = True
) -> Dataset:
    """The Identifier data set in the context's (uncompressed) transfer syntax;
    ``check``: every value decoded now (a broken one fails here, not later), else
    as it is used (pydicom's way, as ``dcmread``: the SCUs' lazily decoded responses)."""
    from pydicom.filereader import read_dataset  # (pydicom loads when a Q/R request comes)

    ds = read_dataset(
        io.BytesIO(data),
        transfer_syntax == uids.IMPLICIT_VR_LE,
        transfer_syntax != uids.EXPLICIT_VR_BE,
    )
    if check:
        _whole(ds, len(data))
    return ds


def _whole(ds: Dataset, size: int | None) -> None:
    """Decode every value of ``ds`` (of ``size`` bytes, when known); ``ValueError`` for an
    element whose value is shorter than its length says, or a data set that does not
    end where its last element does (pydicom reads what there is: a cut value was
    matched as if it had been sent whole, a cut header was dropped: review46 #4)."""
    from pydicom.dataelem import RawDataElement

    end: int | None = 0
    for tag in list(ds.keys()):
        raw = ds.get_item(tag, keep_deferred=True)
        if not isinstance(raw, RawDataElement):
            end = None  # (a sequence pydicom read as it went: its end is its own)
            continue
        length = raw.length
        if length == _UNDEFINED or not isinstance(raw.value, bytes | None):
            end = None
            continue
        if len(raw.value or b"") != length:
            raise ValueError(f"element {tag} of {length} bytes runs past the end of the data set")
        end = raw.value_tell + length
    if size is not None and end is not None and end != size:
        raise ValueError(f"{size - end} bytes at its end are no element")
    for elem in ds:  # (converts each value; a sequence's items are checked in turn)
        if elem.VR == "SQ":
            for item in elem.value or ():
                _whole(item, None)


_UNDEFINED = 0xFFFFFFFF


#: The most operations one SCP runs at once on an association: the asynchronous
#: operations window granted (PS3.7 D.3.3.3; 1 when none was negotiated), and
#: never more than this (a window of 0, unlimited, included).
MAX_RUNNING = 8


#: The most characters of one key's value a log line shows (the audit keeps all).
LOGGED_VALUE = 200


def keys_line(described: dict[str, str]) -> str:
    """A request's keys for its log line, each value cut at :data:`LOGGED_VALUE`
    characters (review53 #10: 40,000 UIDs made one 349 KB line)."""
    shown = []
    for key, value in described.items():
        if len(value) > LOGGED_VALUE:
            value = f"{value[:LOGGED_VALUE]}... ({len(value)} characters)"
        shown.append(f"{key}={value!r}")
    return " ".join(shown)


class QROperations:
    """Requests of ``request_types`` on the contexts of ``sop_classes``; see the module
    notes. Subclasses give :meth:`start_operation` (the task answering one request)."""

    #: the request messages served (e.g. ``(CFindRQ,)``)
    request_types: ClassVar[tuple[type, ...]] = ()
    #: what the operation is called in logs and refusals (``"C-FIND"``)
    service: ClassVar[str] = ""
    #: the most bytes of a request's data set kept; beyond, the rest is discarded
    #: and the request answered :attr:`too_large`
    max_data: int = MAX_IDENTIFIER
    #: the status of a request whose data set is over ``max_data``: the service's
    #: Refused: Out of Resources (A700 C-FIND, A701 C-MOVE and C-GET: PS3.4
    #: C.4.1.1.4, C.4.2.1.5, C.4.3.1.4), else 0213 (resource limitation, PS3.7 C.5.10)
    too_large: ClassVar[int] = st.RESOURCE_LIMITATION
    #: a complete request beyond the operations window (:meth:`window`): "hold" it
    #: and read nothing more until one running ends (:meth:`room`), "refuse" it
    #: (:attr:`too_large`: its running operations need the association read, as a
    #: C-GET's sub-operation responses do), or "run" it (no window kept)
    beyond_window: ClassVar[str] = "hold"
    #: what the request's data set is called in logs and Error Comments
    data_name: ClassVar[str] = "Identifier"

    def __init__(self, transport: Transport, *, sop_classes: frozenset[str], allowed: bool) -> None:
        self.t = transport
        self.sop_classes = sop_classes
        self.allowed = allowed
        self._collecting: Operation | None = None
        self._running: dict[int, Operation] = {}
        #: a request beyond the window: started once one running ends (see :meth:`room`)
        self._held: Operation | None = None
        self._ended = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        #: whether the association has an operation of this Message ID in progress
        #: elsewhere too (the acceptor's: a C-STORE, another SCP's operation)
        self.in_use: Callable[[int], bool] = self.in_progress

    @property
    def busy(self) -> bool:
        """A request is being received or answered."""
        return self._collecting is not None or bool(self._tasks) or self.held

    @property
    def held(self) -> bool:
        """A complete request waits for the window (:meth:`room`)."""
        return self._held is not None

    def window(self) -> int:
        """How many of its operations may run at once (:data:`MAX_RUNNING`)."""
        negotiated = self.t.negotiated
        granted = negotiated.max_ops_invoked if negotiated is not None else 1
        return MAX_RUNNING if granted == 0 else min(granted, MAX_RUNNING)

    async def room(self) -> None:
        """Start the request held beyond the window once one running ends. The
        association reads nothing meanwhile: a peer invoking more operations than
        the window it was granted (PS3.7 D.3.3.3) waits, its requests are not kept."""
        while self._held is not None:
            if self._outstanding() < self.window():
                op, self._held = self._held, None
                self._launch(op)
                return
            self._ended.clear()
            await self._ended.wait()

    def _outstanding(self) -> int:
        """Its operations whose final response is not sent (the window's count)."""
        return sum(not op.ended for op in self._running.values())

    def in_progress(self, message_id: int) -> bool:
        """One of its operations of ``message_id`` runs or waits for the window, its
        final response not sent (review72 F1: an ID answered was still "in progress" a
        few loop turns, and the peer reusing it at once was answered 0210)."""
        held = self._held is not None and self._held.rq.message_id == message_id
        running = self._running.get(message_id)
        return held or (running is not None and not running.ended)

    def handles(self, event: CommandReceived | DatasetFragment) -> bool:
        """True for what this SCP takes: its requests, their Identifiers, and a
        C-CANCEL-RQ for one of its operations in progress, on that operation's
        presentation context (PS3.7 9.3.2.3, 9.3.3.3, 9.3.4.3)."""
        if isinstance(event, DatasetFragment):
            return self._collecting is not None
        message = event.message
        if isinstance(message, CCancelRQ):
            op = self._running.get(message.message_id_being_responded_to)
            return op is not None and op.context_id == event.context_id
        return isinstance(message, self.request_types)

    def receive(self, event: CommandReceived | DatasetFragment) -> None:
        """Take one event :meth:`handles`; answers go out from a task."""
        if isinstance(event, DatasetFragment):
            op = self._collecting
            assert op is not None
            if op.refusal is None:
                if len(op.identifier) + len(event.data) > self.max_data:
                    self._over_bound(op)
                else:
                    op.identifier += event.data  # a copy: the PDV is a view of the buffer
            if event.is_last:
                self._collecting = None
                self._start(op)
            return
        message = event.message
        if isinstance(message, CCancelRQ):
            self._running[message.message_id_being_responded_to].cancel.set()
            return
        op = self.new_operation(event.context_id, message)
        op.refusal = self._refusal(event.context_id, message)
        if getattr(message, "has_dataset", True):
            self._collecting = op
        else:  # nothing to wait for (an N-ACTION without Action Information)
            self._start(op)

    def _over_bound(self, op: Operation) -> None:
        """The data set of ``op`` outgrew ``max_data``: what was kept is dropped, the
        rest discarded as it arrives, and the request answered :attr:`too_large`."""
        op.identifier = bytearray()
        comment = f"{self.data_name} larger than {self.max_data} bytes"
        log.warning(
            "%s: %s message %d: %s: the rest is discarded, then answered %04X",
            self.t.peer,
            self.service,
            op.rq.message_id,
            comment,
            self.too_large,
        )
        op.refusal = op.rq.response(self.too_large, error_comment=comment)

    def new_operation(self, context_id: int, rq: Any) -> Operation:
        """The record of one request (subclasses add their counts)."""
        return Operation(context_id, rq)

    def sop_class_of(self, rq: Any) -> str:
        """The SOP class a request names (the N-services name a Requested one)."""
        return rq.affected_sop_class_uid

    def _refusal(self, context_id: int, rq: Any) -> Any:
        """The response refusing ``rq`` before its Identifier arrives, or None."""
        assert self.t.negotiated is not None
        abstract = self.t.negotiated.contexts[context_id].abstract_syntax
        if abstract not in self.sop_classes or self.sop_class_of(rq) != abstract:
            why = f"{self.service} of {self.sop_class_of(rq)} on a {uids.uid_name(abstract)}"
            status, comment = st.SOP_CLASS_NOT_SUPPORTED, why + " context"
        elif not self.allowed:
            status, comment = st.NOT_AUTHORIZED, f"{self.service} is not allowed for this caller"
        elif self.in_use(rq.message_id):  # (0210: ours, or another's of the association)
            status = st.DUPLICATE_INVOCATION
            comment = f"message ID {rq.message_id} is still in progress"
        else:
            return None
        log.warning(  # (review81 F5: the operator saw no refusal in the log)
            "%s: %s message %d refused %04X: %s%s",
            self.t.peer,
            self.service,
            rq.message_id,
            status,
            comment,
            " (the policy file grants it no such right)" if status == st.NOT_AUTHORIZED else "",
        )
        return rq.response(status, error_comment=comment)

    def _start(self, op: Operation) -> None:
        if op.refusal is not None:
            self.refused(op)
            return
        if self.beyond_window != "run" and self._outstanding() >= self.window():
            if self.beyond_window == "hold":
                self._held = op  # (the acceptor then awaits room(): one at most)
                return
            comment = f"more than {self.window()} operations at once"
            log.warning(
                "%s: %s message %d refused: %s (the operations window, PS3.7 D.3.3.3)",
                self.t.peer,
                self.service,
                op.rq.message_id,
                comment,
            )
            op.refusal = op.rq.response(self.too_large, error_comment=comment)
            self.refused(op)
            return
        self._launch(op)

    def _launch(self, op: Operation) -> None:
        self._running[op.rq.message_id] = op
        task = asyncio.create_task(self._run(op))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, op: Operation) -> None:
        try:
            await self.answer(op)
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - a decoder's panic is a BaseException
            # the requestor still gets its final response, C000 Unable to process
            # (review38mem D7/D8: a task that died sent none; the SCU waited for its timeout)
            log.exception("%s: %s message %d failed", self.t.peer, self.service, op.rq.message_id)
            if not op.ended:
                comment = f"internal error: {type(exc).__name__}"
                counts = getattr(getattr(op, "retrieval", None), "counts", None)
                if callable(counts):
                    rsp = op.rq.response(st.CANNOT_UNDERSTAND, counts(), error_comment=comment)
                else:
                    rsp = op.rq.response(st.CANNOT_UNDERSTAND, error_comment=comment)
                self.send(op, rsp)
        finally:
            if self._running.get(op.rq.message_id) is op:  # (not a new one of its ID)
                del self._running[op.rq.message_id]
            self._ended.set()
        await self.drain()

    def refused(self, op: Operation) -> None:
        """Send ``op.refusal`` (subclasses also audit it)."""
        self.send(op, op.refusal)

    async def answer(self, op: Operation) -> None:
        """Answer one request whose Identifier is complete (subclasses)."""
        raise NotImplementedError

    async def finished(self) -> None:
        """Until every operation started is answered (the peer asked to release)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks))

    async def close(self) -> None:
        """The association ended: stop every operation still running."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))

    # -- for the answering task ----------------------------------------------------

    def transfer_syntax(self, op: Operation) -> str:
        """The transfer syntax of the request's context (its Identifiers use it)."""
        assert self.t.negotiated is not None
        return self.t.negotiated.contexts[op.context_id].transfer_syntax

    async def decoded(self, op: Operation) -> Dataset:
        """The request's data set, decoded (:func:`decode_identifier`: raises what
        pydicom raises on bad bytes) in a worker thread (a large one took the event
        loop, every association, for seconds: review36a #5); its bytes are not kept
        meanwhile (an operation may run long)."""
        data, op.identifier = op.identifier, bytearray()
        return await asyncio.to_thread(decode_identifier, data, self.transfer_syntax(op))

    @property
    def is_open(self) -> bool:
        """The association can still carry a response (Sta6, or Sta8 while releasing)."""
        return self.t.conn.state in (State.STA6, State.STA8)

    def send(self, op: Operation, rsp: Any, data: bytes | None = None) -> None:
        """Queue one response (with its Identifier) if the association is still open."""
        if rsp.status not in (st.PENDING, st.PENDING_WARNING):
            op.ended = True
            self._ended.set()  # (its place in the window is free: room())
        if self.is_open:
            self.t.queue_message(op.context_id, rsp.encode(), data)

    async def drain(self) -> None:
        """Wait until what is queued is written (a dead peer is no error here)."""
        try:
            await self.t.drain()
        except (ConnectionError, OSError):
            pass
