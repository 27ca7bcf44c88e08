"""C-FIND SCP: Patient Root and Study Root Query/Retrieve - FIND (PS3.4 C.4.1, PS3.7 9.1.2).

One :class:`QuerySCP` per association. The acceptor hands it every C-FIND-RQ,
the Identifier's PDVs and every C-CANCEL-RQ (:meth:`QuerySCP.handles`). Once
the Identifier is complete the query (``query_identifier.py``) runs in a task
against the archive index, through the engine QIDO-RS uses
(:mod:`dicomstore.archive.query`, PS3.4 C.2.2.2), so that the association keeps
reading meanwhile: one pending response (FF00, or FF01 when a key could not be
matched) per match, streamed as rows come from the cursor, then 0000; a
C-CANCEL-RQ for it stops the matches and the final status is FE00 (PS3.4
C.4.1.3.1). Refusals: 0124 (the policy does not grant ``find``), A900 and C000
(the Identifier, see ``query_identifier.py``), 0210 (its Message ID is still in
progress), 0122 (a C-FIND on a context that is not a FIND model). Each C-FIND
ends with an audit record in the spirit of PS3.15 A.5.3.10 *Query*.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sqlite3
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

from dicomstore import uids
from dicomstore.aio.association import Transport
from dicomstore.archive import query as q
from dicomstore.archive.reader import ArchiveReader
from dicomstore.dimse import CCancelRQ, CFindRQ, CFindRSP, CommandReceived, DatasetFragment
from dicomstore.dimse import status as st
from dicomstore.services.query_identifier import (
    MODEL_LEVELS,
    FindFailure,
    FindQuery,
    decode_identifier,
    encode_elements,
    parse_identifier,
    response_elements,
)
from dicomstore.ul.fsm import State

log = logging.getLogger("dicomstore.server")

#: The SOP classes this SCP serves (ServerConfig.policy offers them).
FIND_SOP_CLASSES: tuple[str, ...] = tuple(MODEL_LEVELS)
#: Rows fetched from the index per trip to the worker thread.
BATCH = 256

QUERY_EVENT = ("Query", "110112")  # PS3.15 A.5.3.10


@dataclass
class _Find:
    context_id: int
    rq: CFindRQ
    identifier: bytearray = field(default_factory=bytearray)
    refusal: CFindRSP | None = None
    cancelled: bool = False
    matches: int = 0


class QuerySCP:
    """The C-FIND SCP of one association (see the module notes)."""

    def __init__(
        self,
        reader: ArchiveReader | None,
        transport: Transport,
        *,
        ae_title: str,
        may_find: bool = True,
        audit: Callable[[dict[str, Any]], None] | None = None,
        who: dict[str, Any] | None = None,
    ) -> None:
        self.reader = reader
        self.t = transport
        self.ae_title = ae_title
        self.may_find = may_find
        self.audit = audit
        #: calling/called AE, address, user: for the log and the audit record
        self.who = who or {}
        self._collecting: _Find | None = None
        self._running: dict[int, _Find] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def busy(self) -> bool:
        """A C-FIND is being received or answered."""
        return self._collecting is not None or bool(self._tasks)

    def handles(self, event: CommandReceived | DatasetFragment) -> bool:
        """True for what this SCP takes: C-FIND-RQ, its Identifier, C-CANCEL-RQ."""
        if isinstance(event, DatasetFragment):
            return self._collecting is not None
        return isinstance(event.message, CFindRQ | CCancelRQ)

    def receive(self, event: CommandReceived | DatasetFragment) -> None:
        """Take one event :meth:`handles`; answers go out from a task."""
        if isinstance(event, DatasetFragment):
            find = self._collecting
            assert find is not None
            find.identifier += event.data  # a copy: the PDV is a view of the buffer
            if event.is_last:
                self._collecting = None
                self._start(find)
            return
        message = event.message
        if isinstance(message, CCancelRQ):
            running = self._running.get(message.message_id_being_responded_to)
            if running is None:
                log.info(
                    "%s: C-CANCEL-RQ for message %d, not in progress: ignored",
                    self.t.peer,
                    message.message_id_being_responded_to,
                )
            else:
                running.cancelled = True
            return
        assert isinstance(message, CFindRQ)
        find = _Find(event.context_id, message)
        find.refusal = self._refusal(event.context_id, message)
        self._collecting = find

    def _refusal(self, context_id: int, rq: CFindRQ) -> CFindRSP | None:
        assert self.t.negotiated is not None
        abstract = self.t.negotiated.contexts[context_id].abstract_syntax
        if (
            self.reader is None
            or abstract not in MODEL_LEVELS
            or rq.affected_sop_class_uid != abstract
        ):
            why = f"C-FIND of {rq.affected_sop_class_uid} on a {uids.uid_name(abstract)} context"
            return rq.response(st.SOP_CLASS_NOT_SUPPORTED, why[:64])
        if not self.may_find:
            return rq.response(st.NOT_AUTHORIZED, "C-FIND is not allowed for this caller")
        if rq.message_id in self._running:
            return rq.response(
                st.DUPLICATE_INVOCATION, f"message ID {rq.message_id} is still in progress"
            )
        return None

    def _start(self, find: _Find) -> None:
        if find.refusal is not None:
            self._final(find, find.refusal, None)
            return
        self._running[find.rq.message_id] = find
        task = asyncio.create_task(self._answer(find))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """The association ended: stop every C-FIND still running."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))

    def _transfer_syntax(self, context_id: int) -> str:
        assert self.t.negotiated is not None
        return self.t.negotiated.contexts[context_id].transfer_syntax

    async def _answer(self, find: _Find) -> None:
        rq = find.rq
        query: FindQuery | None = None
        try:
            ts = self._transfer_syntax(find.context_id)
            try:
                identifier = decode_identifier(bytes(find.identifier), ts)
            except Exception as exc:  # noqa: BLE001 - pydicom raises anything on bad bytes
                raise FindFailure(st.CANNOT_UNDERSTAND, f"unreadable Identifier: {exc}") from None
            query = parse_identifier(identifier, rq.affected_sop_class_uid)
            log.info(
                "%s: C-FIND %s %s",
                self.t.peer,
                query.level,
                " ".join(f"{k}={v!r}" for k, v in query.described().items()) or "(all)",
            )
            status = await self._matches(find, query, ts)
            self._final(find, rq.response(status), query)
        except FindFailure as failure:
            log.warning("%s: C-FIND answered %04X: %s", self.t.peer, failure.status, failure)
            rsp = rq.response(failure.status, failure.comment, failure.offending)
            self._final(find, rsp, query)
        except (OSError, sqlite3.Error) as exc:
            log.error("%s: C-FIND failed: %s", self.t.peer, exc)
            self._final(find, rq.response(st.CANNOT_UNDERSTAND, str(exc)[:64]), query)
        finally:
            self._running.pop(rq.message_id, None)
        await self._drain()

    async def _matches(self, find: _Find, query: FindQuery, ts: str) -> int:
        """Send one pending response per match; the final status."""
        rsp = find.rq.response(query.pending_status, has_dataset=True).encode()
        assert self.reader is not None  # else refused (0122)
        with closing(self.reader.connect()) as db:
            rows = q.iter_search(db, query.index_level, query.filters, computed=query.row_keys)
            while True:
                batch = await asyncio.to_thread(lambda: list(itertools.islice(rows, BATCH)))
                for row in batch:
                    if find.cancelled:
                        return st.CANCEL
                    if not self._open:
                        return st.CANCEL
                    data = encode_elements(response_elements(query, row, self.ae_title), ts)
                    self.t.queue_message(find.context_id, rsp, data)
                    find.matches += 1
                    await self._drain()
                    await asyncio.sleep(0)  # let the association read a C-CANCEL-RQ
                if len(batch) < BATCH:
                    return st.CANCEL if find.cancelled else st.SUCCESS

    @property
    def _open(self) -> bool:
        return self.t.conn.state in (State.STA6, State.STA8)

    async def _drain(self) -> None:
        try:
            await self.t.drain()
        except (ConnectionError, OSError):
            pass

    def _final(self, find: _Find, rsp: CFindRSP, query: FindQuery | None) -> None:
        if self._open:
            self.t.queue_message(find.context_id, rsp.encode())
        if rsp.status == st.CANCEL:
            log.info("%s: C-FIND cancelled after %d matches", self.t.peer, find.matches)
        self._audit(find, rsp, query)

    def _audit(self, find: _Find, rsp: CFindRSP, query: FindQuery | None) -> None:
        if self.audit is None:
            return
        self.audit(
            {
                "event": "query",
                "audit_event": QUERY_EVENT[0],
                "event_id": QUERY_EVENT[1],
                "service": "C-FIND",
                **self.who,
                "sop_class_uid": find.rq.affected_sop_class_uid,
                "level": query.level if query else None,
                "query": query.described() if query else None,
                "status": f"{rsp.status:04X}",
                "matches": find.matches,
            }
        )
