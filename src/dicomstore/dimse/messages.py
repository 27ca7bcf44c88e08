"""DIMSE messages C-ECHO and C-STORE (PS3.7 9.3.5, 9.3.1), with their decoders.

Every message has ``command_field``, ``has_dataset`` and ``encode()`` (its
command set); a request has ``response()``. Their decoders (:data:`DECODERS`)
are the first that ``decoding.decode_message`` knows: a C-ECHO-RQ or
C-STORE-RQ with a missing, mistyped or out-of-range field becomes an
``InvalidRequest``; a response without a readable Status, or declaring a data
set, raises RemoteProtocolError. The Command Field and Priority values of
PS3.7 E.1 live here too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from dicomstore.dimse.commands import (
    AFFECTED_SOP_CLASS_UID,
    AFFECTED_SOP_INSTANCE_UID,
    COMMAND_DATA_SET_TYPE,
    COMMAND_FIELD,
    DATA_SET_PRESENT,
    ERROR_COMMENT,
    ERROR_ID,
    MESSAGE_ID,
    MESSAGE_ID_BEING_RESPONDED_TO,
    MOVE_ORIGINATOR_AE_TITLE,
    MOVE_ORIGINATOR_MESSAGE_ID,
    NO_DATA_SET,
    OFFENDING_ELEMENT,
    PRIORITY,
    STATUS,
    BadValue,
    Value,
    encode_command,
)
from dicomstore.dimse.field_readers import Invalid, lenient, uid, us
from dicomstore.errors import RemoteProtocolError
from dicomstore.uids import VERIFICATION
from dicomstore.ul.pdu import ABORT_INVALID_PDU_PARAMETER_VALUE

# Command Field values (PS3.7 E.1)
C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
C_CANCEL_RQ = 0x0FFF
RESPONSE_BIT = 0x8000

# Priority (PS3.7 E.1)
PRIORITY_MEDIUM = 0x0000
PRIORITY_HIGH = 0x0001
PRIORITY_LOW = 0x0002


@dataclass(slots=True)
class CEchoRQ:
    """C-ECHO-RQ (PS3.7 9.3.5.1)."""

    message_id: int
    affected_sop_class_uid: str = VERIFICATION
    command_field: ClassVar[int] = C_ECHO_RQ
    has_dataset: ClassVar[bool] = False

    def encode(self) -> bytes:
        """The command set."""
        return encode_command(
            {
                AFFECTED_SOP_CLASS_UID: self.affected_sop_class_uid,
                COMMAND_FIELD: C_ECHO_RQ,
                MESSAGE_ID: self.message_id,
                COMMAND_DATA_SET_TYPE: NO_DATA_SET,
            }
        )

    def response(self, status: int = 0, error_comment: str | None = None) -> CEchoRSP:
        """The matching C-ECHO-RSP."""
        return CEchoRSP(self.message_id, status, self.affected_sop_class_uid, error_comment)


@dataclass(slots=True)
class CEchoRSP:
    """C-ECHO-RSP (PS3.7 9.3.5.2)."""

    message_id_being_responded_to: int
    status: int = 0
    affected_sop_class_uid: str | None = VERIFICATION
    error_comment: str | None = None
    command_field: ClassVar[int] = C_ECHO_RSP
    has_dataset: ClassVar[bool] = False

    def encode(self) -> bytes:
        """The command set."""
        return encode_command(
            {
                AFFECTED_SOP_CLASS_UID: self.affected_sop_class_uid,
                COMMAND_FIELD: C_ECHO_RSP,
                MESSAGE_ID_BEING_RESPONDED_TO: self.message_id_being_responded_to,
                COMMAND_DATA_SET_TYPE: NO_DATA_SET,
                STATUS: self.status,
                ERROR_COMMENT: self.error_comment,
            }
        )


@dataclass(slots=True)
class CStoreRQ:
    """C-STORE-RQ (PS3.7 9.3.1.1); a data set always follows."""

    message_id: int
    affected_sop_class_uid: str
    affected_sop_instance_uid: str
    priority: int = PRIORITY_MEDIUM
    move_originator_aet: str | None = None
    move_originator_message_id: int | None = None
    command_field: ClassVar[int] = C_STORE_RQ
    has_dataset: ClassVar[bool] = True

    def encode(self) -> bytes:
        """The command set."""
        return encode_command(
            {
                AFFECTED_SOP_CLASS_UID: self.affected_sop_class_uid,
                COMMAND_FIELD: C_STORE_RQ,
                MESSAGE_ID: self.message_id,
                PRIORITY: self.priority,
                COMMAND_DATA_SET_TYPE: DATA_SET_PRESENT,
                AFFECTED_SOP_INSTANCE_UID: self.affected_sop_instance_uid,
                MOVE_ORIGINATOR_AE_TITLE: self.move_originator_aet,
                MOVE_ORIGINATOR_MESSAGE_ID: self.move_originator_message_id,
            }
        )

    def response(
        self,
        status: int,
        error_comment: str | None = None,
        offending_element: tuple[int, ...] | None = None,
        error_id: int | None = None,
    ) -> CStoreRSP:
        """The matching C-STORE-RSP, echoing the SOP Class and Instance UIDs."""
        return CStoreRSP(
            self.message_id,
            status,
            self.affected_sop_class_uid,
            self.affected_sop_instance_uid,
            error_comment,
            offending_element,
            error_id,
        )


@dataclass(slots=True)
class CStoreRSP:
    """C-STORE-RSP (PS3.7 9.3.1.2); the UIDs are optional (U) on the wire."""

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None
    affected_sop_instance_uid: str | None
    error_comment: str | None = None
    offending_element: tuple[int, ...] | None = None
    error_id: int | None = None
    command_field: ClassVar[int] = C_STORE_RSP
    has_dataset: ClassVar[bool] = False

    def encode(self) -> bytes:
        """The command set."""
        return encode_command(
            {
                AFFECTED_SOP_CLASS_UID: self.affected_sop_class_uid,
                COMMAND_FIELD: C_STORE_RSP,
                MESSAGE_ID_BEING_RESPONDED_TO: self.message_id_being_responded_to,
                COMMAND_DATA_SET_TYPE: NO_DATA_SET,
                STATUS: self.status,
                OFFENDING_ELEMENT: self.offending_element or None,
                ERROR_COMMENT: self.error_comment,
                ERROR_ID: self.error_id,
                AFFECTED_SOP_INSTANCE_UID: self.affected_sop_instance_uid,
            }
        )


def _decode_echo_rq(fields: dict[int, Value], message_id: int, has_dataset: bool) -> CEchoRQ:
    if has_dataset:
        raise Invalid(COMMAND_DATA_SET_TYPE, "C-ECHO-RQ declares a data set")
    return CEchoRQ(message_id, uid(fields, AFFECTED_SOP_CLASS_UID))


def _decode_store_rq(fields: dict[int, Value], message_id: int, has_dataset: bool) -> CStoreRQ:
    if not has_dataset:
        raise Invalid(COMMAND_DATA_SET_TYPE, "C-STORE-RQ declares no data set")
    sop_class = uid(fields, AFFECTED_SOP_CLASS_UID)
    instance = uid(fields, AFFECTED_SOP_INSTANCE_UID)
    priority = us(fields, PRIORITY, True)
    if priority not in (PRIORITY_MEDIUM, PRIORITY_HIGH, PRIORITY_LOW):
        raise Invalid(PRIORITY, f"Priority {priority} is not 0, 1 or 2")
    aet = fields.get(MOVE_ORIGINATOR_AE_TITLE)
    if isinstance(aet, BadValue):
        raise Invalid(MOVE_ORIGINATOR_AE_TITLE, f"Move Originator AE Title: {aet.reason}")
    return CStoreRQ(
        message_id,
        sop_class,
        instance,
        priority,
        aet if isinstance(aet, str) and aet else None,
        us(fields, MOVE_ORIGINATOR_MESSAGE_ID, False),
    )


def _status(fields: dict[int, Value], name: str, has_dataset: bool) -> int:
    status = fields.get(STATUS)
    if not isinstance(status, int):
        raise RemoteProtocolError(
            f"{name} without a readable Status", ABORT_INVALID_PDU_PARAMETER_VALUE
        )
    if has_dataset:
        raise RemoteProtocolError(f"{name} declares a data set", ABORT_INVALID_PDU_PARAMETER_VALUE)
    return status


def _decode_echo_rsp(fields: dict[int, Value], message_id: int, has_dataset: bool) -> CEchoRSP:
    status = _status(fields, "C-ECHO-RSP", has_dataset)
    return CEchoRSP(
        message_id,
        status,
        lenient(fields, AFFECTED_SOP_CLASS_UID, str),
        lenient(fields, ERROR_COMMENT, str),
    )


def _decode_store_rsp(fields: dict[int, Value], message_id: int, has_dataset: bool) -> CStoreRSP:
    status = _status(fields, "C-STORE-RSP", has_dataset)
    return CStoreRSP(
        message_id,
        status,
        lenient(fields, AFFECTED_SOP_CLASS_UID, str),
        lenient(fields, AFFECTED_SOP_INSTANCE_UID, str),
        lenient(fields, ERROR_COMMENT, str),
        lenient(fields, OFFENDING_ELEMENT, tuple),
        lenient(fields, ERROR_ID, int),
    )


EchoOrStore = CEchoRQ | CEchoRSP | CStoreRQ | CStoreRSP

#: The decoders of these messages, by command field (``decoding.py`` starts with them).
DECODERS: dict[int, Callable[[dict[int, Value], int, bool], EchoOrStore]] = {
    C_ECHO_RQ: _decode_echo_rq,
    C_ECHO_RSP: _decode_echo_rsp,
    C_STORE_RQ: _decode_store_rq,
    C_STORE_RSP: _decode_store_rsp,
}
