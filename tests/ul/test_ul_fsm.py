"""The upper layer state machine as data (PS3.8 9.2), checked cell by cell.

``STANDARD`` below is PS3.8 Table 9-10 transcribed by hand from the standard
(one row per event Evt1-Evt19, one column per state Sta1-Sta13, "" for an
empty cell).  It is deliberately independent of how ``fsm.TABLE`` is built.
"""

from __future__ import annotations

import pytest

from dicomstore.errors import LocalProtocolError
from dicomstore.ul.fsm import (
    AE_6_REJECT,
    AR_8_REQUESTOR,
    LOCAL_EVENTS,
    OUTCOMES,
    TABLE,
    Action,
    Effect,
    Event,
    Outcome,
    State,
    step,
)

_ = ""
# fmt: off
STANDARD: list[list[str]] = [
    #  Sta1    Sta2    Sta3    Sta4    Sta5    Sta6    Sta7    Sta8    Sta9    Sta10    Sta11   Sta12   Sta13   # noqa: E501
    ["AE-1", _,      _,      _,      _,      _,      _,      _,      _,      _,       _,      _,      _],       # Evt1  A-ASSOCIATE request (local user)  # noqa: E501
    [_,      _,      _,      "AE-2", _,      _,      _,      _,      _,      _,       _,      _,      _],       # Evt2  transport connect confirmation  # noqa: E501
    [_,      "AA-1", "AA-8", _,      "AE-3", "AA-8", "AA-8", "AA-8", "AA-8", "AA-8",  "AA-8", "AA-8", "AA-6"],  # Evt3  A-ASSOCIATE-AC PDU  # noqa: E501
    [_,      "AA-1", "AA-8", _,      "AE-4", "AA-8", "AA-8", "AA-8", "AA-8", "AA-8",  "AA-8", "AA-8", "AA-6"],  # Evt4  A-ASSOCIATE-RJ PDU  # noqa: E501
    ["AE-5", _,      _,      _,      _,      _,      _,      _,      _,      _,       _,      _,      _],       # Evt5  transport connect indication  # noqa: E501
    [_,      "AE-6", "AA-8", _,      "AA-8", "AA-8", "AA-8", "AA-8", "AA-8", "AA-8",  "AA-8", "AA-8", "AA-7"],  # Evt6  A-ASSOCIATE-RQ PDU  # noqa: E501
    [_,      _,      "AE-7", _,      _,      _,      _,      _,      _,      _,       _,      _,      _],       # Evt7  A-ASSOCIATE response (accept)  # noqa: E501
    [_,      _,      "AE-8", _,      _,      _,      _,      _,      _,      _,       _,      _,      _],       # Evt8  A-ASSOCIATE response (reject)  # noqa: E501
    [_,      _,      _,      _,      _,      "DT-1", _,      "AR-7", _,      _,       _,      _,      _],       # Evt9  P-DATA request  # noqa: E501
    [_,      "AA-1", "AA-8", _,      "AA-8", "DT-2", "AR-6", "AA-8", "AA-8", "AA-8",  "AA-8", "AA-8", "AA-6"],  # Evt10 P-DATA-TF PDU  # noqa: E501
    [_,      _,      _,      _,      _,      "AR-1", _,      _,      _,      _,       _,      _,      _],       # Evt11 A-RELEASE request  # noqa: E501
    [_,      "AA-1", "AA-8", _,      "AA-8", "AR-2", "AR-8", "AA-8", "AA-8", "AA-8",  "AA-8", "AA-8", "AA-6"],  # Evt12 A-RELEASE-RQ PDU  # noqa: E501
    [_,      "AA-1", "AA-8", _,      "AA-8", "AA-8", "AR-3", "AA-8", "AA-8", "AR-10", "AR-3", "AA-8", "AA-6"],  # Evt13 A-RELEASE-RP PDU  # noqa: E501
    [_,      _,      _,      _,      _,      _,      _,      "AR-4", "AR-9", _,       _,      "AR-4", _],       # Evt14 A-RELEASE response  # noqa: E501
    [_,      _,      "AA-1", "AA-2", "AA-1", "AA-1", "AA-1", "AA-1", "AA-1", "AA-1",  "AA-1", "AA-1", _],       # Evt15 A-ABORT request  # noqa: E501
    [_,      "AA-2", "AA-3", _,      "AA-3", "AA-3", "AA-3", "AA-3", "AA-3", "AA-3",  "AA-3", "AA-3", "AA-2"],  # Evt16 A-ABORT PDU  # noqa: E501
    [_,      "AA-5", "AA-4", "AA-4", "AA-4", "AA-4", "AA-4", "AA-4", "AA-4", "AA-4",  "AA-4", "AA-4", "AR-5"],  # Evt17 transport closed  # noqa: E501
    [_,      "AA-2", _,      _,      _,      _,      _,      _,      _,      _,       _,      _,      "AA-2"],  # Evt18 ARTIM expired  # noqa: E501
    [_,      "AA-1", "AA-8", _,      "AA-8", "AA-8", "AA-8", "AA-8", "AA-8", "AA-8",  "AA-8", "AA-8", "AA-7"],  # Evt19 invalid PDU  # noqa: E501
]
# fmt: on

#: The next state each action names in PS3.8 Tables 9-6 ... 9-9 (conditional ones
#: with their first branch: AE-6 acceptable, AR-8 on the acceptor side).
NEXT_STATE = {
    "AE-1": 4, "AE-2": 5, "AE-3": 6, "AE-4": 1, "AE-5": 2, "AE-6": 3, "AE-7": 6, "AE-8": 13,
    "DT-1": 6, "DT-2": 6,
    "AR-1": 7, "AR-2": 8, "AR-3": 1, "AR-4": 13, "AR-5": 1, "AR-6": 7, "AR-7": 8,
    "AR-8": 10, "AR-9": 11, "AR-10": 12,
    "AA-1": 13, "AA-2": 1, "AA-3": 1, "AA-4": 1, "AA-5": 1, "AA-6": 13, "AA-7": 13, "AA-8": 13,
}  # fmt: skip

E = Effect
#: What each action does (PS3.8 Tables 9-6 ... 9-9), written out independently.
EFFECTS = {
    "AE-1": (E.CONNECT,),
    "AE-2": (E.SEND_ASSOCIATE_RQ,),
    "AE-3": (E.CONFIRM_ACCEPT,),
    "AE-4": (E.CONFIRM_REJECT, E.CLOSE_TRANSPORT),
    "AE-5": (E.ACCEPT_TRANSPORT, E.START_ARTIM),
    "AE-6": (E.STOP_ARTIM, E.INDICATE_ASSOCIATE),
    "AE-7": (E.SEND_ASSOCIATE_AC,),
    "AE-8": (E.SEND_ASSOCIATE_RJ, E.START_ARTIM),
    "DT-1": (E.SEND_P_DATA,),
    "DT-2": (E.INDICATE_P_DATA,),
    "AR-1": (E.SEND_RELEASE_RQ,),
    "AR-2": (E.INDICATE_RELEASE,),
    "AR-3": (E.CONFIRM_RELEASE, E.CLOSE_TRANSPORT),
    "AR-4": (E.SEND_RELEASE_RP, E.START_ARTIM),
    "AR-5": (E.STOP_ARTIM,),
    "AR-6": (E.INDICATE_P_DATA,),
    "AR-7": (E.SEND_P_DATA,),
    "AR-8": (E.INDICATE_RELEASE_COLLISION,),
    "AR-9": (E.SEND_RELEASE_RP,),
    "AR-10": (E.CONFIRM_RELEASE,),
    "AA-1": (E.SEND_ABORT_USER, E.START_ARTIM),
    "AA-2": (E.STOP_ARTIM, E.CLOSE_TRANSPORT),
    "AA-3": (E.INDICATE_ABORT, E.CLOSE_TRANSPORT),
    "AA-4": (E.INDICATE_P_ABORT,),
    "AA-5": (E.STOP_ARTIM,),
    "AA-6": (E.IGNORE_PDU,),
    "AA-7": (E.SEND_ABORT_PROVIDER,),
    "AA-8": (E.SEND_ABORT_PROVIDER, E.INDICATE_P_ABORT, E.START_ARTIM),
}

LOCAL_EVENT_NUMBERS = {1, 7, 8, 9, 11, 14, 15}
ASSOCIATION_STATES = set(range(6, 13))  # Sta6-Sta12: an association exists

ALL_CELLS = [(sta, evt) for evt in range(1, 20) for sta in range(1, 14)]


def _expected(state: int, event: int) -> str:
    return STANDARD[event - 1][state - 1]


# -- the table itself ------------------------------------------------------


def test_standard_transcription_is_19_by_13():
    assert len(STANDARD) == 19
    assert all(len(row) == 13 for row in STANDARD)
    assert {cell for row in STANDARD for cell in row} - {""} <= set(NEXT_STATE)


def test_table_matches_ps3_8_table_9_10_exactly():
    def cell(s: int, e: int) -> str:
        action = TABLE.get((State(s), Event(e)))
        return action.value if action is not None else ""

    actual = [[cell(s, e) for s in range(1, 14)] for e in range(1, 20)]
    mismatches = [
        f"Evt{e + 1}/Sta{s + 1}: table {actual[e][s]!r}, standard {STANDARD[e][s]!r}"
        for e in range(19)
        for s in range(13)
        if actual[e][s] != STANDARD[e][s]
    ]
    assert mismatches == []
    # and nothing beyond the 13 x 19 grid
    assert len(TABLE) == sum(1 for row in STANDARD for cell in row if cell)


def test_enumerations_follow_the_standard_numbering():
    assert [s.value for s in State] == list(range(1, 14))
    assert [e.value for e in Event] == list(range(1, 20))
    assert {e.value for e in LOCAL_EVENTS} == LOCAL_EVENT_NUMBERS
    assert {a.value for a in Action} == set(NEXT_STATE)


@pytest.mark.parametrize("name", sorted(NEXT_STATE))
def test_outcome_of_each_action(name):
    outcome = OUTCOMES[Action(name)]
    assert outcome.next_state == State(NEXT_STATE[name])
    assert outcome.effects == EFFECTS[name]


def test_conditional_branches():
    # AE-6 otherwise: stop ARTIM, send A-ASSOCIATE-RJ, start ARTIM; Sta13
    reject = Outcome((E.STOP_ARTIM, E.SEND_ASSOCIATE_RJ, E.START_ARTIM), State.STA13)
    assert reject == AE_6_REJECT
    # AR-8 for the association-requestor: Sta9
    assert Outcome((E.INDICATE_RELEASE_COLLISION,), State.STA9) == AR_8_REQUESTOR


def test_only_remote_or_timer_rows_have_abort_actions_without_primitive():
    # Every local primitive row holds only actions that do something locally
    # requested: no "ignore PDU" or provider abort among them.
    for (state, event), action in TABLE.items():
        if event in LOCAL_EVENTS:
            assert action not in (Action.AA_6, Action.AA_7, Action.AA_8), (state, event)


# -- step() over all 13 x 19 cells ----------------------------------------


def _cell_id(cell):
    sta, evt = cell
    return f"Sta{sta}-Evt{evt}"


@pytest.mark.parametrize("cell", ALL_CELLS, ids=_cell_id)
def test_step_every_cell(cell):
    sta, evt = cell
    state, event = State(sta), Event(evt)
    name = _expected(sta, evt)
    if not name:
        if evt in LOCAL_EVENT_NUMBERS:
            with pytest.raises(LocalProtocolError):
                step(state, event)
            with pytest.raises(LocalProtocolError):
                step(state, event, is_requestor=True)
            return
        # A remote event on an empty cell cannot happen on a real transport; the
        # documented fallback is an unexpected-PDU abort (AA-8) while an
        # association exists and a plain close (AA-2) otherwise.
        fallback = "AA-8" if sta in ASSOCIATION_STATES else "AA-2"
        action, outcome = step(state, event)
        assert action.value == fallback
        assert outcome == OUTCOMES[Action(fallback)]
        return
    for is_requestor in (False, True):
        action, outcome = step(state, event, is_requestor=is_requestor)
        assert action.value == name
        if name == "AR-8":
            expected_next = 9 if is_requestor else 10
            assert outcome.effects == (E.INDICATE_RELEASE_COLLISION,)
        else:
            expected_next = NEXT_STATE[name]
            assert outcome.effects == EFFECTS[name]
        assert outcome.next_state == State(expected_next)
    if name == "AE-6":
        action, outcome = step(state, event, acceptable=False)
        assert action is Action.AE_6
        assert outcome.next_state is State.STA13
        assert outcome.effects == (E.STOP_ARTIM, E.SEND_ASSOCIATE_RJ, E.START_ARTIM)
    else:
        # ``acceptable`` only matters for AE-6
        assert step(state, event, acceptable=False) == step(state, event)


def test_ae6_acceptable_and_not():
    action, ok = step(State.STA2, Event.ASSOCIATE_RQ_PDU, acceptable=True)
    assert action is Action.AE_6
    assert ok.next_state is State.STA3
    assert E.INDICATE_ASSOCIATE in ok.effects and E.SEND_ASSOCIATE_RJ not in ok.effects
    action, bad = step(State.STA2, Event.ASSOCIATE_RQ_PDU, acceptable=False)
    assert action is Action.AE_6
    assert bad.next_state is State.STA13
    assert E.INDICATE_ASSOCIATE not in bad.effects and E.SEND_ASSOCIATE_RJ in bad.effects


def test_ar8_requestor_and_acceptor():
    assert step(State.STA7, Event.RELEASE_RQ_PDU, is_requestor=True)[1].next_state is State.STA9
    assert step(State.STA7, Event.RELEASE_RQ_PDU, is_requestor=False)[1].next_state is State.STA10


def test_local_misuse_message_names_event_and_state():
    with pytest.raises(LocalProtocolError, match="P_DATA_RQ_LOCAL.*STA7"):
        step(State.STA7, Event.P_DATA_RQ_LOCAL)


def test_release_collision_paths_through_the_table():
    """Walk both collision paths with step() alone: each ends in Sta1."""
    # requestor: Sta6 -Evt11-> Sta7 -Evt12-> Sta9 -Evt14-> Sta11 -Evt13-> Sta1
    # acceptor:  Sta6 -Evt11-> Sta7 -Evt12-> Sta10 -Evt13-> Sta12 -Evt14-> Sta13 -Evt17-> Sta1
    paths = {
        True: [
            (Event.A_RELEASE_RQ_LOCAL, State.STA7),
            (Event.RELEASE_RQ_PDU, State.STA9),
            (Event.A_RELEASE_RSP_LOCAL, State.STA11),
            (Event.RELEASE_RP_PDU, State.STA1),
        ],
        False: [
            (Event.A_RELEASE_RQ_LOCAL, State.STA7),
            (Event.RELEASE_RQ_PDU, State.STA10),
            (Event.RELEASE_RP_PDU, State.STA12),
            (Event.A_RELEASE_RSP_LOCAL, State.STA13),
            (Event.TRANSPORT_CLOSED, State.STA1),
        ],
    }
    for is_requestor, path in paths.items():
        state = State.STA6
        for event, expected in path:
            _, outcome = step(state, event, is_requestor=is_requestor)
            state = outcome.next_state
            assert state is expected, (is_requestor, event)
