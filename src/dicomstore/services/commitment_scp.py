"""Storage Commitment Push Model SCP (PS3.4 J.3; SOP Class 1.2.840.10008.1.20.1).

A Storage Commitment SCU asks the archive, by an N-ACTION-RQ (Action Type ID 1)
on the well-known SOP Instance 1.2.840.10008.1.20.1.1, to commit to holding the
instances its Action Information lists (Transaction UID, Referenced SOP
Sequence; PS3.4 J.3.2, Table J.3-1). :class:`CommitmentSCP` (one per
association, its requests and data sets taken as the Q/R SCPs take theirs,
``qr_operations.py``) checks the request, then :class:`CommitmentService` (one
per server) records it durably in the archive's journal
(``archive/commitment.py``) *before* the N-ACTION-RSP 0000 goes out, so that
no accepted request is forgotten.

Then, from a task of the server (not of the association): the referenced
instances are verified in a worker thread (``archive.commitment.verify``:
held in the index under that SOP class, file present with the indexed size and
data set digest) and the result is reported by an N-EVENT-REPORT-RQ (PS3.4
J.3.3; Event Type ID 1 when all are committed, 2 when some failed): the
Transaction UID, the Referenced SOP Sequence of those committed (with our
Retrieve AE Title) and the Failed SOP Sequence with each Failure Reason
(0110 processing failure, 0112 no such object instance, 0119 class/instance
conflict). It goes on the requesting association while that is still open,
else on a new association to the address configured for the requester's AE
title (``--commitment-scu AET=HOST:PORT``, the policy file's
``[commitment_scus]``), on which we propose the SOP class with role selection
SCU 0 / SCP 1 (we are the SCP invoking N-EVENT-REPORT as association
requestor, PS3.4 J.3.3, PS3.7 D.3.3.4). Only the N-EVENT-REPORT-RSP removes
the request from the journal (0211 or 0213 on the requesting association: a
new association is tried; on a new association: again later); until then it is
retried with backoff, and at the next start.

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
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomstore import uids
from dicomstore.aio.association import Timeouts, Transport
from dicomstore.aio.client import associate
from dicomstore.aio.invoker import Invoker
from dicomstore.archive.commitment import (
    CommitmentJournal,
    CommitmentRequest,
    DuplicateTransaction,
    Reference,
    Verdict,
    verify,
)
from dicomstore.archive.reader import ArchiveReader
from dicomstore.dimse import NActionRQ, NEventReportRQ, NEventReportRSP
from dicomstore.dimse import status as st
from dicomstore.errors import AssociationError, DicomstoreError
from dicomstore.services.conversion import encode_dataset
from dicomstore.services.destinations import Destination
from dicomstore.services.qr_operations import Operation, QROperations, decode_identifier
from dicomstore.ul.fsm import State
from dicomstore.ul.items import RoleSelection

log = logging.getLogger("dicomstore.server")

SOP_CLASS = uids.STORAGE_COMMITMENT_PUSH
SOP_INSTANCE = uids.STORAGE_COMMITMENT_PUSH_INSTANCE
#: Action Type ID of "Request Storage Commitment" (PS3.4 J.3.2.1)
REQUEST_COMMITMENT = 1
#: Event Type IDs (PS3.4 J.3.3.1): all committed / failures exist
ALL_COMMITTED, FAILURES_EXIST = 1, 2
#: The SOP classes this SCP serves (ServerConfig.policy offers them).
COMMITMENT_SOP_CLASSES: tuple[str, ...] = (SOP_CLASS,)

#: N-EVENT-REPORT-RSP statuses after which the report is sent again (elsewhere,
#: or later): the requester did not take it (0211) or could not now (0213).
NOT_TAKEN = frozenset({st.UNRECOGNIZED_OPERATION, st.RESOURCE_LIMITATION})
#: Most references in one request (each is a file to read and hash).
MAX_REFERENCES = 65535
#: Most requests accepted and not yet reported.
MAX_PENDING = 1000
#: Action Information bytes allowed per reference (two UIDs in an item, and room).
BYTES_PER_REFERENCE = 256

TRANSACTION_UID = 0x00081195
REFERENCED_SOP_SEQUENCE = 0x00081199
REFERENCED_SOP_CLASS_UID = 0x00081150
REFERENCED_SOP_INSTANCE_UID = 0x00081155


class Refused(Exception):
    """An N-ACTION answered with a failure ``status`` and an Error Comment."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment[:64]


# -- Action Information in, Event Information out ----------------------------------


def _uid_value(ds: Dataset, tag: int, name: str) -> str:
    """A required UID attribute (Type 1): 0120 absent, 0121 empty, 0106 not a UID."""
    if tag not in ds:
        raise Refused(st.MISSING_ATTRIBUTE, f"{name} missing")
    value = ds[tag].value
    if value is None or value == "":
        raise Refused(st.MISSING_ATTRIBUTE_VALUE, f"{name} empty")
    text = str(value).rstrip("\0 ")
    if not isinstance(value, str) or not uids.is_valid_uid(text):
        raise Refused(st.INVALID_ATTRIBUTE_VALUE, f"{name} is not a UID")
    return text


def parse_action_information(
    ds: Dataset, max_references: int = MAX_REFERENCES
) -> tuple[str, list[Reference]]:
    """The Transaction UID and the references of a Storage Commitment Request
    (PS3.4 Table J.3-1); :class:`Refused` says what is wrong."""
    transaction = _uid_value(ds, TRANSACTION_UID, "Transaction UID")
    if REFERENCED_SOP_SEQUENCE not in ds:
        raise Refused(st.MISSING_ATTRIBUTE, "Referenced SOP Sequence missing")
    items = ds[REFERENCED_SOP_SEQUENCE].value
    if not isinstance(items, Sequence):
        raise Refused(st.INVALID_ATTRIBUTE_VALUE, "Referenced SOP Sequence is no sequence")
    if not items:
        raise Refused(st.MISSING_ATTRIBUTE_VALUE, "Referenced SOP Sequence empty")
    if len(items) > max_references:
        raise Refused(st.RESOURCE_LIMITATION, f"more than {max_references} references")
    refs = []
    for n, item in enumerate(items, 1):
        refs.append(
            Reference(
                _uid_value(item, REFERENCED_SOP_CLASS_UID, f"item {n}: SOP Class UID"),
                _uid_value(item, REFERENCED_SOP_INSTANCE_UID, f"item {n}: SOP Instance UID"),
            )
        )
    return transaction, refs


def event_information(
    transaction_uid: str, verdicts: list[Verdict], retrieve_ae: str | None = None
) -> tuple[int, Dataset]:
    """The Event Type ID and Event Information of a Storage Commitment Result
    (PS3.4 J.3.3, Table J.3-2): the committed references (with ``retrieve_ae``),
    and, when any failed, the Failed SOP Sequence with each Failure Reason."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    if retrieve_ae:
        ds.RetrieveAETitle = retrieve_ae
    committed = [v.reference for v in verdicts if v.committed]
    failed = [v for v in verdicts if not v.committed]
    if committed:
        ds.ReferencedSOPSequence = [_item(ref) for ref in committed]
    if failed:
        items = []
        for verdict in failed:
            item = _item(verdict.reference)
            item.FailureReason = verdict.failure_reason
            items.append(item)
        ds.FailedSOPSequence = items
    return (FAILURES_EXIST if failed else ALL_COMMITTED), ds


def _item(ref: Reference) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    return item


# -- the server's side: journal, verification, reports -----------------------------


@dataclass
class Channel:
    """The requesting association, for a report on it while it is open."""

    t: Transport
    invoker: Invoker
    context_id: int

    @property
    def is_open(self) -> bool:
        return self.t.conn.state is State.STA6 and self.invoker.ended is None

    @property
    def transfer_syntax(self) -> str:
        assert self.t.negotiated is not None
        return self.t.negotiated.contexts[self.context_id].transfer_syntax


class CommitmentService:
    """Accepted requests, durably kept until their report is acknowledged (module notes)."""

    def __init__(
        self,
        reader: ArchiveReader,
        root: Path | str,
        *,
        ae_title: str,
        scus: Mapping[str, Destination],
        timeouts: Timeouts | None = None,
        fsync: bool = True,
        max_references: int = MAX_REFERENCES,
        max_pending: int = MAX_PENDING,
        report_timeout: float = 60.0,
        retry_delay: float = 5.0,
        max_retry_delay: float = 600.0,
        audit: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.reader = reader
        self.journal = CommitmentJournal(root, fsync=fsync)
        self.ae_title = ae_title
        self.scus = scus
        self.timeouts = timeouts
        self.max_references = max_references
        self.max_pending = max_pending
        self.report_timeout = report_timeout
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.audit = audit
        #: transaction UIDs accepted and not yet reported
        self.pending: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def start(self) -> None:
        """Report what an earlier run accepted and did not report (PS3.4 J.3.3)."""
        requests = await asyncio.to_thread(lambda: list(self.journal.pending()))
        for request in requests:
            if request.transaction_uid in self.pending:
                continue
            log.info(
                "storage commitment %s of %s (%d references) pending since %s: reporting",
                request.transaction_uid,
                request.calling_ae,
                len(request.references),
                request.received_at,
            )
            self.pending.add(request.transaction_uid)
            self._spawn(self._deliver(request, None))

    async def close(self) -> None:
        """Stop reporting; what is not reported stays in the journal for the next start."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def accept(self, request: CommitmentRequest) -> None:
        """Record ``request`` durably (:class:`Refused`: 0115 its Transaction UID
        pending, 0213 too many pending, 0110 the journal cannot be written)."""
        if request.transaction_uid in self.pending:
            raise Refused(st.INVALID_ARGUMENT_VALUE, "Transaction UID already pending")
        if len(self.pending) >= self.max_pending:
            raise Refused(st.RESOURCE_LIMITATION, f"{self.max_pending} requests pending already")
        self.pending.add(request.transaction_uid)
        try:
            await asyncio.to_thread(self.journal.add, request)
        except DuplicateTransaction:
            raise Refused(st.INVALID_ARGUMENT_VALUE, "Transaction UID already pending") from None
        except (OSError, ValueError) as exc:
            self.pending.discard(request.transaction_uid)
            log.error("storage commitment journal: %s", exc)
            raise Refused(st.PROCESSING_FAILURE, f"cannot record the request: {exc}") from None

    def report(self, request: CommitmentRequest, channel: Channel | None) -> None:
        """Verify and report ``request`` (accepted) from a task of the server."""
        self._spawn(self._deliver(request, channel))

    async def _deliver(self, request: CommitmentRequest, channel: Channel | None) -> None:
        failures = 0
        while not self._closed:
            try:
                how = await self._attempt(request, channel)
            except _NoAddress as exc:
                log.warning(
                    "storage commitment %s: %s; it waits in the journal for a restart",
                    request.transaction_uid,
                    exc,
                )
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - network, disk or index: retried
                if not isinstance(exc, DicomstoreError | OSError):
                    log.exception("storage commitment %s", request.transaction_uid)
                failures += 1
                delay = min(self.retry_delay * 2 ** (failures - 1), self.max_retry_delay)
                delay *= 0.5 + random.random() / 2  # jitter: requesters back at once spread
                log.warning(
                    "storage commitment %s: report to %s failed (%s); retrying in %.0f s",
                    request.transaction_uid,
                    request.calling_ae,
                    exc,
                    delay,
                )
                channel = None
                await asyncio.sleep(delay)
                continue
            await asyncio.to_thread(self.journal.done, request.transaction_uid)
            self.pending.discard(request.transaction_uid)
            log.info("storage commitment %s reported %s", request.transaction_uid, how)
            return

    async def _attempt(self, request: CommitmentRequest, channel: Channel | None) -> str:
        """One report: verify now, send on ``channel`` if open, else on a new
        association; returns how it went. Raises when it must be retried."""
        if (channel is None or not channel.is_open) and request.calling_ae not in self.scus:
            raise _NoAddress(f"no address configured for {request.calling_ae!r}")
        verdicts = await asyncio.to_thread(verify, self.reader, request.references)
        event_type, info = event_information(request.transaction_uid, verdicts, self.ae_title)
        how = "on the same association"
        rsp = None
        if channel is not None and channel.is_open:
            try:
                rsp = await self._send(channel, event_type, info)
            except (AssociationError, ConnectionError, OSError) as exc:
                log.info(
                    "storage commitment %s: the requesting association ended (%s)",
                    request.transaction_uid,
                    exc,
                )
            if rsp is not None and rsp.status in NOT_TAKEN:
                log.info(
                    "storage commitment %s: the requester answered %04X on its association",
                    request.transaction_uid,
                    rsp.status,
                )
                rsp = None
            if rsp is None and request.calling_ae not in self.scus:
                raise _NoAddress(f"no address configured for {request.calling_ae!r}")
        if rsp is None:
            how = "on a new association"
            rsp = await self._send_new(self.scus[request.calling_ae], event_type, info)
            if rsp.status in NOT_TAKEN:
                raise AssociationError(f"N-EVENT-REPORT-RSP {rsp.status:04X}: try again later")
        if rsp.status != st.SUCCESS:
            log.warning(
                "storage commitment %s: N-EVENT-REPORT-RSP %04X %s",
                request.transaction_uid,
                rsp.status,
                rsp.error_comment or st.describe(rsp.status),
            )
        self._audit(request, verdicts, how, rsp.status)
        return how

    async def _send(self, channel: Channel, event_type: int, info: Dataset) -> NEventReportRSP:
        data = encode_dataset(info, channel.transfer_syntax)
        return await channel.invoker.call(
            channel.context_id,
            lambda msg_id: NEventReportRQ(msg_id, SOP_CLASS, SOP_INSTANCE, event_type),
            NEventReportRSP,
            data,
            timeout=self.report_timeout,
        )

    async def _send_new(self, scu: Destination, event_type: int, info: Dataset) -> NEventReportRSP:
        """On an association we request, as SCP of the SOP class by role selection."""
        assoc = await associate(
            scu.host,
            scu.port,
            called_ae=scu.ae_title,
            calling_ae=self.ae_title,
            contexts=[(SOP_CLASS, (uids.EXPLICIT_VR_LE, uids.IMPLICIT_VR_LE))],
            roles=[RoleSelection(SOP_CLASS, scu_role=False, scp_role=True)],
            timeouts=self.timeouts,
        )
        try:
            ctx = assoc.context_for(SOP_CLASS)
            if ctx is None:
                raise AssociationError(f"{scu} did not accept the Storage Commitment SOP Class")
            if not ctx.scp_role:  # PS3.7 D.3.3.4; many SCUs take the report all the same
                log.info("%s did not grant us the SCP role by role selection: sending", scu)
            rsp = await self._send(Channel(assoc.t, assoc.invoker, ctx.id), event_type, info)
        except BaseException:
            await assoc.abort()
            raise
        await assoc.release()
        return rsp

    def _audit(
        self, request: CommitmentRequest, verdicts: list[Verdict], how: str, status: int
    ) -> None:
        if self.audit is None:
            return
        self.audit(
            {
                "event": "commitment",
                "phase": "report",
                "transaction_uid": request.transaction_uid,
                "calling_ae": request.calling_ae,
                "address": request.address,
                "references": len(verdicts),
                "committed": sum(v.committed for v in verdicts),
                "failed": [
                    {"sop_instance_uid": v.reference.sop_instance_uid, "reason": v.failure_reason}
                    for v in verdicts
                    if not v.committed
                ],
                "reported": how,
                "status": f"{status:04X}",
            }
        )


class _NoAddress(Exception):
    """The requesting association is gone and its AE title has no configured address."""


# -- the association's side --------------------------------------------------------


class CommitmentSCP(QROperations):
    """The Storage Commitment SCP of one association (see the module notes)."""

    request_types = (NActionRQ,)
    service = "N-ACTION"

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
        classes = frozenset(COMMITMENT_SOP_CLASSES) if service is not None else frozenset()
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
        self.send(op, op.refusal)
        self._audit(op, op.refusal.status, op.refusal.error_comment)

    async def answer(self, op: Operation) -> None:
        rq: NActionRQ = op.rq
        assert self.commitments is not None  # else refused (0122)
        try:
            try:
                ds = decode_identifier(bytes(op.identifier), self.transfer_syntax(op))
            except Exception as exc:  # noqa: BLE001 - pydicom raises anything on bad bytes
                why = f"unreadable Action Information: {exc}"
                raise Refused(st.INVALID_ARGUMENT_VALUE, why) from None
            transaction, refs = parse_action_information(ds, self.commitments.max_references)
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
