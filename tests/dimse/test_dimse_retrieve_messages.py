"""C-MOVE and C-GET messages (PS3.7 9.3.4, 9.3.3): byte vectors against pydicom,
round trips, 0212 for invalid requests."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.dimse.test_dimse_messages import pydicom_bytes

from dicomstore.dimse import (
    C_GET_RQ,
    C_MOVE_RQ,
    CGetRQ,
    CGetRSP,
    CMoveRQ,
    CMoveRSP,
    InvalidRequest,
    RetrieveRSP,
    SubOperations,
    decode_message,
    encode_command,
)
from dicomstore.dimse import commands as c
from dicomstore.errors import LocalProtocolError, RemoteProtocolError

STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"


def test_c_move_rq_bytes_and_round_trip() -> None:
    rq = CMoveRQ(7, STUDY_ROOT_MOVE, 1, move_destination="STORESCP")
    assert rq.encode() == pydicom_bytes(
        AffectedSOPClassUID=STUDY_ROOT_MOVE,
        CommandField=0x0021,
        MessageID=7,
        MoveDestination="STORESCP",
        Priority=1,
        CommandDataSetType=0x0000,
    )
    assert decode_message(rq.encode()) == rq and rq.has_dataset


def test_c_get_rq_bytes_and_round_trip() -> None:
    rq = CGetRQ(9, STUDY_ROOT_GET)
    assert rq.encode() == pydicom_bytes(
        AffectedSOPClassUID=STUDY_ROOT_GET,
        CommandField=0x0010,
        MessageID=9,
        Priority=0,
        CommandDataSetType=0x0000,
    )
    assert decode_message(rq.encode()) == rq and rq.has_dataset


def test_pending_response_carries_every_count() -> None:
    rq = CMoveRQ(7, STUDY_ROOT_MOVE, move_destination="STORESCP")
    pending = rq.response(0xFF00, SubOperations(5, 2, 1, 0))
    assert isinstance(pending, CMoveRSP) and not pending.has_dataset
    assert pending.encode() == pydicom_bytes(
        AffectedSOPClassUID=STUDY_ROOT_MOVE,
        CommandField=0x8021,
        MessageIDBeingRespondedTo=7,
        CommandDataSetType=0x0101,
        Status=0xFF00,
        NumberOfRemainingSuboperations=5,
        NumberOfCompletedSuboperations=2,
        NumberOfFailedSuboperations=1,
        NumberOfWarningSuboperations=0,
    )
    assert decode_message(pending.encode()) == pending


def test_final_response_with_failed_list_and_refusal() -> None:
    rq = CGetRQ(9, STUDY_ROOT_GET)
    final = rq.response(0xB000, SubOperations(None, 3, 1, 0), has_dataset=True)
    assert isinstance(final, CGetRSP) and final.has_dataset
    assert final.encode() == pydicom_bytes(
        AffectedSOPClassUID=STUDY_ROOT_GET,
        CommandField=0x8010,
        MessageIDBeingRespondedTo=9,
        CommandDataSetType=0x0000,
        Status=0xB000,
        NumberOfCompletedSuboperations=3,
        NumberOfFailedSuboperations=1,
        NumberOfWarningSuboperations=0,
    )
    refused = CMoveRQ(7, STUDY_ROOT_MOVE, move_destination="NOWHERE").response(
        0xA801, error_comment="unknown destination", offending_element=(0x00000600,)
    )
    assert refused.encode() == pydicom_bytes(
        AffectedSOPClassUID=STUDY_ROOT_MOVE,
        CommandField=0x8021,
        MessageIDBeingRespondedTo=7,
        CommandDataSetType=0x0101,
        Status=0xA801,
        OffendingElement=[0x00000600],
        ErrorComment="unknown destination",
    )
    for rsp in (final, refused):
        back = decode_message(rsp.encode())
        assert back == rsp and back.has_dataset == rsp.has_dataset


def test_move_and_get_responses_differ_by_command_field_only() -> None:
    move = CMoveRSP(1, 0, STUDY_ROOT_MOVE, SubOperations(None, 1, 0, 0))
    get = CGetRSP(1, 0, STUDY_ROOT_MOVE, SubOperations(None, 1, 0, 0))
    assert isinstance(move, RetrieveRSP) and isinstance(get, RetrieveRSP) and move != get
    assert (move.command_field, get.command_field) == (0x8021, 0x8010)
    assert move.encode().replace(b"\x21\x80", b"\x10\x80") == get.encode()


def _move(**changes: Any) -> dict[int, Any]:
    """A C-MOVE-RQ's fields, with ``changes`` by element (``None``: left out)."""
    fields = {
        c.AFFECTED_SOP_CLASS_UID: STUDY_ROOT_MOVE,
        c.COMMAND_FIELD: C_MOVE_RQ,
        c.MESSAGE_ID: 3,
        c.MOVE_DESTINATION: "DEST",
        c.PRIORITY: 0,
        c.COMMAND_DATA_SET_TYPE: 0x0102,
    }
    fields.update({int(k[1:], 16): v for k, v in changes.items()})
    return {k: v for k, v in fields.items() if v is not None}


@pytest.mark.parametrize(
    ("fields", "offending"),
    [
        (_move(x0600=None), 0x0600),
        (_move(x0600=""), 0x0600),
        (_move(x0002=None), 0x0002),
        (_move(x0700=7), 0x0700),
        (_move(x0800=0x0101), 0x0800),
        (_move(x0100=C_GET_RQ, x0600=None, x0800=0x0101), 0x0800),
        (_move(x0100=C_GET_RQ, x0600=None, x0700=3), 0x0700),
    ],
)
def test_invalid_requests_are_answered_0212(fields: dict[int, Any], offending: int) -> None:
    msg = decode_message(encode_command(fields))
    assert isinstance(msg, InvalidRequest) and msg.offending_element == (offending,)
    rsp = decode_message(msg.response().encode())
    assert isinstance(rsp, CMoveRSP | CGetRSP) and rsp.status == 0x0212
    assert rsp.message_id_being_responded_to == 3
    assert rsp.command_field == fields[c.COMMAND_FIELD] | 0x8000


def test_move_destination_of_16_characters_not_17_nor_non_ascii() -> None:
    rq = CMoveRQ(1, STUDY_ROOT_MOVE, move_destination="A" * 16)
    assert decode_message(rq.encode()) == rq
    with pytest.raises(LocalProtocolError):
        CMoveRQ(1, STUDY_ROOT_MOVE, move_destination="A" * 17).encode()
    raw = bytearray(encode_command(_move(x0600="DE")))
    at = raw.index(b"DE")
    raw[at : at + 2] = b"\xff\xfe"
    msg = decode_message(bytes(raw))
    assert isinstance(msg, InvalidRequest) and msg.offending_element == (0x0600,)


def test_response_without_status_is_a_protocol_error() -> None:
    for field in (0x8021, 0x8010):
        with pytest.raises(RemoteProtocolError):
            decode_message(encode_command({0x100: field, 0x120: 5, 0x800: 0x0101}))


def test_responses_read_optional_fields_leniently() -> None:
    raw = encode_command({0x100: 0x8021, 0x120: 5, 0x800: 0x0101, 0x900: 0xFF00, 0x1020: 4})
    rsp = decode_message(raw)
    assert isinstance(rsp, CMoveRSP) and rsp.sub_operations == SubOperations(remaining=4)
    # a Number of Completed Sub-operations of 4 bytes: dropped, not fatal
    body = raw[12:] + bytes.fromhex("0000 2110 04000000 01000000".replace(" ", ""))
    odd = struct.pack("<HHII", 0, 0, 4, len(body)) + body
    rsp = decode_message(odd)
    assert isinstance(rsp, CMoveRSP) and rsp.sub_operations == SubOperations(remaining=4)


counts = st.one_of(st.none(), st.integers(0, 0xFFFF))
uids = st.from_regex(r"\A[12](\.[1-9][0-9]{0,5}){1,8}\Z")


@settings(max_examples=100, deadline=None)
@given(
    st.integers(0, 0xFFFF),
    uids,
    st.sampled_from([0, 1, 2]),
    st.from_regex(r"\A[A-Z0-9_]{1,16}\Z"),
    st.builds(SubOperations, counts, counts, counts, counts),
    st.integers(0, 0xFFFF),
    st.booleans(),
    st.one_of(st.none(), st.text("ABC xyz0", min_size=1, max_size=64).map(str.strip)),
)
def test_round_trips(
    msg_id: int,
    sop_class: str,
    priority: int,
    destination: str,
    sub_operations: SubOperations,
    status: int,
    has_dataset: bool,
    comment: str | None,
) -> None:
    comment = comment or None
    for rq in (
        CMoveRQ(msg_id, sop_class, priority, move_destination=destination),
        CGetRQ(msg_id, sop_class, priority),
    ):
        assert decode_message(rq.encode()) == rq
        rsp = rq.response(status, sub_operations, error_comment=comment, has_dataset=has_dataset)
        assert decode_message(rsp.encode()) == rsp
