"""The DICOM upper layer state machine as data (PS3.8 9.2).

States Sta1-Sta13 (9.2.1), events Evt1-Evt19 and the actions AE-1 ... AA-8
(9.2.2), and the state transition table (Table 9-10).  An action is a tuple
of abstract :class:`Effect` values plus its next state; nothing here performs
I/O.  :func:`step` looks up a cell and resolves the two conditional actions
(AE-6 and AR-8).  Empty cells of Table 9-10 are absent from ``TABLE``.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from dicomstore.errors import LocalProtocolError


class State(enum.IntEnum):
    """Machine states (PS3.8 Tables 9-1 ... 9-5)."""

    STA1 = 1  # Idle
    STA2 = 2  # Transport connection open (awaiting A-ASSOCIATE-RQ PDU)
    STA3 = 3  # Awaiting local A-ASSOCIATE response primitive
    STA4 = 4  # Awaiting transport connection opening to complete
    STA5 = 5  # Awaiting A-ASSOCIATE-AC or A-ASSOCIATE-RJ PDU
    STA6 = 6  # Association established and ready for data transfer
    STA7 = 7  # Awaiting A-RELEASE-RP PDU
    STA8 = 8  # Awaiting local A-RELEASE response primitive
    STA9 = 9  # Release collision requestor side; awaiting A-RELEASE response
    STA10 = 10  # Release collision acceptor side; awaiting A-RELEASE-RP PDU
    STA11 = 11  # Release collision requestor side; awaiting A-RELEASE-RP PDU
    STA12 = 12  # Release collision acceptor side; awaiting A-RELEASE response
    STA13 = 13  # Awaiting transport connection close indication


class Event(enum.IntEnum):
    """Machine events (PS3.8 Table 9-10, rows)."""

    A_ASSOCIATE_RQ_LOCAL = 1
    TRANSPORT_CONNECT_CONFIRM = 2
    ASSOCIATE_AC_PDU = 3
    ASSOCIATE_RJ_PDU = 4
    TRANSPORT_CONNECT_INDICATION = 5
    ASSOCIATE_RQ_PDU = 6
    A_ASSOCIATE_RSP_ACCEPT = 7
    A_ASSOCIATE_RSP_REJECT = 8
    P_DATA_RQ_LOCAL = 9
    P_DATA_TF_PDU = 10
    A_RELEASE_RQ_LOCAL = 11
    RELEASE_RQ_PDU = 12
    RELEASE_RP_PDU = 13
    A_RELEASE_RSP_LOCAL = 14
    A_ABORT_RQ_LOCAL = 15
    ABORT_PDU = 16
    TRANSPORT_CLOSED = 17
    ARTIM_EXPIRED = 18
    INVALID_PDU = 19


#: Events that come from the local user (an empty cell is our own misuse).
LOCAL_EVENTS = frozenset(
    {
        Event.A_ASSOCIATE_RQ_LOCAL,
        Event.A_ASSOCIATE_RSP_ACCEPT,
        Event.A_ASSOCIATE_RSP_REJECT,
        Event.P_DATA_RQ_LOCAL,
        Event.A_RELEASE_RQ_LOCAL,
        Event.A_RELEASE_RSP_LOCAL,
        Event.A_ABORT_RQ_LOCAL,
    }
)


class Effect(enum.Enum):
    """What an action asks the connection to do; the connection does it."""

    CONNECT = "issue TRANSPORT CONNECT request"
    ACCEPT_TRANSPORT = "issue transport connection response"
    SEND_ASSOCIATE_RQ = "send A-ASSOCIATE-RQ PDU"
    SEND_ASSOCIATE_AC = "send A-ASSOCIATE-AC PDU"
    SEND_ASSOCIATE_RJ = "send A-ASSOCIATE-RJ PDU"
    SEND_P_DATA = "send P-DATA-TF PDU"
    SEND_RELEASE_RQ = "send A-RELEASE-RQ PDU"
    SEND_RELEASE_RP = "send A-RELEASE-RP PDU"
    SEND_ABORT_USER = "send A-ABORT PDU (service-user source)"
    SEND_ABORT_PROVIDER = "send A-ABORT PDU (service-provider source)"
    INDICATE_ASSOCIATE = "issue A-ASSOCIATE indication"
    CONFIRM_ACCEPT = "issue A-ASSOCIATE confirmation (accept)"
    CONFIRM_REJECT = "issue A-ASSOCIATE confirmation (reject)"
    INDICATE_P_DATA = "issue P-DATA indication"
    INDICATE_RELEASE = "issue A-RELEASE indication"
    INDICATE_RELEASE_COLLISION = "issue A-RELEASE indication (release collision)"
    CONFIRM_RELEASE = "issue A-RELEASE confirmation"
    INDICATE_ABORT = "issue A-ABORT or A-P-ABORT indication (by the PDU's source)"
    INDICATE_P_ABORT = "issue A-P-ABORT indication"
    START_ARTIM = "start (or restart) ARTIM timer"
    STOP_ARTIM = "stop ARTIM timer"
    CLOSE_TRANSPORT = "close transport connection"
    IGNORE_PDU = "ignore PDU"


class Outcome(NamedTuple):
    """The effects of an action, in order, and the next state."""

    effects: tuple[Effect, ...]
    next_state: State


E = Effect
S = State


class Action(enum.Enum):
    """Actions of PS3.8 Tables 9-6 ... 9-9 (AE-6 and AR-8 are resolved in step())."""

    AE_1 = "AE-1"
    AE_2 = "AE-2"
    AE_3 = "AE-3"
    AE_4 = "AE-4"
    AE_5 = "AE-5"
    AE_6 = "AE-6"
    AE_7 = "AE-7"
    AE_8 = "AE-8"
    DT_1 = "DT-1"
    DT_2 = "DT-2"
    AR_1 = "AR-1"
    AR_2 = "AR-2"
    AR_3 = "AR-3"
    AR_4 = "AR-4"
    AR_5 = "AR-5"
    AR_6 = "AR-6"
    AR_7 = "AR-7"
    AR_8 = "AR-8"
    AR_9 = "AR-9"
    AR_10 = "AR-10"
    AA_1 = "AA-1"
    AA_2 = "AA-2"
    AA_3 = "AA-3"
    AA_4 = "AA-4"
    AA_5 = "AA-5"
    AA_6 = "AA-6"
    AA_7 = "AA-7"
    AA_8 = "AA-8"


#: What each action does and its next state (PS3.8 9.2.2).
OUTCOMES: dict[Action, Outcome] = {
    Action.AE_1: Outcome((E.CONNECT,), S.STA4),
    Action.AE_2: Outcome((E.SEND_ASSOCIATE_RQ,), S.STA5),
    Action.AE_3: Outcome((E.CONFIRM_ACCEPT,), S.STA6),
    Action.AE_4: Outcome((E.CONFIRM_REJECT, E.CLOSE_TRANSPORT), S.STA1),
    Action.AE_5: Outcome((E.ACCEPT_TRANSPORT, E.START_ARTIM), S.STA2),
    Action.AE_6: Outcome((E.STOP_ARTIM, E.INDICATE_ASSOCIATE), S.STA3),  # when acceptable
    Action.AE_7: Outcome((E.SEND_ASSOCIATE_AC,), S.STA6),
    Action.AE_8: Outcome((E.SEND_ASSOCIATE_RJ, E.START_ARTIM), S.STA13),
    Action.DT_1: Outcome((E.SEND_P_DATA,), S.STA6),
    Action.DT_2: Outcome((E.INDICATE_P_DATA,), S.STA6),
    Action.AR_1: Outcome((E.SEND_RELEASE_RQ,), S.STA7),
    Action.AR_2: Outcome((E.INDICATE_RELEASE,), S.STA8),
    Action.AR_3: Outcome((E.CONFIRM_RELEASE, E.CLOSE_TRANSPORT), S.STA1),
    Action.AR_4: Outcome((E.SEND_RELEASE_RP, E.START_ARTIM), S.STA13),
    Action.AR_5: Outcome((E.STOP_ARTIM,), S.STA1),
    Action.AR_6: Outcome((E.INDICATE_P_DATA,), S.STA7),
    Action.AR_7: Outcome((E.SEND_P_DATA,), S.STA8),
    Action.AR_8: Outcome((E.INDICATE_RELEASE_COLLISION,), S.STA10),  # acceptor; requestor: Sta9
    Action.AR_9: Outcome((E.SEND_RELEASE_RP,), S.STA11),
    Action.AR_10: Outcome((E.CONFIRM_RELEASE,), S.STA12),
    Action.AA_1: Outcome((E.SEND_ABORT_USER, E.START_ARTIM), S.STA13),
    Action.AA_2: Outcome((E.STOP_ARTIM, E.CLOSE_TRANSPORT), S.STA1),
    Action.AA_3: Outcome((E.INDICATE_ABORT, E.CLOSE_TRANSPORT), S.STA1),
    Action.AA_4: Outcome((E.INDICATE_P_ABORT,), S.STA1),
    Action.AA_5: Outcome((E.STOP_ARTIM,), S.STA1),
    Action.AA_6: Outcome((E.IGNORE_PDU,), S.STA13),
    Action.AA_7: Outcome((E.SEND_ABORT_PROVIDER,), S.STA13),
    Action.AA_8: Outcome((E.SEND_ABORT_PROVIDER, E.INDICATE_P_ABORT, E.START_ARTIM), S.STA13),
}

#: AE-6 when the A-ASSOCIATE-RQ is not acceptable to the service provider.
AE_6_REJECT = Outcome((E.STOP_ARTIM, E.SEND_ASSOCIATE_RJ, E.START_ARTIM), S.STA13)
#: AR-8 on the association-requestor side.
AR_8_REQUESTOR = Outcome((E.INDICATE_RELEASE_COLLISION,), S.STA9)

A = Action
_STA2_TO_13 = tuple(State(n) for n in range(2, 14))
_STA6_TO_12 = tuple(State(n) for n in range(6, 13))


def _row(event: Event, cells: dict[State, Action]) -> dict[tuple[State, Event], Action]:
    return {(state, event): action for state, action in cells.items()}


def _pdu_row(
    event: Event, sta2: Action, sta13: Action, **special: Action
) -> dict[tuple[State, Event], Action]:
    """A row for a received PDU: Sta2, Sta3/5 and Sta6-12 mostly AA-8, Sta13."""
    cells: dict[State, Action] = {S.STA2: sta2, S.STA3: A.AA_8, S.STA5: A.AA_8}
    cells.update({s: A.AA_8 for s in _STA6_TO_12})
    cells[S.STA13] = sta13
    cells.update({State[name.upper()]: action for name, action in special.items()})
    return _row(event, cells)


#: PS3.8 Table 9-10, cell by cell.
TABLE: dict[tuple[State, Event], Action] = {
    **_row(Event.A_ASSOCIATE_RQ_LOCAL, {S.STA1: A.AE_1}),
    **_row(Event.TRANSPORT_CONNECT_CONFIRM, {S.STA4: A.AE_2}),
    **_pdu_row(Event.ASSOCIATE_AC_PDU, A.AA_1, A.AA_6, sta5=A.AE_3),
    **_pdu_row(Event.ASSOCIATE_RJ_PDU, A.AA_1, A.AA_6, sta5=A.AE_4),
    **_row(Event.TRANSPORT_CONNECT_INDICATION, {S.STA1: A.AE_5}),
    **_pdu_row(Event.ASSOCIATE_RQ_PDU, A.AE_6, A.AA_7),
    **_row(Event.A_ASSOCIATE_RSP_ACCEPT, {S.STA3: A.AE_7}),
    **_row(Event.A_ASSOCIATE_RSP_REJECT, {S.STA3: A.AE_8}),
    **_row(Event.P_DATA_RQ_LOCAL, {S.STA6: A.DT_1, S.STA8: A.AR_7}),
    **_pdu_row(Event.P_DATA_TF_PDU, A.AA_1, A.AA_6, sta6=A.DT_2, sta7=A.AR_6),
    **_row(Event.A_RELEASE_RQ_LOCAL, {S.STA6: A.AR_1}),
    **_pdu_row(Event.RELEASE_RQ_PDU, A.AA_1, A.AA_6, sta6=A.AR_2, sta7=A.AR_8),
    **_pdu_row(Event.RELEASE_RP_PDU, A.AA_1, A.AA_6, sta7=A.AR_3, sta10=A.AR_10, sta11=A.AR_3),
    **_row(Event.A_RELEASE_RSP_LOCAL, {S.STA8: A.AR_4, S.STA9: A.AR_9, S.STA12: A.AR_4}),
    **_row(
        Event.A_ABORT_RQ_LOCAL,
        {S.STA3: A.AA_1, S.STA4: A.AA_2, S.STA5: A.AA_1, **{s: A.AA_1 for s in _STA6_TO_12}},
    ),
    **_row(
        Event.ABORT_PDU,
        {
            S.STA2: A.AA_2,
            S.STA3: A.AA_3,
            S.STA5: A.AA_3,
            S.STA13: A.AA_2,
            **{s: A.AA_3 for s in _STA6_TO_12},
        },
    ),
    **_row(
        Event.TRANSPORT_CLOSED,
        {
            S.STA2: A.AA_5,
            S.STA3: A.AA_4,
            S.STA4: A.AA_4,
            S.STA5: A.AA_4,
            S.STA13: A.AR_5,
            **{s: A.AA_4 for s in _STA6_TO_12},
        },
    ),
    **_row(Event.ARTIM_EXPIRED, {S.STA2: A.AA_2, S.STA13: A.AA_2}),
    **_pdu_row(Event.INVALID_PDU, A.AA_1, A.AA_7),
}


def step(
    state: State, event: Event, *, acceptable: bool = True, is_requestor: bool = False
) -> tuple[Action, Outcome]:
    """Look up Table 9-10 for (state, event) and resolve conditional actions.

    ``acceptable``: for AE-6, whether the service provider accepts the
    A-ASSOCIATE-RQ (e.g. protocol version).  ``is_requestor``: for AR-8.
    Raises :class:`LocalProtocolError` for an empty cell reached by a local
    primitive (our misuse).  An empty cell reached by a remote event cannot
    happen on a real transport (no PDU arrives in Sta1 or Sta4) and is treated
    as an unexpected PDU: AA-8 where an association exists, else AA-2.
    """
    action = TABLE.get((state, event))
    if action is None:
        if event in LOCAL_EVENTS:
            raise LocalProtocolError(f"{event.name} is not allowed in {state.name}")
        action = A.AA_8 if state in _STA6_TO_12 else A.AA_2
    if action is A.AE_6 and not acceptable:
        return action, AE_6_REJECT
    if action is A.AR_8 and is_requestor:
        return action, AR_8_REQUESTOR
    return action, OUTCOMES[action]
