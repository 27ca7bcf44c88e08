"""The seven PDUs of the DICOM upper layer (PS3.8 9.3), checked four ways.

1. Byte vectors written by hand from the standard's field tables (PS3.8
   Tables 9-11 to 9-26, PS3.7 D.3.3) -- not produced by our encoder.
2. Interop with pynetdicom, used here only as a reference implementation.
3. Robustness of the decoder and of ``PDUReader.parse``.
4. Hypothesis: round trips against an independent reference encoder written
   below from the standard, and fuzzing of ``PDUReader.parse`` and of a
   connection's ``receive_view``, fed as the asyncio shell feeds them.
"""

from __future__ import annotations

import string
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ul_vectors import (
    APP_CTX,
    CALLED,
    CALLING,
    CT_STORAGE,
    ENHANCED_SR,
    EXPLICIT_LE,
    IMPL_UID,
    IMPLICIT_LE,
    PROC_LOG,
    STORAGE_SERVICE,
    VERIFICATION,
    VERSION,
    Receiver,
    h,
    pdu_receiver,
    read_pdus,
    s,
    sent_bytes,
)

from dicomstore.errors import AssociationRejected, RemoteProtocolError
from dicomstore.ul.connection import Connection, Role
from dicomstore.ul.events import ULEvent
from dicomstore.ul.items import (
    PresentationContextAC,
    PresentationContextRQ,
    RoleSelection,
    SOPClassCommonExtended,
    SOPClassExtended,
    UserIdentityAC,
    UserIdentityRQ,
    UserInformation,
)
from dicomstore.ul.pdu import (
    PDU,
    PDV,
    Abort,
    AssociateAC,
    AssociateRJ,
    AssociateRQ,
    PDataTF,
    PDUReader,
    ReleaseRP,
    ReleaseRQ,
    decode_pdu,
    describe_abort,
    describe_reject,
    encode,
)


def decode(raw: bytes) -> PDU:
    """Decode one whole PDU (header included) with ``decode_pdu``."""
    assert int.from_bytes(raw[2:6], "big") == len(raw) - 6, "PDU-length of the vector"
    return decode_pdu(raw[0], raw[6:])


# -- A-ASSOCIATE-RQ (PS3.8 9.3.2, Table 9-11) --------------------------------

ASSOCIATE_RQ = (
    h("01")  # PDU-type 01H
    + h("00")  # reserved
    + h("00000215")  # PDU-length 533 (= 68 fixed + 465 variable)
    + h("0001")  # protocol-version: bit 0 set (version 1)
    + h("0000")  # reserved
    + CALLED  # called-AE-title
    + CALLING  # calling-AE-title
    + h("00" * 32)  # reserved (32 bytes)
    # application context item (Table 9-12): 25 bytes
    + h("10 00 0015")  # item-type 10H, reserved, item-length 21
    + APP_CTX
    # presentation context item (Table 9-13): 50 bytes
    + h("20 00 002E")  # item-type 20H, reserved, item-length 46
    + h("01 00 00 00")  # presentation-context-ID 1, reserved x3
    + h("30 00 0011")  # abstract syntax sub-item (Table 9-14), length 17
    + VERIFICATION
    + h("40 00 0011")  # transfer syntax sub-item (Table 9-15), length 17
    + IMPLICIT_LE
    # presentation context item: 81 bytes
    + h("20 00 004D")  # item-type 20H, reserved, item-length 77
    + h("03 00 00 00")  # presentation-context-ID 3
    + h("30 00 0019")  # abstract syntax, length 25
    + CT_STORAGE
    + h("40 00 0013")  # transfer syntax, length 19
    + EXPLICIT_LE
    + h("40 00 0011")  # transfer syntax, length 17
    + IMPLICIT_LE
    # presentation context item: 62 bytes
    + h("20 00 003A")  # item-type 20H, reserved, item-length 58
    + h("05 00 00 00")  # presentation-context-ID 5
    + h("30 00 001D")  # abstract syntax, length 29
    + PROC_LOG
    + h("40 00 0011")  # transfer syntax, length 17
    + IMPLICIT_LE
    # user information item (Table 9-16): 247 bytes
    + h("50 00 00F3")  # item-type 50H, reserved, item-length 243
    + h("51 00 0004 00004000")  # maximum length (D.1): 16384
    + h("52 00 001B")  # implementation class UID (D.3.3.2), length 27
    + IMPL_UID
    + h("53 00 0004 0001 0001")  # async ops window (D.3.3.3): invoked 1, performed 1
    + h("54 00 001D")  # SCP/SCU role selection (D.3.3.4), length 29
    + h("0019")  # UID-length 25
    + CT_STORAGE
    + h("01 00")  # SCU-role 1, SCP-role 0
    + h("55 00 000E")  # implementation version name (D.3.3.2), length 14
    + VERSION
    + h("56 00 0021")  # SOP class extended negotiation (D.3.3.5), length 33
    + h("0019")  # SOP-class-uid-length 25
    + CT_STORAGE
    + h("02 00 03 00 01 00")  # service-class-application-information (6 bytes)
    + h("57 00 0053")  # SOP class common extended (D.3.3.6): sub-item-version 0, length 83
    + h("001D")  # SOP-class-uid-length 29
    + PROC_LOG
    + h("0011")  # service-class-uid-length 17
    + STORAGE_SERVICE
    + h("001F")  # related-general-sop-class-identification-length 31
    + h("001D")  # related-general-sop-class-uid-length 29
    + ENHANCED_SR
    + h("58 00 0011")  # user identity RQ (D.3.3.7.1), length 17
    + h("02 01")  # user-identity-type 2 (username+passcode), positive response requested
    + h("0005")  # primary-field-length 5
    + b"alice"
    + h("0006")  # secondary-field-length 6
    + b"s3cret"
)

CT_EXTENDED = SOPClassExtended(s(CT_STORAGE), h("02 00 03 00 01 00"))
ASSOCIATE_RQ_PDU = AssociateRQ(
    called_ae="STORESCP",
    calling_ae="STORESCU",
    presentation_contexts=[
        PresentationContextRQ(1, s(VERIFICATION), [s(IMPLICIT_LE)]),
        PresentationContextRQ(3, s(CT_STORAGE), [s(EXPLICIT_LE), s(IMPLICIT_LE)]),
        PresentationContextRQ(5, s(PROC_LOG), [s(IMPLICIT_LE)]),
    ],
    user_info=UserInformation(
        max_length=16384,
        implementation_class_uid=s(IMPL_UID),
        implementation_version_name=s(VERSION),
        async_ops=(1, 1),
        roles=[RoleSelection(s(CT_STORAGE), scu_role=True, scp_role=False)],
        extended=[CT_EXTENDED],
        common_extended=[
            SOPClassCommonExtended(s(PROC_LOG), s(STORAGE_SERVICE), (s(ENHANCED_SR),))
        ],
        identity_rq=UserIdentityRQ(2, True, b"alice", b"s3cret"),
    ),
)

# -- A-ASSOCIATE-AC (PS3.8 9.3.3, Table 9-17) --------------------------------

ASSOCIATE_AC = (
    h("02")  # PDU-type 02H
    + h("00")  # reserved
    + h("0000013A")  # PDU-length 314 (= 68 + 246)
    + h("0001")  # protocol-version 1
    + h("0000")  # reserved
    + CALLED  # reserved: the called-AE-title of the RQ, echoed
    + CALLING  # reserved: the calling-AE-title of the RQ, echoed
    + h("00" * 32)  # reserved
    + h("10 00 0015")  # application context item, length 21: 25 bytes
    + APP_CTX
    + h("21 00 0019")  # presentation context (Table 9-18), length 25: 29 bytes
    + h("01 00 00 00")  # ID 1, reserved, result/reason 0 (acceptance), reserved
    + h("40 00 0011")  # transfer syntax sub-item (Table 9-19), length 17
    + IMPLICIT_LE
    + h("21 00 001B")  # presentation context, length 27: 31 bytes
    + h("03 00 00 00")  # ID 3, acceptance
    + h("40 00 0013")  # transfer syntax, length 19
    + EXPLICIT_LE
    + h("21 00 0008")  # presentation context, length 8: 12 bytes
    + h("05 00 04 00")  # ID 5, result/reason 4 (transfer-syntaxes-not-supported)
    + h("40 00 0000")  # transfer syntax sub-item, empty (not significant)
    + h("50 00 0091")  # user information item, length 145: 149 bytes
    + h("51 00 0004 00010000")  # maximum length 65536
    + h("52 00 001B")  # implementation class UID, length 27
    + IMPL_UID
    + h("53 00 0004 0001 0001")  # async ops window 1, 1
    + h("54 00 001D 0019")  # role selection, length 29, UID-length 25
    + CT_STORAGE
    + h("01 00")  # SCU-role 1, SCP-role 0
    + h("55 00 000E")  # implementation version name, length 14
    + VERSION
    + h("56 00 0021 0019")  # SOP class extended negotiation, length 33, UID-length 25
    + CT_STORAGE
    + h("02 00 03 00 01 00")
    + h("59 00 0006")  # user identity AC (D.3.3.7.2), length 6
    + h("0004 DEADBEEF")  # server-response-length 4, server-response
)
ASSOCIATE_AC_PDU = AssociateAC(
    called_ae="STORESCP",
    calling_ae="STORESCU",
    presentation_contexts=[
        PresentationContextAC(1, 0, s(IMPLICIT_LE)),
        PresentationContextAC(3, 0, s(EXPLICIT_LE)),
        PresentationContextAC(5, 4),
    ],
    user_info=UserInformation(
        max_length=65536,
        implementation_class_uid=s(IMPL_UID),
        implementation_version_name=s(VERSION),
        async_ops=(1, 1),
        roles=[RoleSelection(s(CT_STORAGE), True, False)],
        extended=[CT_EXTENDED],
        identity_ac=UserIdentityAC(h("DEADBEEF")),
    ),
)

# -- P-DATA-TF (PS3.8 9.3.5, Tables 9-22 and 9-23; Annex E.2) ---------------

P_DATA_TF = (
    h("04")  # PDU-type 04H
    + h("00")  # reserved
    + h("00000026")  # PDU-length 38 (= 14 + 10 + 8 + 6)
    + h("0000000A")  # PDV item-length 10
    + h("01")  # presentation-context-ID 1
    + h("03")  # message control header: command, last fragment
    + h("00000000 04000000")  # fragment (8 bytes)
    + h("00000006")  # PDV item-length 6
    + h("01")  # presentation-context-ID 1
    + h("00")  # message control header: data set, not last
    + h("08000500")  # fragment (4 bytes)
    + h("00000004 01")  # item-length 4, presentation-context-ID 1
    + h("02")  # message control header: data set, last fragment
    + h("ABCD")
    + h("00000002 03")  # item-length 2, presentation-context-ID 3
    + h("01")  # message control header: command, not last; empty fragment
)
P_DATA_TF_PDU = PDataTF(
    [
        PDV(1, is_command=True, is_last=True, data=h("00000000 04000000")),
        PDV(1, is_command=False, is_last=False, data=h("08000500")),
        PDV(1, is_command=False, is_last=True, data=h("ABCD")),
        PDV(3, is_command=True, is_last=False, data=b""),
    ]
)

# -- A-RELEASE-RQ/RP (9.3.6, 9.3.7) and A-ABORT (9.3.8) ---------------------

RELEASE_RQ = h("05 00 00000004 00000000")  # PDU-type 05H, reserved, length 4, reserved x4
RELEASE_RP = h("06 00 00000004 00000000")  # PDU-type 06H, reserved, length 4, reserved x4
ABORT_USER = h("07 00 00000004  00 00 00 00")  # reserved, reserved, source 0 (user), reason 0

VECTORS = [
    pytest.param(ASSOCIATE_RQ, ASSOCIATE_RQ_PDU, id="associate-rq"),
    pytest.param(ASSOCIATE_AC, ASSOCIATE_AC_PDU, id="associate-ac"),
    pytest.param(P_DATA_TF, P_DATA_TF_PDU, id="p-data-tf"),
    pytest.param(RELEASE_RQ, ReleaseRQ(), id="release-rq"),
    pytest.param(RELEASE_RP, ReleaseRP(), id="release-rp"),
    pytest.param(ABORT_USER, Abort(0, 0), id="abort-user"),
]


@pytest.mark.parametrize(("raw", "pdu"), VECTORS)
def test_pdu_vector(raw: bytes, pdu: PDU) -> None:
    assert encode(pdu) == raw
    assert decode(raw) == pdu


# A-ASSOCIATE-RJ (Table 9-21): PDU-type 03H, reserved, length 4, reserved,
# result, source, reason/diag -- every combination the table defines.
REJECTS = [
    ("03 00 00000004  00 01 01 01", 1, 1, 1),  # permanent, user, no-reason-given
    ("03 00 00000004  00 01 01 02", 1, 1, 2),  # application-context-name-not-supported
    ("03 00 00000004  00 01 01 03", 1, 1, 3),  # calling-AE-title-not-recognized
    ("03 00 00000004  00 01 01 07", 1, 1, 7),  # called-AE-title-not-recognized
    ("03 00 00000004  00 01 02 01", 1, 2, 1),  # permanent, ACSE, no-reason-given
    ("03 00 00000004  00 01 02 02", 1, 2, 2),  # protocol-version-not-supported
    ("03 00 00000004  00 02 03 01", 2, 3, 1),  # transient, presentation, temporary-congestion
    ("03 00 00000004  00 02 03 02", 2, 3, 2),  # local-limit-exceeded
    ("03 00 00000004  00 02 01 01", 2, 1, 1),  # transient, user, no-reason-given
]


@pytest.mark.parametrize(("raw", "result", "source", "reason"), REJECTS)
def test_associate_rj_vector(raw: str, result: int, source: int, reason: int) -> None:
    pdu = AssociateRJ(result, source, reason)
    assert encode(pdu) == h(raw)
    assert decode(h(raw)) == pdu
    assert f"reason {reason}" not in describe_reject(result, source, reason)  # has a text


# A-ABORT (Table 9-26): reserved, reserved, source, reason/diag.
ABORTS = [
    ("07 00 00000004  00 00 00 00", 0, 0),  # source 0: service user
    ("07 00 00000004  00 00 02 00", 2, 0),  # source 2: provider, reason-not-specified
    ("07 00 00000004  00 00 02 01", 2, 1),  # unrecognized-PDU
    ("07 00 00000004  00 00 02 02", 2, 2),  # unexpected-PDU
    ("07 00 00000004  00 00 02 04", 2, 4),  # unrecognized-PDU-parameter
    ("07 00 00000004  00 00 02 05", 2, 5),  # unexpected-PDU-parameter
    ("07 00 00000004  00 00 02 06", 2, 6),  # invalid-PDU-parameter-value
]


@pytest.mark.parametrize(("raw", "source", "reason"), ABORTS)
def test_abort_vector(raw: str, source: int, reason: int) -> None:
    assert encode(Abort(source, reason)) == h(raw)
    assert decode(h(raw)) == Abort(source, reason)


def test_encoding_something_else_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        encode(object())  # type: ignore[arg-type]


def test_describe_texts() -> None:
    assert "called AE title not recognized" in describe_reject(1, 1, 7)
    assert "transient" in describe_reject(2, 3, 1)
    assert str(AssociationRejected(1, 2, 2)).endswith("protocol version not supported")
    assert "service user" in describe_abort(0, 0)
    assert "unrecognized PDU" in describe_abort(2, 1)


def test_reserved_fields_are_not_tested_on_receipt() -> None:
    # PS3.8 9.3: reserved fields "shall be sent with a value 00H but not tested".
    assert decode(h("05 FF 00000004 DEADBEEF")) == ReleaseRQ()
    assert decode(h("06 01 00000004 FFFFFFFF")) == ReleaseRP()
    assert decode(h("03 00 00000004 FF 01 01 07")) == AssociateRJ(1, 1, 7)
    assert decode(h("07 00 00000004 AA BB 02 06")) == Abort(2, 6)
    noisy = bytearray(ASSOCIATE_RQ)
    noisy[1] = 0x7F  # PDU header reserved byte
    noisy[8:10] = h("FFFF")  # reserved after the protocol version
    noisy[42:74] = b"\xff" * 32  # 32 reserved bytes
    assert decode(bytes(noisy)) == ASSOCIATE_RQ_PDU


def test_message_control_header_reserved_bits_are_not_checked() -> None:
    # PS3.8 E.2: bits 2-7 "are always set to 0 by the sender and never checked by the receiver"
    raw = h("04 00 0000000E  00000003 01 FF AA  00000003 03 FC BB")  # length 14
    assert decode(raw) == PDataTF([PDV(1, True, True, h("AA")), PDV(3, False, False, h("BB"))])


# -- AE titles ---------------------------------------------------------------


def test_ae_titles_with_leading_and_trailing_spaces() -> None:
    raw = bytearray(ASSOCIATE_RQ)
    raw[10:26] = b"  PADDED AE     "  # leading and trailing spaces are non-significant
    raw[26:42] = b"SCU\0\0\0\0\0\0\0\0\0\0\0\0\0"  # some peers pad with NUL
    pdu = decode(bytes(raw))
    assert (pdu.called_ae, pdu.calling_ae) == ("PADDED AE", "SCU")

    rq = AssociateRQ(" AE1 ", "  ABCDEFGHIJKLMNOP  ", [])
    body = encode(rq)[6:]
    assert body[4:20] == b"AE1             "
    assert body[20:36] == b"ABCDEFGHIJKLMNOP"  # 16 significant characters: none cut off
    back = decode_pdu(1, body)
    assert (back.called_ae, back.calling_ae) == ("AE1", "ABCDEFGHIJKLMNOP")


@pytest.mark.parametrize("ae", ["", "    ", "ABCDEFGHIJKLMNOPQ", "ÄE"])
def test_invalid_ae_titles_are_refused_when_encoding(ae: str) -> None:
    with pytest.raises(ValueError):
        encode(AssociateRQ(ae, "SCU", []))


def test_ac_ae_title_fields_are_not_tested() -> None:
    # PS3.8 Table 9-17: in the AC these are reserved fields, "not tested when received"
    raw = bytearray(ASSOCIATE_AC)
    raw[10:26] = b"\xff" * 16
    pdu = decode(bytes(raw))
    assert isinstance(pdu, AssociateAC)
    assert pdu.presentation_contexts == ASSOCIATE_AC_PDU.presentation_contexts


def test_rq_ae_title_must_be_ascii() -> None:
    raw = bytearray(ASSOCIATE_RQ)
    raw[10] = 0xC4
    with pytest.raises(RemoteProtocolError) as info:
        decode(bytes(raw))
    assert info.value.reason == 6


# -- malformed PDUs ----------------------------------------------------------

FIXED = h("0001 0000") + CALLED + CALLING + bytes(32)  # 68 bytes of fixed fields
APP_ITEM = h("10 00 0015") + APP_CTX
EMPTY_UI = h("50 00 0000")


def pdu_bytes(kind: int, body: bytes) -> bytes:
    return bytes((kind, 0)) + len(body).to_bytes(4, "big") + body


MALFORMED_PDUS = [
    pytest.param(h("04 00 00000000"), id="p-data-without-pdv"),
    pytest.param(h("04 00 00000004 00000000"), id="pdv-truncated-header"),
    pytest.param(h("04 00 00000005 00000001 01"), id="pdv-length-1"),
    pytest.param(h("04 00 00000006 00000003 01 03"), id="pdv-overruns-pdu"),
    pytest.param(h("04 00 0000000A 00000002 01 03 00000001"), id="second-pdv-truncated"),
    pytest.param(h("04 00 00000006 00000002 02 03"), id="even-context-id"),
    pytest.param(h("04 00 00000006 00000002 00 03"), id="context-id-0"),
    pytest.param(h("03 00 00000003 000101"), id="rj-length-3"),
    pytest.param(h("03 00 00000005 0001010100"), id="rj-length-5"),
    pytest.param(h("05 00 00000000"), id="release-rq-length-0"),
    pytest.param(h("06 00 00000006 000000000000"), id="release-rp-length-6"),
    pytest.param(h("07 00 00000002 0000"), id="abort-length-2"),
    pytest.param(pdu_bytes(1, FIXED[:67]), id="rq-shorter-than-fixed-fields"),
    pytest.param(pdu_bytes(2, b""), id="ac-empty"),
    pytest.param(pdu_bytes(1, FIXED + EMPTY_UI), id="rq-without-application-context"),
    pytest.param(pdu_bytes(2, FIXED + APP_ITEM), id="ac-without-user-information"),
    pytest.param(pdu_bytes(1, FIXED + APP_ITEM + h("20 00 0010 01")), id="rq-item-overruns"),
    pytest.param(pdu_bytes(1, FIXED + APP_ITEM + h("50")), id="rq-truncated-item-header"),
]


@pytest.mark.parametrize("raw", MALFORMED_PDUS)
def test_malformed_pdus_are_invalid_parameter_values(raw: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_pdu(raw[0], raw[6:])
    assert info.value.reason == 6
    with pytest.raises(RemoteProtocolError) as info:
        pdu_receiver().receive(raw)
    assert info.value.reason == 6


def test_unexpected_item_in_associate_is_reason_5() -> None:
    ac_context = h("21 00 0008 01 00 00 00 40 00 0000")
    with pytest.raises(RemoteProtocolError) as info:
        decode_pdu(1, FIXED + APP_ITEM + ac_context + EMPTY_UI)
    assert info.value.reason == 5


def test_rq_without_user_information_decodes_with_defaults() -> None:
    pdu = decode_pdu(1, FIXED + APP_ITEM)
    assert pdu == AssociateRQ("STORESCP", "STORESCU", [], UserInformation())


# -- PDUReader.parse, fed as the asyncio shell feeds it ----------------------

STREAM = ASSOCIATE_RQ + ASSOCIATE_AC + P_DATA_TF + RELEASE_RQ + RELEASE_RP
STREAM += b"".join(h(raw) for raw, *_ in REJECTS) + b"".join(h(raw) for raw, *_ in ABORTS)
STREAM_PDUS: list[PDU] = [ASSOCIATE_RQ_PDU, ASSOCIATE_AC_PDU, P_DATA_TF_PDU, ReleaseRQ()]
STREAM_PDUS += [ReleaseRP()] + [AssociateRJ(*args) for _, *args in REJECTS]
STREAM_PDUS += [Abort(*args) for _, *args in ABORTS]


def test_reader_whole_stream_at_once() -> None:
    assert PDUReader().parse(memoryview(STREAM)) == (STREAM_PDUS, len(STREAM))
    reader = pdu_receiver()
    assert reader.receive(STREAM) == STREAM_PDUS
    assert reader.buffered == 0


def test_reader_one_byte_at_a_time() -> None:
    reader = pdu_receiver(max_pdata=16384)
    out: list[PDU] = []
    ends = set()
    for i in range(len(STREAM)):
        got = reader.receive(STREAM[i : i + 1])
        if got:
            ends.add(i + 1)
        out += got
    assert out == STREAM_PDUS
    assert reader.buffered == 0
    # each PDU comes out as soon as its last byte arrives
    assert len(ASSOCIATE_RQ) in ends
    assert len(ASSOCIATE_RQ) + len(ASSOCIATE_AC) in ends


@given(st.sets(st.integers(1, len(STREAM) - 1), max_size=40))
@settings(max_examples=100, deadline=None)
def test_reader_random_chunks(cuts: set[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    reader = pdu_receiver()
    out: list[PDU] = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        out += reader.receive(memoryview(STREAM)[a:b])
    assert out == STREAM_PDUS
    assert reader.buffered == 0


def test_reader_refuses_oversized_p_data_from_its_header() -> None:
    reader = pdu_receiver(max_pdata=16384)
    assert reader.receive(h("04 00 00004000")) == []  # exactly the maximum: wait for the body
    assert reader.buffered == 6

    reader = pdu_receiver(max_pdata=16384)
    header = h("04 00 00004001")  # one byte over; no body sent at all
    for byte in header[:5]:
        assert reader.receive(bytes([byte])) == []
    with pytest.raises(RemoteProtocolError) as info:
        reader.receive(header[5:])
    assert info.value.reason == 6


def test_reader_max_pdata_zero_is_unlimited() -> None:
    assert pdu_receiver(max_pdata=0).receive(h("04 00 FFFFFFFF 00000002")) == []


def test_reader_max_pdata_does_not_apply_to_association_pdus() -> None:
    assert pdu_receiver(max_pdata=16).receive(ASSOCIATE_RQ) == [ASSOCIATE_RQ_PDU]


def test_reader_refuses_oversized_association_pdu_from_its_header() -> None:
    max_other = len(ASSOCIATE_RQ) - 6
    assert pdu_receiver(max_other=max_other).receive(ASSOCIATE_RQ) == [ASSOCIATE_RQ_PDU]
    reader = pdu_receiver(max_other=len(ASSOCIATE_RQ) - 7)
    with pytest.raises(RemoteProtocolError) as info:
        reader.receive(ASSOCIATE_RQ[:6])
    assert info.value.reason == 6
    for header in ("01 00 00040001", "02 00 FFFFFFFF", "03 00 00040001", "07 00 00040001"):
        with pytest.raises(RemoteProtocolError) as info:
            pdu_receiver().receive(h(header))  # default cap: 256 KiB
        assert info.value.reason == 6


@pytest.mark.parametrize("kind", [0x00, 0x08, 0x09, 0x10, 0x7F, 0xFF])
def test_reader_unknown_pdu_type_is_unrecognized_pdu(kind: int) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        pdu_receiver().receive(bytes([kind]) + h("00 00000004"))  # header only
    assert info.value.reason == 1
    with pytest.raises(RemoteProtocolError) as info:
        decode_pdu(kind, bytes(4))
    assert info.value.reason == 1


def test_reader_returns_pdus_before_an_incomplete_one() -> None:
    reader = pdu_receiver()
    assert reader.receive(RELEASE_RQ + ABORT_USER[:7]) == [ReleaseRQ()]
    assert reader.buffered == 7
    assert reader.receive(ABORT_USER[7:]) == [Abort()]
    assert PDUReader().parse(memoryview(RELEASE_RQ + ABORT_USER[:7])) == ([ReleaseRQ()], 10)


def test_reader_keeps_failing_cleanly_after_an_error() -> None:
    reader = PDUReader()
    bad = pdu_bytes(1, FIXED + APP_ITEM + h("20 00 0010 01"))
    buf = bytearray(P_DATA_TF + bad + RELEASE_RP)
    with pytest.raises(RemoteProtocolError) as first:
        reader.parse(memoryview(buf))
    assert first.value.pdus == [P_DATA_TF_PDU]  # the good PDU before it still counts
    # ``first`` keeps views of ``buf`` alive: the reader keeps nothing, so
    # presenting the same bytes reports the offending PDU again ...
    with pytest.raises(RemoteProtocolError) as again:
        reader.parse(memoryview(bytes(buf)))
    assert first.value.reason == again.value.reason == 6
    # ... and what follows it decodes as ever.
    assert reader.parse(memoryview(buf)[len(P_DATA_TF) + len(bad) :]) == ([ReleaseRP()], 10)


# -- interop with pynetdicom (test-only reference implementation) -----------


@pytest.fixture(scope="module")
def pn() -> Any:
    """pynetdicom's PDU and item classes, as one namespace."""
    pdu_mod = pytest.importorskip("pynetdicom.pdu")
    items_mod = pytest.importorskip("pynetdicom.pdu_items")

    class NS:
        P = pdu_mod
        I = items_mod  # noqa: E741

    return NS


def pn_user_info(ui: UserInformation, I: Any) -> Any:  # noqa: E741, N803
    item = I.UserInformationItem()
    add = item.user_data.append
    if ui.max_length is not None:
        sub = I.MaximumLengthSubItem()
        sub.maximum_length_received = ui.max_length
        add(sub)
    if ui.implementation_class_uid is not None:
        sub = I.ImplementationClassUIDSubItem()
        sub.implementation_class_uid = ui.implementation_class_uid
        add(sub)
    if ui.async_ops is not None:
        sub = I.AsynchronousOperationsWindowSubItem()
        sub.maximum_number_operations_invoked = ui.async_ops[0]
        sub.maximum_number_operations_performed = ui.async_ops[1]
        add(sub)
    for role in ui.roles:
        sub = I.SCP_SCU_RoleSelectionSubItem()
        sub.sop_class_uid = role.sop_class_uid
        sub.scu_role = int(role.scu_role)
        sub.scp_role = int(role.scp_role)
        add(sub)
    if ui.implementation_version_name is not None:
        sub = I.ImplementationVersionNameSubItem()
        sub.implementation_version_name = ui.implementation_version_name
        add(sub)
    for ext in ui.extended:
        sub = I.SOPClassExtendedNegotiationSubItem()
        sub.sop_class_uid = ext.sop_class_uid
        sub.service_class_application_information = ext.info
        add(sub)
    for com in ui.common_extended:
        sub = I.SOPClassCommonExtendedNegotiationSubItem()
        sub.sop_class_uid = com.sop_class_uid
        sub.service_class_uid = com.service_class_uid
        sub.related_general_sop_class_identification = list(com.related_general_sop_classes)
        add(sub)
    if ui.identity_rq is not None:
        sub = I.UserIdentitySubItemRQ()
        sub.user_identity_type = ui.identity_rq.identity_type
        sub.positive_response_requested = int(ui.identity_rq.positive_response_requested)
        sub.primary_field = ui.identity_rq.primary
        sub.secondary_field = ui.identity_rq.secondary
        add(sub)
    if ui.identity_ac is not None:
        sub = I.UserIdentitySubItemAC()
        sub.server_response = ui.identity_ac.server_response
        add(sub)
    return item


def to_pn(pdu: PDU, pn: Any) -> Any:
    """The pynetdicom PDU equivalent to ``pdu``."""
    P, I = pn.P, pn.I  # noqa: E741, N806
    if isinstance(pdu, AssociateRQ | AssociateAC):
        app = I.ApplicationContextItem()
        app.application_context_name = pdu.application_context
        items = [app]
        if isinstance(pdu, AssociateRQ):
            out = P.A_ASSOCIATE_RQ()
            out.called_ae_title = pdu.called_ae
            out.calling_ae_title = pdu.calling_ae
            for pc in pdu.presentation_contexts:
                item = I.PresentationContextItemRQ()
                item.presentation_context_id = pc.id
                sub = I.AbstractSyntaxSubItem()
                sub.abstract_syntax_name = pc.abstract_syntax
                item.abstract_transfer_syntax_sub_items.append(sub)
                for ts in pc.transfer_syntaxes:
                    sub = I.TransferSyntaxSubItem()
                    sub.transfer_syntax_name = ts
                    item.abstract_transfer_syntax_sub_items.append(sub)
                items.append(item)
        else:
            out = P.A_ASSOCIATE_AC()
            out.reserved_aet = pdu.called_ae
            out.reserved_aec = pdu.calling_ae
            for pc in pdu.presentation_contexts:
                item = I.PresentationContextItemAC()
                item.presentation_context_id = pc.id
                item.result_reason = pc.result
                if pc.transfer_syntax:  # pynetdicom cannot encode an empty sub-item
                    sub = I.TransferSyntaxSubItem()
                    sub.transfer_syntax_name = pc.transfer_syntax
                    item.transfer_syntax_sub_item.append(sub)
                items.append(item)
        out.protocol_version = pdu.protocol_version
        out.variable_items = [*items, pn_user_info(pdu.user_info, I)]
        return out
    if isinstance(pdu, PDataTF):
        out = P.P_DATA_TF()
        for pdv in pdu.pdvs:
            item = I.PresentationDataValueItem()
            item.presentation_context_id = pdv.context_id
            mch = int(pdv.is_command) | int(pdv.is_last) << 1
            item.presentation_data_value = bytes([mch]) + bytes(pdv.data)
            out.presentation_data_value_items.append(item)
        return out
    if isinstance(pdu, AssociateRJ):
        out = P.A_ASSOCIATE_RJ()
        out.result, out.source, out.reason_diagnostic = pdu.result, pdu.source, pdu.reason
        return out
    if isinstance(pdu, Abort):
        out = P.A_ABORT_RQ()
        out.source, out.reason_diagnostic = pdu.source, pdu.reason
        return out
    return P.A_RELEASE_RQ() if isinstance(pdu, ReleaseRQ) else P.A_RELEASE_RP()


def from_pn_user_info(item: Any, I: Any) -> UserInformation:  # noqa: E741, N803
    ui = UserInformation()
    for sub in item.user_data:
        if isinstance(sub, I.MaximumLengthSubItem):
            ui.max_length = sub.maximum_length_received
        elif isinstance(sub, I.ImplementationClassUIDSubItem):
            ui.implementation_class_uid = str(sub.implementation_class_uid)
        elif isinstance(sub, I.ImplementationVersionNameSubItem):
            name = sub.implementation_version_name
            ui.implementation_version_name = name.decode() if isinstance(name, bytes) else name
        elif isinstance(sub, I.AsynchronousOperationsWindowSubItem):
            ui.async_ops = (
                sub.maximum_number_operations_invoked,
                sub.maximum_number_operations_performed,
            )
        elif isinstance(sub, I.SCP_SCU_RoleSelectionSubItem):
            ui.roles.append(
                RoleSelection(str(sub.sop_class_uid), bool(sub.scu_role), bool(sub.scp_role))
            )
        elif isinstance(sub, I.SOPClassExtendedNegotiationSubItem):
            info = sub.service_class_application_information
            ui.extended.append(SOPClassExtended(str(sub.sop_class_uid), bytes(info)))
        elif isinstance(sub, I.SOPClassCommonExtendedNegotiationSubItem):
            related = tuple(str(u) for u in sub.related_general_sop_class_identification)
            ui.common_extended.append(
                SOPClassCommonExtended(str(sub.sop_class_uid), str(sub.service_class_uid), related)
            )
        elif isinstance(sub, I.UserIdentitySubItemRQ):
            ui.identity_rq = UserIdentityRQ(
                sub.user_identity_type,
                bool(sub.positive_response_requested),
                bytes(sub.primary_field),
                bytes(sub.secondary_field or b""),
            )
        elif isinstance(sub, I.UserIdentitySubItemAC):
            ui.identity_ac = UserIdentityAC(bytes(sub.server_response or b""))
        else:  # pragma: no cover - the tests only send known sub-items
            raise AssertionError(f"unexpected pynetdicom sub-item {sub!r}")
    return ui


def from_pn(raw: bytes, pn: Any) -> PDU:
    """Decode ``raw`` with pynetdicom and convert the result to our dataclasses."""
    P, I = pn.P, pn.I  # noqa: E741, N806
    kind = raw[0]
    if kind in (1, 2):
        pdu = P.A_ASSOCIATE_RQ() if kind == 1 else P.A_ASSOCIATE_AC()
        pdu.decode(raw)
        ui = from_pn_user_info(pdu.user_information, I)
        common = {
            "called_ae": pdu.called_ae_title,
            "calling_ae": pdu.calling_ae_title,
            "user_info": ui,
            "application_context": str(pdu.application_context_name),
            "protocol_version": pdu.protocol_version,
        }
        if kind == 1:
            pcs_rq = [
                PresentationContextRQ(
                    pc.context_id, str(pc.abstract_syntax), [str(t) for t in pc.transfer_syntax]
                )
                for pc in pdu.presentation_context
            ]
            return AssociateRQ(presentation_contexts=pcs_rq, **common)
        pcs_ac = [
            PresentationContextAC(
                pc.context_id,
                pc.result_reason,
                str(pc.transfer_syntax) if pc.result_reason == 0 else "",
            )
            for pc in pdu.presentation_context
        ]
        return AssociateAC(presentation_contexts=pcs_ac, **common)
    if kind == 4:
        pdu = P.P_DATA_TF()
        pdu.decode(raw)
        pdvs = []
        for item in pdu.presentation_data_value_items:
            value = item.presentation_data_value
            pdvs.append(
                PDV(item.presentation_context_id, bool(value[0] & 1), bool(value[0] & 2), value[1:])
            )
        return PDataTF(pdvs)
    if kind == 3:
        pdu = P.A_ASSOCIATE_RJ()
        pdu.decode(raw)
        return AssociateRJ(pdu.result, pdu.source, pdu.reason_diagnostic)
    if kind == 7:
        pdu = P.A_ABORT_RQ()
        pdu.decode(raw)
        return Abort(pdu.source, pdu.reason_diagnostic)
    pdu = P.A_RELEASE_RQ() if kind == 5 else P.A_RELEASE_RP()
    pdu.decode(raw)
    return ReleaseRQ() if kind == 5 else ReleaseRP()


ALL_ACCEPTED_AC = AssociateAC(
    "STORESCP",
    "STORESCU",
    [PresentationContextAC(1, 0, s(IMPLICIT_LE)), PresentationContextAC(3, 0, s(EXPLICIT_LE))],
    ASSOCIATE_AC_PDU.user_info,
)
INTEROP = [
    pytest.param(ASSOCIATE_RQ_PDU, id="associate-rq"),
    pytest.param(ALL_ACCEPTED_AC, id="associate-ac"),
    pytest.param(P_DATA_TF_PDU, id="p-data-tf"),
    pytest.param(ReleaseRQ(), id="release-rq"),
    pytest.param(ReleaseRP(), id="release-rp"),
    pytest.param(Abort(0, 0), id="abort-user"),
    pytest.param(Abort(2, 6), id="abort-provider"),
    *(pytest.param(AssociateRJ(*args), id=f"rj-{raw[-8:]}") for raw, *args in REJECTS),
]


@pytest.mark.parametrize("pdu", INTEROP)
def test_pynetdicom_encodes_the_same_bytes(pdu: PDU, pn: Any) -> None:
    theirs = to_pn(pdu, pn).encode()
    assert theirs == encode(pdu)
    assert decode(theirs) == pdu


@pytest.mark.parametrize("pdu", [*INTEROP, pytest.param(ASSOCIATE_AC_PDU, id="ac-rejects")])
def test_pynetdicom_decodes_our_bytes(pdu: PDU, pn: Any) -> None:
    assert from_pn(encode(pdu), pn) == pdu


def test_our_decoder_reads_pynetdicom_rejected_contexts(pn: Any) -> None:
    # pynetdicom leaves the transfer syntax sub-item out of a rejected context
    theirs = to_pn(ASSOCIATE_AC_PDU, pn).encode()
    assert decode(theirs) == ASSOCIATE_AC_PDU


# -- hypothesis: strategies for every dataclass ------------------------------

UIDS = st.lists(st.integers(0, 999_999), min_size=2, max_size=8).map(
    lambda parts: ".".join(map(str, parts))
)  # at most 8 * 6 + 7 = 55 characters
AE_TITLES = (
    st.text(string.ascii_uppercase + string.digits + "_- ", min_size=1, max_size=16)
    .map(str.strip)
    .filter(bool)
)
NAMES = st.text(string.ascii_letters + string.digits + "_.", min_size=1, max_size=16)
CONTEXT_IDS = st.integers(0, 127).map(lambda n: 2 * n + 1)
BYTE = st.integers(0, 255)
SMALL = st.binary(max_size=40)


@st.composite
def ac_contexts(draw: st.DrawFn) -> PresentationContextAC:
    result = draw(st.integers(0, 4))
    return PresentationContextAC(draw(CONTEXT_IDS), result, draw(UIDS) if result == 0 else "")


def _sorted_unknown(items: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    return sorted(items, key=lambda kv: kv[0])


def user_infos(pynetdicom_compatible: bool = False) -> st.SearchStrategy[UserInformation]:
    """Any user information item; or one pynetdicom 3.0 can decode: it raises
    KeyError on unknown sub-items and misreads an empty user identity primary field."""
    if pynetdicom_compatible:
        identity = st.builds(
            UserIdentityRQ, st.integers(1, 5), st.booleans(), st.binary(min_size=1, max_size=40)
        )
        unknown = st.just([])
    else:
        identity = st.builds(UserIdentityRQ, BYTE, st.booleans(), SMALL, SMALL)
        unknown = st.lists(st.tuples(st.integers(0x5A, 0xFF), SMALL), max_size=3).map(
            _sorted_unknown
        )
    return st.builds(
        UserInformation,
        max_length=st.none() | st.integers(0, 2**32 - 1),
        implementation_class_uid=st.none() | UIDS,
        implementation_version_name=st.none() | NAMES,
        async_ops=st.none() | st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
        roles=st.lists(st.builds(RoleSelection, UIDS, st.booleans(), st.booleans()), max_size=2),
        extended=st.lists(st.builds(SOPClassExtended, UIDS, SMALL), max_size=2),
        common_extended=st.lists(
            st.builds(SOPClassCommonExtended, UIDS, UIDS, st.lists(UIDS, max_size=2).map(tuple)),
            max_size=2,
        ),
        identity_rq=st.none() | identity,
        identity_ac=st.none() | st.builds(UserIdentityAC, SMALL),
        unknown=unknown,
    )


def associate_rqs(pynetdicom_compatible: bool = False) -> st.SearchStrategy[AssociateRQ]:
    return st.builds(
        AssociateRQ,
        AE_TITLES,
        AE_TITLES,
        st.lists(
            st.builds(
                PresentationContextRQ, CONTEXT_IDS, UIDS, st.lists(UIDS, min_size=1, max_size=3)
            ),
            min_size=1,
            max_size=4,
        ),
        user_infos(pynetdicom_compatible),
        UIDS,
        st.integers(0, 0xFFFF),
    )


def associate_acs(pynetdicom_compatible: bool = False) -> st.SearchStrategy[AssociateAC]:
    return st.builds(
        AssociateAC,
        AE_TITLES,
        AE_TITLES,
        st.lists(ac_contexts(), max_size=4),
        user_infos(pynetdicom_compatible),
        UIDS,
        st.integers(0, 0xFFFF),
    )


ASSOCIATE_RQS = associate_rqs()
ASSOCIATE_ACS = associate_acs()
PDVS = st.builds(PDV, CONTEXT_IDS, st.booleans(), st.booleans(), st.binary(max_size=64))
ANY_PDU = st.one_of(
    ASSOCIATE_RQS,
    ASSOCIATE_ACS,
    st.builds(AssociateRJ, BYTE, BYTE, BYTE),
    st.builds(PDataTF, st.lists(PDVS, min_size=1, max_size=4)),
    st.just(ReleaseRQ()),
    st.just(ReleaseRP()),
    st.builds(Abort, BYTE, BYTE),
)


# -- an independent reference encoder, written from the standard's tables ---


def w_item(kind: int, value: bytes) -> bytes:
    """Item/sub-item: type, reserved 00H, 2-byte length, value (PS3.8 9.3.2)."""
    return bytes((kind, 0)) + len(value).to_bytes(2, "big") + value


def w_u16(value: bytes) -> bytes:
    """A field preceded by its 2-byte length (role, extended, identity fields)."""
    return len(value).to_bytes(2, "big") + value


def w_user_info(ui: UserInformation) -> bytes:
    subs = b""
    if ui.max_length is not None:
        subs += w_item(0x51, ui.max_length.to_bytes(4, "big"))
    if ui.implementation_class_uid is not None:
        subs += w_item(0x52, ui.implementation_class_uid.encode())
    if ui.async_ops is not None:
        invoked, performed = ui.async_ops
        subs += w_item(0x53, invoked.to_bytes(2, "big") + performed.to_bytes(2, "big"))
    for r in ui.roles:
        subs += w_item(0x54, w_u16(r.sop_class_uid.encode()) + bytes((r.scu_role, r.scp_role)))
    if ui.implementation_version_name is not None:
        subs += w_item(0x55, ui.implementation_version_name.encode())
    for e in ui.extended:
        subs += w_item(0x56, w_u16(e.sop_class_uid.encode()) + e.info)
    for c in ui.common_extended:
        related = b"".join(w_u16(u.encode()) for u in c.related_general_sop_classes)
        value = w_u16(c.sop_class_uid.encode()) + w_u16(c.service_class_uid.encode())
        subs += w_item(0x57, value + w_u16(related))
    if (i := ui.identity_rq) is not None:
        value = bytes((i.identity_type, i.positive_response_requested))
        subs += w_item(0x58, value + w_u16(i.primary) + w_u16(i.secondary))
    if ui.identity_ac is not None:
        subs += w_item(0x59, w_u16(ui.identity_ac.server_response))
    for kind, raw in ui.unknown:  # the strategy only makes types above 59H, sorted
        subs += w_item(kind, raw)
    return w_item(0x50, subs)


def ref_encode(pdu: PDU) -> bytes:
    def wrap(kind: int, body: bytes) -> bytes:
        return bytes((kind, 0)) + len(body).to_bytes(4, "big") + body

    if isinstance(pdu, AssociateRQ | AssociateAC):
        body = pdu.protocol_version.to_bytes(2, "big") + bytes(2)
        body += pdu.called_ae.encode().ljust(16) + pdu.calling_ae.encode().ljust(16) + bytes(32)
        body += w_item(0x10, pdu.application_context.encode())
        for pc in pdu.presentation_contexts:
            if isinstance(pc, PresentationContextRQ):
                subs = w_item(0x30, pc.abstract_syntax.encode())
                subs += b"".join(w_item(0x40, ts.encode()) for ts in pc.transfer_syntaxes)
                body += w_item(0x20, bytes((pc.id, 0, 0, 0)) + subs)
            else:
                ts = w_item(0x40, pc.transfer_syntax.encode())
                body += w_item(0x21, bytes((pc.id, 0, pc.result, 0)) + ts)
        body += w_user_info(pdu.user_info)
        return wrap(1 if isinstance(pdu, AssociateRQ) else 2, body)
    if isinstance(pdu, AssociateRJ):
        return wrap(3, bytes((0, pdu.result, pdu.source, pdu.reason)))
    if isinstance(pdu, PDataTF):
        pdvs = b""
        for p in pdu.pdvs:
            mch = p.is_command + 2 * p.is_last
            pdvs += (len(p.data) + 2).to_bytes(4, "big") + bytes((p.context_id, mch)) + p.data
        return wrap(4, pdvs)
    if isinstance(pdu, ReleaseRQ | ReleaseRP):
        return wrap(5 if isinstance(pdu, ReleaseRQ) else 6, bytes(4))
    assert isinstance(pdu, Abort)
    return wrap(7, bytes((0, 0, pdu.source, pdu.reason)))


def test_reference_encoder_agrees_with_the_hand_written_vectors() -> None:
    for param in VECTORS:
        raw, pdu = param.values
        assert ref_encode(pdu) == raw


@given(ANY_PDU)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_round_trip(pdu: PDU) -> None:
    raw = ref_encode(pdu)
    assert encode(pdu) == raw  # encode matches the standard's layout
    decoded = decode_pdu(raw[0], raw[6:])
    assert decoded == pdu  # decode(encode(x)) == x
    assert encode(decoded) == raw  # encode(decode(b)) == b
    assert read_pdus(raw) == [pdu]


@given(st.lists(ANY_PDU, min_size=1, max_size=4), st.data())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_reader_random_splits_of_random_pdus(pdus: list[PDU], data: st.DataObject) -> None:
    stream = b"".join(map(ref_encode, pdus))
    cuts = data.draw(st.sets(st.integers(0, len(stream)), max_size=12))
    reader = pdu_receiver()
    assert reader.receive_chunks(stream, cuts) == pdus
    assert reader.buffered == 0


@given(
    st.one_of(
        associate_rqs(pynetdicom_compatible=True),
        associate_acs(pynetdicom_compatible=True),
        st.builds(PDataTF, st.lists(PDVS, min_size=1, max_size=4)),
    )
)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_pynetdicom_decodes_random_pdus(pdu: PDU) -> None:
    pn = pytest.importorskip("pynetdicom.pdu"), pytest.importorskip("pynetdicom.pdu_items")

    class NS:
        P, I = pn  # noqa: E741

    assert from_pn(encode(pdu), NS) == pdu


# -- hypothesis: fuzzing PDUReader.parse and Connection.receive_view ---------

ABORT_REASONS = {0, 1, 2, 4, 5, 6}


def _awaiting_rq(max_pdata: int) -> Connection:
    """An acceptor in Sta2."""
    conn = Connection(Role.ACCEPTOR, max_pdata=max_pdata)
    conn.transport_connected()
    return conn


def _established(max_pdata: int) -> Connection:
    """An acceptor in Sta6."""
    conn = _awaiting_rq(max_pdata)
    Receiver(conn.receive_view).receive(ASSOCIATE_RQ)
    conn.accept(ASSOCIATE_AC_PDU)
    sent_bytes(conn)
    return conn


def _outcome(conn: Connection, stream: bytes, cuts: set[int]) -> tuple[list[ULEvent], bytes]:
    """``stream`` into ``conn`` cut at ``cuts``, as aio feeds it: the events and the reply."""
    events = Receiver(conn.receive_view).receive_chunks(stream, cuts)
    reply = sent_bytes(conn)
    for pdu in read_pdus(reply):  # an A-ABORT of ours gives a reason of PS3.8 Table 9-26
        assert not isinstance(pdu, Abort) or pdu.reason in ABORT_REASONS
    return events, reply


def feed_expecting_only_protocol_errors(stream: bytes, cuts: set[int], max_pdata: int) -> None:
    """Feed ``stream`` in pieces: the reader raises RemoteProtocolError only, and
    connections in Sta2 and Sta6 raise nothing and answer the same however it is cut."""
    reader = pdu_receiver(max_pdata=max_pdata)
    try:
        reader.receive_chunks(stream, cuts)
    except RemoteProtocolError as exc:
        assert exc.reason in ABORT_REASONS
    for setup in (_awaiting_rq, _established):
        cut, whole = setup(max_pdata), setup(max_pdata)
        assert _outcome(cut, stream, cuts) == _outcome(whole, stream, set())
        assert cut.state is whole.state


item_soup = st.recursive(
    st.binary(max_size=12),
    lambda inner: st.builds(
        lambda kind, body, fudge: (
            bytes((kind, 0)) + max(0, min(0xFFFF, len(body) + fudge)).to_bytes(2, "big") + body
        ),
        st.sampled_from([0x10, 0x20, 0x21, 0x30, 0x40, 0x50, *range(0x51, 0x5B), 0xFF]),
        st.lists(inner, max_size=4).map(b"".join),
        st.sampled_from([0, 0, 0, 0, -1, 1, 2]),
    ),
    max_leaves=12,
)
RANDOM_ASSOCIATES = st.builds(
    lambda kind, fixed, items: (
        bytes((kind, 0)) + (len(fixed) + len(items)).to_bytes(4, "big") + fixed + items
    ),
    st.sampled_from([1, 2]),
    st.just(FIXED) | st.binary(min_size=68, max_size=68) | st.binary(max_size=70),
    st.lists(item_soup, max_size=6).map(b"".join),
)
RANDOM_PDUS = st.builds(
    lambda kind, body: bytes((kind, 0)) + len(body).to_bytes(4, "big") + body,
    st.integers(0, 9),
    st.binary(max_size=120),
)


@given(
    st.one_of(st.binary(max_size=400), RANDOM_PDUS, RANDOM_ASSOCIATES),
    st.sets(st.integers(0, 400), max_size=6),
    st.sampled_from([0, 0, 8, 64, 16384]),
)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_arbitrary_bytes(stream: bytes, cuts: set[int], max_pdata: int) -> None:
    feed_expecting_only_protocol_errors(stream, cuts, max_pdata)


MUTATIONS = ("flip", "byte", "u16", "insert", "delete", "truncate", "relength")


@st.composite
def mutated_streams(draw: st.DrawFn) -> bytes:
    data = bytearray(b"".join(map(ref_encode, draw(st.lists(ANY_PDU, min_size=1, max_size=2)))))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        op = draw(st.sampled_from(MUTATIONS))
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            data[i] = draw(BYTE)
        elif op == "u16":  # hits item lengths, UID lengths and the like
            data[i : i + 2] = draw(st.integers(0, 0xFFFF)).to_bytes(2, "big")
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[i:]
        elif len(data) >= 6:  # relength: make the first PDU cover everything that follows
            data[2:6] = (len(data) - 6).to_bytes(4, "big")
    return bytes(data)


@given(mutated_streams(), st.sets(st.integers(0, 600), max_size=6), st.sampled_from([0, 64]))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_mutated_pdus(stream: bytes, cuts: set[int], max_pdata: int) -> None:
    feed_expecting_only_protocol_errors(stream, cuts, max_pdata)


def test_bytes_of_another_protocol_are_named() -> None:
    """review38scu #15: an HTTP server on the port was 'unrecognized PDU type 0x48'."""
    import pytest

    from dicomstore.errors import RemoteProtocolError
    from dicomstore.ul.pdu import PDUReader

    for data, words in (
        (b"HTTP/1.1 400 Bad Request\\r\\n", "it begins like 'HTTP'"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01", "a TLS handshake: the peer speaks TLS"),
    ):
        with pytest.raises(RemoteProtocolError, match=words):
            PDUReader().parse(memoryview(data))


# -- P-DATA-TF of many tiny PDVs: bounded work per step (review53 #2) ----------


def _empty_pdvs(n: int, context_id: int = 1) -> bytes:
    """A P-DATA-TF of ``n`` empty data PDVs (item length 2: PS3.8 9.3.5.1, E.1 allow it)."""
    body = bytes([0, 0, 0, 2, context_id, 0]) * n
    return bytes([0x04, 0]) + len(body).to_bytes(4, "big") + body


def test_a_pdata_of_many_pdvs_is_decoded_as_it_is_read() -> None:
    from dicomstore.ul.pdu import PDVS_AT_ONCE, ReceivedPDVs

    n = 10 * PDVS_AT_ONCE + 3
    (pdu,), used = PDUReader().parse(memoryview(_empty_pdvs(n)))
    assert used == 6 + 6 * n and isinstance(pdu, PDataTF)
    pdvs = pdu.pdvs
    assert isinstance(pdvs, ReceivedPDVs) and pdvs.decoded == PDVS_AT_ONCE  # the rest: later
    assert len(pdvs) == n and sum(1 for _ in pdvs) == n  # (and again)
    assert all(p.context_id == 1 and not p.is_command and not p.data for p in pdvs)
    assert pdvs[n - 1] == PDV(1, False, False, b"")


def test_a_bad_pdv_after_the_first_batch_raises_when_its_batch_is_reached() -> None:
    from dicomstore.ul.pdu import PDVS_AT_ONCE

    data = _empty_pdvs(2 * PDVS_AT_ONCE)[:-2] + bytes([2, 0])  # the last: context 2
    (pdu,), _ = PDUReader().parse(memoryview(data))
    seen = 0
    with pytest.raises(RemoteProtocolError, match="not odd") as raised:
        for _ in pdu.pdvs:
            seen += 1
    assert seen == PDVS_AT_ONCE and raised.value.reason == 6  # (its batch is not delivered)


def test_a_parse_stops_after_about_pdvs_at_once() -> None:
    from dicomstore.ul.pdu import PDVS_AT_ONCE

    stream = _empty_pdvs(PDVS_AT_ONCE // 2) * 5
    pdus, used = PDUReader().parse(memoryview(stream))
    assert len(pdus) == 2 and used == 2 * len(stream) // 5  # the rest, next call
    assert len(read_pdus(stream)) == 5
