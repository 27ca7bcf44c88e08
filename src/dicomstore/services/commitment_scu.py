"""Storage Commitment Push Model SCU (PS3.4 J.3): ask an archive to commit to
holding instances, and hear its answer.

:func:`request_commitment` sends one N-ACTION-RQ (Action Type ID 1, Request
Storage Commitment; PS3.4 J.3.2) on an association whose Storage Commitment
context was accepted, its Action Information the Transaction UID (new, or given)
and the Referenced SOP Sequence, then waits up to ``timeout`` seconds for the
N-EVENT-REPORT-RQ of that transaction (PS3.4 J.3.3): on the same association
(the association's performer answers it, ``aio/performer.py``), or, with a
:class:`~dicomstore.services.commitment_listener.ReportListener`, on an
association the SCP opens to us (the association of the request is then
released right after the N-ACTION-RSP, as J.3.2.1.2 allows). Each report is
answered 0000 (0115 for a Transaction UID nobody waits for). The
:class:`Commitment` says which instances were committed and, for the others,
the Failure Reason (PS3.4 C.14.1.1) or why nothing is known (refused N-ACTION,
no report in time, association lost).

:func:`commit` is the same on an association of its own; ``dicomstore send
--commit`` (``scu_send.py``) asks on the associations that carried the C-STOREs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dicomstore import uids
from dicomstore.aio.association import Timeouts
from dicomstore.aio.client import ClientAssociation, associate
from dicomstore.aio.performer import Collecting
from dicomstore.archive.commitment import Reference
from dicomstore.dimse import NActionRQ, NActionRSP, NEventReportRQ
from dicomstore.dimse import status as st
from dicomstore.errors import AssociationError
from dicomstore.services.commitment_info import (
    REQUEST_COMMITMENT,
    SOP_CLASS,
    SOP_INSTANCE,
    Refused,
    encode_action_information,
    read_event_information,
)
from dicomstore.services.storage_scu import CommitOutcome
from dicomstore.ul.negotiation import Negotiated

log = logging.getLogger("dicomstore.send")

#: Transfer syntaxes we propose for the Storage Commitment context.
SYNTAXES = (uids.EXPLICIT_VR_LE, uids.IMPLICIT_VR_LE)
#: The presentation context to propose (ContextSpec of ``aio.client``).
CONTEXT = (SOP_CLASS, SYNTAXES)


@dataclass
class Commitment:
    """The answer to one Storage Commitment request."""

    transaction_uid: str
    references: list[Reference]
    #: the N-ACTION-RSP status (None: no response)
    status: int | None = None
    error_comment: str | None = None
    #: the Event Type ID of the report (1 all committed, 2 failures exist; None: none)
    event_type: int | None = None
    committed: set[str] = field(default_factory=set)
    #: Failure Reason by SOP Instance UID
    failed: dict[str, int] = field(default_factory=dict)
    #: why the outcome of every instance is unknown (no report), for the log
    reason: str | None = None
    #: "same association" or "new association"
    reported_on: str | None = None

    def outcome(self, sop_instance_uid: str) -> tuple[CommitOutcome, int | None]:
        """``("committed", None)``, ``("failed", reason)`` or ``("unknown", None)``."""
        if sop_instance_uid in self.committed:
            return "committed", None
        if sop_instance_uid in self.failed:
            return "failed", self.failed[sop_instance_uid]
        return "unknown", None

    @property
    def all_committed(self) -> bool:
        return all(ref.sop_instance_uid in self.committed for ref in self.references)


def settled(
    commitment: Commitment, committed: dict[str, str | None], failed: dict[str, int]
) -> tuple[set[str], dict[str, int]]:
    """The instances committed and failed, as the report says, of the (class, instance)
    pairs asked (review38scu #13): one reported committed under another SOP Class is
    failed 0119 (Class / Instance conflict); one listed both committed and failed is
    failed; one the request did not name is ignored."""
    asked = {ref.sop_instance_uid: ref.sop_class_uid for ref in commitment.references}
    found, refused = set(), dict(failed)
    for uid, cls in committed.items():
        if uid not in asked or uid in refused:
            continue
        if cls is not None and cls != asked[uid]:
            log.warning(
                "storage commitment report: %s committed as %s, asked as %s: taken as failed",
                uid,
                cls,
                asked[uid],
            )
            refused[uid] = st.CLASS_INSTANCE_CONFLICT
            continue
        found.add(uid)
    return found, refused


class Waiting:
    """Transactions awaiting their report, and the answer to each N-EVENT-REPORT-RQ."""

    def __init__(self) -> None:
        self.futures: dict[str, asyncio.Future[Commitment]] = {}
        self.requests: dict[str, Commitment] = {}
        #: why the last report that could not be read was refused (for the reason of
        #: a request still without its report: review73 F1)
        self.unreadable: str | None = None

    def expect(self, commitment: Commitment) -> asyncio.Future[Commitment]:
        future = asyncio.get_running_loop().create_future()
        self.futures[commitment.transaction_uid] = future
        self.requests[commitment.transaction_uid] = commitment
        return future

    def forget(self, transaction_uid: str) -> None:
        self.futures.pop(transaction_uid, None)
        self.requests.pop(transaction_uid, None)

    async def answer(
        self, transfer_syntax: str, message: Any, data: bytes, reported_on: str
    ) -> Any:
        """The N-EVENT-REPORT-RSP to a report (None: not ours to answer, 0211)."""
        if not isinstance(message, NEventReportRQ) or message.affected_sop_class_uid != SOP_CLASS:
            return None
        implicit = transfer_syntax == uids.IMPLICIT_VR_LE
        try:  # (from its bytes: a report of 65,535 references took pydicom 150 MiB)
            read = await asyncio.to_thread(
                read_event_information, data, implicit, transfer_syntax != uids.EXPLICIT_VR_BE
            )
        except Refused as refused:
            log.warning("storage commitment report refused %04X: %s", refused.status, refused)
            self.unreadable = f"{refused.status:04X} {refused}"
            return message.response(refused.status, refused.comment)
        transaction, committed, failed = read
        future = self.futures.pop(transaction, None)
        commitment = self.requests.pop(transaction, None)
        if future is None or commitment is None:
            log.warning("storage commitment report of unknown transaction %s", transaction)
            return message.response(st.INVALID_ARGUMENT_VALUE, "unknown Transaction UID")
        commitment.event_type = message.event_type_id
        commitment.committed, commitment.failed = settled(commitment, committed, failed)
        commitment.reported_on = reported_on
        if not future.done():
            future.set_result(commitment)
        return message.response(st.SUCCESS)


async def request_commitment(
    assoc: ClientAssociation,
    references: Sequence[Reference],
    *,
    timeout: float = 60.0,
    transaction_uid: str | None = None,
    listener: Any = None,
) -> Commitment:
    """Ask for commitment of ``references`` on ``assoc`` and wait for the report
    (see the module notes); never raises for what the SCP or the network does."""
    commitment = Commitment(transaction_uid or uids.new_uid(), list(references))
    ctx = assoc.context_for(SOP_CLASS)
    if ctx is None:
        commitment.reason = "the SCP did not accept the Storage Commitment SOP Class"
        return commitment
    # a report may come on this association even when a listener waits for it
    waiting = _on_association(assoc, listener.waiting if listener is not None else None)
    future = waiting.expect(commitment)
    data = encode_action_information(
        commitment.transaction_uid, commitment.references, ctx.transfer_syntax
    )
    try:
        rsp = await assoc.invoker.call(
            ctx.id,
            lambda msg_id: NActionRQ(msg_id, SOP_CLASS, SOP_INSTANCE, REQUEST_COMMITMENT),
            NActionRSP,
            data,
        )
        commitment.status, commitment.error_comment = rsp.status, rsp.error_comment
        if rsp.status != st.SUCCESS:
            commitment.reason = f"N-ACTION {rsp.status:04X} {rsp.error_comment or ''}".strip()
            waiting.forget(commitment.transaction_uid)
            return commitment
        log.debug(
            "storage commitment %s of %d instance(s) requested",
            commitment.transaction_uid,
            len(commitment.references),
        )
        if listener is not None:  # the report comes on another association
            await assoc.release()
        async with asyncio.timeout(timeout):
            return await asyncio.shield(future)
    except TimeoutError:
        commitment.reason = f"no report within {timeout:g} s"
        if waiting.unreadable is not None:
            commitment.reason += f" that could be read (one was refused: {waiting.unreadable})"
        elif listener is None:  # (review48 M1: Orthanc reports so; only a warning said why)
            commitment.reason += (
                " on this association (an SCP that reports on an association of its own,"
                " as Orthanc does, needs --commit-listen PORT)"
            )
        else:  # (review56 F7: the cause was in the SCP's log only)
            commitment.reason += (
                " at --commit-listen (the SCP must know where we listen: a dicomstore SCP"
                " is told with --commitment-scu OURAET=HOST:PORT)"
            )
    except (AssociationError, ConnectionError, OSError) as exc:
        commitment.reason = f"the association ended before the report: {exc}"
    waiting.forget(commitment.transaction_uid)
    return commitment


class _OnAssociation:
    """Answers the reports arriving on the association of a request (the handler of
    its performer) from a :class:`Waiting` table."""

    def __init__(self, waiting: Waiting, negotiated: Negotiated) -> None:
        self.waiting = waiting
        self.negotiated = negotiated

    async def __call__(self, context_id: int, message: Any, data: bytes) -> Any:
        ts = self.negotiated.contexts[context_id].transfer_syntax
        return await self.waiting.answer(ts, message, data, "same association")


def _on_association(assoc: ClientAssociation, waiting: Waiting | None) -> Waiting:
    """The table answering reports on ``assoc``: ``waiting`` (a listener's), else its own."""
    factory = assoc.performer.on_request
    handler = factory.handler if isinstance(factory, Collecting) else None
    if isinstance(handler, _OnAssociation) and waiting in (None, handler.waiting):
        return handler.waiting
    assert assoc.negotiated is not None
    table = waiting if waiting is not None else Waiting()
    assoc.performer.on_request = Collecting(_OnAssociation(table, assoc.negotiated))
    return table


async def commit(
    host: str,
    port: int,
    references: Sequence[Reference],
    *,
    called_ae: str = "ANY-SCP",
    calling_ae: str = "DICOMSTORE",
    timeout: float = 60.0,
    timeouts: Timeouts | None = None,
    ssl: Any = None,
    listener: Any = None,
    identity: Any = None,
) -> Commitment:
    """:func:`request_commitment` on an association of its own to ``host:port``;
    raises what :func:`~dicomstore.aio.client.associate` raises."""
    assoc = await associate(
        host,
        port,
        called_ae=called_ae,
        calling_ae=calling_ae,
        contexts=[CONTEXT],
        timeouts=timeouts,
        ssl=ssl,
        identity=identity,
    )
    try:
        commitment = await request_commitment(assoc, references, timeout=timeout, listener=listener)
    except BaseException:
        await assoc.abort()
        raise
    await assoc.release()
    return commitment


_REASONS = {
    0x0110: "processing failure",
    0x0112: "no such object instance",
    0x0119: "class/instance conflict",
    0x0122: "referenced SOP class not supported",
    0x0131: "duplicate transaction UID",
    0x0213: "resource limitation",
}


def failure_reason_text(code: int | None) -> str:
    """A Failure Reason (PS3.4 C.14.1.1) by name."""
    if code is None:
        return "no reason given"
    return f"{code:04X} {_REASONS.get(code, 'failure')}"


__all__ = [
    "CONTEXT",
    "Commitment",
    "commit",
    "failure_reason_text",
    "request_commitment",
]
