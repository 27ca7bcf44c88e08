"""DIMSE messages (PS3.7 9.3.1 C-STORE, 9.3.5 C-ECHO) and the invalid/unknown fallbacks."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from dicomstore.dimse import (
    C_STORE_RQ,
    CEchoRQ,
    CEchoRSP,
    CStoreRQ,
    CStoreRSP,
    GenericRSP,
    InvalidRequest,
    UnknownCommand,
    decode_message,
    encode_command,
)
from dicomstore.dimse import commands as c
from dicomstore.errors import LocalProtocolError, RemoteProtocolError

CT = "1.2.840.10008.5.1.4.1.1.2"
INSTANCE = "1.2.826.0.1.3680043.2.1125.1.1"


def pydicom_bytes(**elements: Any) -> bytes:
    """pydicom's Implicit VR LE encoding of the elements behind a correct group length."""

    def write(ds: Dataset) -> bytes:
        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = True
        write_dataset(fp, ds)
        return fp.getvalue()

    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    length = len(write(ds))
    ds.CommandGroupLength = length
    return write(ds)


# --- byte vectors against pydicom ---------------------------------------------------


def test_c_echo_rq_bytes() -> None:
    assert CEchoRQ(1).encode() == pydicom_bytes(
        AffectedSOPClassUID="1.2.840.10008.1.1",
        CommandField=0x0030,
        MessageID=1,
        CommandDataSetType=0x0101,
    )


def test_c_echo_rsp_bytes() -> None:
    assert CEchoRSP(1, 0).encode() == pydicom_bytes(
        AffectedSOPClassUID="1.2.840.10008.1.1",
        CommandField=0x8030,
        MessageIDBeingRespondedTo=1,
        CommandDataSetType=0x0101,
        Status=0,
    )


def test_c_store_rq_bytes() -> None:
    msg = CStoreRQ(
        42, CT, INSTANCE, priority=1, move_originator_aet="PACS", move_originator_message_id=9
    )
    assert msg.encode() == pydicom_bytes(
        AffectedSOPClassUID=CT,
        CommandField=0x0001,
        MessageID=42,
        Priority=1,
        CommandDataSetType=0x0000,
        AffectedSOPInstanceUID=INSTANCE,
        MoveOriginatorApplicationEntityTitle="PACS",
        MoveOriginatorMessageID=9,
    )


def test_c_store_rsp_bytes() -> None:
    msg = CStoreRSP(42, 0xA900, CT, INSTANCE, "SOP Class mismatch", (0x00080016,))
    assert msg.encode() == pydicom_bytes(
        AffectedSOPClassUID=CT,
        CommandField=0x8001,
        MessageIDBeingRespondedTo=42,
        CommandDataSetType=0x0101,
        Status=0xA900,
        OffendingElement=[0x00080016],
        ErrorComment="SOP Class mismatch",
        AffectedSOPInstanceUID=INSTANCE,
    )


# --- round trips ----------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        CEchoRQ(1),
        CEchoRQ(65535, "1.2.3"),
        CEchoRSP(1),
        CEchoRSP(7, 0x0211, "1.2.840.10008.1.1", "nope"),
        CEchoRSP(7, 0, None),
        CStoreRQ(1, CT, INSTANCE),
        CStoreRQ(2, CT, INSTANCE, 2, "MOVESCU", 17),
        CStoreRSP(1, 0, CT, INSTANCE),
        CStoreRSP(1, 0xB000, CT, INSTANCE, "coerced", (0x00100010, 0x00100020), 3),
        CStoreRSP(1, 0xC000, None, None),
    ],
)
def test_round_trip(message: Any) -> None:
    assert decode_message(message.encode()) == message


def test_has_dataset_and_command_field() -> None:
    assert CStoreRQ(1, CT, INSTANCE).has_dataset
    assert not CStoreRSP(1, 0, CT, INSTANCE).has_dataset
    assert not CEchoRQ(1).has_dataset and not CEchoRSP(1).has_dataset
    assert (CEchoRQ.command_field, CEchoRSP.command_field) == (0x0030, 0x8030)
    assert (CStoreRQ.command_field, CStoreRSP.command_field) == (0x0001, 0x8001)


def test_any_data_set_type_but_0101_means_present() -> None:
    fields = {
        c.AFFECTED_SOP_CLASS_UID: CT,
        c.COMMAND_FIELD: C_STORE_RQ,
        c.MESSAGE_ID: 5,
        c.PRIORITY: 0,
        c.AFFECTED_SOP_INSTANCE_UID: INSTANCE,
    }
    for dst in (0x0000, 0x0001, 0x0102, 0xFEFE):
        msg = decode_message(encode_command({**fields, c.COMMAND_DATA_SET_TYPE: dst}))
        assert isinstance(msg, CStoreRQ)


def test_request_builds_its_response() -> None:
    rq = CStoreRQ(9, CT, INSTANCE)
    assert rq.response(0xA700, "disk full") == CStoreRSP(9, 0xA700, CT, INSTANCE, "disk full")
    assert CEchoRQ(3).response() == CEchoRSP(3, 0, "1.2.840.10008.1.1")


# --- invalid requests -> InvalidRequest (answer 0212) ---------------------------


def store_fields(**overrides: Any) -> dict[int, Any]:
    fields: dict[int, Any] = {
        c.AFFECTED_SOP_CLASS_UID: CT,
        c.COMMAND_FIELD: C_STORE_RQ,
        c.MESSAGE_ID: 11,
        c.PRIORITY: 0,
        c.COMMAND_DATA_SET_TYPE: 0,
        c.AFFECTED_SOP_INSTANCE_UID: INSTANCE,
    }
    for key, value in overrides.items():
        fields[getattr(c, key.upper())] = value
    return fields


@pytest.mark.parametrize(
    ("overrides", "offending", "has_dataset"),
    [
        ({"affected_sop_instance_uid": None}, c.AFFECTED_SOP_INSTANCE_UID, True),
        ({"affected_sop_instance_uid": ""}, c.AFFECTED_SOP_INSTANCE_UID, True),
        ({"affected_sop_class_uid": None}, c.AFFECTED_SOP_CLASS_UID, True),
        ({"priority": None}, c.PRIORITY, True),
        ({"priority": 3}, c.PRIORITY, True),
        ({"command_data_set_type": 0x0101}, c.COMMAND_DATA_SET_TYPE, False),
        ({"move_originator_message_id": c.BadValue("US", b"\1\0\0\0", "x")}, 0x1031, True),
        ({"move_originator_ae_title": c.BadValue("AE", b"\xff\xff", "x")}, 0x1030, True),
        ({"affected_sop_class_uid": c.BadValue("UI", b"1.\xe9", "x")}, 2, True),
    ],
)
def test_invalid_c_store_rq(overrides: dict, offending: int, has_dataset: bool) -> None:
    msg = decode_message(encode_command(store_fields(**overrides)))
    assert isinstance(msg, InvalidRequest)
    assert (msg.command_field, msg.message_id) == (C_STORE_RQ, 11)
    assert msg.offending_element == (offending,)
    assert msg.has_dataset is has_dataset
    rsp = msg.response()
    assert isinstance(rsp, CStoreRSP)
    assert (rsp.message_id_being_responded_to, rsp.status) == (11, 0x0212)
    assert rsp.offending_element == (offending,)
    assert rsp.error_comment == msg.reason
    decoded = decode_message(rsp.encode())
    assert isinstance(decoded, CStoreRSP) and decoded.status == 0x0212


def test_non_ascii_uid_on_the_wire_is_a_mistyped_argument() -> None:
    data = CStoreRQ(4, CT, "1.2.3.4").encode().replace(b"1.2.3.4\0", b"1.2.3.\xb4\0")
    msg = decode_message(data)
    assert isinstance(msg, InvalidRequest)
    assert msg.offending_element == (c.AFFECTED_SOP_INSTANCE_UID,)
    assert "ASCII" in msg.reason
    rsp = msg.response()
    assert rsp.affected_sop_instance_uid is None and rsp.affected_sop_class_uid == CT
    rsp.encode()  # answerable


def test_invalid_c_echo_rq() -> None:
    no_class = encode_command({c.COMMAND_FIELD: 0x30, c.MESSAGE_ID: 2, 0x800: 0x0101})
    msg = decode_message(no_class)
    assert isinstance(msg, InvalidRequest) and msg.offending_element == (2,)
    rsp = msg.response()
    assert isinstance(rsp, CEchoRSP) and rsp.status == 0x0212
    assert rsp.affected_sop_class_uid is None
    with_data = CEchoRQ(2).encode().replace(b"\x01\x01", b"\x00\x00")
    msg = decode_message(with_data)
    assert isinstance(msg, InvalidRequest) and msg.has_dataset
    assert msg.offending_element == (c.COMMAND_DATA_SET_TYPE,)
    assert decode_message(msg.encode()) == msg


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({c.MESSAGE_ID: 1, 0x800: 0x0101}, "Command Field"),
        (
            {c.COMMAND_FIELD: c.BadValue("US", b"\1\0\0\0", "x"), c.MESSAGE_ID: 1, 0x800: 0x101},
            "Field",
        ),
        ({c.COMMAND_FIELD: 0x30, c.MESSAGE_ID: 1}, "Command Data Set Type"),
        ({c.COMMAND_FIELD: 0x30, 0x800: 0x0101}, "Message ID"),
        ({c.COMMAND_FIELD: 0x1, 0x800: 0}, "Message ID"),
        ({c.COMMAND_FIELD: 0x8001, c.MESSAGE_ID: 1, 0x800: 0x101, 0x900: 0}, "Responded"),
        ({c.COMMAND_FIELD: 0x8001, 0x120: 1, 0x800: 0x101}, "Status"),
        ({c.COMMAND_FIELD: 0x8030, 0x120: 1, 0x800: 0x101}, "Status"),
        ({c.COMMAND_FIELD: 0x8001, 0x120: 1, 0x800: 0, 0x900: 0}, "data set"),
        ({c.COMMAND_FIELD: 0x0FFF, c.MESSAGE_ID: 1, 0x800: 0x101}, "Responded"),
    ],
)
def test_unanswerable_messages_raise(fields: dict, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        decode_message(encode_command(fields))


def test_responses_are_lenient_on_optional_fields() -> None:
    data = encode_command(
        {
            c.AFFECTED_SOP_CLASS_UID: c.BadValue("UI", b"\xff\xfe", "x"),
            c.COMMAND_FIELD: 0x8001,
            c.MESSAGE_ID_BEING_RESPONDED_TO: 3,
            c.COMMAND_DATA_SET_TYPE: 0x0101,
            c.STATUS: 0xB007,
            c.OFFENDING_ELEMENT: c.BadValue("AT", b"\1\0", "x"),
            c.ERROR_ID: c.BadValue("US", b"\1\0\0\0", "x"),
        }
    )
    assert decode_message(data) == CStoreRSP(3, 0xB007, None, None)


# --- unknown commands -> UnknownCommand (answer 0211) -----------------------------


def test_unknown_request_gets_0211_response() -> None:
    fields = {
        c.REQUESTED_SOP_CLASS_UID: "1.2.840.10008.1.20.1",
        c.COMMAND_FIELD: 0x0120,  # N-SET-RQ
        c.MESSAGE_ID: 8,
        c.COMMAND_DATA_SET_TYPE: 0x0000,
        c.REQUESTED_SOP_INSTANCE_UID: "1.2.840.10008.1.20.1.1",
        c.ACTION_TYPE_ID: 1,
    }
    msg = decode_message(encode_command(fields))
    assert isinstance(msg, UnknownCommand)
    assert (msg.command_field, msg.message_id, msg.has_dataset) == (0x0120, 8, True)
    assert not msg.is_response
    assert msg.fields[c.ACTION_TYPE_ID] == 1
    rsp = msg.response()
    assert isinstance(rsp, GenericRSP)
    assert (rsp.command_field, rsp.message_id_being_responded_to, rsp.status) == (0x8120, 8, 0x0211)
    assert rsp.affected_sop_class_uid == "1.2.840.10008.1.20.1"
    assert rsp.affected_sop_instance_uid == "1.2.840.10008.1.20.1.1"
    back = decode_message(rsp.encode())
    assert isinstance(back, UnknownCommand) and back.is_response
    assert back.fields[c.STATUS] == 0x0211 and not back.has_dataset
    assert decode_message(msg.encode()) == msg


def test_n_get_rq_is_unknown() -> None:
    n_get = encode_command(
        {
            c.REQUESTED_SOP_CLASS_UID: "1.2.840.10008.5.1.1.16",
            0x100: 0x0110,
            0x110: 5,
            0x800: 0x0101,
        }
    )
    msg = decode_message(n_get)
    assert (
        isinstance(msg, UnknownCommand) and msg.response(error_comment="no").error_comment == "no"
    )
    rsp = decode_message(encode_command({0x100: 0x8110, 0x120: 5, 0x800: 0x0101, 0x900: 0x0000}))
    assert isinstance(rsp, UnknownCommand) and rsp.is_response
    with pytest.raises(LocalProtocolError):
        rsp.response()


def test_invalid_unknown_shape_falls_back_to_generic_response() -> None:
    msg = InvalidRequest(0x0130, 3, False, "bad", (0x1008,), {})
    rsp = msg.response(0x0212)
    assert isinstance(rsp, GenericRSP) and rsp.command_field == 0x8130
    assert struct.unpack_from("<I", rsp.encode(), 8)[0] == len(rsp.encode()) - 12


# -- the Q/R and normalized families load with their first message ----------------------

FAMILY_PROBE = """
import sys
from dicomstore.dimse import decoding
from dicomstore.dimse.commands import (
    COMMAND_DATA_SET_TYPE, COMMAND_FIELD, MESSAGE_ID, MESSAGE_ID_BEING_RESPONDED_TO, NO_DATA_SET,
    STATUS, encode_command,
)
families = sorted(m for m in sys.modules if m.rsplit(".", 1)[-1] in set(decoding.FAMILIES.values()))
decoded = {}
for field, module in decoding.FAMILIES.items():
    answer = field & 0x8000 or field == 0x0FFF
    fields = {COMMAND_FIELD: field, COMMAND_DATA_SET_TYPE: NO_DATA_SET}
    fields[MESSAGE_ID_BEING_RESPONDED_TO if answer else MESSAGE_ID] = 1
    if field & 0x8000:
        fields[STATUS] = 0
    message = decoding.decode_message(encode_command(fields))
    decoded[field] = (type(message).__name__, "dicomstore.dimse." + module in sys.modules)
print(families)
print(decoded)
"""


def test_a_family_of_messages_loads_with_its_first_message() -> None:
    """``dicomstore send`` loads no Q/R or normalized message module (``dicomstore.dimse``
    loads them when used); the first message of such a family is decoded as its own
    class all the same, not as an unknown command."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", FAMILY_PROBE], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    loaded_first, decoded = out.stdout.splitlines()
    assert loaded_first == "[]"
    for field, (kind, loaded) in eval(decoded).items():  # noqa: S307 - our own output
        assert loaded and kind != "UnknownCommand", hex(field)  # (else: InvalidRequest, or
        # the family's own class: its decoder took it)


def test_the_table_of_families_names_every_decoder_of_those_modules() -> None:
    import dicomstore.dimse.normalized_messages
    import dicomstore.dimse.query_messages
    import dicomstore.dimse.retrieve_messages  # noqa: F401 - they register on import
    from dicomstore.dimse import decoding, messages

    registered = {
        field: decoder.__module__.rsplit(".", 1)[-1]
        for field, decoder in decoding._DECODERS.items()
        if field not in messages.DECODERS
    }
    assert registered == decoding.FAMILIES
