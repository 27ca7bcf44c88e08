"""A sans-I/O DICOM upper layer connection (PS3.8 7 and 9).

A buffer view in, events out; primitives in, a list of buffers out.  The :mod:`fsm` table decides
every transition; this module only carries out the effects: it encodes PDUs
into an outbox, turns received PDUs into the events of :mod:`events`, and
exposes the ARTIM timer and "close the transport" as flags for the I/O shell.
"""

from __future__ import annotations

import enum

from dicomstore.errors import RemoteProtocolError
from dicomstore.ul import pdu as P
from dicomstore.ul.events import (
    AbortIndication,
    AssociateAccepted,
    AssociateIndication,
    AssociateRejected,
    DataIndication,
    ReleaseConfirmation,
    ReleaseIndication,
    ULEvent,
)
from dicomstore.ul.fsm import Effect, Event, State, step


class Role(enum.Enum):
    """Which end of the association this connection is."""

    REQUESTOR = "requestor"
    ACCEPTOR = "acceptor"


_PDU_EVENT: dict[type, Event] = {
    P.AssociateRQ: Event.ASSOCIATE_RQ_PDU,
    P.AssociateAC: Event.ASSOCIATE_AC_PDU,
    P.AssociateRJ: Event.ASSOCIATE_RJ_PDU,
    P.PDataTF: Event.P_DATA_TF_PDU,
    P.ReleaseRQ: Event.RELEASE_RQ_PDU,
    P.ReleaseRP: Event.RELEASE_RP_PDU,
    P.Abort: Event.ABORT_PDU,
}

#: A-ASSOCIATE-RJ sent when the provider refuses the protocol version (AE-6).
_BAD_VERSION = P.AssociateRJ(
    P.REJECT_PERMANENT, P.REJECT_SOURCE_ACSE, P.REJECT_PROTOCOL_VERSION_NOT_SUPPORTED
)


class Connection:
    """One association's upper layer protocol machine, with no I/O.

    ``max_pdata`` is the maximum P-DATA-TF length we advertise (0 = no limit);
    a larger inbound PDU is refused from its header.  ``max_other`` caps the
    other PDUs.  Received bytes go in through :meth:`receive_view`; after each
    call, the shell writes :meth:`parts_to_send`, keeps the ARTIM timer running
    while :attr:`artim_running`, and closes the socket once
    :attr:`close_requested`.
    """

    def __init__(self, role: Role, *, max_pdata: int = 0, max_other: int = 256 * 1024) -> None:
        self.role = role
        self.state = State.STA1
        self.artim_running = False
        self.close_requested = False
        self.connect_requested = False
        self._reader = P.PDUReader(max_pdata, max_other)
        self._out: list[bytes | bytearray | memoryview] = []
        self._pending: P.PDU | None = None  # the PDU a local primitive asked to send
        self._received: P.PDU | None = None  # the PDU being handled
        self._error: RemoteProtocolError | None = None
        self._discard_input = False
        #: Why the peer's PDU before an association made us send an A-ABORT (AA-1 in
        #: Sta2: an invalid PDU, or one not expected there); None if it did not.
        self.refused_early: str | None = None

    # -- the shell's side -------------------------------------------------

    def parts_to_send(self) -> list[bytes | bytearray | memoryview]:
        """Everything queued for the peer since the last call, as buffers in order.

        Made for a vectored write (no copy): PDV data the caller queued with
        :meth:`send_each` or :meth:`send_pdvs` come back as given and must stay
        unchanged until written.
        """
        out = self._out
        self._out = []
        return out

    @property
    def is_established(self) -> bool:
        """True in Sta6 (data transfer)."""
        return self.state is State.STA6

    @property
    def is_closed(self) -> bool:
        """True once back in Sta1 after the association existed."""
        return self.state is State.STA1

    def transport_connected(self) -> list[ULEvent]:
        """Evt5 (acceptor: a peer connected) or Evt2 (requestor: our connect completed)."""
        if self.role is Role.ACCEPTOR:
            return self._handle(Event.TRANSPORT_CONNECT_INDICATION)
        return self._handle(Event.TRANSPORT_CONNECT_CONFIRM)

    def transport_closed(self) -> list[ULEvent]:
        """Evt17: the peer closed the TCP connection (or it failed)."""
        if self.state is State.STA1:
            return []
        return self._handle(Event.TRANSPORT_CLOSED)

    def artim_expired(self) -> list[ULEvent]:
        """Evt18: the ARTIM timer ran out (PS3.8 9.1.5)."""
        return self._handle(Event.ARTIM_EXPIRED)

    def receive_view(self, data: memoryview) -> tuple[list[ULEvent], int]:
        """Feed what the transport delivered, in a buffer the shell owns: no copy.

        ``data`` is everything received and not yet consumed.  Returns the
        events of the complete PDUs at its start and how many bytes they took;
        the shell keeps the rest and presents it again, followed by more bytes.
        Once the stream is out of sync (an invalid PDU) every byte is consumed
        and ignored.  The data of the P-DATA PDVs in the events are views into
        ``data``: the shell must leave that memory alone until it is done with
        them.
        """
        if self._discard_input:
            return [], len(data)
        error: RemoteProtocolError | None = None
        try:
            pdus, used = self._reader.parse(data)
        except RemoteProtocolError as exc:
            pdus, error, used = exc.pdus, exc, len(data)
        events = self._deliver(pdus, error)
        return events, len(data) if self._discard_input else used

    def _deliver(self, pdus: list[P.PDU], error: RemoteProtocolError | None) -> list[ULEvent]:
        events: list[ULEvent] = []
        for index, pdu in enumerate(pdus):
            if self._discard_input:
                break
            try:
                events += self._handle(_PDU_EVENT[type(pdu)], pdu)
            except RemoteProtocolError as exc:
                del pdus[index:]
                events += self._invalid(exc)
                break
        if error is not None and not self._discard_input:
            events += self._invalid(error)
        return events

    def protocol_error(self, exc: RemoteProtocolError) -> list[ULEvent]:
        """A layer above found the peer's data invalid: handled as Evt19 (AA-8)."""
        return self._invalid(exc)

    def _invalid(self, exc: RemoteProtocolError) -> list[ULEvent]:
        """Evt19: unrecognized or invalid PDU; the stream is no longer in sync."""
        self._error = exc
        self._discard_input = True
        return self._handle(Event.INVALID_PDU)

    # -- local primitives -------------------------------------------------

    def request(self, rq: P.AssociateRQ) -> None:
        """Evt1: A-ASSOCIATE request; the shell then connects and calls transport_connected()."""
        self._pending = rq
        self._handle(Event.A_ASSOCIATE_RQ_LOCAL)

    def accept(self, ac: P.AssociateAC) -> None:
        """Evt7: A-ASSOCIATE response (accept)."""
        self._pending = ac
        self._handle(Event.A_ASSOCIATE_RSP_ACCEPT)

    def reject(self, rj: P.AssociateRJ) -> None:
        """Evt8: A-ASSOCIATE response (reject)."""
        self._pending = rj
        self._handle(Event.A_ASSOCIATE_RSP_REJECT)

    def send_pdvs(self, pdvs: list[P.PDV]) -> None:
        """Evt9: P-DATA request, one P-DATA-TF PDU holding ``pdvs``."""
        state = self.state
        if state is State.STA6:  # DT-1, the hot path: no table walk
            self._out += P.encode_pdata_parts(pdvs)
            return
        self._pending = P.PDataTF(pdvs)
        self._handle(Event.P_DATA_RQ_LOCAL)

    def send_each(self, pdvs: list[P.PDV]) -> None:
        """Evt9 once per PDV: each in a P-DATA-TF of its own (as DIMSE sends them)."""
        if self.state is State.STA6:  # DT-1 each time, the hot path
            P.encode_pdata_each(pdvs, self._out)
            return
        for pdv in pdvs:
            self.send_pdvs([pdv])

    def release(self) -> None:
        """Evt11: A-RELEASE request."""
        self._handle(Event.A_RELEASE_RQ_LOCAL)

    def release_response(self) -> None:
        """Evt14: A-RELEASE response (affirmative)."""
        self._handle(Event.A_RELEASE_RSP_LOCAL)

    def abort(self) -> None:
        """Evt15: A-ABORT request (service-user source)."""
        self._handle(Event.A_ABORT_RQ_LOCAL)

    # -- the machine ------------------------------------------------------

    def _handle(self, event: Event, received: P.PDU | None = None) -> list[ULEvent]:
        acceptable = True
        if event is Event.ASSOCIATE_RQ_PDU:
            assert isinstance(received, P.AssociateRQ)
            acceptable = bool(received.protocol_version & 1)
            if not acceptable:
                self._pending = _BAD_VERSION
        _, outcome = step(
            self.state, event, acceptable=acceptable, is_requestor=self.role is Role.REQUESTOR
        )
        self._received = received
        events: list[ULEvent] = []
        for effect in outcome.effects:
            self._do(effect, events)
        self.state = outcome.next_state
        if self.state is State.STA1 and event is not Event.A_ASSOCIATE_RQ_LOCAL:
            self.close_requested = True
            self.artim_running = False
        return events

    def _send(self, pdu: P.PDU) -> None:
        if isinstance(pdu, P.PDataTF):  # AR-7 and DT-1 outside the hot path
            self._out += P.encode_pdata_parts(pdu.pdvs)
        else:
            self._out.append(P.encode(pdu))

    def _do(self, effect: Effect, events: list[ULEvent]) -> None:  # noqa: C901 - a dispatch
        received = self._received
        if effect is Effect.INDICATE_P_DATA:
            assert isinstance(received, P.PDataTF)
            events.append(DataIndication(received.pdvs))
        elif effect is Effect.SEND_P_DATA or effect in _SEND_PENDING:
            assert self._pending is not None
            self._send(self._pending)
            self._pending = None
        elif effect is Effect.START_ARTIM:
            self.artim_running = True
        elif effect is Effect.STOP_ARTIM:
            self.artim_running = False
        elif effect is Effect.CLOSE_TRANSPORT:
            self.close_requested = True
        elif effect is Effect.CONNECT:
            self.connect_requested = True
        elif effect is Effect.SEND_RELEASE_RQ:
            self._send(P.ReleaseRQ())
        elif effect is Effect.SEND_RELEASE_RP:
            self._send(P.ReleaseRP())
        elif effect is Effect.SEND_ABORT_USER:
            if self._error is not None and self.role is Role.ACCEPTOR:
                # AA-1 reached by a bad PDU in Sta2: the provider is the source.
                self._send(P.Abort(P.ABORT_SOURCE_PROVIDER, self._error.reason))
                self.refused_early = str(self._error)
            else:
                self._send(P.Abort(P.ABORT_SOURCE_USER, 0))
                if self.state is State.STA2 and received is not None:
                    self.refused_early = f"{type(received).__name__} PDU before an association"
        elif effect is Effect.SEND_ABORT_PROVIDER:
            # The same reason as the A-P-ABORT indication: "unexpected PDU" only
            # when a PDU caused it (not, e.g., a timer firing in the wrong state).
            self._send(P.Abort(P.ABORT_SOURCE_PROVIDER, self._p_abort().reason))
        elif effect is Effect.INDICATE_ASSOCIATE:
            assert isinstance(received, P.AssociateRQ)
            events.append(AssociateIndication(received))
        elif effect is Effect.CONFIRM_ACCEPT:
            assert isinstance(received, P.AssociateAC)
            events.append(AssociateAccepted(received))
        elif effect is Effect.CONFIRM_REJECT:
            assert isinstance(received, P.AssociateRJ)
            events.append(AssociateRejected(received))
        elif effect is Effect.INDICATE_RELEASE:
            events.append(ReleaseIndication(collision=False))
        elif effect is Effect.INDICATE_RELEASE_COLLISION:
            events.append(ReleaseIndication(collision=True))
        elif effect is Effect.CONFIRM_RELEASE:
            events.append(ReleaseConfirmation())
        elif effect is Effect.INDICATE_ABORT:
            assert isinstance(received, P.Abort)
            events.append(
                AbortIndication(
                    source=received.source,
                    reason=received.reason,
                    provider=received.source != P.ABORT_SOURCE_USER,
                    message=P.describe_abort(received.source, received.reason),
                )
            )
        elif effect is Effect.INDICATE_P_ABORT:
            events.append(self._p_abort())
        # ACCEPT_TRANSPORT and IGNORE_PDU need nothing from us.

    def _p_abort(self) -> AbortIndication:
        """A-P-ABORT: the provider ended the association (PS3.8 7.4)."""
        if self._error is not None:
            return AbortIndication(
                source=P.ABORT_SOURCE_PROVIDER,
                reason=self._error.reason,
                provider=True,
                message=f"protocol error from the peer: {self._error}",
            )
        if self._received is not None:
            return AbortIndication(
                source=P.ABORT_SOURCE_PROVIDER,
                reason=P.ABORT_UNEXPECTED_PDU,
                provider=True,
                message=unexpected(type(self._received).__name__, self.state),
            )
        return AbortIndication(
            source=P.ABORT_SOURCE_PROVIDER,
            reason=P.ABORT_REASON_NOT_SPECIFIED,
            provider=True,
            message="the connection closed unexpectedly",
        )


_SEND_PENDING = frozenset(
    {Effect.SEND_ASSOCIATE_RQ, Effect.SEND_ASSOCIATE_AC, Effect.SEND_ASSOCIATE_RJ}
)


#: PDUs by the names PS3.8 9.3 gives them, for messages
PDU_NAMES = {
    "AssociateRQ": "an A-ASSOCIATE-RQ",
    "AssociateAC": "an A-ASSOCIATE-AC",
    "AssociateRJ": "an A-ASSOCIATE-RJ",
    "PDataTF": "a P-DATA-TF",
    "ReleaseRQ": "an A-RELEASE-RQ",
    "ReleaseRP": "an A-RELEASE-RP",
    "Abort": "an A-ABORT",
}
#: what a state waits for, in words (PS3.8 Table 9-1)
STATE_WORDS = {
    State.STA2: "before the association request",
    State.STA5: "instead of answering our association request",
    State.STA6: "on the established association",
    State.STA7: "instead of answering our release request",
    State.STA13: "as the connection was closing",
}


def unexpected(pdu: str, state: State) -> str:
    """An unexpected PDU, in words (review38scu #15: 'unexpected PDataTF in STA5')."""
    where = STATE_WORDS.get(state, f"in state {state.name} (PS3.8 Table 9-1)")
    return f"the peer sent {PDU_NAMES.get(pdu, pdu)} {where}"
