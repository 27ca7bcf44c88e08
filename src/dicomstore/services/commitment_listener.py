"""Where a Storage Commitment SCU takes reports on associations the SCP opens
(PS3.4 J.3.3.1.3: "An SCU shall be capable of receiving an N-EVENT-REPORT on a
different association than the one on which the N-ACTION operation was
performed").

A :class:`ReportListener` accepts associations proposing the Storage
Commitment Push Model SOP Class, granting the requestor the SCP role it
proposes by role selection (PS3.7 D.3.3.4), and answers each N-EVENT-REPORT-RQ
through the :class:`~dicomstore.services.commitment_scu.Waiting` table of the
transactions it expects (0115 for one it does not expect); any other request
is answered 0211. ``dicomstore send --commit-listen PORT`` runs one while it
sends.
"""

from __future__ import annotations

import logging
from typing import Any

from dicomstore import uids
from dicomstore.aio.association import StalledPDU, Stream, Timeouts, Transport
from dicomstore.aio.listener import Listener
from dicomstore.aio.performer import Collecting, Performer
from dicomstore.errors import RemoteProtocolError
from dicomstore.services.commitment_info import SOP_CLASS
from dicomstore.services.commitment_scu import Waiting
from dicomstore.ul import pdu as P
from dicomstore.ul.connection import Connection, Role
from dicomstore.ul.events import AssociateIndication, DataIndication, ReleaseIndication
from dicomstore.ul.negotiation import DEFAULT_MAX_PDU, AcceptorPolicy, negotiate

log = logging.getLogger("dicomstore.send")


class ReportListener:
    """Accepts the associations of a Storage Commitment SCP's reports (module notes)."""

    def __init__(
        self,
        port: int,
        *,
        host: str = "0.0.0.0",  # noqa: S104 - the SCP connects from elsewhere
        ae_title: str = "DICOMSTORE",
        timeouts: Timeouts | None = None,
    ) -> None:
        self.timeouts = timeouts or Timeouts()
        self.waiting = Waiting()
        self.policy = AcceptorPolicy(
            ae_title=ae_title,
            abstract_syntaxes={SOP_CLASS: uids.UNCOMPRESSED},
            scp_role_for=frozenset({SOP_CLASS}),
        )
        self.listener = Listener(host, port, self._serve, handshake_timeout=self.timeouts.artim)

    @property
    def port(self) -> int:
        return self.listener.port

    async def start(self) -> None:
        """Bind (raises OSError when the port is taken)."""
        await self.listener.start()

    async def close(self) -> None:
        await self.listener.close(5.0)

    async def __aenter__(self) -> ReportListener:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _serve(self, stream: Stream) -> None:
        t = Transport(stream, Connection(Role.ACCEPTOR, max_pdata=DEFAULT_MAX_PDU), self.timeouts)
        performer = Performer(t, Collecting(self._answer(t)))
        t.conn.transport_connected()
        try:
            while not t.conn.is_closed:
                events = await t.receive(self.timeouts.network if t.conn.is_established else None)
                for event in events:
                    await self._on_event(t, performer, event)
                await t.flush()
        except (TimeoutError, StalledPDU, RemoteProtocolError) as exc:
            log.warning("%s: report association aborted: %s", t.peer, exc or "silent")
            t.abort_now()
        finally:
            await performer.close()
            await t.close()

    async def _on_event(self, t: Transport, performer: Performer, event: Any) -> None:
        if isinstance(event, AssociateIndication):
            answer, negotiated = negotiate(event.request, self.policy)
            if isinstance(answer, P.AssociateRJ):
                t.conn.reject(answer)
                return
            t.negotiated = negotiated
            t.conn.accept(answer)
            log.debug("%s: %s opened an association for reports", t.peer, event.request.calling_ae)
        elif isinstance(event, DataIndication):
            for pdv in event.pdvs:
                if t.negotiated is None or pdv.context_id not in t.negotiated.contexts:
                    raise RemoteProtocolError(
                        f"a PDV on context {pdv.context_id}, which was not accepted",
                        P.ABORT_INVALID_PDU_PARAMETER_VALUE,
                    )
                await t.pace()
                for dimse_event in t.assembler.receive(pdv):
                    if performer.handles(dimse_event):
                        performer.receive(dimse_event)
        elif isinstance(event, ReleaseIndication):
            await performer.settle()  # every answer before A-RELEASE-RP
            t.conn.release_response()

    def _answer(self, t: Transport) -> Any:
        async def handler(context_id: int, message: Any, data: bytes) -> Any:
            assert t.negotiated is not None
            ts = t.negotiated.contexts[context_id].transfer_syntax
            return await self.waiting.answer(ts, message, data, "new association")

        return handler


__all__ = ["ReportListener"]
