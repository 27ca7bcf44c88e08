"""Command set codec (PS3.7 6.3.1, Annex E), checked against pydicom's own encoder."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from dicomstore.dimse import commands as c
from dicomstore.dimse.commands import BadValue, decode_command, encode_command
from dicomstore.errors import LocalProtocolError, RemoteProtocolError

CT = "1.2.840.10008.5.1.4.1.1.2"


def pydicom_command(**elements: Any) -> bytes:
    """The command set pydicom writes for ``elements`` (Implicit VR LE), group length first."""
    body = Dataset()
    for keyword, value in elements.items():
        setattr(body, keyword, value)
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = True
    write_dataset(fp, body)
    length = len(fp.getvalue())
    full = Dataset()
    full.CommandGroupLength = length
    for keyword, value in elements.items():
        setattr(full, keyword, value)
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = True
    write_dataset(fp, full)
    return fp.getvalue()


def element(elem: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0, elem, len(value)) + value


def with_group_length(body: bytes) -> bytes:
    return element(0, struct.pack("<I", len(body))) + body


def test_every_vr_matches_pydicom() -> None:
    fields = {
        c.AFFECTED_SOP_CLASS_UID: CT,  # odd length: NUL padded
        c.COMMAND_FIELD: 0x8001,
        c.MESSAGE_ID_BEING_RESPONDED_TO: 65535,
        c.MOVE_DESTINATION: "DEST",
        c.COMMAND_DATA_SET_TYPE: 0x0101,
        c.STATUS: 0xA701,
        c.OFFENDING_ELEMENT: (0x00100010, 0x7FE00010),
        c.ERROR_COMMENT: "disk full",  # odd length: space padded
        c.ERROR_ID: 9,
        c.AFFECTED_SOP_INSTANCE_UID: "1.2.3.4",
        c.MOVE_ORIGINATOR_AE_TITLE: "MOVER",  # odd length: space padded
        c.MOVE_ORIGINATOR_MESSAGE_ID: 12,
    }
    expected = pydicom_command(
        AffectedSOPClassUID=CT,
        CommandField=0x8001,
        MessageIDBeingRespondedTo=65535,
        MoveDestination="DEST",
        CommandDataSetType=0x0101,
        Status=0xA701,
        OffendingElement=[0x00100010, 0x7FE00010],
        ErrorComment="disk full",
        ErrorID=9,
        AffectedSOPInstanceUID="1.2.3.4",
        MoveOriginatorApplicationEntityTitle="MOVER",
        MoveOriginatorMessageID=12,
    )
    assert encode_command(fields) == expected
    decoded = decode_command(expected)
    assert decoded.pop(c.COMMAND_GROUP_LENGTH) == len(expected) - 12
    assert decoded == fields


def test_n_service_elements_match_pydicom() -> None:
    fields = {
        c.REQUESTED_SOP_CLASS_UID: "1.2.840.10008.1.20.1",
        c.COMMAND_FIELD: 0x0130,
        c.MESSAGE_ID: 3,
        c.COMMAND_DATA_SET_TYPE: 0x0001,
        c.REQUESTED_SOP_INSTANCE_UID: "1.2.840.10008.1.20.1.1",
        c.EVENT_TYPE_ID: 1,
        c.ATTRIBUTE_IDENTIFIER_LIST: (0x00080016,),
        c.ACTION_TYPE_ID: 1,
        c.NUMBER_OF_REMAINING_SUBOPERATIONS: 4,
        c.NUMBER_OF_COMPLETED_SUBOPERATIONS: 3,
        c.NUMBER_OF_FAILED_SUBOPERATIONS: 2,
        c.NUMBER_OF_WARNING_SUBOPERATIONS: 1,
        c.PRIORITY: 1,
    }
    expected = pydicom_command(
        RequestedSOPClassUID="1.2.840.10008.1.20.1",
        CommandField=0x0130,
        MessageID=3,
        Priority=1,
        CommandDataSetType=0x0001,
        RequestedSOPInstanceUID="1.2.840.10008.1.20.1.1",
        EventTypeID=1,
        AttributeIdentifierList=[0x00080016],
        ActionTypeID=1,
        NumberOfRemainingSuboperations=4,
        NumberOfCompletedSuboperations=3,
        NumberOfFailedSuboperations=2,
        NumberOfWarningSuboperations=1,
    )
    assert encode_command(fields) == expected
    decoded = decode_command(expected)
    del decoded[c.COMMAND_GROUP_LENGTH]
    assert decoded == fields


def test_group_length_first_and_correct() -> None:
    data = encode_command({c.COMMAND_FIELD: 0x0030, c.MESSAGE_ID: 1})
    assert data[:8] == b"\0\0\0\0\x04\0\0\0"
    assert struct.unpack_from("<I", data, 8)[0] == len(data) - 12 == 20


def test_elements_sorted_none_skipped_group_length_ignored() -> None:
    data = encode_command({c.STATUS: 0, c.COMMAND_FIELD: 1, c.ERROR_COMMENT: None, 0: 999})
    assert decode_command(data) == {0: 20, c.COMMAND_FIELD: 1, c.STATUS: 0}
    assert data.index(struct.pack("<HH", 0, 0x0100)) < data.index(struct.pack("<HH", 0, 0x0900))


def test_padding_and_stripping() -> None:
    data = encode_command({c.AFFECTED_SOP_CLASS_UID: "1.2.3", c.MOVE_DESTINATION: "ABC"})
    assert b"1.2.3\0" in data and b"ABC " in data
    assert decode_command(data)[c.AFFECTED_SOP_CLASS_UID] == "1.2.3"
    # peers that pad UIDs with spaces, or AE titles on both sides, are tolerated
    raw = with_group_length(element(2, b"1.2.3 ") + element(0x600, b" AE  "))
    assert decode_command(raw)[2] == "1.2.3"
    assert decode_command(raw)[0x600] == "AE"


def test_error_comment_cut_to_64_and_made_ascii() -> None:
    data = encode_command({c.ERROR_COMMENT: "é\\\n" + "x" * 100})
    value = decode_command(data)[c.ERROR_COMMENT]
    assert value == "???" + "x" * 58 + "..."  # (one word: the only hard cut)
    # review45 M1: the Q/R comments were cut inside a word (by hand, at 64)
    data = encode_command(
        {c.ERROR_COMMENT: "SERIES query without a single (0020,000D) (relational: not supported)"}
    )
    assert (
        decode_command(data)[c.ERROR_COMMENT]
        == "SERIES query without a single (0020,000D) (relational: not..."
    )


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({c.MESSAGE_ID: 70000}, "US"),
        ({c.MESSAGE_ID: -1}, "US"),
        ({c.MESSAGE_ID: "1"}, "US"),
        ({c.AFFECTED_SOP_CLASS_UID: "1.2.é"}, "UI"),
        ({c.MOVE_DESTINATION: "A" * 17}, "16"),
        ({c.OFFENDING_ELEMENT: (1 << 32,)}, "AT"),
        ({0x0001: 4}, "not a command element"),
        ({0x0850: 4}, "not a command element"),
    ],
)
def test_encode_rejects_bad_local_values(fields: dict, match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        encode_command(fields)


def test_single_at_value_may_be_an_int() -> None:
    data = encode_command({c.OFFENDING_ELEMENT: 0x00080018})
    assert decode_command(data)[c.OFFENDING_ELEMENT] == (0x00080018,)


def test_unknown_and_retired_elements_are_skipped() -> None:
    body = element(0x0100, b"\x30\x00") + element(0x0850, b"\0\0\0\0") + element(0x5010, b"ab")
    assert decode_command(with_group_length(body)) == {0: len(body), 0x0100: 0x30}


def test_missing_group_length_is_tolerated() -> None:
    assert decode_command(element(0x0100, b"\x30\x00")) == {0x0100: 0x30}


def test_bad_values_decode_to_badvalue() -> None:
    body = (
        element(2, b"1.2\xff\0")
        + element(0x0100, b"\x01\x00\x00")
        + element(0x0600, b"\xe9AE ")
        + element(0x0901, b"\x10\x00")
        + element(0x0902, b"caf\xe9")
    )
    fields = decode_command(with_group_length(body))
    assert isinstance(fields[2], BadValue) and fields[2].vr == "UI"
    assert isinstance(fields[0x0100], BadValue) and "3 bytes" in fields[0x0100].reason
    assert isinstance(fields[0x0600], BadValue)
    assert isinstance(fields[0x0901], BadValue)
    assert fields[0x0902] == "caf\ufffd"  # comments are decoded leniently


def test_badvalue_reencodes_its_raw_bytes() -> None:
    data = encode_command({c.COMMAND_FIELD: BadValue("US", b"\x01\x02\x03", "odd")})
    assert data.endswith(b"\x01\x02\x03\x00")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "too short"),
        (b"\0" * 7, "too short"),
        (with_group_length(element(0x0100, b"\x01\x00"))[:-1], "Group Length"),
        (element(0x0100, b"\x01\x00") + b"\0\0\0", "truncated"),
        (element(0x0100, b"\x01\x00")[:-1], "overruns"),
        (struct.pack("<HHI", 0, 0x0100, 0xFFFFFFFF), "overruns"),
        (struct.pack("<HHI", 8, 0x0016, 2) + b"ab", "outside group 0000"),
        (element(0x0100, b"\x01\x00") + element(0x0100, b"\x01\x00"), "twice"),
        (element(0x0100, b"\x01\x00") + element(0, b"\x0a\0\0\0"), "first"),
        (element(0, b"\x00\0\0\0") + element(0x0100, b"\x01\x00"), "says 0"),
        (element(0, b"\x0c\0\0\0") + element(0x0100, b"\x01\x00"), "says 12"),
        (element(0, b"\x0a\0\0\0\0\0") + element(0x0100, b"\x01\x00"), "4-byte"),
    ],
)
def test_decode_rejects_broken_structure(data: bytes, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match) as info:
        decode_command(data)
    assert info.value.reason == 6


def test_decode_accepts_memoryview_and_bytearray() -> None:
    data = encode_command({c.COMMAND_FIELD: 0x0030, c.MESSAGE_ID: 1})
    assert decode_command(memoryview(data)) == decode_command(bytearray(data))


def test_element_table_has_the_vrs_of_e1() -> None:
    vrs = {elem: vr for elem, (vr, _) in c.ELEMENTS.items()}
    assert vrs[0x0000] == "UL"
    assert vrs[0x0901] == vrs[0x1005] == "AT"
    assert vrs[0x0902] == "LO"
    assert vrs[0x0600] == vrs[0x1030] == "AE"
    assert {vrs[e] for e in (2, 3, 0x1000, 0x1001)} == {"UI"}
    assert vrs[0x1031] == "US"


def test_tag_str() -> None:
    assert c.tag_str(0x7FE00010) == "(7FE0,0010)"


def _other(group: int, elem: int, value: bytes) -> bytes:
    return struct.pack("<HHI", group, elem, len(value)) + value


def test_a_failed_uid_list_in_the_command_set_is_kept_not_an_abort() -> None:
    """review48 #1: Orthanc puts (0008,0058) in a C-GET-RSP's command set, after group
    0000 and its group length: 'Command Group Length says 106 bytes but 170 follow',
    the association aborted, the final status never seen (pynetdicom reads it)."""
    from dicomstore.dimse.decoding import decode_message
    from dicomstore.dimse.retrieve_messages import CGetRSP

    rsp = CGetRSP(7, 0xB000, "1.2.840.10008.5.1.4.1.2.2.3").encode()
    data = rsp + _other(0x0008, 0x0058, b"1.2.3.4\\1.2.3.5\0")
    message = decode_message(data)
    assert isinstance(message, CGetRSP) and message.status == 0xB000
    assert message.failed_in_command == "1.2.3.4\\1.2.3.5"
    assert decode_command(rsp + _other(0x0009, 0x0010, b"AB"))[c.STATUS] == 0xB000  # (ignored)


@pytest.mark.parametrize(
    ("tail", "words"),
    [
        (_other(0x0008, 0x0058, b"1.2") + element(0x0900, b"\0\0"), "out of order"),
        (_other(0x0008, 0x0058, b"1.2") + _other(0x0008, 0x0010, b"AB"), "out of order"),
        (_other(0x0008, 0x0058, b"1.2" * 40), "overruns"),
    ],
    ids=["group-0000-after", "descending", "overrun"],
)
def test_what_follows_group_0000_is_framed_as_the_rest(tail: bytes, words: str) -> None:
    from dicomstore.dimse.retrieve_messages import CGetRSP

    rsp = CGetRSP(7, 0x0000, "1.2.840.10008.5.1.4.1.2.2.3").encode()
    cut = tail[: len(tail) - 100] if words == "overruns" else tail
    with pytest.raises(RemoteProtocolError, match=words):
        decode_command(rsp + cut)


def test_a_group_length_short_of_group_0000_is_still_refused() -> None:
    body = element(0x0100, struct.pack("<H", 1)) + element(0x0800, struct.pack("<H", 0x101))
    data = element(0x0000, struct.pack("<I", 10)) + body  # (says 10, 20 follow)
    with pytest.raises(RemoteProtocolError, match="Command Group Length says 10 bytes"):
        decode_command(data)
