"""Command set codec: group 0000 in Implicit VR Little Endian (PS3.7 6.3.1, Annex E).

A command set is a flat mapping ``{element: value}``; since every command
element is in group 0000 the element number *is* the 32-bit tag.  Values are
``int`` (US, UL), ``str`` (UI, AE, LO) or ``tuple[int, ...]`` (AT, each a
32-bit tag ``group << 16 | element``).

``encode_command`` writes the elements in increasing tag order (PS3.7 6.3.1)
behind a correct Command Group Length (0000,0000), padding UI with NUL and
AE/LO with a space to even length (PS3.5 6.2).  ``decode_command`` never
raises anything but :class:`~dicomstore.errors.RemoteProtocolError`, and only
for a broken *structure*: a truncated element, a tag outside group 0000, a
repeated tag, a group length that is not first or disagrees with the content
(a missing group length is tolerated). Elements of other groups *after* group 0000
(and after the group length's end) are tolerated, not read, but for the Failed SOP
Instance UID List (0008,0058), kept under its whole tag: Orthanc puts it there in a
C-GET/C-MOVE-RSP (not PS3.7 6.3.1; pynetdicom reads it; we aborted the association).
A well-framed element whose *value* does not fit its VR (a US that is not two
bytes, a UID that is not ASCII) decodes to a :class:`BadValue`, so that the
message layer can answer 0212 "mistyped argument" instead of aborting.
Unknown (e.g. retired) group 0000 elements are skipped.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

from dicomstore.error_comment import error_comment
from dicomstore.errors import LocalProtocolError, RemoteProtocolError
from dicomstore.ul.pdu import ABORT_INVALID_PDU_PARAMETER_VALUE

# --- Command elements of PS3.7 Table E.1-1 (group 0000, so tag == element) ----
COMMAND_GROUP_LENGTH = 0x0000
AFFECTED_SOP_CLASS_UID = 0x0002
REQUESTED_SOP_CLASS_UID = 0x0003
COMMAND_FIELD = 0x0100
MESSAGE_ID = 0x0110
MESSAGE_ID_BEING_RESPONDED_TO = 0x0120
MOVE_DESTINATION = 0x0600
PRIORITY = 0x0700
COMMAND_DATA_SET_TYPE = 0x0800
STATUS = 0x0900
OFFENDING_ELEMENT = 0x0901
ERROR_COMMENT = 0x0902
ERROR_ID = 0x0903
AFFECTED_SOP_INSTANCE_UID = 0x1000
REQUESTED_SOP_INSTANCE_UID = 0x1001
EVENT_TYPE_ID = 0x1002
ATTRIBUTE_IDENTIFIER_LIST = 0x1005
ACTION_TYPE_ID = 0x1008
NUMBER_OF_REMAINING_SUBOPERATIONS = 0x1020
NUMBER_OF_COMPLETED_SUBOPERATIONS = 0x1021
NUMBER_OF_FAILED_SUBOPERATIONS = 0x1022
NUMBER_OF_WARNING_SUBOPERATIONS = 0x1023
MOVE_ORIGINATOR_AE_TITLE = 0x1030
MOVE_ORIGINATOR_MESSAGE_ID = 0x1031

#: element -> (VR, keyword), PS3.7 Table E.1-1 (non-retired elements).
ELEMENTS: dict[int, tuple[str, str]] = {
    COMMAND_GROUP_LENGTH: ("UL", "CommandGroupLength"),
    AFFECTED_SOP_CLASS_UID: ("UI", "AffectedSOPClassUID"),
    REQUESTED_SOP_CLASS_UID: ("UI", "RequestedSOPClassUID"),
    COMMAND_FIELD: ("US", "CommandField"),
    MESSAGE_ID: ("US", "MessageID"),
    MESSAGE_ID_BEING_RESPONDED_TO: ("US", "MessageIDBeingRespondedTo"),
    MOVE_DESTINATION: ("AE", "MoveDestination"),
    PRIORITY: ("US", "Priority"),
    COMMAND_DATA_SET_TYPE: ("US", "CommandDataSetType"),
    STATUS: ("US", "Status"),
    OFFENDING_ELEMENT: ("AT", "OffendingElement"),
    ERROR_COMMENT: ("LO", "ErrorComment"),
    ERROR_ID: ("US", "ErrorID"),
    AFFECTED_SOP_INSTANCE_UID: ("UI", "AffectedSOPInstanceUID"),
    REQUESTED_SOP_INSTANCE_UID: ("UI", "RequestedSOPInstanceUID"),
    EVENT_TYPE_ID: ("US", "EventTypeID"),
    ATTRIBUTE_IDENTIFIER_LIST: ("AT", "AttributeIdentifierList"),
    ACTION_TYPE_ID: ("US", "ActionTypeID"),
    NUMBER_OF_REMAINING_SUBOPERATIONS: ("US", "NumberOfRemainingSuboperations"),
    NUMBER_OF_COMPLETED_SUBOPERATIONS: ("US", "NumberOfCompletedSuboperations"),
    NUMBER_OF_FAILED_SUBOPERATIONS: ("US", "NumberOfFailedSuboperations"),
    NUMBER_OF_WARNING_SUBOPERATIONS: ("US", "NumberOfWarningSuboperations"),
    MOVE_ORIGINATOR_AE_TITLE: ("AE", "MoveOriginatorApplicationEntityTitle"),
    MOVE_ORIGINATOR_MESSAGE_ID: ("US", "MoveOriginatorMessageID"),
}

#: Command Data Set Type value meaning "no data set" (PS3.7 E.1); any other means present.
NO_DATA_SET = 0x0101
#: The value we send when a data set follows.
DATA_SET_PRESENT = 0x0000

AE_MAX_CHARS = 16


@dataclass(frozen=True, slots=True)
class BadValue:
    """A well-framed element whose value does not fit its VR (e.g. US of 3 bytes)."""

    vr: str
    raw: bytes
    reason: str


Value = int | str | tuple[int, ...] | BadValue

_HEADER = struct.Struct("<HHI")
_GROUP_LENGTH = struct.Struct("<HHII")
_US = struct.Struct("<H")
_UL = struct.Struct("<I")
_VR = {element: vr for element, (vr, _) in ELEMENTS.items()}


def _fail(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, ABORT_INVALID_PDU_PARAMETER_VALUE)


# --- decoding -------------------------------------------------------------------


def _decode_value(vr: str, raw: bytes) -> Value:
    if vr == "US":
        if len(raw) != 2:
            return BadValue(vr, raw, f"US value of {len(raw)} bytes")
        return raw[0] | raw[1] << 8
    if vr == "UI":
        try:
            return raw.decode("ascii").rstrip("\0 ")
        except UnicodeDecodeError:
            return BadValue(vr, raw, "UID is not ASCII")
    if vr == "AE":
        try:
            title = raw.decode("ascii").strip(" \0")
        except UnicodeDecodeError:
            return BadValue(vr, raw, "AE title is not ASCII")
        if len(title) > AE_MAX_CHARS:
            return BadValue(vr, raw, "AE title longer than 16 characters")
        return title
    if vr == "LO":
        # Only ever a comment: decode leniently rather than fail a response over it.
        return raw.decode("ascii", "replace").strip(" \0")
    if vr == "UL":
        if len(raw) != 4:
            return BadValue(vr, raw, f"UL value of {len(raw)} bytes")
        value: int = _UL.unpack(raw)[0]
        return value
    # AT: pairs of little endian 16-bit group, element numbers
    if len(raw) % 4:
        return BadValue(vr, raw, f"AT value of {len(raw)} bytes")
    words = struct.unpack(f"<{len(raw) // 2}H", raw)
    return tuple(words[i] << 16 | words[i + 1] for i in range(0, len(words), 2))


def decode_command(data: bytes | bytearray | memoryview) -> dict[int, Value]:
    """Decode a command set into ``{element: value}`` (PS3.7 6.3.1).

    Raises RemoteProtocolError for a malformed structure; see the module notes.
    """
    if isinstance(data, memoryview):
        data = data.tobytes()
    end = len(data)
    if end < 8:
        raise _fail(f"command set of {end} bytes is too short")
    unpack = _HEADER.unpack_from
    vrs = _VR
    fields: dict[int, Value] = {}
    seen: set[int] = set()
    declared: int | None = None
    off = 0
    while off < end:
        if end - off < 8:
            raise _fail(f"truncated command element header at offset {off}")
        group, element, length = unpack(data, off)
        start = off + 8
        stop = start + length
        if group != 0:
            if not seen or (declared is not None and off != declared + 12):
                raise _fail(
                    f"element ({group:04X},{element:04X}) outside group 0000 in a command set"
                )
            _trailing(data, off, fields)
            return fields
        if stop > end:
            raise _fail(f"command element (0000,{element:04X}) of length {length} overruns the set")
        if element in seen:
            raise _fail(f"command element (0000,{element:04X}) occurs twice")
        seen.add(element)
        if element == COMMAND_GROUP_LENGTH:
            if off != 0 or length != 4:
                raise _fail("Command Group Length is not the first, 4-byte element")
            declared = _UL.unpack_from(data, 8)[0]
            if declared > end - 12:
                raise _fail(
                    f"Command Group Length says {declared} bytes but {end - 12} follow",
                )
            fields[element] = declared
        else:
            vr = vrs.get(element)
            if vr is not None:
                fields[element] = _decode_value(vr, bytes(data[start:stop]))
        off = stop
    if declared is not None and declared != end - 12:
        raise _fail(f"Command Group Length says {declared} bytes but {end - 12} follow")
    return fields


#: Failed SOP Instance UID List (0008,0058): kept when a peer puts it in the command set.
FAILED_SOP_INSTANCE_UID_LIST = 0x00080058


def _trailing(data: bytes | bytearray, off: int, fields: dict[int, Value]) -> None:
    """The elements of other groups after group 0000 (see the module notes): framed
    as the rest, in increasing order, none of group 0000; (0008,0058) kept as text."""
    end, last = len(data), 0
    while off < end:
        if end - off < 8:
            raise _fail(f"truncated command element header at offset {off}")
        group, element, length = _HEADER.unpack_from(data, off)
        tag, stop = group << 16 | element, off + 8 + length
        if group == 0 or tag <= last:
            raise _fail(f"element ({group:04X},{element:04X}) out of order in a command set")
        if stop > end:
            raise _fail(f"element ({group:04X},{element:04X}) of length {length} overruns the set")
        if tag == FAILED_SOP_INSTANCE_UID_LIST:
            fields[tag] = bytes(data[off + 8 : stop]).decode("ascii", "replace").strip(" \0")
        last, off = tag, stop


# --- encoding -------------------------------------------------------------------


def _text(value: int | str | tuple[int, ...]) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{type(value).__name__} is not a str")
    return value


def _encode_value(element: int, vr: str, value: Value) -> bytes:
    if isinstance(value, BadValue):
        raw = value.raw
        return raw + b"\0" if len(raw) % 2 else raw
    try:
        if vr == "US":
            return _US.pack(value)
        if vr == "UI":
            raw = _text(value).encode("ascii")
            return raw + b"\0" if len(raw) % 2 else raw
        if vr == "AE":
            raw = _text(value).encode("ascii")
            if len(raw.strip()) > AE_MAX_CHARS:
                raise LocalProtocolError(f"AE title longer than 16 characters: {value!r}")
            return raw + b" " if len(raw) % 2 else raw
        if vr == "LO":
            text = error_comment(str(value)) or ""  # (cut between words: error_comment.py)
            raw = text.encode("ascii", "replace")
            return raw + b" " if len(raw) % 2 else raw
        if vr == "UL":
            return _UL.pack(value)
        if isinstance(value, str):
            raise TypeError("a tag is an int, not a str")
        tags = (value,) if isinstance(value, int) else value
        return b"".join(struct.pack("<HH", t >> 16, t & 0xFFFF) for t in tags)
    except (struct.error, UnicodeEncodeError, AttributeError, TypeError) as exc:
        raise LocalProtocolError(
            f"cannot encode {value!r} as {vr} for (0000,{element:04X}): {exc}"
        ) from None


def encode_command(fields: Mapping[int, Value | None]) -> bytes:
    """Encode ``{element: value}`` as a command set with its group length (PS3.7 6.3.1).

    ``None`` values are left out; (0000,0000) in ``fields`` is ignored and
    recomputed. An element outside Table E.1-1 or a value that does not fit its
    VR raises LocalProtocolError. An LO (Error Comment) is made an LO by
    ``error_comment``: ASCII, cut between words to 64 characters.
    """
    parts: list[bytes] = []
    total = 0
    pack = _HEADER.pack
    for element in sorted(fields):
        value = fields[element]
        if value is None or element == COMMAND_GROUP_LENGTH:
            continue
        vr = _VR.get(element)
        if vr is None:
            raise LocalProtocolError(f"(0000,{element:04X}) is not a command element")
        raw = _encode_value(element, vr, value)
        parts.append(pack(0, element, len(raw)))
        parts.append(raw)
        total += 8 + len(raw)
    return _GROUP_LENGTH.pack(0, 0, 4, total) + b"".join(parts)


def tag_str(tag: int) -> str:
    """Format a 32-bit tag as ``(gggg,eeee)``."""
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
