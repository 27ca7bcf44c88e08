"""Storage Commitment's data sets (PS3.4 J.3): the Action Information of an
N-ACTION-RQ read (Table J.3-1, :func:`read_action_information`, :class:`Refused`
saying what is wrong) and the Event Information of the N-EVENT-REPORT-RQ made
(Table J.3-2, :func:`event_information`), with the SOP Class, its well-known
instance and the Action and Event Type IDs both roles use.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from dicomstore import uids
from dicomstore.archive.commitment import Reference, Verdict
from dicomstore.dimse import status as st
from dicomstore.error_comment import error_comment
from dicomstore.framing import FileSource, FramingError, Truncated, element_header, walk_element
from dicomstore.framing.headers import (
    ITEM,
    ITEM_DELIMITER,
    SEQUENCE_DELIMITER,
    UNDEFINED,
    encode_header,
)

SOP_CLASS = uids.STORAGE_COMMITMENT_PUSH
SOP_INSTANCE = uids.STORAGE_COMMITMENT_PUSH_INSTANCE
#: Action Type ID of "Request Storage Commitment" (PS3.4 J.3.2.1)
REQUEST_COMMITMENT = 1
#: Event Type IDs (PS3.4 J.3.3.1): all committed / failures exist
ALL_COMMITTED, FAILURES_EXIST = 1, 2
#: Most references in one request (each is a file to read and hash).
MAX_REFERENCES = 65535
#: Most requests accepted and not yet reported (``commitment_reports.py``).
MAX_PENDING = 1000

RETRIEVE_AE_TITLE = 0x00080054
TRANSACTION_UID = 0x00081195
FAILURE_REASON = 0x00081197
FAILED_SOP_SEQUENCE = 0x00081198
REFERENCED_SOP_SEQUENCE = 0x00081199
REFERENCED_SOP_CLASS_UID = 0x00081150
REFERENCED_SOP_INSTANCE_UID = 0x00081155


class Refused(Exception):
    """An N-ACTION answered with a failure ``status`` and an Error Comment."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = error_comment(comment) or ""


def read_action_information(
    data: bytes | bytearray,
    implicit: bool,
    little: bool,
    max_references: int = MAX_REFERENCES,
) -> tuple[str, list[Reference]]:
    """The Transaction UID and the references of a Storage Commitment Request
    (PS3.4 Table J.3-1) read from its bytes (PS3.5 7.1, 7.5) with no data set built
    (pydicom's of 65,535 references took 150 MiB and 9 s, this about 14 MB and 1 s:
    review68 #3); :class:`Refused` says what is wrong. Every element must frame (its
    sequences walked first, then each header read checked to lie inside its container:
    0115); other elements are skipped. Either attribute as UN (PS3.5 6.2.2) is refused
    0106: both are in the data dictionary every SCU has."""
    reader = _Reader(bytes(data), implicit, little)
    found: dict[int, tuple[bytes | None, int, int, int]] = {}
    pos, size = 0, len(reader.buf)
    while pos < size:
        end = reader.framed(pos)
        tag, vr, length, value = reader.header(pos, size)
        if tag in (TRANSACTION_UID, REFERENCED_SOP_SEQUENCE):
            if tag in found:
                raise Refused(st.INVALID_ARGUMENT_VALUE, f"{_NAMES[tag]} given twice")
            found[tag] = (vr, length, value, end)
        pos = end
    if TRANSACTION_UID not in found:
        raise Refused(st.MISSING_ATTRIBUTE, "Transaction UID missing")
    transaction = _uid(reader.buf, *found[TRANSACTION_UID][:3], "Transaction UID")
    if REFERENCED_SOP_SEQUENCE not in found:
        raise Refused(st.MISSING_ATTRIBUTE, "Referenced SOP Sequence missing")
    vr, length, value, end = found[REFERENCED_SOP_SEQUENCE]
    if vr not in (None, b"SQ") or (length not in (0, UNDEFINED) and not reader.item_at(value)):
        raise Refused(st.INVALID_ATTRIBUTE_VALUE, "Referenced SOP Sequence is no sequence")
    refs = []
    for n, (start, stop) in enumerate(reader.items(value, end), 1):
        if n > max_references:
            raise Refused(st.RESOURCE_LIMITATION, f"more than {max_references} references")
        refs.append(reader.reference(start, stop, n))
    if not refs:
        raise Refused(st.MISSING_ATTRIBUTE_VALUE, "Referenced SOP Sequence empty")
    return transaction, refs


_NAMES = {
    TRANSACTION_UID: "Transaction UID",
    REFERENCED_SOP_SEQUENCE: "Referenced SOP Sequence",
    REFERENCED_SOP_CLASS_UID: "SOP Class UID",
    REFERENCED_SOP_INSTANCE_UID: "SOP Instance UID",
}


def _nothing_more(size: int, offset: int) -> bytes:
    """(The source's window holds every byte: nothing is read past it.)"""
    return b""


def _unreadable(exc: FramingError) -> Refused:
    """0115 for bytes that do not frame: the Error Comment (64 characters) says what and
    where, the log line (the whole message) why."""
    what = "cut short" if isinstance(exc, Truncated) else "does not frame"
    refused = Refused(st.INVALID_ARGUMENT_VALUE, f"Action Information {what}: {exc}")
    where = f"Action Information {what} at offset {exc.offset}"
    if exc.tag is not None:
        where += f", ({exc.tag >> 16:04X},{exc.tag & 0xFFFF:04X})"
    refused.comment = error_comment(where) or ""
    return refused


class _Reader:
    """The bytes of one Action Information, and how they are encoded."""

    def __init__(self, buf: bytes, implicit: bool, little: bool) -> None:
        self.buf, self.implicit, self.little = buf, implicit, little
        self.src = FileSource(_nothing_more, len(buf), buf)  # (the window: every byte)

    def framed(self, pos: int) -> int:
        """Where the element at ``pos`` ends, its sequences walked (0115 if it does not)."""
        try:
            return walk_element(self.src, pos, self.implicit, self.little)
        except FramingError as exc:
            raise _unreadable(exc) from None

    def header(self, pos: int, end: int) -> tuple[int, bytes | None, int, int]:
        """The header at ``pos``, checked to lie, with a value of defined length, before
        ``end`` (its container's): 0115 if not (review70 F1: a value too short to walk
        as a sequence was read as one, past its end)."""
        header = element_header(self.buf, pos, self.implicit, self.little)
        if (
            header is None
            or header[3] > end
            or (header[2] != UNDEFINED and header[3] + header[2] > end)
        ):
            tag = header[0] if header else None
            raise _unreadable(FramingError("an element runs past its container", tag, pos))
        return header

    def item_at(self, pos: int) -> bool:
        """Whether an Item's tag (FFFE,E000) is at ``pos`` (PS3.5 7.5)."""
        tag = b"\xfe\xff\x00\xe0" if self.little else b"\xff\xfe\xe0\x00"
        return self.buf[pos : pos + 4] == tag

    def items(self, pos: int, end: int) -> Iterator[tuple[int, int]]:
        """(start, end) of the data set of each item of the sequence whose value is
        ``buf[pos:end]`` (walked already), PS3.5 7.5."""
        while pos < end:
            tag, _vr, length, value = self.header(pos, end)
            if tag == SEQUENCE_DELIMITER:
                return
            if tag != ITEM:
                raise _unreadable(FramingError("no item in the sequence", tag, pos))
            if length != UNDEFINED:
                yield value, value + length
                pos = value + length
                continue
            start = pos = value  # (its elements up to the Item Delimitation Item)
            while True:
                header = self.header(pos, end)
                if header[0] == ITEM_DELIMITER:
                    yield start, pos
                    pos = header[3]
                    break
                pos = self.skip(pos, header)

    def skip(self, pos: int, header: tuple[int, bytes | None, int, int]) -> int:
        """Where the element at ``pos`` (walked already) ends."""
        length, value = header[2], header[3]
        return value + length if length != UNDEFINED else self.framed(pos)

    def reference(self, pos: int, end: int, n: int) -> Reference:
        """The Reference of item ``n``, whose data set is ``buf[pos:end]``."""
        got: dict[int, tuple[bytes | None, int, int]] = {}
        while pos < end:
            header = self.header(pos, end)
            tag, vr, length, value = header
            if tag in (REFERENCED_SOP_CLASS_UID, REFERENCED_SOP_INSTANCE_UID):
                if tag in got:
                    raise Refused(st.INVALID_ARGUMENT_VALUE, f"item {n}: {_NAMES[tag]} given twice")
                got[tag] = (vr, length, value)
            pos = self.skip(pos, header)
        uids_of = []
        for tag in (REFERENCED_SOP_CLASS_UID, REFERENCED_SOP_INSTANCE_UID):
            name = f"item {n}: {_NAMES[tag]}"
            if tag not in got:
                raise Refused(st.MISSING_ATTRIBUTE, f"{name} missing")
            uids_of.append(_uid(self.buf, *got[tag], name))
        return Reference(*uids_of)


def _uid(buf: bytes, vr: bytes | None, length: int, value: int, name: str) -> str:
    """A required UID attribute (Type 1): 0121 empty, 0106 not a UID (or not UI)."""
    if vr not in (None, b"UI") or length == UNDEFINED:
        raise Refused(st.INVALID_ATTRIBUTE_VALUE, f"{name} is not a UID")
    try:
        text = buf[value : value + length].decode("ascii").rstrip("\0 ")
    except UnicodeDecodeError:
        raise Refused(st.INVALID_ATTRIBUTE_VALUE, f"{name} is not a UID") from None
    if not text:
        raise Refused(st.MISSING_ATTRIBUTE_VALUE, f"{name} empty")
    if not uids.is_valid_uid(text):
        raise Refused(st.INVALID_ATTRIBUTE_VALUE, f"{name} is not a UID")
    return text


def event_information(
    transaction_uid: str,
    verdicts: list[Verdict],
    retrieve_ae: str | None,
    transfer_syntax: str,
) -> tuple[int, bytes]:
    """The Event Type ID and Event Information of a Storage Commitment Result
    (PS3.4 J.3.3, Table J.3-2) encoded in ``transfer_syntax`` (one of the three
    uncompressed, PS3.5 A.1-A.3; sequences and items of defined length, PS3.5 7.5):
    the committed references (with ``retrieve_ae``), and, when any failed, the Failed
    SOP Sequence with each Failure Reason. Written as bytes, no data set built (a
    pydicom data set of 65,535 references took over 100 MiB: review68 #3)."""
    if transfer_syntax not in uids.UNCOMPRESSED:  # (the only ones its contexts accept)
        raise ValueError(f"no Event Information in {transfer_syntax}")
    implicit = transfer_syntax == uids.IMPLICIT_VR_LE
    little = transfer_syntax != uids.EXPLICIT_VR_BE

    def element(tag: int, vr: bytes, value: bytes) -> bytes:
        return encode_header(tag, None if implicit else vr, len(value), little) + value

    def sequence(tag: int, items: list[bytes]) -> bytes:
        value = b"".join(encode_header(ITEM, None, len(i), little) + i for i in items)
        return element(tag, b"SQ", value)

    def reference(ref: Reference) -> bytes:
        return element(REFERENCED_SOP_CLASS_UID, b"UI", _ui(ref.sop_class_uid)) + element(
            REFERENCED_SOP_INSTANCE_UID, b"UI", _ui(ref.sop_instance_uid)
        )

    reason = struct.Struct("<H" if little else ">H").pack
    parts = []
    if retrieve_ae:  # (ascending tags, PS3.5 7.1)
        ae = retrieve_ae.encode("ascii")
        parts.append(element(RETRIEVE_AE_TITLE, b"AE", ae + b" " * (len(ae) % 2)))
    parts.append(element(TRANSACTION_UID, b"UI", _ui(transaction_uid)))
    failed = [v for v in verdicts if not v.committed]
    if failed:
        parts.append(
            sequence(
                FAILED_SOP_SEQUENCE,
                [
                    reference(v.reference)
                    + element(FAILURE_REASON, b"US", reason(v.failure_reason or 0))
                    for v in failed
                ],
            )
        )
    committed = [reference(v.reference) for v in verdicts if v.committed]
    if committed:
        parts.append(sequence(REFERENCED_SOP_SEQUENCE, committed))
    return (FAILURES_EXIST if failed else ALL_COMMITTED), b"".join(parts)


def _ui(uid: str) -> bytes:
    """A UID's value, padded to even length with a NUL (PS3.5 6.2, 9.1)."""
    value = uid.encode("ascii")
    return value + b"\0" * (len(value) % 2)
