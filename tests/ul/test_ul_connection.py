"""The sans-I/O upper layer connection, in memory: no sockets, no sleeps.

A requestor and an acceptor are wired to each other by handing what
``parts_to_send()`` gives across to the other's ``receive_view()`` (through the
tests' :class:`~ul_vectors.Receiver`, as the asyncio shell hands its receive
buffer over); the transport closing is simulated by calling
``transport_closed()`` on the side that did not close.  Then every reachable
(state, event) cell of PS3.8 Table 9-10 is driven through a real
:class:`Connection`, put in its state by a real sequence of primitives and PDUs.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from ul_vectors import Receiver, read_pdus, receive, sent_bytes

from dicomstore.errors import LocalProtocolError, RemoteProtocolError
from dicomstore.ul import items as I
from dicomstore.ul import pdu as P
from dicomstore.ul.connection import Connection, Role
from dicomstore.ul.events import (
    AbortIndication,
    AssociateAccepted,
    AssociateIndication,
    AssociateRejected,
    DataIndication,
    ReleaseConfirmation,
    ReleaseIndication,
)
from dicomstore.ul.fsm import Event, State, step

VERIFICATION = "1.2.840.10008.1.1"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"

REQ, ACC = Role.REQUESTOR, Role.ACCEPTOR
S = State


def make_rq(**changes) -> P.AssociateRQ:
    rq = P.AssociateRQ(
        called_ae="STORESCP",
        calling_ae="STORESCU",
        presentation_contexts=[
            I.PresentationContextRQ(1, VERIFICATION, [IMPLICIT]),
            I.PresentationContextRQ(3, CT_STORAGE, [EXPLICIT, IMPLICIT]),
        ],
        user_info=I.UserInformation(
            max_length=16384, implementation_class_uid="1.2.826.0.1.3680043.9.1"
        ),
    )
    for name, value in changes.items():
        setattr(rq, name, value)
    return rq


def make_ac() -> P.AssociateAC:
    return P.AssociateAC(
        called_ae="STORESCP",
        calling_ae="STORESCU",
        presentation_contexts=[
            I.PresentationContextAC(1, I.ACCEPTANCE, IMPLICIT),
            I.PresentationContextAC(3, I.ACCEPTANCE, EXPLICIT),
        ],
        user_info=I.UserInformation(max_length=32768, implementation_class_uid="1.2.3.4"),
    )


RJ = P.AssociateRJ(P.REJECT_PERMANENT, P.REJECT_SOURCE_USER, P.REJECT_NO_REASON)
PDV = P.PDV(1, True, True, b"\x01\x02\x03\x04")
PDV2 = P.PDV(3, False, False, b"pixel data fragment")
GARBAGE = bytes((0x09, 0, 0, 0, 0, 4, 0, 0, 0, 0))  # PDU type 09H does not exist


def wire(pdu: P.PDU) -> bytes:
    return P.encode(pdu)


def sent(conn: Connection) -> list[P.PDU]:
    """Decode everything the connection queued for its peer."""
    return read_pdus(sent_bytes(conn))


def abort_of(conn: Connection) -> tuple[int, int]:
    pdus = sent(conn)
    assert len(pdus) == 1 and isinstance(pdus[0], P.Abort), pdus
    return pdus[0].source, pdus[0].reason


# -- putting one connection in each state, by real primitives and PDUs ------


def to_sta1(role: Role) -> Connection:
    return Connection(role)


def to_sta2(role: Role = ACC) -> Connection:
    conn = Connection(ACC)
    assert conn.transport_connected() == []
    return conn


def to_sta3(role: Role = ACC) -> Connection:
    conn = to_sta2()
    events = receive(conn, wire(make_rq()))
    assert [type(e) for e in events] == [AssociateIndication]
    return conn


def to_sta4(role: Role = REQ) -> Connection:
    conn = Connection(REQ)
    conn.request(make_rq())
    return conn


def to_sta5(role: Role = REQ) -> Connection:
    conn = to_sta4()
    assert conn.transport_connected() == []
    assert sent(conn) == [make_rq()]
    return conn


def to_sta6(role: Role) -> Connection:
    if role is REQ:
        conn = to_sta5()
        events = receive(conn, wire(make_ac()))
        assert [type(e) for e in events] == [AssociateAccepted]
    else:
        conn = to_sta3()
        conn.accept(make_ac())
        assert sent(conn) == [make_ac()]
    return conn


def to_sta7(role: Role) -> Connection:
    conn = to_sta6(role)
    conn.release()
    assert sent(conn) == [P.ReleaseRQ()]
    return conn


def to_sta8(role: Role) -> Connection:
    conn = to_sta6(role)
    assert receive(conn, wire(P.ReleaseRQ())) == [ReleaseIndication(collision=False)]
    return conn


def to_sta9(role: Role = REQ) -> Connection:
    conn = to_sta7(REQ)
    assert receive(conn, wire(P.ReleaseRQ())) == [ReleaseIndication(collision=True)]
    return conn


def to_sta10(role: Role = ACC) -> Connection:
    conn = to_sta7(ACC)
    assert receive(conn, wire(P.ReleaseRQ())) == [ReleaseIndication(collision=True)]
    return conn


def to_sta11(role: Role = REQ) -> Connection:
    conn = to_sta9()
    conn.release_response()
    assert sent(conn) == [P.ReleaseRP()]
    return conn


def to_sta12(role: Role = ACC) -> Connection:
    conn = to_sta10()
    assert receive(conn, wire(P.ReleaseRP())) == [ReleaseConfirmation()]
    return conn


def to_sta13(role: Role) -> Connection:
    if role is ACC:  # AE-8: the local user rejected the association
        conn = to_sta3()
        conn.reject(RJ)
        assert sent(conn) == [RJ]
    else:  # AA-1: the local user aborted the association
        conn = to_sta6(REQ)
        conn.abort()
        assert abort_of(conn) == (0, 0)
    assert conn.artim_running
    return conn


SETUPS: dict[State, Callable[[Role], Connection]] = {
    S.STA1: to_sta1,
    S.STA2: to_sta2,
    S.STA3: to_sta3,
    S.STA4: to_sta4,
    S.STA5: to_sta5,
    S.STA6: to_sta6,
    S.STA7: to_sta7,
    S.STA8: to_sta8,
    S.STA9: to_sta9,
    S.STA10: to_sta10,
    S.STA11: to_sta11,
    S.STA12: to_sta12,
    S.STA13: to_sta13,
}
#: The roles in which each state can be reached.
ROLES = {
    S.STA1: (REQ, ACC),
    S.STA2: (ACC,),
    S.STA3: (ACC,),
    S.STA4: (REQ,),
    S.STA5: (REQ,),
    S.STA6: (REQ, ACC),
    S.STA7: (REQ, ACC),
    S.STA8: (REQ, ACC),
    S.STA9: (REQ,),
    S.STA10: (ACC,),
    S.STA11: (REQ,),
    S.STA12: (ACC,),
    S.STA13: (REQ, ACC),
}


@pytest.mark.parametrize(
    "state,role", [(s, r) for s, roles in ROLES.items() for r in roles], ids=str
)
def test_each_state_is_reached_by_real_sequences(state, role):
    conn = SETUPS[state](role)
    assert conn.state is state
    assert conn.role is role
    assert conn.parts_to_send() == []
    assert not conn.close_requested
    # ARTIM runs exactly in Sta2 and Sta13 (PS3.8 9.1.5)
    assert conn.artim_running == (state in (S.STA2, S.STA13))


# -- a requestor and an acceptor wired together -----------------------------


class Pair:
    """A requestor and an acceptor joined by an in-memory "transport"."""

    def __init__(self, *, max_pdata: int = 0) -> None:
        self.req = Connection(REQ)
        self.acc = Connection(ACC, max_pdata=max_pdata)
        self.req_events: list = []
        self.acc_events: list = []
        self.req_inbox = Receiver(self.req.receive_view)
        self.acc_inbox = Receiver(self.acc.receive_view)

    def connect(self, rq: P.AssociateRQ | None = None) -> None:
        self.req.request(rq or make_rq())
        assert self.req.connect_requested and self.req.state is S.STA4
        self.acc_events += self.acc.transport_connected()
        self.req_events += self.req.transport_connected()

    def pump(self, byte_by_byte: bool = False) -> None:
        """Deliver queued bytes both ways until neither side has anything to say."""
        while True:
            to_acc = sent_bytes(self.req)
            to_req = sent_bytes(self.acc)
            if not to_acc and not to_req:
                return
            self.acc_events += _deliver(self.acc_inbox, to_acc, byte_by_byte)
            self.req_events += _deliver(self.req_inbox, to_req, byte_by_byte)

    def close_transport(self) -> None:
        """The side that asked closes its socket; the other sees it closed."""
        self.pump()
        if self.req.close_requested and self.acc.state is not S.STA1:
            self.acc_events += self.acc.transport_closed()
        if self.acc.close_requested and self.req.state is not S.STA1:
            self.req_events += self.req.transport_closed()

    def establish(self, byte_by_byte: bool = False) -> None:
        self.connect()
        self.pump(byte_by_byte)
        (indication,) = self.acc_events
        assert isinstance(indication, AssociateIndication)
        assert indication.request == make_rq()
        self.acc.accept(make_ac())
        self.pump(byte_by_byte)
        assert self.req_events == [AssociateAccepted(make_ac())]
        assert self.req.is_established and self.acc.is_established
        self.req_events.clear()
        self.acc_events.clear()


def _deliver(inbox: Receiver, data: bytes, byte_by_byte: bool) -> list:
    if not byte_by_byte:
        return inbox.receive(data)
    return inbox.receive_chunks(data, range(len(data)))


def test_association_accepted():
    pair = Pair()
    pair.connect()
    assert pair.acc.state is S.STA2 and pair.acc.artim_running
    assert pair.req.state is S.STA5
    pair.pump()
    assert pair.acc.state is S.STA3
    assert not pair.acc.artim_running  # AE-6 stops it
    assert pair.acc_events == [AssociateIndication(make_rq())]
    pair.acc.accept(make_ac())
    assert pair.acc.state is S.STA6
    pair.pump()
    assert pair.req_events == [AssociateAccepted(make_ac())]
    assert pair.req.is_established and pair.acc.is_established
    assert not pair.req.close_requested and not pair.acc.close_requested


REJECTIONS = [
    (result, source, reason)
    for result in (P.REJECT_PERMANENT, P.REJECT_TRANSIENT)
    for source, reason in [
        (P.REJECT_SOURCE_USER, P.REJECT_NO_REASON),
        (P.REJECT_SOURCE_USER, P.REJECT_APPLICATION_CONTEXT_NOT_SUPPORTED),
        (P.REJECT_SOURCE_USER, P.REJECT_CALLING_AE_NOT_RECOGNIZED),
        (P.REJECT_SOURCE_USER, P.REJECT_CALLED_AE_NOT_RECOGNIZED),
        (P.REJECT_SOURCE_ACSE, 1),
        (P.REJECT_SOURCE_ACSE, P.REJECT_PROTOCOL_VERSION_NOT_SUPPORTED),
        (P.REJECT_SOURCE_PRESENTATION, P.REJECT_TEMPORARY_CONGESTION),
        (P.REJECT_SOURCE_PRESENTATION, P.REJECT_LOCAL_LIMIT_EXCEEDED),
    ]
]


@pytest.mark.parametrize("result,source,reason", REJECTIONS)
def test_association_rejected(result, source, reason):
    pair = Pair()
    pair.connect()
    pair.pump()
    rj = P.AssociateRJ(result, source, reason)
    pair.acc.reject(rj)  # AE-8
    assert pair.acc.state is S.STA13 and pair.acc.artim_running
    assert not pair.acc.close_requested  # the requestor closes (PS3.8 9.1.4)
    pair.pump()
    assert pair.req_events == [AssociateRejected(rj)]  # AE-4
    assert pair.req.state is S.STA1 and pair.req.close_requested
    pair.close_transport()
    assert pair.acc.state is S.STA1  # AR-5
    assert not pair.acc.artim_running and pair.acc.close_requested
    assert pair.acc_events == [AssociateIndication(make_rq())]


def test_protocol_version_without_bit_0_is_rejected_by_the_provider():
    pair = Pair()
    pair.connect(make_rq(protocol_version=2))
    pair.pump()
    # AE-6, not acceptable: no indication to the user, RJ (permanent, ACSE, version)
    assert pair.acc_events == []
    assert pair.acc.state is S.STA13 and pair.acc.artim_running
    expected = P.AssociateRJ(P.REJECT_PERMANENT, P.REJECT_SOURCE_ACSE, 2)
    assert pair.req_events == [AssociateRejected(expected)]
    assert pair.req.state is S.STA1 and pair.req.close_requested


@pytest.mark.parametrize("version", [1, 3, 0x8001, 0xFFFF])
def test_protocol_version_with_bit_0_is_acceptable(version):
    conn = to_sta2()
    events = receive(conn, wire(make_rq(protocol_version=version)))
    assert [type(e) for e in events] == [AssociateIndication]
    assert conn.state is S.STA3


def test_p_data_both_directions():
    pair = Pair()
    pair.establish()
    pair.req.send_pdvs([PDV, PDV2])
    pair.acc.send_pdvs([PDV2])
    pair.pump()
    assert pair.acc_events == [DataIndication([PDV, PDV2])]
    assert pair.req_events == [DataIndication([PDV2])]
    assert pair.req.is_established and pair.acc.is_established


def test_normal_release_initiated_by_the_requestor():
    pair = Pair()
    pair.establish()
    pair.req.release()  # AR-1
    assert pair.req.state is S.STA7
    pair.pump()
    assert pair.acc_events == [ReleaseIndication(collision=False)]  # AR-2
    assert pair.acc.state is S.STA8
    # AR-7: data may still flow from the side that received the A-RELEASE-RQ ...
    pair.acc.send_pdvs([PDV])
    pair.pump()
    assert pair.req_events == [DataIndication([PDV])]  # AR-6
    assert pair.req.state is S.STA7
    pair.acc.release_response()  # AR-4
    assert pair.acc.state is S.STA13 and pair.acc.artim_running
    pair.pump()
    assert pair.req_events[-1] == ReleaseConfirmation()  # AR-3
    assert pair.req.state is S.STA1 and pair.req.close_requested
    pair.close_transport()
    assert pair.acc.state is S.STA1 and not pair.acc.artim_running  # AR-5
    # ... but not from the side that asked to release
    with pytest.raises(LocalProtocolError):
        to_sta7(REQ).send_pdvs([PDV])


def test_normal_release_initiated_by_the_acceptor():
    pair = Pair()
    pair.establish()
    pair.acc.release()
    pair.pump()
    assert pair.req_events == [ReleaseIndication(collision=False)]
    pair.req.release_response()
    pair.pump()
    assert pair.acc_events == [ReleaseConfirmation()]
    assert pair.acc.state is S.STA1 and pair.acc.close_requested
    assert pair.req.state is S.STA13
    pair.close_transport()
    assert pair.req.state is S.STA1


@pytest.mark.parametrize("byte_by_byte", [False, True])
def test_release_collision(byte_by_byte):
    pair = Pair()
    pair.establish()
    pair.req.release()
    pair.acc.release()  # both before receiving the other's A-RELEASE-RQ
    assert pair.req.state is S.STA7 and pair.acc.state is S.STA7
    pair.pump(byte_by_byte)
    # AR-8: the requestor goes to Sta9, the acceptor to Sta10
    assert pair.req.state is S.STA9 and pair.acc.state is S.STA10
    assert pair.req_events == [ReleaseIndication(collision=True)]
    assert pair.acc_events == [ReleaseIndication(collision=True)]
    # the acceptor must wait for the requestor's A-RELEASE-RP first
    with pytest.raises(LocalProtocolError):
        pair.acc.release_response()
    pair.req.release_response()  # AR-9
    assert pair.req.state is S.STA11
    pair.pump(byte_by_byte)
    assert pair.acc_events[-1] == ReleaseConfirmation()  # AR-10
    assert pair.acc.state is S.STA12
    pair.acc.release_response()  # AR-4
    assert pair.acc.state is S.STA13 and pair.acc.artim_running
    pair.pump(byte_by_byte)
    assert pair.req_events[-1] == ReleaseConfirmation()  # AR-3
    assert pair.req.state is S.STA1 and pair.req.close_requested
    pair.close_transport()
    assert pair.acc.state is S.STA1 and pair.acc.close_requested  # AR-5
    assert not pair.acc.artim_running
    assert len(pair.req_events) == 2 and len(pair.acc_events) == 2


@pytest.mark.parametrize("aborter", ["requestor", "acceptor"])
def test_abort_from_either_side(aborter):
    pair = Pair()
    pair.establish()
    me, peer = (pair.req, pair.acc) if aborter == "requestor" else (pair.acc, pair.req)
    me.abort()  # AA-1
    assert me.state is S.STA13 and me.artim_running
    pair.pump()
    peer_events = pair.acc_events if aborter == "requestor" else pair.req_events
    (event,) = peer_events
    assert isinstance(event, AbortIndication)  # AA-3, A-ABORT (not A-P-ABORT)
    assert event.source == P.ABORT_SOURCE_USER and not event.provider
    assert peer.state is S.STA1 and peer.close_requested
    pair.close_transport()
    assert me.state is S.STA1 and not me.artim_running  # AR-5


@pytest.mark.parametrize("state", [S.STA3, S.STA5])
def test_abort_during_establishment(state):
    pair = Pair()
    pair.connect()
    if state is S.STA3:
        pair.pump()
        pair.acc.abort()
        me, peer, peer_events = pair.acc, pair.req, pair.req_events
    else:
        pair.req.abort()  # Sta5, before the RQ was even delivered
        me, peer, peer_events = pair.req, pair.acc, pair.acc_events
    pair.pump()
    assert me.state is S.STA13
    assert peer.state is S.STA1 and peer.close_requested
    if state is S.STA5:
        # The acceptor (Sta2) handles the RQ (Sta3), then the A-ABORT: AA-3
        assert [type(e) for e in peer_events] == [AssociateIndication, AbortIndication]
    else:
        assert [type(e) for e in peer_events] == [AbortIndication]
    assert peer_events[-1].source == P.ABORT_SOURCE_USER


@pytest.mark.parametrize("reason", [0, 1, 2, 4, 5, 6])
def test_provider_abort_from_the_peer_is_an_a_p_abort_indication(reason):
    conn = to_sta6(REQ)
    (event,) = receive(conn, wire(P.Abort(P.ABORT_SOURCE_PROVIDER, reason)))  # AA-3
    assert (event.source, event.reason, event.provider) == (2, reason, True)
    assert event.message == P.describe_abort(2, reason)
    assert conn.state is S.STA1 and conn.close_requested
    assert conn.parts_to_send() == []


def test_abort_while_connecting_closes_without_a_pdu():
    conn = to_sta4()
    conn.abort()  # AA-2
    assert conn.state is S.STA1 and conn.close_requested
    assert conn.parts_to_send() == []


# -- provider aborts: garbage, invalid and unexpected PDUs -------------------


@pytest.mark.parametrize("state", [S.STA2, S.STA6])
def test_unrecognized_pdu_type_aborts_with_reason_1(state):
    conn = SETUPS[state](ACC)
    events = receive(conn, GARBAGE)
    assert abort_of(conn) == (P.ABORT_SOURCE_PROVIDER, P.ABORT_UNRECOGNIZED_PDU)
    assert conn.state is S.STA13 and conn.artim_running
    if state is S.STA2:  # AA-1: no association, nobody to tell
        assert events == []
    else:  # AA-8: A-P-ABORT indication
        (event,) = events
        assert isinstance(event, AbortIndication) and event.provider
        assert (event.source, event.reason) == (2, 1)
    # the stream is out of sync: anything further is discarded
    assert receive(conn, wire(P.ReleaseRQ())) == []
    assert conn.parts_to_send() == []
    assert conn.artim_expired() == [] and conn.state is S.STA1 and conn.close_requested


def _corrupt_rq() -> bytes:
    """A-ASSOCIATE-RQ whose application context item overruns the PDU."""
    data = bytearray(wire(make_rq()))
    offset = 6 + 68  # header + fixed fields: the first item
    assert data[offset] == I.ITEM_APPLICATION_CONTEXT
    data[offset + 2 : offset + 4] = b"\xff\xff"
    return bytes(data)


def _bad_pdata() -> bytes:
    """P-DATA-TF whose PDV names an even presentation context ID."""
    return wire(P.PDataTF([P.PDV(2, True, True, b"abcd")]))


@pytest.mark.parametrize(
    "state,data", [(S.STA2, _corrupt_rq()), (S.STA6, _bad_pdata())], ids=["Sta2", "Sta6"]
)
def test_invalid_item_aborts_with_reason_6(state, data):
    conn = SETUPS[state](ACC)
    events = receive(conn, data)
    assert abort_of(conn) == (P.ABORT_SOURCE_PROVIDER, P.ABORT_INVALID_PDU_PARAMETER_VALUE)
    assert conn.state is S.STA13
    if state is S.STA6:
        assert [(e.source, e.reason, e.provider) for e in events] == [(2, 6, True)]


@pytest.mark.parametrize("role", [REQ, ACC])
def test_unexpected_associate_ac_in_sta6(role):
    conn = to_sta6(role)
    events = receive(conn, wire(make_ac()))  # AA-8
    assert abort_of(conn) == (P.ABORT_SOURCE_PROVIDER, P.ABORT_UNEXPECTED_PDU)
    (event,) = events
    assert isinstance(event, AbortIndication)
    assert (event.source, event.reason, event.provider) == (2, 2, True)
    assert conn.state is S.STA13 and conn.artim_running
    # the peer's A-ABORT answer (or its closing) ends it
    assert receive(conn, wire(P.Abort())) == []  # AA-2
    assert conn.state is S.STA1 and conn.close_requested


def test_upper_layer_protocol_error_aborts_like_an_invalid_pdu():
    conn = to_sta6(ACC)
    events = conn.protocol_error(RemoteProtocolError("bad command set", 5))
    assert abort_of(conn) == (2, 5)
    assert [(e.source, e.reason, e.provider) for e in events] == [(2, 5, True)]
    assert conn.state is S.STA13


def test_p_data_longer_than_max_pdata_is_refused_from_its_header():
    pair = Pair(max_pdata=1000)
    pair.establish()
    header = struct.pack(">BBL", P.P_DATA_TF, 0, 1001)
    events = receive(pair.acc, header)  # the body never needs to arrive
    assert abort_of(pair.acc) == (2, P.ABORT_INVALID_PDU_PARAMETER_VALUE)
    assert [(e.source, e.reason, e.provider) for e in events] == [(2, 6, True)]
    assert pair.acc.state is S.STA13


def test_p_data_of_exactly_max_pdata_is_accepted():
    pair = Pair(max_pdata=1000)
    pair.establish()
    pdv = P.PDV(1, False, True, bytes(1000 - 6))
    pair.req.send_pdvs([pdv])
    pair.pump()
    assert pair.acc_events == [DataIndication([pdv])]


@pytest.mark.parametrize("state", [S.STA2, S.STA13])
def test_artim_expiry_requests_close(state):
    conn = SETUPS[state](ACC)
    assert conn.artim_running
    assert conn.artim_expired() == []  # AA-2
    assert conn.state is S.STA1
    assert conn.close_requested and not conn.artim_running
    assert conn.parts_to_send() == []


# -- the transport closing in each state -------------------------------------

CLOSED = {  # state -> action of Table 9-10, Evt17 row
    S.STA2: "AA-5",
    S.STA3: "AA-4",
    S.STA4: "AA-4",
    S.STA5: "AA-4",
    **{s: "AA-4" for s in (S.STA6, S.STA7, S.STA8, S.STA9, S.STA10, S.STA11, S.STA12)},
    S.STA13: "AR-5",
}


@pytest.mark.parametrize(
    "state,role", [(s, r) for s, roles in ROLES.items() for r in roles], ids=str
)
def test_transport_closed_in_each_state(state, role):
    conn = SETUPS[state](role)
    events = conn.transport_closed()
    assert conn.state is S.STA1
    assert conn.parts_to_send() == []
    assert not conn.artim_running
    if state is S.STA1:
        assert events == [] and not conn.close_requested
        return
    assert conn.close_requested
    if CLOSED[state] == "AA-4":  # A-P-ABORT indication
        (event,) = events
        assert isinstance(event, AbortIndication) and event.provider
        assert event.source == P.ABORT_SOURCE_PROVIDER
    else:  # AA-5, AR-5: nothing to indicate
        assert events == []


# -- byte by byte -------------------------------------------------------------


def _conversation(byte_by_byte: bool) -> tuple[list, list]:
    pair = Pair()
    pair.establish(byte_by_byte)
    pair.req.send_pdvs([PDV, PDV2])
    pair.req.send_pdvs([PDV2])
    pair.acc.send_pdvs([PDV])
    pair.pump(byte_by_byte)
    pair.req.release()
    pair.pump(byte_by_byte)
    pair.acc.release_response()
    pair.pump(byte_by_byte)
    pair.close_transport()
    assert pair.req.state is S.STA1 and pair.acc.state is S.STA1
    return pair.req_events, pair.acc_events


def test_byte_by_byte_gives_the_same_events():
    whole = _conversation(False)
    assert whole[1][:2] == [DataIndication([PDV, PDV2]), DataIndication([PDV2])]
    assert _conversation(True) == whole


@pytest.mark.parametrize(
    "stream",
    [
        GARBAGE,
        _bad_pdata(),
        wire(P.PDataTF([PDV])) + wire(make_ac()) + wire(P.PDataTF([PDV2])),
        wire(P.PDataTF([PDV])) + wire(P.Abort(0, 0)),
        wire(P.PDataTF([PDV])) + wire(P.ReleaseRQ()) + wire(P.PDataTF([PDV2])),
        # a valid PDU and a malformed one in the same read: the first still counts
        wire(P.PDataTF([PDV])) + GARBAGE,
        wire(P.PDataTF([PDV])) + _bad_pdata(),
        wire(P.ReleaseRQ()) + GARBAGE,
    ],
    ids=[
        "garbage",
        "invalid",
        "data+unexpected",
        "data+abort",
        "data+release+data",
        "data+garbage",
        "data+invalid",
        "release+garbage",
    ],
)
def test_byte_by_byte_gives_the_same_result_on_any_stream(stream):
    results = []
    for chunks in (
        [stream[i : i + 1] for i in range(len(stream))],
        [stream[:7], stream[7:]],
        [stream],
    ):
        conn = to_sta6(ACC)
        inbox = Receiver(conn.receive_view)
        events = []
        for chunk in chunks:
            events += inbox.receive(chunk)
        results.append((events, sent_bytes(conn), conn.state, conn.close_requested))
    assert results[1] == results[0]
    assert results[2] == results[0]


# -- every (state, event) cell through a real Connection ---------------------


def _fire(conn: Connection, event: Event) -> list:
    """Cause ``event`` on ``conn`` through its public API; return the events."""
    remote = {
        Event.ASSOCIATE_AC_PDU: wire(make_ac()),
        Event.ASSOCIATE_RJ_PDU: wire(RJ),
        Event.ASSOCIATE_RQ_PDU: wire(make_rq()),
        Event.P_DATA_TF_PDU: wire(P.PDataTF([PDV])),
        Event.RELEASE_RQ_PDU: wire(P.ReleaseRQ()),
        Event.RELEASE_RP_PDU: wire(P.ReleaseRP()),
        Event.ABORT_PDU: wire(P.Abort(P.ABORT_SOURCE_USER, 0)),
        Event.INVALID_PDU: GARBAGE,
    }
    if event in remote:
        return receive(conn, remote[event])
    local: dict[Event, Callable[[], object]] = {
        Event.A_ASSOCIATE_RQ_LOCAL: lambda: conn.request(make_rq()),
        Event.TRANSPORT_CONNECT_CONFIRM: conn.transport_connected,
        Event.TRANSPORT_CONNECT_INDICATION: conn.transport_connected,
        Event.A_ASSOCIATE_RSP_ACCEPT: lambda: conn.accept(make_ac()),
        Event.A_ASSOCIATE_RSP_REJECT: lambda: conn.reject(RJ),
        Event.P_DATA_RQ_LOCAL: lambda: conn.send_pdvs([PDV]),
        Event.A_RELEASE_RQ_LOCAL: conn.release,
        Event.A_RELEASE_RSP_LOCAL: conn.release_response,
        Event.A_ABORT_RQ_LOCAL: conn.abort,
        Event.TRANSPORT_CLOSED: conn.transport_closed,
        Event.ARTIM_EXPIRED: conn.artim_expired,
    }
    return local[event]() or []


def _applicable(event: Event, role: Role) -> bool:
    # transport_connected() is Evt2 for a requestor and Evt5 for an acceptor
    if event is Event.TRANSPORT_CONNECT_CONFIRM:
        return role is REQ
    if event is Event.TRANSPORT_CONNECT_INDICATION:
        return role is ACC
    return True


CELLS = [
    (state, role, event)
    for state, roles in ROLES.items()
    for role in roles
    for event in Event
    if _applicable(event, role)
]


def _cell_id(cell) -> str:
    state, role, event = cell
    return f"Sta{state.value}-{role.value}-Evt{event.value}"


PDU_ROWS = frozenset(
    {
        Event.ASSOCIATE_AC_PDU,
        Event.ASSOCIATE_RJ_PDU,
        Event.ASSOCIATE_RQ_PDU,
        Event.P_DATA_TF_PDU,
        Event.RELEASE_RQ_PDU,
        Event.RELEASE_RP_PDU,
        Event.ABORT_PDU,
        Event.INVALID_PDU,
    }
)


def _expected_abort(event: Event) -> tuple[int, int]:
    """The (source, reason) of the A-ABORT a provider abort sends for ``event``."""
    if event is Event.INVALID_PDU:
        return P.ABORT_SOURCE_PROVIDER, P.ABORT_UNRECOGNIZED_PDU
    if event in PDU_ROWS:
        return P.ABORT_SOURCE_PROVIDER, P.ABORT_UNEXPECTED_PDU
    # An empty cell reached by a non-PDU event (a stale ARTIM, a second
    # transport_connected()): the fallback AA-8 does not claim "unexpected PDU".
    return P.ABORT_SOURCE_PROVIDER, P.ABORT_REASON_NOT_SPECIFIED


@pytest.mark.parametrize("cell", CELLS, ids=_cell_id)
def test_every_cell_through_a_connection(cell):
    state, role, event = cell
    conn = SETUPS[state](role)
    is_requestor = role is REQ
    try:
        action, outcome = step(state, event, is_requestor=is_requestor)
    except LocalProtocolError:
        # an empty cell reached by a local primitive: our misuse, nothing changes
        with pytest.raises(LocalProtocolError):
            _fire(conn, event)
        assert conn.state is state
        assert conn.parts_to_send() == []
        assert not conn.close_requested
        return
    if state is S.STA1 and event is Event.TRANSPORT_CLOSED:
        assert _fire(conn, event) == [] and conn.state is S.STA1
        return
    artim_before = conn.artim_running
    events = _fire(conn, event)
    pdus = sent(conn)
    name = action.value
    assert conn.state is outcome.next_state, name
    if name == "AR-8":
        assert conn.state is (S.STA9 if is_requestor else S.STA10)
    if conn.state is S.STA1 and name != "AE-1":
        assert conn.close_requested and not conn.artim_running
    else:
        assert not conn.close_requested

    if name == "AE-1":
        assert conn.connect_requested and pdus == [] and events == []
    elif name == "AE-2":
        assert pdus == [make_rq()] and events == []
    elif name == "AE-3":
        assert events == [AssociateAccepted(make_ac())] and pdus == []
    elif name == "AE-4":
        assert events == [AssociateRejected(RJ)] and pdus == []
    elif name == "AE-5":
        assert conn.artim_running and pdus == [] and events == []
    elif name == "AE-6":
        assert events == [AssociateIndication(make_rq())] and pdus == []
        assert not conn.artim_running
    elif name == "AE-7":
        assert pdus == [make_ac()] and events == []
    elif name == "AE-8":
        assert pdus == [RJ] and events == [] and conn.artim_running
    elif name in ("DT-1", "AR-7"):
        assert pdus == [P.PDataTF([PDV])] and events == []
    elif name in ("DT-2", "AR-6"):
        assert events == [DataIndication([PDV])] and pdus == []
    elif name == "AR-1":
        assert pdus == [P.ReleaseRQ()] and events == []
    elif name == "AR-2":
        assert events == [ReleaseIndication(collision=False)] and pdus == []
    elif name == "AR-3":
        assert events == [ReleaseConfirmation()] and pdus == []
    elif name == "AR-4":
        assert pdus == [P.ReleaseRP()] and events == [] and conn.artim_running
    elif name == "AR-5":
        assert pdus == [] and events == []
    elif name == "AR-8":
        assert events == [ReleaseIndication(collision=True)] and pdus == []
    elif name == "AR-9":
        assert pdus == [P.ReleaseRP()] and events == []
    elif name == "AR-10":
        assert events == [ReleaseConfirmation()] and pdus == []
    elif name == "AA-1":
        assert events == [] and conn.artim_running
        if event is Event.INVALID_PDU:
            # an acceptor that cannot parse the first PDU aborts as the provider
            assert pdus == [P.Abort(P.ABORT_SOURCE_PROVIDER, P.ABORT_UNRECOGNIZED_PDU)]
        else:
            assert pdus == [P.Abort(P.ABORT_SOURCE_USER, 0)]
    elif name == "AA-2":
        assert pdus == [] and events == []
    elif name == "AA-3":
        assert pdus == []
        assert events == [AbortIndication(0, 0, provider=False, message=P.describe_abort(0, 0))]
    elif name == "AA-4":
        assert pdus == []
        (ev,) = events
        assert isinstance(ev, AbortIndication) and ev.provider and ev.source == 2
    elif name == "AA-5":
        assert pdus == [] and events == []
    elif name == "AA-6":
        assert pdus == [] and events == [] and conn.artim_running == artim_before
    elif name == "AA-7":
        assert pdus == [P.Abort(*_expected_abort(event))] and events == []
    elif name == "AA-8":
        source, reason = _expected_abort(event)
        assert pdus == [P.Abort(source, reason)]
        (ev,) = events
        assert isinstance(ev, AbortIndication) and ev.provider
        assert (ev.source, ev.reason) == (source, reason)
        assert conn.artim_running
    else:  # pragma: no cover
        pytest.fail(f"unexpected action {name}")


def test_cells_cover_every_remote_pdu_row_in_every_state():
    covered = {(state, event) for state, _role, event in CELLS}
    for state in State:
        for event in PDU_ROWS:
            assert (state, event) in covered
    # Every cell of the table but Evt2 (Evt5) in states only an acceptor
    # (requestor) reaches: all of them empty cells.
    missing = {(s, e) for s in State for e in Event} - covered
    acceptor_only = {s for s, roles in ROLES.items() if roles == (ACC,)}
    requestor_only = {s for s, roles in ROLES.items() if roles == (REQ,)}
    assert missing == {(s, Event.TRANSPORT_CONNECT_CONFIRM) for s in acceptor_only} | {
        (s, Event.TRANSPORT_CONNECT_INDICATION) for s in requestor_only
    }


def test_local_misuse_leaves_no_trace():
    conn = to_sta2()
    with pytest.raises(LocalProtocolError):
        conn.reject(RJ)  # nothing to reject yet
    receive(conn, wire(make_rq()))
    conn.accept(make_ac())
    assert sent(conn) == [make_ac()]  # the earlier misuse did not leak


def test_an_unexpected_pdu_is_named_in_words() -> None:
    """review38scu #15: 'unexpected PDataTF in STA5'."""
    from dicomstore.ul.connection import unexpected
    from dicomstore.ul.fsm import State

    assert unexpected("PDataTF", State.STA5) == (
        "the peer sent a P-DATA-TF instead of answering our association request"
    )
    assert unexpected("ReleaseRQ", State.STA10).endswith("in state STA10 (PS3.8 Table 9-1)")
