"""Decoding a command set into a message (PS3.7 9.3, Annex E), and the fallbacks.

:func:`decode_message` reads the Command Field, Command Data Set Type and
Message ID (Message ID Being Responded To for responses and C-CANCEL-RQ), then
hands the fields to the decoder registered for the command field: C-ECHO and
C-STORE (``messages.py``), C-FIND and C-CANCEL (``query_messages.py``), C-MOVE
and C-GET (``retrieve_messages.py``), N-ACTION and N-EVENT-REPORT
(``normalized_messages.py``; each of those registers its decoders here on
import, which the first message of its family does: :data:`FAMILIES`). What
no decoder takes, or a decoder refuses, becomes:

- :class:`UnknownCommand` for any other command field (answer a request with
  ``.response()``, which defaults to 0211 "unrecognized operation");
- :class:`InvalidRequest` for a request whose Message ID is readable but
  another field is missing, mistyped or out of range (answer with
  ``.response()``, default 0212 "mistyped argument", PS3.7 C.5.9);

both answered with a :class:`GenericRSP` when no message class of ours fits.

RemoteProtocolError is raised only when a message cannot be answered or
framed: no readable Command Field, Command Data Set Type or Message ID, or a
response without a readable Status or declaring a data set.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Union

from dicomstore.dimse.commands import (
    AFFECTED_SOP_CLASS_UID,
    AFFECTED_SOP_INSTANCE_UID,
    COMMAND_DATA_SET_TYPE,
    COMMAND_FIELD,
    ERROR_COMMENT,
    MESSAGE_ID,
    MESSAGE_ID_BEING_RESPONDED_TO,
    NO_DATA_SET,
    OFFENDING_ELEMENT,
    REQUESTED_SOP_CLASS_UID,
    REQUESTED_SOP_INSTANCE_UID,
    STATUS,
    Value,
    decode_command,
    encode_command,
)
from dicomstore.dimse.field_readers import Invalid
from dicomstore.dimse.messages import (
    C_CANCEL_RQ,
    C_ECHO_RQ,
    C_STORE_RQ,
    DECODERS,
    RESPONSE_BIT,
    CEchoRQ,
    CEchoRSP,
    CStoreRQ,
    CStoreRSP,
)
from dicomstore.dimse.status import MISTYPED_ARGUMENT, UNRECOGNIZED_OPERATION
from dicomstore.errors import LocalProtocolError, RemoteProtocolError
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

_DECODERS: dict[int, Callable[[dict[int, Value], int, bool], Message]] = {**DECODERS}
#: The module whose import registers the decoders of these command fields (PS3.7
#: E.1-1, E.2-1): loaded with the first such message (``dicomstore send`` then
#: never loads the Q/R and normalized families; a test checks this table).
FAMILIES: dict[int, str] = {
    **dict.fromkeys((0x0020, 0x8020, 0x0FFF), "query_messages"),  # C-FIND, C-CANCEL
    **dict.fromkeys((0x0021, 0x8021, 0x0010, 0x8010), "retrieve_messages"),  # C-MOVE, C-GET
    **dict.fromkeys((0x0130, 0x8130, 0x0100, 0x8100), "normalized_messages"),  # N-ACTION, N-EVENT
}


def register_decoders(
    decoders: dict[int, Callable[[dict[int, Value], int, bool], Message]],
) -> None:
    """Add the decoders of another module's messages (``query_messages``,
    ``retrieve_messages`` and ``normalized_messages`` do, on import)."""
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
    if decoder is None and command_field in FAMILIES:
        importlib.import_module(f"dicomstore.dimse.{FAMILIES[command_field]}")  # (registers)
        decoder = _DECODERS.get(command_field)
    if decoder is None:
        return UnknownCommand(command_field, message_id, fields, has_dataset)
    try:
        return decoder(fields, message_id, has_dataset)
    except Invalid as exc:
        return InvalidRequest(
            command_field, message_id, has_dataset, exc.reason, (exc.element,), fields
        )
