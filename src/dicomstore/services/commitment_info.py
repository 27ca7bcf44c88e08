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
from dicomstore.framing import FileSource, FramingError, element_header, walk_element
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
    sequences walked first, 0115); other elements are skipped."""
    buf = bytes(data)
    src = FileSource(_nothing_more, len(buf), buf)  # (the window: every byte)
    found: dict[int, tuple[bytes | None, int, int, int]] = {}
    pos = 0
    while pos < len(buf):
        end = _framed(src, pos, implicit, little)
        header = element_header(buf, pos, implicit, little)
        assert header is not None  # (it framed)
        tag, vr, length, value = header
        if tag in (TRANSACTION_UID, REFERENCED_SOP_SEQUENCE):
            if tag in found:
                raise Refused(st.INVALID_ARGUMENT_VALUE, f"{_NAMES[tag]} given twice")
            found[tag] = (vr, length, value, end)
        pos = end
    if TRANSACTION_UID not in found:
        raise Refused(st.MISSING_ATTRIBUTE, "Transaction UID missing")
    transaction = _uid(buf, *found[TRANSACTION_UID][:3], "Transaction UID")
    if REFERENCED_SOP_SEQUENCE not in found:
        raise Refused(st.MISSING_ATTRIBUTE, "Referenced SOP Sequence missing")
    vr, length, value, end = found[REFERENCED_SOP_SEQUENCE]
    if vr not in (None, b"SQ") or (
        length not in (0, UNDEFINED) and not _item_at(buf, value, little)
    ):
        raise Refused(st.INVALID_ATTRIBUTE_VALUE, "Referenced SOP Sequence is no sequence")
    refs = []
    for n, (start, stop) in enumerate(_items(src, value, end, implicit, little), 1):
        if n > max_references:
            raise Refused(st.RESOURCE_LIMITATION, f"more than {max_references} references")
        refs.append(_reference(src, start, stop, implicit, little, n))
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


def _framed(src: FileSource, pos: int, implicit: bool, little: bool) -> int:
    """Where the element at ``pos`` ends, its sequences walked (0115 if it does not frame)."""
    try:
        return walk_element(src, pos, implicit, little)
    except FramingError as exc:
        raise Refused(st.INVALID_ARGUMENT_VALUE, f"unreadable Action Information: {exc}") from None


def _item_at(buf: bytes, pos: int, little: bool) -> bool:
    """Whether an Item's tag (FFFE,E000) is at ``pos`` (PS3.5 7.5)."""
    return buf[pos : pos + 4] == (b"\xfe\xff\x00\xe0" if little else b"\xff\xfe\xe0\x00")


def _items(
    src: FileSource, pos: int, end: int, implicit: bool, little: bool
) -> Iterator[tuple[int, int]]:
    """(start, end) of the data set of each item of the sequence whose value is
    ``src.data[pos:end]`` (walked already: it frames), PS3.5 7.5."""
    buf = src.data
    while pos < end:
        header = element_header(buf, pos, implicit, little)
        assert header is not None
        tag, _vr, length, value = header
        if tag == SEQUENCE_DELIMITER:
            return
        if length != UNDEFINED:
            yield value, value + length
            pos = value + length
            continue
        start = pos = value  # (its elements up to the Item Delimitation Item)
        while True:
            header = element_header(buf, pos, implicit, little)
            assert header is not None
            if header[0] == ITEM_DELIMITER:
                yield start, pos
                pos = header[3]
                break
            pos = _skip(src, pos, header, implicit, little)


def _skip(
    src: FileSource,
    pos: int,
    header: tuple[int, bytes | None, int, int],
    implicit: bool,
    little: bool,
) -> int:
    """Where the element at ``pos`` (walked already) ends."""
    length, value = header[2], header[3]
    return value + length if length != UNDEFINED else walk_element(src, pos, implicit, little)


def _reference(
    src: FileSource, pos: int, end: int, implicit: bool, little: bool, n: int
) -> Reference:
    """The Reference of item ``n``, whose data set is ``src.data[pos:end]``."""
    buf = src.data
    got: dict[int, tuple[bytes | None, int, int]] = {}
    while pos < end:
        header = element_header(buf, pos, implicit, little)
        assert header is not None
        tag, vr, length, value = header
        if tag in (REFERENCED_SOP_CLASS_UID, REFERENCED_SOP_INSTANCE_UID):
            if tag in got:
                raise Refused(st.INVALID_ARGUMENT_VALUE, f"item {n}: {_NAMES[tag]} given twice")
            got[tag] = (vr, length, value)
        pos = _skip(src, pos, header, implicit, little)
    uids_of = []
    for tag in (REFERENCED_SOP_CLASS_UID, REFERENCED_SOP_INSTANCE_UID):
        name = f"item {n}: {_NAMES[tag]}"
        if tag not in got:
            raise Refused(st.MISSING_ATTRIBUTE, f"{name} missing")
        uids_of.append(_uid(buf, *got[tag], name))
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
