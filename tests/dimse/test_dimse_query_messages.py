"""C-FIND and C-CANCEL messages (PS3.7 9.3.2, 9.3.2.3): byte vectors against pydicom."""

from __future__ import annotations

import pytest
from tests.dimse.test_dimse_messages import pydicom_bytes

from dicomstore.dimse import (
    C_FIND_RQ,
    CCancelRQ,
    CFindRQ,
    CFindRSP,
    InvalidRequest,
    decode_message,
    encode_command,
)
from dicomstore.dimse import commands as c
from dicomstore.errors import RemoteProtocolError

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


def test_c_find_rq_bytes_and_round_trip() -> None:
    rq = CFindRQ(7, STUDY_ROOT_FIND, priority=2)
    assert rq.encode() == pydicom_bytes(
        AffectedSOPClassUID=STUDY_ROOT_FIND,
        CommandField=0x0020,
        MessageID=7,
        Priority=2,
        CommandDataSetType=0x0000,
    )
    assert decode_message(rq.encode()) == rq


def test_c_find_rsp_pending_and_final_bytes() -> None:
    rq = CFindRQ(7, STUDY_ROOT_FIND)
    pending = rq.response(0xFF00, has_dataset=True)
    assert pending.encode() == pydicom_bytes(
        AffectedSOPClassUID=STUDY_ROOT_FIND,
        CommandField=0x8020,
        MessageIDBeingRespondedTo=7,
        CommandDataSetType=0x0000,
        Status=0xFF00,
    )
    final = rq.response(0xA900, "no such level", (0x00080052,))
    assert final.encode() == pydicom_bytes(
        AffectedSOPClassUID=STUDY_ROOT_FIND,
        CommandField=0x8020,
        MessageIDBeingRespondedTo=7,
        CommandDataSetType=0x0101,
        Status=0xA900,
        OffendingElement=[0x00080052],
        ErrorComment="no such level",
    )
    for rsp in (pending, final):
        back = decode_message(rsp.encode())
        assert back == rsp and back.has_dataset == rsp.has_dataset


def test_c_cancel_rq_bytes_and_round_trip() -> None:
    cancel = CCancelRQ(5)
    assert cancel.encode() == pydicom_bytes(
        CommandField=0x0FFF, MessageIDBeingRespondedTo=5, CommandDataSetType=0x0101
    )
    assert decode_message(cancel.encode()) == cancel
    assert not hasattr(cancel, "response")  # no response of its own (PS3.7 9.3.2.3)


@pytest.mark.parametrize(
    ("fields", "offending"),
    [
        ({c.MESSAGE_ID: 3, c.PRIORITY: 0, c.COMMAND_DATA_SET_TYPE: 0x0102}, 0x0002),
        (
            {
                c.AFFECTED_SOP_CLASS_UID: STUDY_ROOT_FIND,
                c.MESSAGE_ID: 3,
                c.PRIORITY: 9,
                c.COMMAND_DATA_SET_TYPE: 0x0102,
            },
            0x0700,
        ),
        (
            {
                c.AFFECTED_SOP_CLASS_UID: STUDY_ROOT_FIND,
                c.MESSAGE_ID: 3,
                c.PRIORITY: 0,
                c.COMMAND_DATA_SET_TYPE: 0x0101,
            },
            0x0800,
        ),
    ],
)
def test_c_find_rq_invalid_is_answered_0212(fields: dict[int, object], offending: int) -> None:
    msg = decode_message(encode_command({c.COMMAND_FIELD: C_FIND_RQ, **fields}))  # type: ignore[dict-item]
    assert isinstance(msg, InvalidRequest) and msg.offending_element == (offending,)
    rsp = decode_message(msg.response().encode())
    assert isinstance(rsp, CFindRSP) and rsp.status == 0x0212
    assert rsp.message_id_being_responded_to == 3


def test_c_find_rsp_without_status_and_cancel_with_data_set_are_protocol_errors() -> None:
    with pytest.raises(RemoteProtocolError):
        decode_message(encode_command({0x100: 0x8020, 0x120: 5, 0x800: 0x0101}))
    with pytest.raises(RemoteProtocolError):
        decode_message(encode_command({0x100: 0x0FFF, 0x120: 5, 0x800: 0x0102}))
