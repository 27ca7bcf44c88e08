"""DIMSE-C messages of retrievals: C-MOVE (PS3.7 9.3.4) and C-GET (PS3.7 9.3.3).

The two share one shape: a request with an Identifier (plus, for C-MOVE, the
Move Destination (0000,0600), an AE title), and responses that carry the
:class:`SubOperations` counts (0000,1020)-(0000,1023):

- :class:`CMoveRQ` (command field 0021H), :class:`CGetRQ` (0010H): both always
  carry an Identifier data set;
- :class:`CMoveRSP` (8021H), :class:`CGetRSP` (8010H): both :class:`RetrieveRSP`,
  pending (FF00) with every count, final (0000, B000, FE00, A702 ...) with the
  Completed, Failed and Warning counts and, after failed sub-operations, an
  Identifier holding the Failed SOP Instance UID List (PS3.4 C.4.2.1.5).

A C-CANCEL-RQ (``query_messages.py``) cancels either. Their decoders join
:func:`dicomstore.dimse.decoding.decode_message`; a request with a missing or
mistyped field becomes an ``InvalidRequest`` (0212) like a C-STORE-RQ; a
response's optional fields (the counts among them) are read leniently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

from dicomstore.dimse import field_readers as _f
from dicomstore.dimse import messages as _m
from dicomstore.dimse.commands import (
    AFFECTED_SOP_CLASS_UID,
    COMMAND_DATA_SET_TYPE,
    COMMAND_FIELD,
    DATA_SET_PRESENT,
    ERROR_COMMENT,
    FAILED_SOP_INSTANCE_UID_LIST,
    MESSAGE_ID,
    MESSAGE_ID_BEING_RESPONDED_TO,
    MOVE_DESTINATION,
    NO_DATA_SET,
    NUMBER_OF_COMPLETED_SUBOPERATIONS,
    NUMBER_OF_FAILED_SUBOPERATIONS,
    NUMBER_OF_REMAINING_SUBOPERATIONS,
    NUMBER_OF_WARNING_SUBOPERATIONS,
    OFFENDING_ELEMENT,
    PRIORITY,
    STATUS,
    BadValue,
    Value,
    encode_command,
)
from dicomstore.dimse.decoding import register_decoders
from dicomstore.errors import RemoteProtocolError
from dicomstore.ul.pdu import ABORT_INVALID_PDU_PARAMETER_VALUE

# Command Field values (PS3.7 E.1)
C_GET_RQ = 0x0010
C_GET_RSP = 0x8010
C_MOVE_RQ = 0x0021
C_MOVE_RSP = 0x8021


@dataclass(frozen=True, slots=True)
class SubOperations:
    """Numbers of Remaining, Completed, Failed and Warning Sub-operations
    (0000,1020)-(0000,1023), PS3.4 C.4.2.1.6-9; ``None``: not in the response."""

    remaining: int | None = None
    completed: int | None = None
    failed: int | None = None
    warning: int | None = None


@dataclass(slots=True)
class RetrieveRSP:
    """A C-MOVE-RSP or C-GET-RSP (PS3.7 9.3.4.2, 9.3.3.2): use :class:`CMoveRSP`
    or :class:`CGetRSP`, which differ by command field only."""

    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None
    sub_operations: SubOperations = field(default_factory=SubOperations)
    #: an Identifier follows (the Failed SOP Instance UID List of a final response)
    dataset_present: bool = False
    error_comment: str | None = None
    offending_element: tuple[int, ...] | None = None
    #: a Failed SOP Instance UID List a peer put in the command set (Orthanc), not
    #: in the Identifier (``commands.decode_command``); never encoded
    failed_in_command: str | None = None
    command_field: ClassVar[int]

    @property
    def has_dataset(self) -> bool:
        """True when an Identifier follows."""
        return self.dataset_present

    def encode(self) -> bytes:
        """The command set."""
        counts = self.sub_operations
        return encode_command(
            {
                AFFECTED_SOP_CLASS_UID: self.affected_sop_class_uid,
                COMMAND_FIELD: self.command_field,
                MESSAGE_ID_BEING_RESPONDED_TO: self.message_id_being_responded_to,
                COMMAND_DATA_SET_TYPE: DATA_SET_PRESENT if self.dataset_present else NO_DATA_SET,
                STATUS: self.status,
                OFFENDING_ELEMENT: self.offending_element or None,
                ERROR_COMMENT: self.error_comment,
                NUMBER_OF_REMAINING_SUBOPERATIONS: counts.remaining,
                NUMBER_OF_COMPLETED_SUBOPERATIONS: counts.completed,
                NUMBER_OF_FAILED_SUBOPERATIONS: counts.failed,
                NUMBER_OF_WARNING_SUBOPERATIONS: counts.warning,
            }
        )


@dataclass(slots=True)
class CMoveRSP(RetrieveRSP):
    """C-MOVE-RSP (PS3.7 9.3.4.2)."""

    command_field: ClassVar[int] = C_MOVE_RSP


@dataclass(slots=True)
class CGetRSP(RetrieveRSP):
    """C-GET-RSP (PS3.7 9.3.3.2)."""

    command_field: ClassVar[int] = C_GET_RSP


@dataclass(slots=True)
class RetrieveRQ:
    """What a C-MOVE-RQ and a C-GET-RQ share (PS3.7 9.3.4.1, 9.3.3.1): use
    :class:`CMoveRQ` or :class:`CGetRQ`. The Identifier follows as a data set."""

    message_id: int
    affected_sop_class_uid: str
    priority: int = _m.PRIORITY_MEDIUM
    has_dataset: ClassVar[bool] = True
    command_field: ClassVar[int]
    response_type: ClassVar[type[RetrieveRSP]]

    def _fields(self) -> dict[int, Value | None]:
        return {
            AFFECTED_SOP_CLASS_UID: self.affected_sop_class_uid,
            COMMAND_FIELD: self.command_field,
            MESSAGE_ID: self.message_id,
            PRIORITY: self.priority,
            COMMAND_DATA_SET_TYPE: DATA_SET_PRESENT,
        }

    def encode(self) -> bytes:
        """The command set."""
        return encode_command(self._fields())

    def response(
        self,
        status: int,
        sub_operations: SubOperations | None = None,
        *,
        error_comment: str | None = None,
        offending_element: tuple[int, ...] | None = None,
        has_dataset: bool = False,
    ) -> RetrieveRSP:
        """A response of this request's type (``has_dataset``: an Identifier follows)."""
        return self.response_type(
            self.message_id,
            status,
            self.affected_sop_class_uid,
            sub_operations or SubOperations(),
            has_dataset,
            error_comment,
            offending_element,
        )


@dataclass(slots=True)
class CGetRQ(RetrieveRQ):
    """C-GET-RQ (PS3.7 9.3.3.1): the sub-operations come back on this association."""

    command_field: ClassVar[int] = C_GET_RQ
    response_type: ClassVar[type[RetrieveRSP]] = CGetRSP


@dataclass(slots=True)
class CMoveRQ(RetrieveRQ):
    """C-MOVE-RQ (PS3.7 9.3.4.1): the sub-operations go to ``move_destination``,
    an AE title (keyword only: ``CMoveRQ(1, sop_class, move_destination="STORESCP")``)."""

    move_destination: str = field(default="", kw_only=True)
    command_field: ClassVar[int] = C_MOVE_RQ
    response_type: ClassVar[type[RetrieveRSP]] = CMoveRSP

    def _fields(self) -> dict[int, Value | None]:
        fields = RetrieveRQ._fields(self)
        fields[MOVE_DESTINATION] = self.move_destination
        return fields


def _priority(fields: dict[int, Value]) -> int:
    priority = _f.us(fields, PRIORITY, True)
    if priority not in (_m.PRIORITY_MEDIUM, _m.PRIORITY_HIGH, _m.PRIORITY_LOW):
        raise _f.Invalid(PRIORITY, f"Priority {priority} is not 0, 1 or 2")
    return priority


def _decode_get_rq(fields: dict[int, Value], message_id: int, has_dataset: bool) -> CGetRQ:
    if not has_dataset:
        raise _f.Invalid(COMMAND_DATA_SET_TYPE, "C-GET-RQ declares no data set")
    return CGetRQ(message_id, _f.uid(fields, AFFECTED_SOP_CLASS_UID), _priority(fields))


def _decode_move_rq(fields: dict[int, Value], message_id: int, has_dataset: bool) -> CMoveRQ:
    if not has_dataset:
        raise _f.Invalid(COMMAND_DATA_SET_TYPE, "C-MOVE-RQ declares no data set")
    sop_class = _f.uid(fields, AFFECTED_SOP_CLASS_UID)
    priority = _priority(fields)
    destination = fields.get(MOVE_DESTINATION)
    if isinstance(destination, BadValue):
        raise _f.Invalid(MOVE_DESTINATION, f"Move Destination: {destination.reason}")
    if not isinstance(destination, str) or not destination:
        raise _f.Invalid(MOVE_DESTINATION, "Move Destination (0000,0600) is missing or empty")
    return CMoveRQ(message_id, sop_class, priority, move_destination=destination)


def _counts(fields: dict[int, Value]) -> SubOperations:
    return SubOperations(
        _f.lenient(fields, NUMBER_OF_REMAINING_SUBOPERATIONS, int),
        _f.lenient(fields, NUMBER_OF_COMPLETED_SUBOPERATIONS, int),
        _f.lenient(fields, NUMBER_OF_FAILED_SUBOPERATIONS, int),
        _f.lenient(fields, NUMBER_OF_WARNING_SUBOPERATIONS, int),
    )


_RSP = TypeVar("_RSP", CMoveRSP, CGetRSP)


def _decode_rsp(
    cls: type[_RSP], fields: dict[int, Value], message_id: int, has_dataset: bool
) -> _RSP:
    status = fields.get(STATUS)
    if not isinstance(status, int):
        name = "C-MOVE-RSP" if cls is CMoveRSP else "C-GET-RSP"
        raise RemoteProtocolError(
            f"{name} without a readable Status", ABORT_INVALID_PDU_PARAMETER_VALUE
        )
    return cls(
        message_id,
        status,
        _f.lenient(fields, AFFECTED_SOP_CLASS_UID, str),
        _counts(fields),
        has_dataset,
        _f.lenient(fields, ERROR_COMMENT, str),
        _f.lenient(fields, OFFENDING_ELEMENT, tuple),
        _f.lenient(fields, FAILED_SOP_INSTANCE_UID_LIST, str),
    )


def _decode_get_rsp(fields: dict[int, Value], message_id: int, has_dataset: bool) -> CGetRSP:
    return _decode_rsp(CGetRSP, fields, message_id, has_dataset)


def _decode_move_rsp(fields: dict[int, Value], message_id: int, has_dataset: bool) -> CMoveRSP:
    return _decode_rsp(CMoveRSP, fields, message_id, has_dataset)


register_decoders(
    {
        C_GET_RQ: _decode_get_rq,
        C_GET_RSP: _decode_get_rsp,
        C_MOVE_RQ: _decode_move_rq,
        C_MOVE_RSP: _decode_move_rsp,
    }
)
