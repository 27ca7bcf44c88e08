"""One inbound association, from TCP accept to close (PS3.8 9.1.2, PS3.7).

:class:`AcceptorAssociation` negotiates with :mod:`dicomstore.ul.negotiation` and
accepts the request within the association limits, admitting the caller
(``acceptance.py``: the limits, the gatekeeper of ``admission.py``, throttled per
address), then dispatches DIMSE messages: C-ECHO to Verification, C-STORE to the storage
SCP and so to the one store service, C-FIND to the query SCP (``query_scp.py``), C-MOVE
to the retrieve SCP (``retrieve_scp.py``), C-GET to the get SCP (``get_scp.py``, whose
C-STOREs go out on this association through ``same_association.py``), N-ACTION to the
Storage Commitment SCP (``commitment_scp.py``, whose N-EVENT-REPORTs may go out on it
too), the responses to what we sent to the association's invoker, a C-CANCEL to
whichever runs its operation; 0210/0211/0212 for what cannot be served, and the
asynchronous operations window (PS3.7 D.3.3.3) for commits that overlap receiving. The
asyncio shell below it only moves bytes and runs timers (``aio``).
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import TYPE_CHECKING

from dicomstore.aio.association import BelowRate, DeadlinePassed, StalledPDU, Transport
from dicomstore.aio.invoker import Invoker
from dicomstore.dimse import (
    CCancelRQ,
    CEchoRQ,
    CEchoRSP,
    CFindRQ,
    CGetRQ,
    CMoveRQ,
    CommandReceived,
    CStoreRQ,
    CStoreRSP,
    DatasetFragment,
    GenericRSP,
    InvalidRequest,
    NActionRQ,
    NActionRSP,
    NEventReportRQ,
    NEventReportRSP,
    UnknownCommand,
)
from dicomstore.dimse import status as st
from dicomstore.errors import AssociationAborted, RemoteProtocolError
from dicomstore.services import acceptance
from dicomstore.services.admission import Admission
from dicomstore.services.repeated import Repeated
from dicomstore.services.same_association import SameAssociationStore, acceptor_invoker
from dicomstore.services.storage_scp import Receiving, StorageSCP
from dicomstore.services.unserved import unserved_response
from dicomstore.services.verification import echo_refusal, echo_response
from dicomstore.tls import peer_subject
from dicomstore.ul import pdu as P
from dicomstore.ul.events import (
    AbortIndication,
    AssociateIndication,
    DataIndication,
    ReleaseIndication,
)
from dicomstore.ul.fsm import State
from dicomstore.ul.negotiation import describe_refused, negotiate, rejection_words

_QR_REQUESTS = (CFindRQ, CMoveRQ, CGetRQ, NActionRQ)

if TYPE_CHECKING:  # (the Q/R SCPs, and pydicom with them, load when first needed)
    from dicomstore.services.commitment_scp import CommitmentSCP
    from dicomstore.services.get_scp import GetSCP
    from dicomstore.services.query_scp import QuerySCP
    from dicomstore.services.retrieve_scp import RetrieveSCP
    from dicomstore.services.server import Server

log = logging.getLogger("dicomstore.server")


#: ``Server(commit_in_thread=WHEN_BUSY)``: commit in a worker thread only while
#: the loop has others to serve (see ``AcceptorAssociation._commit_in_thread``).
WHEN_BUSY = "when-busy"


class OperationTooSlow(Exception):
    """A DIMSE message did not arrive within Timeouts.operation."""


class AcceptorAssociation:
    """One inbound association, from TCP accept to close."""

    def __init__(self, server: Server, transport: Transport) -> None:
        self.server = server
        self.t = transport
        #: counted against ``max_associations`` (and the per-AE/address limits):
        #: from a complete A-ASSOCIATE-RQ within the limits until the end, so that
        #: connections still sending theirs (within ARTIM) take no slot
        self.holds_slot = False
        self.storage: StorageSCP | None = None
        self.receiving: Receiving | None = None
        self.query: QuerySCP | None = None
        self.retrieve: RetrieveSCP | None = None
        self.get: GetSCP | None = None
        self.commitment: CommitmentSCP | None = None
        self._qr_made: tuple[P.AssociateRQ, Admission] | None = None
        #: the requests we send on this association (C-STOREs of a C-GET,
        #: N-EVENT-REPORTs of Storage Commitment) and their responses
        self.invoker: Invoker | None = None
        #: C-STOREs we send on this association (C-GET sub-operations), when the
        #: requestor took the Storage SCP role for some SOP class (PS3.7 D.3.3.4)
        self.sender: SameAssociationStore | None = None
        #: C-STOREs whose data set arrived and whose commit runs, by Message ID.
        self.inflight: dict[int, asyncio.Task] = {}
        self.finishing: set[asyncio.Task] = set()  # (those too, answered, until done)
        #: a commit awaited in line (window 1): an operation in progress too
        self.committing = False
        self.request: P.AssociateRQ | None = None
        self.admission: Admission | None = None
        self.outcome = "closed before an association request"
        self.repeated = Repeated(log)
        self.stored = self.failed = self.kept = 0  # (kept: duplicates kept as they were)

    @property
    def address(self) -> str:
        peer = self.t.peer
        return str(peer[0]) if isinstance(peer, tuple) else str(peer)

    @property
    def busy(self) -> bool:
        """An operation is in progress (graceful shutdown lets it finish)."""
        return self.receiving is not None or self._answering

    @property
    def _answering(self) -> bool:
        """We work on its requests (a C-MOVE sending, commits), it owes us no answer (a
        C-GET's C-STORE-RSP): its silence is waiting, not idleness (PS3.7 9.1.4)."""
        qr = any(scp is not None and scp.busy for scp in self._qr_scps)
        owed = self.invoker is not None and bool(self.invoker.waiting)
        return (self.committing or bool(self.finishing) or qr) and not owed

    @property
    def _qr_scps(self) -> tuple[QuerySCP | RetrieveSCP | GetSCP | CommitmentSCP | None, ...]:
        return (self.query, self.retrieve, self.get, self.commitment)

    def _make_qr_scp(self, message: object) -> None:
        """Make the SCP of the association's first C-FIND, C-MOVE, C-GET or N-ACTION
        (their modules load pydicom: an association that only stores or echoes never does)."""
        if self._qr_made is None:
            return
        rq, admission = self._qr_made
        t, server, at = self.t, self.server, self.address
        if isinstance(message, CFindRQ) and self.query is None:
            self.query = server.query_scp(t, rq, at, admission)
        elif isinstance(message, CMoveRQ) and self.retrieve is None:
            self.retrieve = server.retrieve_scp(t, rq, at, admission)
        elif isinstance(message, CGetRQ) and self.get is None:
            self.get = server.get_scp(t, rq, at, admission, self.sender)
        elif isinstance(message, NActionRQ) and self.commitment is None:
            assert self.invoker is not None  # (made with the association, before this)
            self.commitment = server.commitment_scp(t, rq, at, admission, self.invoker)
        for scp in self._qr_scps:
            if scp is not None:
                scp.in_use = self._in_progress

    def _in_progress(self, message_id: int) -> bool:
        """An operation of ``message_id`` is in progress on the association (a C-STORE
        committing, a Q/R or commitment operation): a request of it is 0210 (PS3.7 Annex C)."""
        scps = self._qr_scps
        return message_id in self.inflight or any(s and s.in_progress(message_id) for s in scps)

    async def run(self) -> None:
        """Serve until the association ends; never raises."""
        t = self.t
        t.conn.transport_connected()  # Evt5 -> Sta2, ARTIM started
        try:
            timeouts = self.server.config.timeouts
            loop = asyncio.get_running_loop()
            started: float | None = None  # when the message being received began
            while not t.conn.is_closed:
                idle = timeouts.network if t.conn.is_established else None
                if t.assembler.idle and self.receiving is None:
                    started = None
                elif started is None:
                    started = loop.time()
                until = None
                if started is not None and timeouts.operation is not None:
                    until = started + timeouts.operation
                    if loop.time() >= until:
                        raise OperationTooSlow
                try:
                    events = await t.receive(idle, until)
                except StalledPDU as exc:
                    log.warning("%s: %s; aborting (A-ABORT, service-provider)", t.peer, exc)
                    slow = "too slow" if isinstance(exc, BelowRate) else "PDU too slow"
                    self.outcome = f"aborted: {slow}"
                    self._drop_receiving()
                    t.conn.protocol_error(exc)  # AA-8: A-ABORT, source 2, reason 0
                    await t.flush()
                    await t.close()  # the peer's trickle is not worth ARTIM
                    break
                except DeadlinePassed:
                    raise OperationTooSlow from None
                except TimeoutError:
                    if self._answering:  # (the peer waits for us: it is not idle)
                        continue
                    raise
                try:
                    for event in events:
                        await self._on_event(event)
                except RemoteProtocolError as exc:
                    log.warning("%s: protocol error: %s; aborting", t.peer, exc)  # (PS3.8 or PS3.7)
                    self.outcome = "aborted: protocol error"  # (review77 F18: "accepted")
                    self._drop_receiving()
                    t.conn.protocol_error(exc)  # AA-8: A-ABORT (provider), ARTIM
                await t.flush()
        except OperationTooSlow:
            log.warning(
                "%s: a message took longer than %ss to arrive, aborting",
                t.peer,
                self.server.config.timeouts.operation,
            )
            self.outcome = "aborted: too slow"
            t.abort_now()
        except TimeoutError:
            log.info(
                "%s: no activity for %ss, aborting", t.peer, self.server.config.timeouts.network
            )
            self.outcome = "aborted: idle"
            t.abort_now()
        except asyncio.CancelledError:  # (the server stopping, its grace over)
            acceptance.stop_now(self)
            raise
        except ConnectionError as exc:  # (a reset; a peer that read nothing: drain)
            log.info("%s: connection lost: %s", t.peer, exc)
            self.outcome = "aborted: connection lost"
            t.abort_now()
        except Exception:  # noqa: BLE001 - one association must not kill the server
            log.exception("%s: internal error, aborting", t.peer)
            self.outcome = "aborted: internal error"
            t.abort_now()
        finally:
            self._drop_receiving()
            if self.invoker is not None:  # requests awaiting a response fail
                self.invoker.end(AssociationAborted("the association ended"))
            for scp in self._qr_scps:
                if scp is not None:
                    await scp.close()
            if self.finishing:  # the peer left: commits finish, answers go nowhere
                await asyncio.wait(list(self.finishing))
            await t.close()
            acceptance.association_ended(self)

    def _drop_receiving(self) -> None:
        """Whatever was being received is abandoned: no file, no row."""
        if self.receiving is not None:
            self.receiving.abort()
            self.receiving = None

    async def _on_event(self, event) -> None:
        t = self.t
        if isinstance(event, DataIndication):
            for pdv in event.pdvs:  # (decoded as read: a turn every PDVS_PER_TURN)
                acceptance.check_context(self.t.negotiated, pdv.context_id)
                await t.pace()
                for dimse_event in t.assembler.receive(pdv):
                    await self._on_dimse(dimse_event)
        elif isinstance(event, AssociateIndication):
            await self._on_request(event.request)
        elif isinstance(event, ReleaseIndication):
            if self.finishing:  # every answer goes out before A-RELEASE-RP
                await asyncio.wait(list(self.finishing))
            await self._settle_operations()
            if t.conn.state is not State.STA8:  # a PDU read with it ended it: not ours
                log.info("%s: A-RELEASE-RQ, then the association ended", t.peer)
                return
            t.conn.release_response()
            self.outcome = "released"
        elif isinstance(event, AbortIndication):
            log.info("%s: %s", t.peer, event.message)
            self.outcome = f"aborted: {event.message}"

    async def _settle_operations(self) -> None:
        """Before the A-RELEASE-RP, the Q/R and commitment operations received are
        answered (AR-7). The requestor awaits the RP (Sta7) and sends no more
        responses: what we await from it on this association fails now (a C-GET's
        sub-operations; a commitment report then goes on a new association), and an
        operation not done within the idle timeout (a C-MOVE) is stopped."""
        if self.invoker is not None:
            self.invoker.end(AssociationAborted("the peer asked to release the association"))
        scps = [scp for scp in self._qr_scps if scp is not None and scp.busy]
        limit = self.server.config.timeouts.network
        try:
            async with asyncio.timeout(limit):
                for scp in scps:
                    await scp.finished()
        except TimeoutError:
            log.warning(
                "%s: operations still running %gs after A-RELEASE-RQ: stopped", self.t.peer, limit
            )
            for scp in scps:
                await scp.close()

    def _commit_in_thread(self) -> bool:
        """Commit in a worker thread, so that the loop serves others meanwhile; with
        :data:`WHEN_BUSY`, not when this association is the only one and awaits each
        answer (window 1): the thread hop would only delay it (5-10% of a commit)."""
        mode = self.server.commit_in_thread
        if mode != WHEN_BUSY:
            return bool(mode)
        window = self.t.negotiated.max_ops_invoked if self.t.negotiated else 1
        return window != 1 or len(self.server.associations) > 1

    def _reject(self, rq: P.AssociateRQ, rj: P.AssociateRJ, why: str) -> None:
        self.holds_slot = False
        log.warning("%s: rejected %s -> %s: %s", self.t.peer, rq.calling_ae, rq.called_ae, why)
        self.outcome = f"rejected: {why}"
        self.t.conn.reject(rj)

    async def _on_request(self, rq: P.AssociateRQ) -> None:
        t = self.t
        self.request = rq
        limit = acceptance.over_limits(self.server, self, rq)
        if limit is not None:
            self._reject(rq, *limit)
            return
        self.holds_slot = True  # before any await: requests arriving meanwhile count it
        answer, negotiated = negotiate(rq, self.server.policy)
        if isinstance(answer, P.AssociateRJ):  # (with the detail the RJ cannot give)
            self._reject(rq, answer, rejection_words(rq, answer))
            return
        assert negotiated is not None
        subject = peer_subject(t.writer.get_extra_info("peercert"))
        admission, rejection = await acceptance.admit(
            self.server, rq, answer, self.address, subject
        )
        self.admission = admission
        if t.conn.state is not State.STA3:  # (the peer left meanwhile: review107 L3)
            log.info("%s: the peer left before its association was answered", t.peer)
            self.outcome = "closed before its association was answered"
            return
        if rejection is not None:
            self._reject(rq, *rejection)
            return
        assert admission is not None
        t.negotiated = negotiated
        self.storage = StorageSCP(
            self.server.store,
            negotiated,
            may_store=admission.may_store,
            commit_in_thread=self._commit_in_thread,
            address=self.address,
            user=admission.user,
        )
        self.invoker = acceptor_invoker(t, partial(setattr, self, "outcome"))
        sender = SameAssociationStore(t, self.invoker)
        self.sender = sender if sender.usable else None
        self._qr_made = (rq, admission)  # (each Q/R SCP is made at its first request)
        if subject:
            log.info("%s: TLS peer certificate %s", t.peer, subject)
        log.info(
            "%s: association %s -> %s%s, %d of %d contexts accepted",
            t.peer,
            rq.calling_ae,
            rq.called_ae,
            f" (user {admission.user})" if admission.user else "",
            len(negotiated.contexts),
            len(rq.presentation_contexts),
        )
        refused = describe_refused(rq, answer)
        if refused is not None:
            log.info("%s: contexts refused: %s", t.peer, refused)
        self.outcome = "accepted"
        t.conn.accept(answer)

    async def _on_dimse(self, event) -> None:
        t = self.t
        # the C-STORE hot path first: a fragment of the data set being received (one
        # message at a time on an association, PS3.7 6.3.1), or a C-STORE-RQ, is
        # storage's; anything else goes to the Q/R SCP that handles it, if one does
        if isinstance(event, DatasetFragment):
            receiving = self.receiving
            if receiving is not None:
                # (any bytes-like: Receiving.write only writes it out and takes its len)
                receiving.write(event.data)
                if event.is_last:
                    self.receiving = None
                    await self._complete(event.context_id, receiving)
                return
        elif isinstance(event.message, CStoreRQ):
            self._begin_store(event.context_id, event.message)
            return
        if isinstance(event, CommandReceived) and isinstance(event.message, _QR_REQUESTS):
            await self.server.load_qr()
            self._make_qr_scp(event.message)
        for scp in self._qr_scps:
            if scp is not None and scp.handles(event):
                scp.receive(event)
                if scp.held:  # beyond the operations window: read on once one ends
                    await scp.room()
                return
        if isinstance(event, DatasetFragment):  # a data set we decided to discard
            return
        if isinstance(event.message, CStoreRSP | NEventReportRSP):
            if self.invoker is None or not self.invoker.deliver(event.message):
                name = type(event.message).__name__
                said = f"{name} to no request of ours ignored"
                self.repeated.say(logging.WARNING, "responses to no request", t.peer, said)
            return
        assert isinstance(event, CommandReceived)
        message = event.message
        rsp: CStoreRSP | CEchoRSP | GenericRSP | NActionRSP | NEventReportRSP
        if isinstance(message, CEchoRQ):
            assert t.negotiated is not None  # PDVs arrive on accepted contexts only
            refusal = echo_refusal(message, t.negotiated.contexts[event.context_id].abstract_syntax)
            if refusal is not None:
                said = f"answering 0122: {refusal.error_comment}"
                self.repeated.say(logging.WARNING, "C-ECHOs refused", t.peer, said)
                rsp = refusal
            elif self.admission is not None and not self.admission.may_echo:
                rsp = message.response(st.NOT_AUTHORIZED, "C-ECHO is not allowed for this caller")
            else:
                rsp = echo_response(message)
            t.queue_message(event.context_id, rsp.encode())
        elif isinstance(message, InvalidRequest | UnknownCommand | NActionRQ | NEventReportRQ):
            if getattr(message, "is_response", False):
                said = f"unexpected response {message.command_field:#06x} ignored"
                self.repeated.say(logging.WARNING, "unexpected responses", t.peer, said)
                return
            rsp = unserved_response(message, self.server.commitments is not None)
            said = f"answering {rsp.status:#06x}: {rsp.error_comment}"
            self.repeated.say(logging.WARNING, "requests no service takes", t.peer, said)
            if message.has_dataset:  # answer once the data set, discarded, is complete
                self.receiving = Receiving(None, None, None, rsp)  # type: ignore[arg-type]
            else:
                t.queue_message(event.context_id, rsp.encode())
        elif isinstance(message, CCancelRQ):  # PS3.7 9.3.2.3: nothing to answer
            said = (
                f"C-CANCEL-RQ, message {message.message_id_being_responded_to} not in progress"
                f" on context {event.context_id}"
            )
            self.repeated.say(logging.INFO, "C-CANCEL-RQs not in progress", t.peer, said)
        else:
            said = f"unexpected {type(message).__name__} ignored"
            self.repeated.say(logging.WARNING, "unexpected messages", t.peer, said)

    def _begin_store(self, context_id: int, message: CStoreRQ) -> None:
        assert self.storage is not None
        if self._in_progress(message.message_id):
            self.receiving = self.storage.refuse(
                message,
                st.DUPLICATE_INVOCATION,
                f"message ID {message.message_id} is still being processed",
            )
        else:
            self.receiving = self.storage.begin(context_id, message)

    async def _complete(self, context_id: int, receiving: Receiving) -> None:
        """Commit and answer; up to the granted asynchronous operations window (PS3.7
        D.3.3.3) commits run while the next data sets arrive; at the limit we stop
        reading the socket until one finishes (backpressure)."""
        assert self.storage is not None
        window = self.t.negotiated.max_ops_invoked if self.t.negotiated else 1
        inline = not self.server.commit_in_thread
        if receiving.response is not None or window == 1 or receiving.rq is None or inline:
            self.committing = True
            try:
                rsp = await self._finish(receiving)
            finally:
                self.committing = False
            self.t.queue_message(context_id, rsp.encode())
            return
        msg_id = receiving.rq.message_id
        task = asyncio.create_task(self._finish_later(context_id, receiving))
        self.inflight[msg_id] = task
        self.finishing.add(task)
        task.add_done_callback(self.finishing.discard)
        task.add_done_callback(partial(self._answered, msg_id))
        if window and len(self.inflight) >= window:
            await asyncio.wait(list(self.inflight.values()), return_when=asyncio.FIRST_COMPLETED)

    def _answered(self, message_id: int, task: asyncio.Task | None) -> None:
        """The C-STORE of ``task`` is answered: its ID free for another (review72 F1)."""
        if self.inflight.get(message_id) is task:  # (else it is another's already)
            del self.inflight[message_id]

    async def _finish(self, receiving: Receiving):
        assert self.storage is not None
        rsp = await self.storage.finish(receiving)
        failed = st.is_failure(rsp.status)
        self.failed, self.kept = self.failed + failed, self.kept + receiving.kept
        self.stored += not failed and not receiving.kept
        return rsp

    async def _finish_later(self, context_id: int, receiving: Receiving) -> None:
        rsp = await self._finish(receiving)
        t = self.t
        if t.conn.state in (State.STA6, State.STA8):  # DT-1 or AR-7 (PS3.8 Table 9-10)
            t.queue_message(context_id, rsp.encode())
            self._answered(rsp.message_id_being_responded_to, asyncio.current_task())
            try:
                await t.drain()
            except (ConnectionError, OSError):
                pass
