"""DIMSE-C messages of queries: C-FIND (PS3.7 9.3.2) and C-CANCEL (PS3.7 9.3.2.3).

- :class:`CFindRQ` (command field 0020H) always carries an Identifier data set;
- :class:`CFindRSP` (8020H) carries one with a pending status (FF00/FF01) and
  none with a final one (0000, FE00, A900, C000 ...), PS3.7 9.1.2.1.6;
- :class:`CCancelRQ` (0FFFH) names the request it cancels by Message ID Being
  Responded To and has no response of its own (PS3.7 9.3.2.3).

Their decoders join :func:`dicomstore.dimse.decoding.decode_message`; a C-FIND-RQ
with a missing or mistyped field becomes an ``InvalidRequest`` (0212) like a
C-STORE-RQ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from dicomstore.dimse import field_readers as _f
from dicomstore.dimse import messages as _m
from dicomstore.dimse.commands import (
    AFFECTED_SOP_CLASS_UID,
    COMMAND_DATA_SET_TYPE,
    COMMAND_FIELD,
    DATA_SET_PRESENT,
    ERROR_COMMENT,
    MESSAGE_ID,
    MESSAGE_ID_BEING_RESPONDED_TO,
    NO_DATA_SET,
    OFFENDING_ELEMENT,
    PRIORITY,
    STATUS,
    Value,
    encode_command,
)
from dicomstore.dimse.decoding import register_decoders
from dicomstore.errors import RemoteProtocolError
from dicomstore.ul.pdu import ABORT_INVALID_PDU_PARAMETER_VALUE

# Command Field values (PS3.7 E.1)
C_FIND_RQ = 0x0020
C_FIND_RSP = 0x8020


@dataclass(slots=True)
class CFindRQ:
    """C-FIND-RQ (PS3.7 9.3.2.1); the Identifier follows as a data set."""

    message_id: int
    affected_sop_class_uid: str
    priority: int = _m.PRIORITY_MEDIUM
    command_field: ClassVar[int] = C_FIND_RQ
    has_dataset: ClassVar[bool] = True

    def encode(self) -> bytes:
        """The command set."""
        return encode_command(
            {
                AFFECTED_SOP_CLASS_UID: self.affected_sop_class_uid,
                COMMAND_FIELD: C_FIND_RQ,
                MESSAGE_ID: self.message_id,
                PRIORITY: self.priority,
                COMMAND_DATA_SET_TYPE: DATA_SET_PRESENT,
            }
        )

    def response(
        self,
        status: int,
        error_comment: str | None = None,
        offending_element: tuple[int, ...] | None = None,
        has_dataset: bool = False,
    ) -> CFindRSP:
        """A C-FIND-RSP to this request (``has_dataset`` for a pending match)."""
        return CFindRSP(
            self.message_id,
            status,
            self.affected_sop_class_uid,
            has_dataset,
            error_comment,
            offending_element,
        )


@dataclass(slots=True)
class CFindRSP:
    """C-FIND-RSP (PS3.7 9.3.2.2): a match (pending, with an Identifier) or the end."""

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None
    dataset_present: bool = False
    error_comment: str | None = None
    offending_element: tuple[int, ...] | None = None
    command_field: ClassVar[int] = C_FIND_RSP

    @property
    def has_dataset(self) -> bool:
        """True when an Identifier follows (a pending response)."""
        return self.dataset_present

    def encode(self) -> bytes:
        """The command set."""
        return encode_command(
            {
                AFFECTED_SOP_CLASS_UID: self.affected_sop_class_uid,
                COMMAND_FIELD: C_FIND_RSP,
                MESSAGE_ID_BEING_RESPONDED_TO: self.message_id_being_responded_to,
                COMMAND_DATA_SET_TYPE: DATA_SET_PRESENT if self.dataset_present else NO_DATA_SET,
                STATUS: self.status,
                OFFENDING_ELEMENT: self.offending_element or None,
                ERROR_COMMENT: self.error_comment,
            }
        )


@dataclass(slots=True)
class CCancelRQ:
    """C-CANCEL-RQ (PS3.7 9.3.2.3): stop the operation with this Message ID."""

    message_id_being_responded_to: int
    command_field: ClassVar[int] = _m.C_CANCEL_RQ
    has_dataset: ClassVar[bool] = False

    def encode(self) -> bytes:
        """The command set."""
        return encode_command(
            {
                COMMAND_FIELD: _m.C_CANCEL_RQ,
                MESSAGE_ID_BEING_RESPONDED_TO: self.message_id_being_responded_to,
                COMMAND_DATA_SET_TYPE: NO_DATA_SET,
            }
        )


def _decode_find_rq(fields: dict[int, Value], message_id: int, has_dataset: bool) -> CFindRQ:
    if not has_dataset:
        raise _f.Invalid(COMMAND_DATA_SET_TYPE, "C-FIND-RQ declares no data set")
    sop_class = _f.uid(fields, AFFECTED_SOP_CLASS_UID)
    priority = _f.us(fields, PRIORITY, True)
    if priority not in (_m.PRIORITY_MEDIUM, _m.PRIORITY_HIGH, _m.PRIORITY_LOW):
        raise _f.Invalid(PRIORITY, f"Priority {priority} is not 0, 1 or 2")
    return CFindRQ(message_id, sop_class, priority)


def _decode_find_rsp(fields: dict[int, Value], message_id: int, has_dataset: bool) -> CFindRSP:
    status = fields.get(STATUS)
    if not isinstance(status, int):
        raise RemoteProtocolError(
            "C-FIND-RSP without a readable Status", ABORT_INVALID_PDU_PARAMETER_VALUE
        )
    return CFindRSP(
        message_id,
        status,
        _f.lenient(fields, AFFECTED_SOP_CLASS_UID, str),
        has_dataset,
        _f.lenient(fields, ERROR_COMMENT, str),
        _f.lenient(fields, OFFENDING_ELEMENT, tuple),
    )


def _decode_cancel_rq(fields: dict[int, Value], message_id: int, has_dataset: bool) -> CCancelRQ:
    if has_dataset:
        raise RemoteProtocolError(
            "C-CANCEL-RQ declares a data set", ABORT_INVALID_PDU_PARAMETER_VALUE
        )
    return CCancelRQ(message_id)


register_decoders(
    {
        C_FIND_RQ: _decode_find_rq,
        C_FIND_RSP: _decode_find_rsp,
        _m.C_CANCEL_RQ: _decode_cancel_rq,
    }
)
