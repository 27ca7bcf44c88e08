"""Storage Service Class, SCP role (PS3.4 B.2): one C-STORE at a time.

For each C-STORE-RQ the SCP checks the presentation context, asks the store
service (``storage.py``: authorization, limits, the handler, log, audit,
events — the same for every door) to open the instance *before* the data
set arrives (so the archive can write the file meta first), streams every
fragment into it, and turns the result into the C-STORE-RSP of PS3.4 B.2.3.
"""

from __future__ import annotations

from collections.abc import Callable

from dicomstore import status as st
from dicomstore import uids
from dicomstore.dimse import CStoreRQ, CStoreRSP
from dicomstore.error_comment import error_comment
from dicomstore.handler import StoreSink
from dicomstore.services.qr_classes import (
    COMMITMENT_SOP_CLASSES,
    FIND_SOP_CLASSES,
    GET_SOP_CLASSES,
    MOVE_SOP_CLASSES,
)
from dicomstore.services.storage import (
    Caller,
    OnStored,
    StoredEvent,
    StoreService,
    Storing,
)
from dicomstore.ul.negotiation import AcceptedContext, Negotiated

__all__ = [
    "STORAGE_EXTENDED_ANSWER",
    "OnStored",
    "Receiving",
    "StorageSCP",
    "StoredEvent",
    "storage_extended_negotiation",
]

#: Our Service-class-application-information for a Storage SOP Class (PS3.4
#: Table B.3-2): Level of Support 2 (Full: every element kept, private ones
#: too), Level of Digital Signature Support 3 (data sets stored bit-preserving:
#: every signature stays verifiable; Data Set Trailing Padding, the one thing a
#: policy may cut, is outside all signatures), Element Coercion 0 (no policy
#: changes a value); the reserved bytes 0.
STORAGE_EXTENDED_ANSWER = bytes((2, 0, 3, 0, 0, 0))


def storage_extended_negotiation(sop_class_uid: str, info: bytes) -> bytes | None:
    """The answer to a SOP Class Extended Negotiation sub-item (PS3.4 B.3.1, PS3.7
    D.3.3.5) for an accepted SOP Class: ours for a storage class (one accepted as
    storage without being known, ``--accept-unknown-sop-classes``, too); none for the
    others, whose options are then all off (PS3.7 D.3.3.5: Verification; Q/R, whose
    relational queries, fuzzy matching and relational retrieval read this answer as
    supported, review46 #1; Storage Commitment)."""
    if sop_class_uid in _NOT_STORAGE_SERVICES:
        return None
    return STORAGE_EXTENDED_ANSWER


#: The SOP Classes served here that are not storage (their own extended negotiation).
_NOT_STORAGE_SERVICES = frozenset(
    (uids.VERIFICATION, *FIND_SOP_CLASSES, *MOVE_SOP_CLASSES, *GET_SOP_CLASSES)
    + COMMITMENT_SOP_CLASSES
)


#: The handler protocol has one home, beside the archive that satisfies it.
Sink = StoreSink


class Receiving:
    """One C-STORE in progress: fragments go to the store service's :class:`Storing`,
    or are discarded when the answer is known before the data set (``response``)."""

    __slots__ = ("rq", "context", "storing", "response", "comment", "nbytes", "kept")

    def __init__(
        self,
        rq: CStoreRQ,
        context: AcceptedContext | None,
        storing: Storing | None,
        response: CStoreRSP | None = None,
    ) -> None:
        self.rq = rq
        self.context = context
        self.storing = storing
        self.response = response  # set when the answer is known before the data set
        self.comment: str | None = None  # the Error Comment of ``response`` before the cut
        self.nbytes = 0  # data set bytes discarded (a refused one)
        self.kept = False  # answered as a duplicate kept as it was: nothing stored

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append one fragment (to the store, or nowhere once refused)."""
        if self.storing is not None:
            self.storing.write(data)
        else:
            self.nbytes += len(data)

    def refuse(self, status: int, text: str, tags: tuple[int, ...] | None = None) -> CStoreRSP:
        """Answer ``status`` once the data set is in; ``text`` is cut to an LO for the wire."""
        self.response = self.rq.response(status, error_comment(text), tags)
        self.comment = text
        return self.response

    def abort(self) -> None:
        """The association ended mid-data set: leave nothing behind."""
        if self.storing is not None:
            self.storing.abort()


class StorageSCP:
    """Answers C-STORE requests on one association (PS3.4 B.2.2, B.2.3): the
    DIMSE side (presentation contexts, responses) of :class:`StoreService`, which
    decides everything else, as it does for every door."""

    def __init__(
        self,
        service: StoreService,
        negotiated: Negotiated,
        *,
        may_store: bool = True,
        commit_in_thread: bool | Callable[[], bool] = True,
        address: str = "",
        user: str | None = None,
        we_requested: bool = False,
    ) -> None:
        self.service = service
        self.negotiated = negotiated
        #: we requested the association (``dicomstore get``: the C-STOREs come from
        #: the acceptor, on contexts where we took the SCP role, PS3.7 D.3.3.4)
        self.we_requested = we_requested
        self.commit_in_thread = commit_in_thread
        #: who stores: the peer — the calling AE, or the called one on an association
        #: we requested (a C-GET's SCP, ``dicomstore get``); the service's policy
        #: decides whether it may, whichever door
        who, we = negotiated.calling_ae, negotiated.called_ae
        if we_requested:
            who, we = we, who
        self.caller = Caller(
            "C-STORE",
            who.strip(),
            address,
            we.strip(),
            may_store=service.may_store(who.strip(), may_store),
            user=user,
        )

    def begin(self, context_id: int, rq: CStoreRQ) -> Receiving:
        """Start receiving: check the context, then have the store service open the
        instance before the data set arrives."""
        context = self.negotiated.contexts.get(context_id)
        if context is None:
            return self.refuse(
                rq,
                st.SOP_CLASS_NOT_SUPPORTED,
                f"presentation context {context_id} was not accepted",
            )
        if context.abstract_syntax != rq.affected_sop_class_uid:
            return self.refuse(
                rq,
                st.SOP_CLASS_NOT_SUPPORTED,
                f"SOP class {rq.affected_sop_class_uid} sent on the context of "
                f"{context.abstract_syntax}",
                (0x00000002,),
                context,
            )
        if not (context.scp_role if self.we_requested else context.scu_role):
            # the sender may not be Storage SCU on this context (PS3.7 D.3.3.4)
            return self.refuse(
                rq,
                st.SOP_CLASS_NOT_SUPPORTED,
                "no SCU role on this context: C-STOREs go the other way",
                None,
                context,
            )
        storing = self.service.begin(
            self.caller,
            sop_class_uid=rq.affected_sop_class_uid,
            sop_instance_uid=rq.affected_sop_instance_uid,
            transfer_syntax_uid=context.transfer_syntax,
        )
        return Receiving(rq, context, storing)

    def refuse(
        self,
        rq: CStoreRQ,
        status: int,
        text: str,
        tags: tuple[int, ...] | None = None,
        context: AcceptedContext | None = None,
    ) -> Receiving:
        """A C-STORE answered before its data set arrives (which is then discarded)."""
        receiving = Receiving(rq, context, None)
        receiving.refuse(status, text, tags)
        return receiving

    async def finish(self, receiving: Receiving) -> CStoreRSP:
        """The last fragment arrived: commit durably, then answer (PS3.4 B.2.3).

        Logged, audited and announced by the store service; a request that could
        not be decoded (``rq`` is ``None``) was logged by the server when it
        answered it, and a C-STORE-RQ among them is recorded as a refused store
        too (review54 F6: no storage log line, audit record or metric).
        """
        rq = receiving.rq
        if rq is None:
            rsp = receiving.response
            assert rsp is not None
            if isinstance(rsp, CStoreRSP):
                self.service.refused(
                    self.caller,
                    rsp.affected_sop_class_uid,
                    rsp.affected_sop_instance_uid,
                    rsp.status,
                    rsp.error_comment or "",
                    nbytes=receiving.nbytes,
                )
            return rsp
        if receiving.response is not None or receiving.storing is None:
            rsp = receiving.response
            assert rsp is not None
            self.service.refused(
                self.caller,
                rq.affected_sop_class_uid,
                rq.affected_sop_instance_uid,
                rsp.status,
                receiving.comment or rsp.error_comment or "",
                nbytes=receiving.nbytes,
            )
            return rsp
        in_thread = self.commit_in_thread
        if callable(in_thread):
            in_thread = in_thread()
        result = await self.service.finish(receiving.storing, in_thread=in_thread)
        receiving.kept = result.stored and not result.changed
        comment = error_comment(result.comment) if result.comment else None  # (Success: none)
        return rq.response(result.status, comment, result.offending)
