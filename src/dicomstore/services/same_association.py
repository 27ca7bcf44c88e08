"""Storage SCU on an association we accepted: the C-STORE sub-operations of a C-GET.

A C-GET SCP sends the instances it retrieves to the C-GET SCU on the same
association (PS3.4 C.4.3.1), the requestor acting as Storage SCP for the SOP
classes it asked that role for by SCP/SCU Role Selection (PS3.7 D.3.3.4; see
``ul/negotiation.py``). :class:`SameAssociationStore` is that sending side: it
offers only the accepted contexts whose requestor may be SCP, sends with
Message IDs of its own (the association's :class:`~dicomstore.aio.invoker.Invoker`,
which the acceptor hands every response it receives, and which also carries the
N-EVENT-REPORTs of Storage Commitment, ``commitment_reports.py``). It satisfies
:class:`~dicomstore.services.storage_scu.StoreChannel`, so an instance goes out
through :func:`~dicomstore.services.storage_scu.store_instance` as ``send``
sends it: the stored file streamed unchanged when a context takes its transfer
syntax, else converted to an accepted uncompressed one.
"""

from __future__ import annotations

from collections.abc import Callable

from dicomstore.aio.association import Transport
from dicomstore.aio.invoker import Invoker
from dicomstore.errors import AssociationAborted
from dicomstore.ul.negotiation import AcceptedContext, Negotiated

#: The outcome of an association we abort for a response of the peer's (late, mistyped).
ABORTED = "aborted: a response late or of another type"


def acceptor_invoker(transport: Transport, outcome: Callable[[str], None] | None = None) -> Invoker:
    """The invoking side of an association we accepted: its window is the
    operations the requestor performs (PS3.7 D.3.3.3); a late or mistyped
    response aborts the association, told first to ``outcome`` (the association's
    log line and audit record: review87 F8, they said "accepted")."""

    async def abort() -> None:
        if outcome is not None:
            outcome(ABORTED)
        transport.abort_now()
        invoker.end(AssociationAborted("aborted by us"))

    invoker = Invoker(transport, abort)
    invoker.open(transport.negotiated.max_ops_performed if transport.negotiated else 1)
    return invoker


class SameAssociationStore:
    """C-STORE-RQs out on an accepted association, their C-STORE-RSPs in."""

    def __init__(self, transport: Transport, invoker: Invoker | None = None) -> None:
        self.t = transport
        self.invoker = invoker or acceptor_invoker(transport)

    @property
    def negotiated(self) -> Negotiated | None:
        return self.t.negotiated

    @property
    def usable(self) -> bool:
        """Some accepted context lets the requestor be Storage SCP."""
        return self.negotiated is not None and any(
            c.scp_role for c in self.negotiated.contexts.values()
        )

    def context_for(
        self, abstract_syntax: str, transfer_syntax: str | None = None
    ) -> AcceptedContext | None:
        """An accepted context of ``abstract_syntax`` (and ``transfer_syntax``) on
        which the requestor is SCP, so that we may send C-STORE-RQs (PS3.7 D.3.3.4)."""
        if self.negotiated is None:
            return None
        for ctx in self.negotiated.contexts.values():
            if (
                ctx.scp_role
                and ctx.abstract_syntax == abstract_syntax
                and (transfer_syntax is None or ctx.transfer_syntax == transfer_syntax)
            ):
                return ctx
        return None
