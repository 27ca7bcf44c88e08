"""C-MOVE SCP: Patient Root and Study Root Query/Retrieve - MOVE (PS3.4 C.4.2, PS3.7 9.1.4).

One :class:`RetrieveSCP` per association (requests, Identifiers and C-CANCEL as
the C-FIND SCP takes them: ``qr_operations.py``). For each C-MOVE-RQ, in a task:

1. the Move Destination (0000,0600) is looked up among the configured
   destinations (``destinations.py``): unknown is A801; one the caller may not
   move to (the policy's ``move_to``) is 0124;
2. the Identifier is parsed and the instances selected (``retrieve.py``):
   A900 / C000 / A701 with an Error Comment;
3. the :class:`~dicomstore.services.retrieve.Retrieval` runs the C-STORE
   sub-operations through the sender (``move_sender.py``), a pending response
   (FF00, with the counts) after each, a C-CANCEL-RQ ending them (FE00);
4. the final response: 0000, B000 or A702 with the counts and, when any
   failed, the Failed SOP Instance UID List; then an audit record in the
   spirit of PS3.15 A.5.3.7 *DICOM Instances Transferred*.

Refusals before the Identifier is read: 0122 (not a MOVE model context), 0124
(the policy does not grant ``move``), 0210 (Message ID in progress); A701
for an Identifier over ``MAX_IDENTIFIER`` bytes (not kept, ``qr_operations.py``,
PS3.4 C.4.2.1.5 *Unable to calculate number of matches*). The C-GET SCP plugs
its own sender (the requesting association) into :meth:`RetrieveSCP.sender_for`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dicomstore.aio.association import Timeouts, Transport
from dicomstore.archive.engine import DatabaseOrOSError, unavailable
from dicomstore.archive.reader import ArchiveReader
from dicomstore.dimse import CMoveRQ, RetrieveRQ, RetrieveRSP, SubOperations
from dicomstore.dimse import status as st
from dicomstore.dimse.commands import MOVE_DESTINATION
from dicomstore.inflation import DEFAULT_MAX_INFLATED
from dicomstore.services import qr_classes
from dicomstore.services.destinations import Destination
from dicomstore.services.move_sender import MoveSender
from dicomstore.services.qr_operations import Operation, QROperations, keys_line
from dicomstore.services.query_identifier import FindFailure
from dicomstore.services.retrieve import (
    Retrieval,
    RetrieveQuery,
    SubOperationSender,
    parse_retrieve_identifier,
    select_instances,
)

log = logging.getLogger("dicomstore.server")

TRANSFER_EVENT = ("DICOM Instances Transferred", "110104")  # PS3.15 A.5.3.7


@dataclass
class _Retrieve(Operation):
    query: RetrieveQuery | None = None
    retrieval: Retrieval | None = None
    destination: str | None = None


class RetrieveSCP(QROperations):
    """The C-MOVE SCP of one association (see the module notes)."""

    request_types = (CMoveRQ,)
    service = "C-MOVE"
    #: an Identifier too large to keep (PS3.4 C.4.2.1.5, C.4.3.1.4: Refused: Out of
    #: Resources - Unable to calculate number of matches)
    too_large = st.UNABLE_TO_CALCULATE_MATCHES

    def __init__(
        self,
        reader: ArchiveReader | None,
        transport: Transport,
        *,
        ae_title: str,
        destinations: Mapping[str, Destination],
        may_move: bool = True,
        move_to: frozenset[str] | None = None,
        timeouts: Timeouts | None = None,
        audit: Callable[[dict[str, Any]], None] | None = None,
        who: dict[str, Any] | None = None,
        inflated_limit: int = DEFAULT_MAX_INFLATED,
    ) -> None:
        classes = frozenset(qr_classes.MOVE_SOP_CLASSES) if reader is not None else frozenset()
        super().__init__(transport, sop_classes=classes, allowed=may_move)
        self.reader = reader
        self.ae_title = ae_title
        self.destinations = destinations
        #: the destinations this caller may move to (None: every configured one)
        self.move_to = move_to
        self.timeouts = timeouts
        self.audit = audit
        #: calling/called AE, address, user: for the log and the audit record
        self.who = who or {}
        #: what a deflated data set converted for the peer may inflate to (the server's
        #: ``StoreLimits.inflated_limit``, as for what it stores)
        self.inflated_limit = inflated_limit

    def new_operation(self, context_id: int, rq: Any) -> _Retrieve:
        return _Retrieve(context_id, rq)

    def levels(self, rq: RetrieveRQ) -> tuple[str, ...]:
        """The levels of the request's information model."""
        return qr_classes.MOVE_MODEL_LEVELS[rq.affected_sop_class_uid]

    def sender_for(self, op: _Retrieve) -> SubOperationSender:
        """The sender of the request's sub-operations, or :class:`FindFailure`
        (A801 unknown destination, 0124 a destination the caller may not use)."""
        rq = op.rq
        assert isinstance(rq, CMoveRQ)
        name = rq.move_destination
        op.destination = name
        if self.move_to is not None and name not in self.move_to:  # (first: a caller
            raise FindFailure(  # limited to some learns nothing of the others: review52 L7)
                st.NOT_AUTHORIZED, f"moving to {name!r} is not allowed for this caller"
            )
        destination = self.destinations.get(name)
        if destination is None:
            raise FindFailure(
                st.MOVE_DESTINATION_UNKNOWN, f"Move Destination {name!r} unknown", MOVE_DESTINATION
            )
        return MoveSender(
            destination,
            calling_ae=self.ae_title,
            originator=(str(self.who.get("calling_ae") or ""), rq.message_id),
            priority=rq.priority,
            timeouts=self.timeouts,
            inflated_limit=self.inflated_limit,
        )

    def refused(self, op: Operation) -> None:
        assert isinstance(op, _Retrieve)
        self._final(op, op.refusal)

    async def answer(self, op: Operation) -> None:
        assert isinstance(op, _Retrieve)
        rq: RetrieveRQ = op.rq
        ts = self.transfer_syntax(op)
        try:
            sender = self.sender_for(op)
            try:
                identifier = await self.decoded(op)
            except Exception as exc:  # noqa: BLE001 - pydicom raises anything on bad bytes
                raise FindFailure(st.CANNOT_UNDERSTAND, f"unreadable Identifier: {exc}") from None
            op.query = await asyncio.to_thread(
                parse_retrieve_identifier, identifier, self.levels(rq)
            )
            assert self.reader is not None  # else refused (0122)
            selected = await asyncio.to_thread(select_instances, self.reader, op.query)
        except FindFailure as failure:
            log.warning(
                "%s: %s answered %04X: %s", self.t.peer, self.service, failure.status, failure
            )
            rsp = rq.response(
                failure.status, error_comment=failure.comment, offending_element=failure.offending
            )
            self._final(op, rsp)
            return
        except DatabaseOrOSError as exc:
            log.error("%s: %s failed: %s", self.t.peer, self.service, exc)
            rsp = rq.response(st.UNABLE_TO_CALCULATE_MATCHES, error_comment=unavailable(exc))
            self._final(op, rsp)
            return
        log.info(
            "%s: %s %s %s to %s: %d instances",
            self.t.peer,
            self.service,
            op.query.level,
            keys_line(op.query.described()),
            op.destination or "the caller",
            len(selected),
        )
        retrieval = op.retrieval = Retrieval(selected)

        async def pending(counts: SubOperations) -> None:
            self.send(op, rq.response(st.PENDING, counts))
            await self.drain()

        try:
            status = await retrieval.run(
                sender,
                is_cancelled=op.cancel.is_set,
                pending=pending,
                is_gone=lambda: not self.is_open,
                cancel=op.cancel,
            )
        except asyncio.CancelledError:  # (the association ended: no one to answer;
            # every one sent already, the status they came to: review36c L6)
            done = retrieval.remaining == 0
            self._close_out(op, f"{retrieval.status:04X}" if done else "aborted")
            raise
        if not self.is_open and not op.cancelled:  # (the association ended, not a cancel:
            # no one to answer; review81 F6: told and audited FE00 "cancelled")
            why = retrieval.ended or "the association ended"
            log.warning("%s: %s stopped: %s", self.t.peer, self.service, why)
            self._close_out(op, "aborted")
            return
        data, listed = retrieval.failed_identifier(ts)
        comment = retrieval.ended or None
        if listed < len(retrieval.failed_uids):
            log.warning(
                "%s: %s: %d failed SOP Instance UIDs, the first %d listed (a UI value's"
                " limit in %s; the audit record has them all)",
                self.t.peer,
                self.service,
                len(retrieval.failed_uids),
                listed,
                ts,
            )
            comment = comment or f"{listed} of {len(retrieval.failed_uids)} failed UIDs listed"
        rsp = rq.response(
            status, retrieval.counts(), error_comment=comment, has_dataset=data is not None
        )
        self._final(op, rsp, data)

    def _final(self, op: _Retrieve, rsp: RetrieveRSP, data: bytes | None = None) -> None:
        self.send(op, rsp, data)
        self._close_out(op, f"{rsp.status:04X}")

    def _close_out(self, op: _Retrieve, status: str) -> None:
        """The operation's last log line and its audit record (a retrieval cut short by
        its association's end too, status ``aborted``: review36a #4, none was written
        though instances had been sent)."""
        r = op.retrieval
        if r is not None:
            log.info(
                "%s: %s ended %s: %d completed, %d failed, %d warning%s",
                self.t.peer,
                self.service,
                status,
                r.completed,
                r.failed,
                r.warning,
                f", {r.remaining} not sent"
                + (" (cancelled)" if r.cancelled else " (the association ended)")
                if r.cancelled or status == "aborted"
                else "",
            )
        self._audit(op, status)

    def _audit(self, op: _Retrieve, status: str) -> None:
        if self.audit is None:
            return
        r = op.retrieval
        self.audit(
            {
                "event": "retrieve",
                "audit_event": TRANSFER_EVENT[0],
                "event_id": TRANSFER_EVENT[1],
                "service": self.service,
                **self.who,
                "destination": op.destination,
                "sop_class_uid": op.rq.affected_sop_class_uid,
                "level": op.query.level if op.query else None,
                "query": op.query.described() if op.query else None,
                "status": status,
                "instances": len(r.selected) if r else 0,
                "completed": r.completed if r else 0,
                "failed": r.failed if r else 0,
                "warning": r.warning if r else 0,
                "failed_sop_instance_uids": list(r.failed_uids) if r else [],
                "study_instance_uids": sorted({s.study_instance_uid for s in r.selected})
                if r
                else [],
            }
        )
