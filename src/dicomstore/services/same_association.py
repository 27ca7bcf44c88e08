"""Storage SCU on an association we accepted: the C-STORE sub-operations of a C-GET.

A C-GET SCP sends the instances it retrieves to the C-GET SCU on the same
association (PS3.4 C.4.3.1), the requestor acting as Storage SCP for the SOP
classes it asked that role for by SCP/SCU Role Selection (PS3.7 D.3.3.4; see
``ul/negotiation.py``). :class:`SameAssociationStore` is that sending side: it
offers only the accepted contexts whose requestor may be SCP, sends with
Message IDs of its own (an :class:`~dicomstore.aio.invoker.Invoker`, as the
client does), and takes the C-STORE-RSPs the acceptor's dispatch hands it
(:meth:`SameAssociationStore.handles`). It satisfies
:class:`~dicomstore.services.storage_scu.StoreChannel`, so an instance goes out
through :func:`~dicomstore.services.storage_scu.store_instance` as ``send``
sends it: the stored file streamed unchanged when a context takes its transfer
syntax, else converted to an accepted uncompressed one.
"""

from __future__ import annotations

from dicomstore.aio.association import Transport
from dicomstore.aio.invoker import Invoker
from dicomstore.dimse import CommandReceived, CStoreRSP, DatasetFragment
from dicomstore.errors import AssociationAborted
from dicomstore.ul.negotiation import AcceptedContext, Negotiated


class SameAssociationStore:
    """C-STORE-RQs out on an accepted association, their C-STORE-RSPs in."""

    def __init__(self, transport: Transport) -> None:
        self.t = transport
        self.invoker = Invoker(transport, self._abort)
        # the requestor invokes max_ops_invoked; we invoke what it performs (D.3.3.3)
        self.invoker.open(transport.negotiated.max_ops_performed if transport.negotiated else 1)

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

    def handles(self, event: CommandReceived | DatasetFragment) -> bool:
        """True for a C-STORE-RSP (the acceptor receives no other response)."""
        return isinstance(event, CommandReceived) and isinstance(event.message, CStoreRSP)

    def receive(self, event: CommandReceived) -> bool:
        """Hand over a C-STORE-RSP; False if it answers no request of ours."""
        return self.invoker.deliver(event.message)

    def close(self) -> None:
        """The association ended: sub-operations still waiting fail."""
        self.invoker.end(AssociationAborted("the association ended"))

    async def _abort(self) -> None:
        self.t.abort_now()
        self.invoker.end(AssociationAborted("aborted by us"))
