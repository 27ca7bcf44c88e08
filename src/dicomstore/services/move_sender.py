"""The C-STORE sub-operations of a C-MOVE: our Storage SCU to the Move Destination
(PS3.4 C.4.2.3.1: "the SCP of the Query/Retrieve Service Class serves as the SCU of
the Storage Service Class", on an association of its own).

:class:`MoveSender` is the :class:`~dicomstore.services.retrieve.SubOperationSender`
of a C-MOVE: one association to the destination, proposing for each SOP Class
the transfer syntax each instance is stored in, alone, then the uncompressed ones
for conversion (as ``dicomstore send`` does, ``storage_scu.propose_contexts``);
each instance streamed from its file (``storage_scu.store_instance``: no whole
instance in memory unless it must be converted), its C-STORE-RQ carrying the
Move Originator AE Title and Message ID (PS3.7 9.3.1.1). A destination that
refuses the association or cannot be reached fails every sub-operation; one
that aborts midway fails the one in flight and every remaining one. A file that
fails while its data set goes out (unreadable, or damaged since it was stored:
``archive/checked.py``) fails alone: its association is aborted (nothing may
follow half a message, PS3.8 E.1) and the others go on a new one (review104 F5:
one damaged file failed the rest of a study). :class:`DestinationSender`, the
association part, also forwards (``forwarding.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from dicomstore.aio.association import Timeouts
from dicomstore.aio.client import ClientAssociation, ContextSpec, associate
from dicomstore.dimse import CStoreRSP
from dicomstore.dimse import status as st
from dicomstore.errors import AssociationError, DicomstoreError
from dicomstore.inflation import DEFAULT_MAX_INFLATED
from dicomstore.services import sources
from dicomstore.services.destinations import Destination
from dicomstore.services.retrieve import NotSent, Selected, SubOperationsEnded, store_selected
from dicomstore.services.sources import Instance
from dicomstore.services.storage_scu import classify, propose_contexts
from dicomstore.ul.negotiation import DEFAULT_MAX_PDU

log = logging.getLogger("dicomstore.server")


class DestinationSender:
    """Our Storage SCU on one association to a configured destination: the C-MOVE
    sub-operations (:class:`MoveSender`) and forwarding (``forwarding.py``).

    :meth:`open` associates, proposing the SOP classes and stored transfer
    syntaxes of the instances to send (then the uncompressed ones, for
    conversion); it raises what the association raised (classify it with
    ``storage_scu.classify``). :meth:`store` sends one instance
    (``retrieve.store_selected``): the C-STORE-RSP, or a NotSent when it cannot be sent
    (unreadable, no accepted context; logged); it raises when the association
    failed (:class:`~dicomstore.services.sources.SourceReadError` when the file
    failed while its data set was going out: the association is aborted then).
    """

    def __init__(
        self,
        destination: Destination,
        *,
        calling_ae: str,
        service: str,
        originator: tuple[str, int] | None = None,
        priority: int = 0,
        timeouts: Timeouts | None = None,
        max_pdu: int = DEFAULT_MAX_PDU,
        inflated_limit: int = DEFAULT_MAX_INFLATED,
    ) -> None:
        self.destination = destination
        self.calling_ae = calling_ae
        self.service = service
        #: Move Originator AE Title and Message ID (0000,1030), (0000,1031)
        self.originator = originator
        self.priority = priority
        self.timeouts = timeouts
        self.max_pdu = max_pdu
        #: what a deflated data set converted may inflate to (the server's limit)
        self.inflated_limit = inflated_limit
        self.assoc: ClientAssociation | None = None

    async def open(self, selected: Sequence[Selected]) -> None:
        contexts = contexts_for(selected)[0]  # more SOP classes than fit: those fail
        dest = self.destination
        self.assoc = await associate(
            dest.host,
            dest.port,
            called_ae=dest.ae_title,
            calling_ae=self.calling_ae,
            contexts=contexts,
            timeouts=self.timeouts,
            max_pdu=self.max_pdu,
        )
        log.info("%s: association to %s for %d instances", self.service, dest, len(selected))

    async def store(self, item: Selected) -> CStoreRSP | NotSent:
        assoc = self.assoc
        assert assoc is not None
        try:
            return await store_selected(
                assoc,
                item,
                service=self.service,
                peer=self.destination.ae_title,
                priority=self.priority,
                move_originator=self.originator,
                inflated_limit=self.inflated_limit,
            )
        except sources.SourceReadError:
            await assoc.abort()
            raise

    async def close(self) -> None:
        """Release the association (abort it when cancelled, or when a C-STORE is still
        unanswered: a destination that holds one answers no A-RELEASE-RQ either, and the
        release waited for it, review123 F3); never raises otherwise."""
        assoc, self.assoc = self.assoc, None
        if assoc is None:
            return
        if assoc.invoker.waiting:  # (the requester gone, or a C-CANCEL, mid-sub-operation)
            await assoc.abort()
            return
        try:
            await assoc.release()
        except asyncio.CancelledError:
            await assoc.abort()
            raise
        except (DicomstoreError, OSError) as exc:
            log.info("%s: releasing the association to %s: %s", self.service, self.destination, exc)


def contexts_for(selected: Sequence[Selected]) -> list[list[ContextSpec]]:
    """The presentation contexts of these instances, in associations of at most 128
    (``storage_scu.propose_contexts``, converting), the SOP classes of the first
    instances first."""
    pairs = dict.fromkeys((s.sop_class_uid, s.transfer_syntax) for s in selected)
    wanted = [Instance(sop_class, "", ts) for sop_class, ts in pairs]
    return propose_contexts(wanted, convert=True) or [[]]


class MoveSender(DestinationSender):
    """C-STOREs to one Move Destination on one association (see the module notes)."""

    def __init__(
        self,
        destination: Destination,
        *,
        calling_ae: str,
        originator: tuple[str, int],
        priority: int = 0,
        timeouts: Timeouts | None = None,
        max_pdu: int = DEFAULT_MAX_PDU,
        inflated_limit: int = DEFAULT_MAX_INFLATED,
    ) -> None:
        #: its association was aborted mid-message: the next sub-operation starts it
        #: anew (``Retrieval.run``: only when one is left, racing a C-CANCEL)
        self.lost = False
        super().__init__(
            destination,
            calling_ae=calling_ae,
            service="C-MOVE",
            originator=originator,
            priority=priority,
            inflated_limit=inflated_limit,
            timeouts=timeouts,
            max_pdu=max_pdu,
        )

    async def start(self, selected: Sequence[Selected]) -> None:
        try:
            await self.open(selected)
            self.lost = False
        except (AssociationError, OSError) as exc:
            kind = classify(exc)
            what = kind[0] if kind else "failed"
            dest = self.destination
            log.warning("C-MOVE destination %s: %s (%s)", dest, what, exc)
            raise SubOperationsEnded(f"destination {dest.ae_title} {what}: {exc}") from None

    async def send(self, item: Selected) -> int:
        try:
            rsp = await self.store(item)
        except sources.SourceReadError as exc:  # mid-message: aborted (PS3.8 E.1)
            log.warning("C-MOVE: %s not sent: %s", item.sop_instance_uid, exc)
            self.assoc, self.lost = None, True  # (aborted: the others go on a new one,
            return st.SUBOPERATIONS_FAILED  # review104 F5; review105 M2, L1)
        except (AssociationError, ConnectionError, OSError) as exc:
            why = f"destination {self.destination.ae_title} left: {exc}"
            log.warning("C-MOVE: %s", why)
            raise SubOperationsEnded(why) from None
        return st.SUBOPERATIONS_FAILED if isinstance(rsp, NotSent) else int(rsp.status)

    async def stop(self) -> None:
        await self.close()
