"""DIMSE-N messages of Storage Commitment: N-ACTION (PS3.7 10.3.4) and
N-EVENT-REPORT (PS3.7 10.3.1).

- :class:`NActionRQ` (command field 0130H) names the SOP instance acted on by
  Requested SOP Class/Instance UID and the action by Action Type ID; Action
  Information follows as a data set when present (for Storage Commitment it
  always is: the Transaction UID and the Referenced SOP Sequence, PS3.4 J.3.2);
- :class:`NActionRSP` (8130H) may carry an Action Reply data set;
- :class:`NEventReportRQ` (0100H) names the instance by Affected SOP Class and
  Instance UID and the event by Event Type ID, with Event Information as a data
  set (the Success and Failed SOP Sequences of J.3.3);
- :class:`NEventReportRSP` (8100H) may carry an Event Reply data set.

Their decoders join :func:`dicomstore.dimse.decoding.decode_message`; a request
with a missing or mistyped field becomes an ``InvalidRequest`` (answered 0212,
PS3.7 C.5.9 for the N services too) and a response without a Status is a
protocol error, as for the DIMSE-C messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from dicomstore.dimse import field_readers as _f
from dicomstore.dimse.commands import (
    ACTION_TYPE_ID,
    AFFECTED_SOP_CLASS_UID,
    AFFECTED_SOP_INSTANCE_UID,
    COMMAND_DATA_SET_TYPE,
    COMMAND_FIELD,
    DATA_SET_PRESENT,
    ERROR_COMMENT,
    ERROR_ID,
    EVENT_TYPE_ID,
    MESSAGE_ID,
    MESSAGE_ID_BEING_RESPONDED_TO,
    NO_DATA_SET,
    REQUESTED_SOP_CLASS_UID,
    REQUESTED_SOP_INSTANCE_UID,
    STATUS,
    Value,
    encode_command,
)
from dicomstore.dimse.decoding import register_decoders
from dicomstore.errors import RemoteProtocolError
from dicomstore.ul.pdu import ABORT_INVALID_PDU_PARAMETER_VALUE

# Command Field values (PS3.7 E.1)
N_EVENT_REPORT_RQ = 0x0100
N_EVENT_REPORT_RSP = 0x8100
N_ACTION_RQ = 0x0130
N_ACTION_RSP = 0x8130


def _data_set_type(present: bool) -> int:
    return DATA_SET_PRESENT if present else NO_DATA_SET


def _encode_response(
    rsp: NActionRSP | NEventReportRSP, type_element: int, type_id: int | None
) -> bytes:
    """The command set of an N-ACTION-RSP or N-EVENT-REPORT-RSP (PS3.7 10.3.4.2,
    10.3.1.2): the same fields, the Action or Event Type ID in its own element."""
    return encode_command(
        {
            AFFECTED_SOP_CLASS_UID: rsp.affected_sop_class_uid,
            COMMAND_FIELD: rsp.command_field,
            MESSAGE_ID_BEING_RESPONDED_TO: rsp.message_id_being_responded_to,
            COMMAND_DATA_SET_TYPE: _data_set_type(rsp.dataset_present),
            STATUS: rsp.status,
            ERROR_COMMENT: rsp.error_comment,
            ERROR_ID: rsp.error_id,
            AFFECTED_SOP_INSTANCE_UID: rsp.affected_sop_instance_uid,
            type_element: type_id,
        }
    )


@dataclass(slots=True)
class NActionRSP:
    """N-ACTION-RSP (PS3.7 10.3.4.2): the status, an Action Reply when present."""

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    affected_sop_instance_uid: str | None = None
    action_type_id: int | None = None
    dataset_present: bool = False
    error_comment: str | None = None
    error_id: int | None = None
    command_field: ClassVar[int] = N_ACTION_RSP

    @property
    def has_dataset(self) -> bool:
        """True when an Action Reply follows."""
        return self.dataset_present

    def encode(self) -> bytes:
        """The command set."""
        return _encode_response(self, ACTION_TYPE_ID, self.action_type_id)


@dataclass(slots=True)
class NActionRQ:
    """N-ACTION-RQ (PS3.7 10.3.4.1); Action Information follows when ``has_dataset``."""

    message_id: int
    requested_sop_class_uid: str
    requested_sop_instance_uid: str
    action_type_id: int
    dataset_present: bool = True
    command_field: ClassVar[int] = N_ACTION_RQ

    @property
    def has_dataset(self) -> bool:
        """True when Action Information follows."""
        return self.dataset_present

    def encode(self) -> bytes:
        """The command set."""
        return encode_command(
            {
                COMMAND_FIELD: N_ACTION_RQ,
                MESSAGE_ID: self.message_id,
                COMMAND_DATA_SET_TYPE: _data_set_type(self.dataset_present),
                REQUESTED_SOP_CLASS_UID: self.requested_sop_class_uid,
                REQUESTED_SOP_INSTANCE_UID: self.requested_sop_instance_uid,
                ACTION_TYPE_ID: self.action_type_id,
            }
        )

    def response(
        self,
        status: int,
        error_comment: str | None = None,
        *,
        has_dataset: bool = False,
        error_id: int | None = None,
    ) -> NActionRSP:
        """An N-ACTION-RSP to this request; the Action Type ID is returned on
        success (PS3.7 Table 10.3-5, condition: the action was performed)."""
        return NActionRSP(
            self.message_id,
            status,
            self.requested_sop_class_uid,
            self.requested_sop_instance_uid,
            self.action_type_id if status == 0 else None,
            has_dataset,
            error_comment,
            error_id,
        )


@dataclass(slots=True)
class NEventReportRSP:
    """N-EVENT-REPORT-RSP (PS3.7 10.3.1.2): the status, an Event Reply when present."""

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    affected_sop_instance_uid: str | None = None
    event_type_id: int | None = None
    dataset_present: bool = False
    error_comment: str | None = None
    error_id: int | None = None
    command_field: ClassVar[int] = N_EVENT_REPORT_RSP

    @property
    def has_dataset(self) -> bool:
        """True when an Event Reply follows."""
        return self.dataset_present

    def encode(self) -> bytes:
        """The command set."""
        return _encode_response(self, EVENT_TYPE_ID, self.event_type_id)


@dataclass(slots=True)
class NEventReportRQ:
    """N-EVENT-REPORT-RQ (PS3.7 10.3.1.1); Event Information follows when ``has_dataset``."""

    message_id: int
    affected_sop_class_uid: str
    affected_sop_instance_uid: str
    event_type_id: int
    dataset_present: bool = True
    command_field: ClassVar[int] = N_EVENT_REPORT_RQ

    @property
    def has_dataset(self) -> bool:
        """True when Event Information follows."""
        return self.dataset_present

    def encode(self) -> bytes:
        """The command set."""
        return encode_command(
            {
                AFFECTED_SOP_CLASS_UID: self.affected_sop_class_uid,
                COMMAND_FIELD: N_EVENT_REPORT_RQ,
                MESSAGE_ID: self.message_id,
                COMMAND_DATA_SET_TYPE: _data_set_type(self.dataset_present),
                AFFECTED_SOP_INSTANCE_UID: self.affected_sop_instance_uid,
                EVENT_TYPE_ID: self.event_type_id,
            }
        )

    def response(
        self,
        status: int,
        error_comment: str | None = None,
        *,
        has_dataset: bool = False,
        error_id: int | None = None,
    ) -> NEventReportRSP:
        """An N-EVENT-REPORT-RSP to this request; the Event Type ID is returned on
        success (PS3.7 Table 10.3-1, condition: the event was processed)."""
        return NEventReportRSP(
            self.message_id,
            status,
            self.affected_sop_class_uid,
            self.affected_sop_instance_uid,
            self.event_type_id if status == 0 else None,
            has_dataset,
            error_comment,
            error_id,
        )


def _decode_action_rq(fields: dict[int, Value], message_id: int, has_dataset: bool) -> NActionRQ:
    return NActionRQ(
        message_id,
        _f.uid(fields, REQUESTED_SOP_CLASS_UID),
        _f.uid(fields, REQUESTED_SOP_INSTANCE_UID),
        _f.us(fields, ACTION_TYPE_ID, True),
        has_dataset,
    )


def _decode_event_report_rq(
    fields: dict[int, Value], message_id: int, has_dataset: bool
) -> NEventReportRQ:
    return NEventReportRQ(
        message_id,
        _f.uid(fields, AFFECTED_SOP_CLASS_UID),
        _f.uid(fields, AFFECTED_SOP_INSTANCE_UID),
        _f.us(fields, EVENT_TYPE_ID, True),
        has_dataset,
    )


def _response_fields(
    fields: dict[int, Value], name: str, type_id: int
) -> tuple[int, str | None, str | None, int | None, str | None, int | None]:
    status = fields.get(STATUS)
    if not isinstance(status, int):
        raise RemoteProtocolError(
            f"{name} without a readable Status", ABORT_INVALID_PDU_PARAMETER_VALUE
        )
    return (
        status,
        _f.lenient(fields, AFFECTED_SOP_CLASS_UID, str),
        _f.lenient(fields, AFFECTED_SOP_INSTANCE_UID, str),
        _f.lenient(fields, type_id, int),
        _f.lenient(fields, ERROR_COMMENT, str),
        _f.lenient(fields, ERROR_ID, int),
    )


def _decode_action_rsp(fields: dict[int, Value], message_id: int, has_dataset: bool) -> NActionRSP:
    status, sop_class, sop_instance, type_id, comment, error_id = _response_fields(
        fields, "N-ACTION-RSP", ACTION_TYPE_ID
    )
    return NActionRSP(
        message_id, status, sop_class, sop_instance, type_id, has_dataset, comment, error_id
    )


def _decode_event_report_rsp(
    fields: dict[int, Value], message_id: int, has_dataset: bool
) -> NEventReportRSP:
    status, sop_class, sop_instance, type_id, comment, error_id = _response_fields(
        fields, "N-EVENT-REPORT-RSP", EVENT_TYPE_ID
    )
    return NEventReportRSP(
        message_id, status, sop_class, sop_instance, type_id, has_dataset, comment, error_id
    )


register_decoders(
    {
        N_ACTION_RQ: _decode_action_rq,
        N_ACTION_RSP: _decode_action_rsp,
        N_EVENT_REPORT_RQ: _decode_event_report_rq,
        N_EVENT_REPORT_RSP: _decode_event_report_rsp,
    }
)
