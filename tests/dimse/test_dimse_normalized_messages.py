"""N-ACTION and N-EVENT-REPORT messages (PS3.7 10.3.4, 10.3.1): byte vectors
against pydicom, round trips, refusals (0212) and protocol errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.dimse.test_dimse_messages import pydicom_bytes

from dicomstore.dimse import (
    N_ACTION_RQ,
    N_EVENT_REPORT_RQ,
    GenericRSP,
    InvalidRequest,
    NActionRQ,
    NActionRSP,
    NEventReportRQ,
    NEventReportRSP,
    decode_message,
    encode_command,
)
from dicomstore.dimse import commands as c
from dicomstore.errors import RemoteProtocolError

COMMITMENT = "1.2.840.10008.1.20.1"  # Storage Commitment Push Model SOP Class
WELL_KNOWN = "1.2.840.10008.1.20.1.1"  # its well-known SOP Instance (PS3.4 J.3.1)


def test_n_action_rq_bytes_and_round_trip() -> None:
    rq = NActionRQ(9, COMMITMENT, WELL_KNOWN, 1)
    assert rq.encode() == pydicom_bytes(
        CommandField=0x0130,
        MessageID=9,
        CommandDataSetType=0x0000,
        RequestedSOPClassUID=COMMITMENT,
        RequestedSOPInstanceUID=WELL_KNOWN,
        ActionTypeID=1,
    )
    back = decode_message(rq.encode())
    assert back == rq and back.has_dataset


def test_n_action_rsp_success_and_failure_bytes() -> None:
    rq = NActionRQ(9, COMMITMENT, WELL_KNOWN, 1)
    ok = rq.response(0)
    assert ok.encode() == pydicom_bytes(
        AffectedSOPClassUID=COMMITMENT,
        CommandField=0x8130,
        MessageIDBeingRespondedTo=9,
        CommandDataSetType=0x0101,
        Status=0,
        AffectedSOPInstanceUID=WELL_KNOWN,
        ActionTypeID=1,
    )
    failed = rq.response(0x0110, "index unavailable", error_id=7)
    assert failed.action_type_id is None  # only when the action was performed
    assert failed.encode() == pydicom_bytes(
        AffectedSOPClassUID=COMMITMENT,
        CommandField=0x8130,
        MessageIDBeingRespondedTo=9,
        CommandDataSetType=0x0101,
        Status=0x0110,
        ErrorComment="index unavailable",
        ErrorID=7,
        AffectedSOPInstanceUID=WELL_KNOWN,
    )
    for rsp in (ok, failed, rq.response(0, has_dataset=True)):
        back = decode_message(rsp.encode())
        assert back == rsp and back.has_dataset == rsp.has_dataset


def test_n_event_report_rq_and_rsp_bytes_and_round_trips() -> None:
    rq = NEventReportRQ(3, COMMITMENT, WELL_KNOWN, 2)
    assert rq.encode() == pydicom_bytes(
        AffectedSOPClassUID=COMMITMENT,
        CommandField=0x0100,
        MessageID=3,
        CommandDataSetType=0x0000,
        AffectedSOPInstanceUID=WELL_KNOWN,
        EventTypeID=2,
    )
    assert decode_message(rq.encode()) == rq
    rsp = rq.response(0)
    assert rsp.encode() == pydicom_bytes(
        AffectedSOPClassUID=COMMITMENT,
        CommandField=0x8100,
        MessageIDBeingRespondedTo=3,
        CommandDataSetType=0x0101,
        Status=0,
        AffectedSOPInstanceUID=WELL_KNOWN,
        EventTypeID=2,
    )
    assert decode_message(rsp.encode()) == rsp
    without = NEventReportRQ(4, COMMITMENT, WELL_KNOWN, 1, dataset_present=False)
    assert decode_message(without.encode()) == without and not without.has_dataset


@pytest.mark.parametrize(
    ("command_field", "fields", "offending"),
    [
        (
            N_ACTION_RQ,
            {c.REQUESTED_SOP_INSTANCE_UID: WELL_KNOWN, c.ACTION_TYPE_ID: 1},
            c.REQUESTED_SOP_CLASS_UID,
        ),
        (
            N_ACTION_RQ,
            {c.REQUESTED_SOP_CLASS_UID: COMMITMENT, c.REQUESTED_SOP_INSTANCE_UID: WELL_KNOWN},
            c.ACTION_TYPE_ID,
        ),
        (
            N_EVENT_REPORT_RQ,
            {c.AFFECTED_SOP_CLASS_UID: COMMITMENT, c.EVENT_TYPE_ID: 1},
            c.AFFECTED_SOP_INSTANCE_UID,
        ),
    ],
)
def test_a_request_missing_a_field_is_answered_0212(
    command_field: int, fields: dict[int, object], offending: int
) -> None:
    data = encode_command(
        {c.COMMAND_FIELD: command_field, c.MESSAGE_ID: 5, c.COMMAND_DATA_SET_TYPE: 0x0101} | fields  # type: ignore[operator]
    )
    msg = decode_message(data)
    assert isinstance(msg, InvalidRequest) and msg.offending_element == (offending,)
    rsp = msg.response()
    assert isinstance(rsp, GenericRSP) and rsp.command_field == command_field | 0x8000
    back = decode_message(rsp.encode())
    assert isinstance(back, NActionRSP | NEventReportRSP)
    assert (back.status, back.message_id_being_responded_to) == (0x0212, 5)
    if command_field == N_ACTION_RQ and c.REQUESTED_SOP_CLASS_UID in fields:
        assert back.affected_sop_class_uid == COMMITMENT  # from the Requested one


@pytest.mark.parametrize("command_field", [0x8130, 0x8100])
def test_a_response_without_status_is_a_protocol_error(command_field: int) -> None:
    with pytest.raises(RemoteProtocolError, match="Status"):
        decode_message(encode_command({0x100: command_field, 0x120: 5, 0x800: 0x0101}))


uids = st.from_regex(r"[12](\.[1-9][0-9]{0,8}){1,6}", fullmatch=True)
ids = st.integers(0, 0xFFFF)


@settings(max_examples=100, deadline=None)
@given(ids, uids, uids, ids, st.booleans(), st.sampled_from([0, 0x0110, 0x0112, 0x0123]))
def test_round_trips(
    message_id: int, sop_class: str, instance: str, type_id: int, data: bool, status: int
) -> None:
    action = NActionRQ(message_id, sop_class, instance, type_id, data)
    report = NEventReportRQ(message_id, sop_class, instance, type_id, data)
    for msg in (action, report, action.response(status), report.response(status)):
        assert decode_message(msg.encode()) == msg
