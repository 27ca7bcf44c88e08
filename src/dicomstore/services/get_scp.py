"""C-GET SCP: Patient Root and Study Root Query/Retrieve - GET (PS3.4 C.4.3, PS3.7 9.1.3).

A C-GET is answered as a C-MOVE is (``retrieve_scp.py``: the request, its
Identifier and C-CANCEL through ``qr_operations.py``; the instances selected and
the sub-operations counted by the retrieve engine, ``retrieve.py``), but its
C-STORE sub-operations go back to the C-GET SCU on the same association (PS3.4
C.4.3.3.1), the SCU being the Storage SCP there for the SOP classes it asked
that role for by SCP/SCU Role Selection (PS3.7 D.3.3.4; ``ul/negotiation.py``
grants it only on an association that accepts a GET model).

:class:`GetSender` is the :class:`~dicomstore.services.retrieve.SubOperationSender`
of a C-GET. Each instance is scanned from its file and sent by
:func:`~dicomstore.services.storage_scu.store_instance` on the association's
:class:`~dicomstore.services.same_association.SameAssociationStore`: on an
accepted context of its SOP class whose requestor took the SCP role, in the
transfer syntax it is stored in (streamed from the file, unchanged), else
converted to an accepted uncompressed one, as ``dicomstore send`` does. An
instance no such context can carry, or that cannot be read, is a failed
sub-operation; a C-STORE-RSP's status counts as it says (PS3.4 C.4.3.1.3.1).
Without any context on which the requestor is SCP, or once the association
breaks, every remaining sub-operation fails.

Refusals before the Identifier is read: 0122 (not a GET model context), 0124
(the policy does not grant ``get``), 0210 (Message ID in progress); then A900,
C000, A701 (also for an Identifier too large to keep) as for C-MOVE. Each C-GET
ends with an audit ``retrieve`` record (PS3.15 A.5.3.7), its destination the
calling AE title.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from dicomstore.aio.association import Transport
from dicomstore.archive.reader import ArchiveReader
from dicomstore.dimse import CGetRQ, RetrieveRQ
from dicomstore.dimse import status as st
from dicomstore.errors import AssociationError
from dicomstore.inflation import DEFAULT_MAX_INFLATED
from dicomstore.services import qr_classes, sources
from dicomstore.services.qr_operations import Operation
from dicomstore.services.retrieve import (
    NotSent,
    Selected,
    SubOperationsEnded,
    SubOperationSender,
    store_selected,
)
from dicomstore.services.retrieve_scp import RetrieveSCP
from dicomstore.services.same_association import SameAssociationStore

log = logging.getLogger("dicomstore.server")


class GetSender:
    """C-STOREs on the C-GET's own association (see the module notes)."""

    def __init__(
        self,
        store: SameAssociationStore | None,
        *,
        priority: int = 0,
        inflated_limit: int = DEFAULT_MAX_INFLATED,
    ) -> None:
        self.store = store
        self.priority = priority
        self.inflated_limit = inflated_limit

    async def start(self, selected: Sequence[Selected]) -> None:
        if self.store is None:
            raise SubOperationsEnded("no context with the SCP role (PS3.7 D.3.3.4) for C-STOREs")

    async def send(self, item: Selected) -> int:
        store = self.store
        assert store is not None  # else start() ended the sub-operations
        try:
            rsp = await store_selected(
                store,
                item,
                service="C-GET",
                peer="the SCU",
                priority=self.priority,
                inflated_limit=self.inflated_limit,
            )
        except sources.SourceReadError as exc:  # mid-message: the association cannot go on
            store.t.abort_now()
            raise SubOperationsEnded(f"reading {item.sop_instance_uid}: {exc}") from None
        except (AssociationError, ConnectionError, OSError) as exc:
            raise SubOperationsEnded(f"the association ended: {exc}") from None
        return st.SUBOPERATIONS_FAILED if isinstance(rsp, NotSent) else int(rsp.status)

    async def stop(self) -> None:
        """Nothing to release: the association is the requestor's."""


class GetSCP(RetrieveSCP):
    """The C-GET SCP of one association (see the module notes)."""

    request_types = (CGetRQ,)  # type: ignore[assignment]  # (mypy: RetrieveSCP's is CMoveRQ's)
    service = "C-GET"
    beyond_window = "refuse"  # (its C-STORE sub-operations are answered on this association)

    def __init__(
        self,
        reader: ArchiveReader | None,
        transport: Transport,
        store: SameAssociationStore | None,
        *,
        ae_title: str,
        may_get: bool = True,
        audit: Callable[[dict[str, Any]], None] | None = None,
        who: dict[str, Any] | None = None,
        inflated_limit: int = DEFAULT_MAX_INFLATED,
    ) -> None:
        # a retrieval with no Move Destination: may_move is whether C-GET is allowed
        super().__init__(
            reader,
            transport,
            ae_title=ae_title,
            destinations={},
            may_move=may_get,
            audit=audit,
            who=who,
            inflated_limit=inflated_limit,
        )
        self.sop_classes = (
            frozenset(qr_classes.GET_SOP_CLASSES) if reader is not None else frozenset()
        )
        #: the sending side of this association (None: no context lets us send)
        self.store = store

    def levels(self, rq: RetrieveRQ) -> tuple[str, ...]:
        return qr_classes.GET_MODEL_LEVELS[rq.affected_sop_class_uid]

    def sender_for(self, op: Operation) -> SubOperationSender:
        """The requesting association itself (no destination: "the caller" in the log)."""
        return GetSender(self.store, priority=op.rq.priority, inflated_limit=self.inflated_limit)
