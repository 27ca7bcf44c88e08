"""DIMSE messages: C-ECHO and C-STORE (PS3.7 9.3.1, 9.3.5) and the fallbacks
(C-FIND and C-CANCEL: ``query_messages.py``; C-MOVE and C-GET:
``retrieve_messages.py``; each registers its decoders here on import).

Every message has ``command_field``, ``has_dataset`` and ``encode()`` (its
command set).  ``decode_message`` turns a command set into one of:

- :class:`CEchoRQ`, :class:`CEchoRSP`, :class:`CStoreRQ`, :class:`CStoreRSP`;
- :class:`UnknownCommand` for any other command field (answer a request with
  ``.response()``, which defaults to 0211 "unrecognized operation");
- :class:`InvalidRequest` for a C-ECHO-RQ or C-STORE-RQ whose Message ID is
  readable but another field is missing, mistyped or out of range (answer with
  ``.response()``, default 0212 "mistyped argument", PS3.7 C.5.9).

RemoteProtocolError is raised only when a message cannot be answered or
framed: no readable Command Field, Command Data Set Type or Message ID (Message
ID Being Responded To for responses and C-CANCEL-RQ), or a C-ECHO/C-STORE
response without a readable Status or declaring a data set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal, TypeVar, Union, overload

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
    REQUESTED_SOP_CLASS_UID,
    REQUESTED_SOP_INSTANCE_UID,
    STATUS,
    BadValue,
    Value,
    decode_command,
    encode_command,
    tag_str,
)
from dicomstore.dimse.status import MISTYPED_ARGUMENT, UNRECOGNIZED_OPERATION
from dicomstore.errors import LocalProtocolError, RemoteProtocolError
from dicomstore.uids import VERIFICATION
from dicomstore.ul.pdu import ABORT_INVALID_PDU_PARAMETER_VALUE

if TYPE_CHECKING:
    from dicomstore.dimse.normalized_messages import (
        NActionRQ,
        NActionRSP,
        NEventReportRQ,
        NEventReportRSP,
    )
    from dicomstore.dimse.query_messages import CCancelRQ, CFindRQ, CFindRSP
    from dicomstore.dimse.retrieve_messages import CGetRQ, CGetRSP, CMoveRQ, CMoveRSP

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


@dataclass(slots=True)
class GenericRSP:
    """A response to a request we do not implement (e.g. 0211 to an N-ACTION-RQ).

    The peer decodes it as whatever its command field is; we only encode it.
    """

    command_field: int
    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    affected_sop_instance_uid: str | None = None
    error_comment: str | None = None
    offending_element: tuple[int, ...] | None = None
    has_dataset: ClassVar[bool] = False

    def encode(self) -> bytes:
        """The command set."""
        return encode_command(
            {
                AFFECTED_SOP_CLASS_UID: self.affected_sop_class_uid,
                COMMAND_FIELD: self.command_field,
                MESSAGE_ID_BEING_RESPONDED_TO: self.message_id_being_responded_to,
                COMMAND_DATA_SET_TYPE: NO_DATA_SET,
                STATUS: self.status,
                OFFENDING_ELEMENT: self.offending_element or None,
                ERROR_COMMENT: self.error_comment,
                AFFECTED_SOP_INSTANCE_UID: self.affected_sop_instance_uid,
            }
        )


def _str_field(fields: dict[int, Value], *elements: int) -> str | None:
    for element in elements:
        value = fields.get(element)
        if isinstance(value, str) and value:
            return value
    return None


@dataclass(slots=True)
class UnknownCommand:
    """Any command field other than C-ECHO/C-STORE (PS3.7 E.1), with its decoded fields.

    ``message_id`` is the Message ID of a request, or the Message ID Being
    Responded To of a response or C-CANCEL-RQ.
    """

    command_field: int
    message_id: int
    fields: dict[int, Value]
    has_dataset: bool

    @property
    def is_response(self) -> bool:
        """True when the command field has the response bit (8000H) set."""
        return bool(self.command_field & RESPONSE_BIT)

    def encode(self) -> bytes:
        """The command set (its fields re-encoded)."""
        return encode_command(self.fields)

    def response(
        self, status: int = UNRECOGNIZED_OPERATION, error_comment: str | None = None
    ) -> GenericRSP:
        """A response with command field ``request | 8000H`` (default status 0211)."""
        if self.is_response or self.command_field == C_CANCEL_RQ:
            raise LocalProtocolError(f"command field {self.command_field:#06x} has no response")
        return GenericRSP(
            self.command_field | RESPONSE_BIT,
            self.message_id,
            status,
            _str_field(self.fields, AFFECTED_SOP_CLASS_UID, REQUESTED_SOP_CLASS_UID),
            _str_field(self.fields, AFFECTED_SOP_INSTANCE_UID, REQUESTED_SOP_INSTANCE_UID),
            error_comment
            if error_comment is not None
            else f"unrecognized operation {self.command_field:#06x}",
        )


@dataclass(slots=True)
class InvalidRequest:
    """A C-ECHO-RQ or C-STORE-RQ with a missing, mistyped or out-of-range field.

    The service answers it with ``.response()`` (0212 by default, PS3.7 C.5.9)
    once any data set it declares (``has_dataset``) has been received and
    discarded.
    """

    command_field: int
    message_id: int
    has_dataset: bool
    reason: str
    offending_element: tuple[int, ...]
    fields: dict[int, Value]

    def encode(self) -> bytes:
        """The command set as received (its fields re-encoded)."""
        return encode_command(self.fields)

    def response(
        self, status: int = MISTYPED_ARGUMENT, error_comment: str | None = None
    ) -> CEchoRSP | CStoreRSP | GenericRSP:
        """The matching response, carrying Offending Element and Error Comment."""
        comment = self.reason if error_comment is None else error_comment
        sop_class = _str_field(self.fields, AFFECTED_SOP_CLASS_UID, REQUESTED_SOP_CLASS_UID)
        if self.command_field == C_ECHO_RQ:
            return CEchoRSP(self.message_id, status, sop_class, comment)
        instance = _str_field(self.fields, AFFECTED_SOP_INSTANCE_UID, REQUESTED_SOP_INSTANCE_UID)
        if self.command_field == C_STORE_RQ:
            return CStoreRSP(
                self.message_id, status, sop_class, instance, comment, self.offending_element
            )
        return GenericRSP(
            self.command_field | RESPONSE_BIT,
            self.message_id,
            status,
            sop_class,
            instance,
            comment,
            self.offending_element,
        )


#: Every decoded message; C-FIND and C-CANCEL live in ``query_messages.py``,
#: C-MOVE and C-GET in ``retrieve_messages.py``, N-ACTION and N-EVENT-REPORT in
#: ``normalized_messages.py``.
Message = Union[  # noqa: UP007 - forward references to those modules
    CEchoRQ,
    CEchoRSP,
    CStoreRQ,
    CStoreRSP,
    UnknownCommand,
    InvalidRequest,
    GenericRSP,
    "CFindRQ",
    "CFindRSP",
    "CCancelRQ",
    "NActionRQ",
    "NActionRSP",
    "NEventReportRQ",
    "NEventReportRSP",
    "CMoveRQ",
    "CMoveRSP",
    "CGetRQ",
    "CGetRSP",
]


class _Invalid(Exception):
    def __init__(self, element: int, reason: str) -> None:
        super().__init__(reason)
        self.element = element
        self.reason = reason


def _uid(fields: dict[int, Value], element: int) -> str:
    value = fields.get(element)
    if isinstance(value, str) and value:
        return value
    if isinstance(value, BadValue):
        raise _Invalid(element, f"{tag_str(element)}: {value.reason}")
    raise _Invalid(element, f"{tag_str(element)} is missing or empty")


@overload
def _us(fields: dict[int, Value], element: int, required: Literal[True]) -> int: ...
@overload
def _us(fields: dict[int, Value], element: int, required: bool) -> int | None: ...
def _us(fields: dict[int, Value], element: int, required: bool) -> int | None:
    value = fields.get(element)
    if isinstance(value, int):
        return value
    if value is None and not required:
        return None
    reason = value.reason if isinstance(value, BadValue) else "missing"
    raise _Invalid(element, f"{tag_str(element)}: {reason}")


def _decode_echo_rq(fields: dict[int, Value], message_id: int, has_dataset: bool) -> CEchoRQ:
    if has_dataset:
        raise _Invalid(COMMAND_DATA_SET_TYPE, "C-ECHO-RQ declares a data set")
    return CEchoRQ(message_id, _uid(fields, AFFECTED_SOP_CLASS_UID))


def _decode_store_rq(fields: dict[int, Value], message_id: int, has_dataset: bool) -> CStoreRQ:
    if not has_dataset:
        raise _Invalid(COMMAND_DATA_SET_TYPE, "C-STORE-RQ declares no data set")
    sop_class = _uid(fields, AFFECTED_SOP_CLASS_UID)
    instance = _uid(fields, AFFECTED_SOP_INSTANCE_UID)
    priority = _us(fields, PRIORITY, True)
    if priority not in (PRIORITY_MEDIUM, PRIORITY_HIGH, PRIORITY_LOW):
        raise _Invalid(PRIORITY, f"Priority {priority} is not 0, 1 or 2")
    aet = fields.get(MOVE_ORIGINATOR_AE_TITLE)
    if isinstance(aet, BadValue):
        raise _Invalid(MOVE_ORIGINATOR_AE_TITLE, f"Move Originator AE Title: {aet.reason}")
    return CStoreRQ(
        message_id,
        sop_class,
        instance,
        priority,
        aet if isinstance(aet, str) and aet else None,
        _us(fields, MOVE_ORIGINATOR_MESSAGE_ID, False),
    )


_T = TypeVar("_T", int, str, tuple[int, ...])


def _lenient(fields: dict[int, Value], element: int, kind: type[_T]) -> _T | None:
    """An optional field of a response: a mistyped value is dropped, not fatal."""
    value = fields.get(element)
    return value if isinstance(value, kind) and value != "" and value != () else None


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
        _lenient(fields, AFFECTED_SOP_CLASS_UID, str),
        _lenient(fields, ERROR_COMMENT, str),
    )


def _decode_store_rsp(fields: dict[int, Value], message_id: int, has_dataset: bool) -> CStoreRSP:
    status = _status(fields, "C-STORE-RSP", has_dataset)
    return CStoreRSP(
        message_id,
        status,
        _lenient(fields, AFFECTED_SOP_CLASS_UID, str),
        _lenient(fields, AFFECTED_SOP_INSTANCE_UID, str),
        _lenient(fields, ERROR_COMMENT, str),
        _lenient(fields, OFFENDING_ELEMENT, tuple),
        _lenient(fields, ERROR_ID, int),
    )


_DECODERS: dict[int, Callable[[dict[int, Value], int, bool], Message]] = {
    C_ECHO_RQ: _decode_echo_rq,
    C_ECHO_RSP: _decode_echo_rsp,
    C_STORE_RQ: _decode_store_rq,
    C_STORE_RSP: _decode_store_rsp,
}


def register_decoders(
    decoders: dict[int, Callable[[dict[int, Value], int, bool], Message]],
) -> None:
    """Add the decoders of another module's messages (``query_messages`` and
    ``retrieve_messages`` do, on import)."""
    _DECODERS.update(decoders)


def _required_int(fields: dict[int, Value], element: int, what: str) -> int:
    value = fields.get(element)
    if not isinstance(value, int):
        raise RemoteProtocolError(
            f"command set without a readable {what}", ABORT_INVALID_PDU_PARAMETER_VALUE
        )
    return value


def decode_message(data: bytes | bytearray | memoryview) -> Message:
    """Decode a complete command set into a message (PS3.7 9.3, Annex E).

    See the module notes for what becomes an InvalidRequest and what raises.
    """
    fields = decode_command(data)
    command_field = _required_int(fields, COMMAND_FIELD, "Command Field")
    data_set_type = _required_int(fields, COMMAND_DATA_SET_TYPE, "Command Data Set Type")
    has_dataset = data_set_type != NO_DATA_SET
    if command_field & RESPONSE_BIT or command_field == C_CANCEL_RQ:
        message_id = _required_int(
            fields, MESSAGE_ID_BEING_RESPONDED_TO, "Message ID Being Responded To"
        )
    else:
        message_id = _required_int(fields, MESSAGE_ID, "Message ID")
    decoder = _DECODERS.get(command_field)
    if decoder is None:
        return UnknownCommand(command_field, message_id, fields, has_dataset)
    try:
        return decoder(fields, message_id, has_dataset)
    except _Invalid as exc:
        return InvalidRequest(
            command_field, message_id, has_dataset, exc.reason, (exc.element,), fields
        )
