"""The Storage Commitment Push Model SCP of one association: the N-ACTION
(PS3.4 J.3.2; SOP Class 1.2.840.10008.1.20.1).

A Storage Commitment SCU asks the archive, by an N-ACTION-RQ (Action Type ID 1)
on the well-known SOP Instance 1.2.840.10008.1.20.1.1, to commit to holding the
instances its Action Information lists (Transaction UID, Referenced SOP
Sequence; Table J.3-1, read by ``commitment_info.py``). :class:`CommitmentSCP`
(one per association, its requests and data sets taken as the Q/R SCPs take
theirs, ``qr_operations.py``) checks the request, then the server's
``CommitmentService`` (``commitment_reports.py``) records it durably before
the N-ACTION-RSP 0000 goes out, and reports it later.

N-ACTION refusals, each with an Error Comment: 0122 not a Storage Commitment
context, another Requested SOP Class, or no archive; 0112 another
Requested SOP Instance, 0123 an Action Type ID other than 1, 0124 the policy
does not grant ``commit``, 0115 Action Information missing, unreadable or a
Transaction UID still pending, 0120 a required attribute missing, 0121 one
empty, 0106 a UID that is no UID, 0213 more than ``max_references``
references or ``max_pending`` requests, 0110 the journal cannot be written.
Each request ends in an audit ``commitment`` record (and its report in a
second one).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from dicomstore import uids
from dicomstore.aio.association import Transport
from dicomstore.aio.invoker import Invoker
from dicomstore.archive.commitment_journal import CommitmentRequest
from dicomstore.dimse import NActionRQ
from dicomstore.dimse import status as st
from dicomstore.services import qr_classes
from dicomstore.services.commitment_info import (
    REQUEST_COMMITMENT,
    SOP_INSTANCE,
    Refused,
    read_action_information,
)
from dicomstore.services.commitment_reports import Channel, CommitmentService
from dicomstore.services.qr_operations import Operation, QROperations

log = logging.getLogger("dicomstore.server")

#: Action Information bytes allowed per reference (two UIDs in an item, and room).
BYTES_PER_REFERENCE = 256


class CommitmentSCP(QROperations):
    """The Storage Commitment SCP of one association (see the module notes)."""

    request_types = (NActionRQ,)
    service = "N-ACTION"
    beyond_window = "run"  # (requests are answered at once; reports go out later)
    data_name = "Action Information"  # over max_data: 0213 (PS3.7 C.5.10)

    def __init__(
        self,
        service: CommitmentService | None,
        transport: Transport,
        invoker: Invoker,
        *,
        may_commit: bool = True,
        audit: Callable[[dict[str, Any]], None] | None = None,
        who: dict[str, Any] | None = None,
    ) -> None:
        classes = (
            frozenset(qr_classes.COMMITMENT_SOP_CLASSES) if service is not None else frozenset()
        )
        super().__init__(transport, sop_classes=classes, allowed=may_commit)
        self.commitments = service
        self.invoker = invoker
        self.audit = audit
        self.who = who or {}
        if service is not None:
            self.max_data = service.max_references * BYTES_PER_REFERENCE + 4096

    def sop_class_of(self, rq: Any) -> str:
        return rq.requested_sop_class_uid

    def _refusal(self, context_id: int, rq: Any) -> Any:
        refusal = super()._refusal(context_id, rq)
        if refusal is not None:
            return refusal
        if rq.requested_sop_instance_uid != SOP_INSTANCE:
            return rq.response(st.NO_SUCH_SOP_INSTANCE, f"not {SOP_INSTANCE}")
        if rq.action_type_id != REQUEST_COMMITMENT:
            return rq.response(st.NO_SUCH_ACTION_TYPE, f"no action type {rq.action_type_id}")
        if not rq.has_dataset:
            return rq.response(st.INVALID_ARGUMENT_VALUE, "no Action Information")
        return None

    def refused(self, op: Operation) -> None:
        status, comment = op.refusal.status, op.refusal.error_comment
        why = comment or st.describe(status)
        log.warning("%s: N-ACTION answered %04X: %s", self.t.peer, status, why)
        self.send(op, op.refusal)  # (review49 #9: these alone were not logged)
        self._audit(op, status, comment)

    async def answer(self, op: Operation) -> None:
        rq: NActionRQ = op.rq
        assert self.commitments is not None  # else refused (0122)
        try:
            data, op.identifier = op.identifier, bytearray()  # (not kept meanwhile)
            syntax = self.transfer_syntax(op)
            transaction, refs = await asyncio.to_thread(  # (not behind a verification)
                read_action_information,
                data,
                syntax == uids.IMPLICIT_VR_LE,
                syntax != uids.EXPLICIT_VR_BE,
                self.commitments.max_references,
            )
            del data
            caller = str(self.who.get("calling_ae") or "")
            request = CommitmentRequest(transaction, refs, caller, self.who.get("address") or "")
            # the journal write must finish, and the report follow, even if the
            # association ends meanwhile (this task is then cancelled)
            await asyncio.shield(self._accept(op, request))
        except Refused as refused:
            log.warning("%s: N-ACTION answered %04X: %s", self.t.peer, refused.status, refused)
            self.send(op, rq.response(refused.status, refused.comment))
            self._audit(op, refused.status, refused.comment)
            return

    async def _accept(self, op: Operation, request: CommitmentRequest) -> None:
        assert self.commitments is not None
        await self.commitments.accept(request)
        self.send(op, op.rq.response(st.SUCCESS))
        log.info(
            "%s: storage commitment %s of %d instances accepted",
            self.t.peer,
            request.transaction_uid,
            len(request.references),
        )
        self._audit(op, st.SUCCESS, None, request)
        self.commitments.report(request, Channel(self.t, self.invoker, op.context_id))

    def _audit(
        self,
        op: Operation,
        status: int,
        comment: str | None,
        request: CommitmentRequest | None = None,
    ) -> None:
        if self.audit is None:
            return
        self.audit(
            {
                "event": "commitment",
                "phase": "request",
                **self.who,
                "transaction_uid": request.transaction_uid if request else None,
                "references": len(request.references) if request else None,
                "status": f"{status:04X}",
                "error_comment": comment,
            }
        )
