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
that aborts midway fails the one in flight and every remaining one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from dicomstore.aio.association import Timeouts
from dicomstore.aio.client import ClientAssociation, associate
from dicomstore.dimse import status as st
from dicomstore.errors import AssociationError, DicomstoreError
from dicomstore.services import sources
from dicomstore.services.destinations import Destination
from dicomstore.services.retrieve import Selected, SubOperationsEnded, store_selected
from dicomstore.services.sources import Instance
from dicomstore.services.storage_scu import (
    MAX_CONTEXTS,
    classify,
    propose_contexts,
)
from dicomstore.ul.negotiation import DEFAULT_MAX_PDU

log = logging.getLogger("dicomstore.server")


class MoveSender:
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
    ) -> None:
        self.destination = destination
        self.calling_ae = calling_ae
        #: Move Originator AE Title and Message ID (0000,1030), (0000,1031)
        self.originator = originator
        self.priority = priority
        self.timeouts = timeouts
        self.max_pdu = max_pdu
        self.assoc: ClientAssociation | None = None

    async def start(self, selected: Sequence[Selected]) -> None:
        pairs = {(s.sop_class_uid, s.transfer_syntax) for s in selected}
        wanted = [Instance(sop_class, "", ts) for sop_class, ts in sorted(pairs)]
        groups = propose_contexts(wanted, convert=True)
        contexts = groups[0][:MAX_CONTEXTS]  # more SOP classes than fit: those fail
        dest = self.destination
        try:
            self.assoc = await associate(
                dest.host,
                dest.port,
                called_ae=dest.ae_title,
                calling_ae=self.calling_ae,
                contexts=contexts,
                timeouts=self.timeouts,
                max_pdu=self.max_pdu,
            )
        except (AssociationError, OSError) as exc:
            kind = classify(exc)
            what = kind[0] if kind else "failed"
            log.warning("C-MOVE destination %s: %s (%s)", dest, what, exc)
            raise SubOperationsEnded(f"destination {dest.ae_title} {what}: {exc}") from None
        log.info("C-MOVE: association to %s for %d instances", dest, len(selected))

    async def send(self, item: Selected) -> int:
        assoc = self.assoc
        assert assoc is not None
        try:
            rsp = await store_selected(
                assoc,
                item,
                service="C-MOVE",
                peer=self.destination.ae_title,
                priority=self.priority,
                move_originator=self.originator,
            )
        except sources.SourceReadError as exc:
            log.warning("C-MOVE: %s not sent: %s", item.sop_instance_uid, exc)
            return st.SUBOPERATIONS_FAILED
        except (AssociationError, ConnectionError, OSError) as exc:
            why = f"destination {self.destination.ae_title} left: {exc}"
            log.warning("C-MOVE: %s", why)
            raise SubOperationsEnded(why) from None
        return st.SUBOPERATIONS_FAILED if rsp is None else int(rsp.status)

    async def stop(self) -> None:
        assoc, self.assoc = self.assoc, None
        if assoc is None:
            return
        try:
            await assoc.release()
        except (DicomstoreError, OSError) as exc:
            log.info("C-MOVE: releasing the association to %s: %s", self.destination, exc)
