"""The Action Information of a Storage Commitment Request read from its bytes (PS3.4
Table J.3-1, PS3.5 7.1 and 7.5): in each uncompressed encoding, sequences and items of
either length, other elements skipped; what is wrong refused with its status; references
read in memory of their UIDs (review68 #3: pydicom's data set of 65,535 took 150 MiB); and
the Event Information of a report (Table J.3-2), written as bytes, read back by pydicom."""

from __future__ import annotations

import struct
import tracemalloc

import pytest
from pydicom.dataset import Dataset
from tests.archive.archive_testlib import CT
from tests.services.commitment_testlib import action_information

from dicomstore import uids
from dicomstore.archive.commitment import (
    CLASS_INSTANCE_CONFLICT,
    NO_SUCH_OBJECT_INSTANCE,
    Reference,
    Verdict,
)
from dicomstore.services.commitment_info import (
    Refused,
    encode_action_information,
    event_information,
    read_action_information,
    read_event_information,
)
from dicomstore.services.conversion import encode_dataset
from dicomstore.services.qr_operations import decode_identifier

ENCODINGS = {"implicit": (True, True), "explicit-le": (False, True), "explicit-be": (False, False)}


def request(transaction: str, *sop_uids: str, undefined: bool = False) -> Dataset:
    ds = action_information(transaction, *sop_uids)
    if undefined:
        ds.ReferencedSOPSequence.is_undefined_length = True
        for item in ds.ReferencedSOPSequence:
            item.is_undefined_length_sequence_item = True
    return ds


def encode(ds: Dataset, implicit: bool = True, little: bool = True) -> bytes:
    syntax = uids.IMPLICIT_VR_LE if implicit else uids.EXPLICIT_VR_LE
    return encode_dataset(ds, syntax if little else uids.EXPLICIT_VR_BE)


@pytest.mark.parametrize("undefined", [False, True], ids=["defined", "undefined"])
@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_each_encoding_and_length(encoding: str, undefined: bool) -> None:
    implicit, little = ENCODINGS[encoding]
    ds = request("1.2.3.4", "1.2.3.5", "1.2.3.6", undefined=undefined)
    ds.PatientName = "Else^Skipped"  # (0010,0010): after the sequence
    ds.ReferencedSOPSequence[0].add_new(0x00081160, "IS", "1")  # Referenced Frame Number
    nested = Dataset()
    nested.CodeValue = "X"
    ds.ReferencedSOPSequence[1].PurposeOfReferenceCodeSequence = [nested]
    data = encode(ds, implicit, little)
    transaction, refs = read_action_information(data, implicit, little)
    assert transaction == "1.2.3.4"
    assert refs == [Reference(CT, "1.2.3.5"), Reference(CT, "1.2.3.6")]


def _uid_element(tag: int, value: bytes, vr: bytes = b"UI") -> bytes:
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def _explicit(transaction: bytes, items: list[bytes], vr: bytes = b"SQ") -> bytes:
    value = b"".join(struct.pack("<HHL", 0xFFFE, 0xE000, len(i)) + i for i in items)
    seq = struct.pack("<HH2sHL", 0x0008, 0x1199, vr, 0, len(value)) + value
    return _uid_element(0x00081195, transaction) + seq


def _item(sop_class: bytes = b"1.2.840.10008.5.1.4.1.1.2\0", uid: bytes = b"1.2.3") -> bytes:
    return _uid_element(0x00081150, sop_class) + _uid_element(0x00081155, uid + b"\0")


def test_an_item_s_uid_is_taken_as_stored_uids_are() -> None:
    """review117 F2: an item naming an instance stored with a leading zero (C-STORE
    stores such UIDs) refused the whole request 0106; now a reference, judged by the
    verification (0112 when nothing is stored under it)."""
    data = _explicit(b"1.2.3\0", [_item(uid=b"1.02.3"), _item(uid=b"1..2"), _item()])
    _, refs = read_action_information(data, False, True)
    assert [ref.sop_instance_uid for ref in refs] == ["1.02.3", "1..2", "1.2.3"]


@pytest.mark.parametrize(
    ("data", "status", "says"),
    [
        (_explicit(b"1.2.3\0", [_item()])[:-3], 0x0115, "cut short at offset 14, (0008,1199)"),
        (_explicit(b"1.2.3\0", [_item()]) + b"\x08\x00", 0x0115, "cut short at offset 82"),
        (_uid_element(0x00081195, b"1.2\0") * 2, 0x0115, "Transaction UID given twice"),
        (_explicit(b"1.2.3\0", [_item() + _uid_element(0x00081155, b"1.4\0")]), 0x0115, "twice"),
        (_explicit(b"", [_item()]), 0x0121, "Transaction UID empty"),
        (_explicit(b"\0", [_item()]), 0x0121, "Transaction UID empty"),
        (_explicit(b"1.2.\xff\0", [_item()]), 0x0106, "Transaction UID is not a UID"),
        (_explicit(b"1.02\0", [_item()]), 0x0106, "Transaction UID is not a UID"),
        (_uid_element(0x00081195, b"1.2\0", vr=b"LO"), 0x0106, "Transaction UID is not a UID"),
        (_explicit(b"1.2\0", [_item()], vr=b"UN"), 0x0106, "is no sequence"),
        (_explicit(b"1.2\0", []), 0x0121, "Referenced SOP Sequence empty"),
        (_uid_element(0x00081195, b"1.2\0"), 0x0120, "Referenced SOP Sequence missing"),
        (_explicit(b"1.2\0", [])[12:], 0x0120, "Transaction UID missing"),
        (_explicit(b"1.2\0", [_item(), _item(sop_class=b"")]), 0x0121, "item 2: SOP Class"),
        (_explicit(b"1.2\0", [_uid_element(0x00081150, b"1.2\0")]), 0x0120, "item 1: SOP Inst"),
        (_explicit(b"1.2\0", [_item(uid=b"1.\xff")]), 0x0106, "item 1: SOP Instance UID is not"),
    ],
    ids=[
        "cut",
        "bytes-after",
        "transaction-twice",
        "uid-twice-in-item",
        "empty-transaction",
        "padding-only",
        "not-ascii",
        "leading-zero",
        "transaction-not-ui",
        "sequence-not-sq",
        "empty-sequence",
        "no-sequence",
        "no-transaction",
        "empty-class",
        "no-instance",
        "bad-instance",
    ],
)
def test_what_is_wrong_is_refused(data: bytes, status: int, says: str) -> None:
    with pytest.raises(Refused) as refused:
        read_action_information(data, False, True)
    assert refused.value.status == status
    assert says in refused.value.comment


def _implicit(tag: int, value: bytes, length: int | None = None) -> bytes:
    return (
        struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value) if length is None else length)
        + value
    )


_ITEM_TAG = b"\xfe\xff\x00\xe0"
_REFS = _uid_element(0x00081150, b"1.2.840.10008.5.1.4.1.1.2\0") + _uid_element(
    0x00081155, b"1.2.3.4\0"
)
_DEEP = _uid_element(0x00091010, b"ab")
for _ in range(450):
    _DEEP = struct.pack("<HH2sHL", 0x0040, 0x0275, b"SQ", 0, len(_DEEP) + 8) + _implicit(
        0xFFFEE000, _DEEP
    )
_DEEP = _DEEP[:-3]  # (cut 450 levels down)


@pytest.mark.parametrize(
    ("data", "implicit", "says"),
    [
        (_implicit(0x00081195, b"1.2\0") + _implicit(0x00081199, _ITEM_TAG), True, "offset 20"),
        (
            _implicit(0x00081195, b"1.2\0")
            + _implicit(0x00081199, _ITEM_TAG)
            + _implicit(0x003C0000, struct.pack("<L", 4) + b"\0" * 4)
            + _implicit(0x00081150, b"1.2.840.10008.5.1.4.1.1.2\0")
            + _implicit(0x00081155, b"6.6.6\0"),
            True,
            "offset 20",
        ),
        (
            _explicit(
                b"1.2\0",
                [_REFS + _implicit(0xFFFEE00D, b"") + _implicit(0xFFFEE000, _REFS, 0xFFFFFFFF)],
            ),
            False,
            "does not frame",
        ),
        (
            _explicit(
                b"1.2\0", [_REFS + _implicit(0xFFFEE00D, b"") + _implicit(0xFFFEE000, _REFS)]
            ),
            False,
            "does not frame",
        ),
        (_explicit(b"1.2\0", [_REFS + _DEEP]), False, "cut short"),
        (
            struct.pack("<HH2sHL", 0x0008, 0x1199, b"SQ", 0, 8 + len(_REFS) + 8 + 12)
            + _implicit(0xFFFEE000, _REFS)
            + _implicit(0xFFFEE0DD, b"")
            + _uid_element(0x00081195, b"1.2\0")
            + _uid_element(0x00100010, b"X "),
            False,
            "does not frame",
        ),
    ],
    ids=[
        "4-byte-sequence",
        "4-byte-sequence-then-uids",
        "item-delimiter-in-defined-item",
        "item-delimiter-then-an-item",
        "cut-450-levels-down",
        "sequence-delimiter-in-defined-sequence",
    ],
)
def test_what_does_not_frame_inside_is_0115(data: bytes, implicit: bool, says: str) -> None:
    """review70 F1-F3: a value too short to walk as a sequence read as one (past its
    end: AssertionError, or references the peer never put in it); delimiters inside
    items and sequences of defined length (a reference dropped, a Transaction UID read
    from inside the sequence, a FramingError past the refusal); a cut deep down
    (RecursionError): each 0115."""
    with pytest.raises(Refused) as refused:
        read_action_information(data, implicit, True)
    assert refused.value.status == 0x0115
    assert says in refused.value.comment and len(refused.value.comment) <= 64


def test_an_implicit_sequence_that_holds_no_items_is_no_sequence() -> None:
    value = b"\x08\x00\x50\x11\x04\x00\x00\x001.2\0"  # (a UID where an item goes)
    data = (
        encode(request("1.2"), True, True)[:12]
        + b"\x08\x00\x99\x11"
        + struct.pack("<L", len(value))
        + value
    )
    with pytest.raises(Refused) as refused:
        read_action_information(data, True, True)
    assert refused.value.status == 0x0106 and "no sequence" in refused.value.comment


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_an_empty_sequence_of_undefined_length_is_0121(encoding: str) -> None:
    implicit, little = ENCODINGS[encoding]
    data = encode(request("1.2", undefined=True), implicit, little)
    with pytest.raises(Refused) as refused:
        read_action_information(data, implicit, little)
    assert refused.value.status == 0x0121 and "Sequence empty" in refused.value.comment


def test_more_references_than_allowed_is_0213() -> None:
    data = encode(request("1.2", "1.3", "1.4", "1.5", "1.6"))
    assert len(read_action_information(data, True, True, max_references=4)[1]) == 4
    with pytest.raises(Refused) as refused:
        read_action_information(data, True, True, max_references=3)
    assert refused.value.status == 0x0213 and "more than 3 references" in refused.value.comment


def test_references_are_read_in_memory_of_their_uids() -> None:
    """pydicom's data set of 65,535 references took 150 MiB, about 2.3 KB each (review68
    #3); here each takes the two UIDs of its Reference and little more (measured: about
    210 bytes each)."""
    uids = [f"1.2.826.0.1.3680043.8.498.{n}" for n in range(8192)]
    data = encode(request("1.2.3", *uids, undefined=True))
    tracemalloc.start()
    try:
        _, refs = read_action_information(bytearray(data), True, True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [r.sop_instance_uid for r in refs] == uids
    assert peak < len(data) + 400 * len(uids), peak


@pytest.mark.parametrize("syntax", [uids.IMPLICIT_VR_LE, uids.EXPLICIT_VR_LE, uids.EXPLICIT_VR_BE])
def test_the_event_information_reads_back_in_each_encoding(syntax: str) -> None:
    verdicts = [
        Verdict(Reference(CT, "1.2.3.5")),
        Verdict(Reference(CT, "1.2.3.66"), NO_SUCH_OBJECT_INSTANCE),
        Verdict(Reference(CT, "1.2.3.7")),
        Verdict(Reference(CT, "1.2.3.8"), CLASS_INSTANCE_CONFLICT),
    ]
    event_type, data = event_information("1.2.3.4", verdicts, "ARCHIVE", syntax)
    assert event_type == 2 and len(data) % 2 == 0
    ds = decode_identifier(data, syntax)
    assert ds.TransactionUID == "1.2.3.4" and ds.RetrieveAETitle == "ARCHIVE"
    committed = [
        (i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in ds.ReferencedSOPSequence
    ]
    assert committed == [(CT, "1.2.3.5"), (CT, "1.2.3.7")]
    failed = [(i.ReferencedSOPInstanceUID, i.FailureReason) for i in ds.FailedSOPSequence]
    assert failed == [("1.2.3.66", NO_SUCH_OBJECT_INSTANCE), ("1.2.3.8", CLASS_INSTANCE_CONFLICT)]
    with pytest.raises(ValueError, match="no Storage Commitment data set in"):
        event_information("1.2.3", verdicts, None, uids.DEFLATED_EXPLICIT_VR_LE)
    event_type, data = event_information("1.2.3", verdicts[:1], None, syntax)
    ds = decode_identifier(data, syntax)
    assert event_type == 1 and "FailedSOPSequence" not in ds and "RetrieveAETitle" not in ds
    assert [i.ReferencedSOPInstanceUID for i in ds.ReferencedSOPSequence] == ["1.2.3.5"]


@pytest.mark.parametrize("syntax", [uids.IMPLICIT_VR_LE, uids.EXPLICIT_VR_LE, uids.EXPLICIT_VR_BE])
def test_a_request_written_as_bytes_reads_back(syntax: str) -> None:
    """The SCU's request (``encode_action_information``): pydicom took 4.6 s to build and
    encode one of 65,535 references."""
    refs = [Reference(CT, "1.2.3.5"), Reference(CT, "1.2.3.66")]
    data = encode_action_information("1.2.3.4", refs, syntax)
    little = syntax != uids.EXPLICIT_VR_BE
    assert read_action_information(data, syntax == uids.IMPLICIT_VR_LE, little) == ("1.2.3.4", refs)
    ds = decode_identifier(data, syntax)
    assert [i.ReferencedSOPInstanceUID for i in ds.ReferencedSOPSequence] == ["1.2.3.5", "1.2.3.66"]


@pytest.mark.parametrize("syntax", [uids.IMPLICIT_VR_LE, uids.EXPLICIT_VR_LE, uids.EXPLICIT_VR_BE])
def test_a_report_reads_back_from_its_bytes(syntax: str) -> None:
    """The SCU reads a report's Event Information from its bytes (pydicom's data set of
    65,535 references took 150 MiB)."""
    verdicts = [
        Verdict(Reference(CT, "1.2.3.5")),
        Verdict(Reference(CT, "1.2.3.66"), NO_SUCH_OBJECT_INSTANCE),
        Verdict(Reference(CT, "1.2.3.8"), CLASS_INSTANCE_CONFLICT),
    ]
    _, data = event_information("1.2.3.4", verdicts, "ARCHIVE", syntax)
    implicit, little = syntax == uids.IMPLICIT_VR_LE, syntax != uids.EXPLICIT_VR_BE
    assert read_event_information(data, implicit, little) == (
        "1.2.3.4",
        {"1.2.3.5": CT},
        {"1.2.3.66": NO_SUCH_OBJECT_INSTANCE, "1.2.3.8": CLASS_INSTANCE_CONFLICT},
    )


def test_a_report_is_read_leniently_and_what_is_wrong_refused() -> None:
    """As before with pydicom: a committed item without its SOP Class UID, a failed one
    without Failure Reason (0110), either sequence absent; a report without Transaction
    UID, an item without SOP Instance UID, a Failure Reason not US are refused."""
    committed = _uid_element(0x00081155, b"1.2.3.5\0")
    failed = _uid_element(0x00081155, b"1.2.3.6\0")
    seq = struct.pack("<HH2sHL", 0x0008, 0x1198, b"SQ", 0, len(failed) + 8)
    data = _uid_element(0x00081195, b"1.2\0") + seq + _implicit(0xFFFEE000, failed)
    seq = struct.pack("<HH2sHL", 0x0008, 0x1199, b"SQ", 0, len(committed) + 8)
    data += seq + _implicit(0xFFFEE000, committed)
    assert read_event_information(data, False, True) == (
        "1.2",
        {"1.2.3.5": None},
        {"1.2.3.6": 0x0110},
    )
    assert read_event_information(_uid_element(0x00081195, b"1.2\0"), False, True) == (
        "1.2",
        {},
        {},
    )
    bad_reason = failed + struct.pack("<HH2sH", 0x0008, 0x1197, b"UL", 4) + b"\0" * 4
    seq = struct.pack("<HH2sHL", 0x0008, 0x1198, b"SQ", 0, len(bad_reason) + 8)
    for data, status, says in (
        (_explicit(b"1.2\0", [_item()])[12:], 0x0120, "Transaction UID missing"),
        (_explicit(b"1.2\0", [_uid_element(0x00081150, b"1.2\0")]), 0x0120, "SOP Instance UID"),
        (
            _uid_element(0x00081195, b"1.2\0") + seq + _implicit(0xFFFEE000, bad_reason),
            0x0106,
            "no US",
        ),
    ):
        with pytest.raises(Refused) as refused:
            read_event_information(data, False, True)
        assert refused.value.status == status and says in refused.value.comment


def test_a_report_takes_the_uids_as_they_come() -> None:
    """review73 F1, F2: a legacy SOP Instance UID we sent (``send`` checks only the SOP
    Class UID), echoed back in the report, refused the whole report (0106): every
    instance of it unknown; an empty SOP Class UID is none. F4: said "Event Information"."""
    committed = _uid_element(0x00081150, b"") + _uid_element(0x00081155, b"1.2.840.0123.5\0")
    seq = struct.pack("<HH2sHL", 0x0008, 0x1199, b"SQ", 0, len(committed) + 8)
    data = _uid_element(0x00081195, b"1.2\0") + seq + _implicit(0xFFFEE000, committed)
    assert read_event_information(data, False, True) == ("1.2", {"1.2.840.0123.5": None}, {})
    with pytest.raises(Refused) as refused:
        read_event_information(data[:-3], False, True)
    assert refused.value.comment.startswith("Event Information cut short at offset")
    data = encode_action_information("1.2", [Reference(CT, "1.2.é")], uids.EXPLICIT_VR_LE)
    assert b"1.2.?" in data  # (review73 F3: UnicodeEncodeError, though it never raises)
