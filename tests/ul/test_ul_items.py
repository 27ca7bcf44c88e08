"""Items and sub-items of the A-ASSOCIATE PDUs, checked against the standard.

Every expected byte string below is written by hand from the field tables of
PS3.8 9.3.2-9.3.3 (items), PS3.8 D.1 (maximum length) and PS3.7 D.3.3
(the other user information sub-items): item-type, reserved byte, 2-byte
big-endian item-length, then the fields in table order.  None of them comes
from our encoder.  Text fields (UIDs, names) are written as ASCII literals;
their lengths are listed next to them and checked by the first test.
"""

from __future__ import annotations

import pytest
from ul_vectors import (
    APP_CTX,
    COMPREHENSIVE_SR,
    CT_STORAGE,
    ENHANCED_SR,
    EXPLICIT_LE,
    IMPL_UID,
    IMPLICIT_LE,
    LENGTHS,
    PATIENT_ROOT_FIND,
    PROC_LOG,
    STORAGE_SERVICE,
    VERIFICATION,
    VERSION,
    h,
    s,
)

from dicomstore.errors import RemoteProtocolError
from dicomstore.ul.items import (
    PresentationContextAC,
    PresentationContextRQ,
    RoleSelection,
    SOPClassCommonExtended,
    SOPClassExtended,
    UserIdentityAC,
    UserIdentityRQ,
    UserInformation,
    decode_user_information,
    decode_variable_items,
    encode_ac_contexts,
    encode_application_context,
    encode_rq_contexts,
    encode_user_information,
)


def test_text_field_lengths_match_the_comments() -> None:
    for text, length in LENGTHS.items():
        assert len(text) == length, text


def decode_items(raw: bytes, is_rq: bool = True):
    return decode_variable_items(memoryview(raw), is_rq)


def decode_ui_value(value: bytes) -> UserInformation:
    """Decode the value field of a user information item (after its header)."""
    return decode_user_information(memoryview(value))


# -- application context item (PS3.8 9.3.2.1, Table 9-12) --------------------

APPLICATION_CONTEXT_ITEM = (
    h("10")  # item-type 10H
    + h("00")  # reserved
    + h("0015")  # item-length 21
    + APP_CTX  # application-context-name
)


def test_application_context_item() -> None:
    assert encode_application_context(s(APP_CTX)) == APPLICATION_CONTEXT_ITEM
    assert decode_items(APPLICATION_CONTEXT_ITEM) == (s(APP_CTX), [], None)


# -- presentation context items (PS3.8 9.3.2.2 / 9.3.3.2) ------------------

PC_RQ_ITEM = (
    h("20 00 0045")  # item-type 20H, reserved, item-length 69
    + h("01")  # presentation-context-ID 1
    + h("00 00 00")  # reserved, reserved, reserved
    + h("30 00 0011")  # abstract syntax sub-item: type 30H, reserved, length 17
    + VERIFICATION
    + h("40 00 0011")  # transfer syntax sub-item: type 40H, reserved, length 17
    + IMPLICIT_LE
    + h("40 00 0013")  # transfer syntax sub-item, length 19
    + EXPLICIT_LE
)
PC_RQ = PresentationContextRQ(1, s(VERIFICATION), [s(IMPLICIT_LE), s(EXPLICIT_LE)])


def test_presentation_context_rq_item() -> None:
    assert encode_rq_contexts([PC_RQ]) == PC_RQ_ITEM
    assert decode_items(PC_RQ_ITEM) == (None, [PC_RQ], None)


def test_several_presentation_context_rq_items() -> None:
    second = (
        h("20 00 0036")  # item-type 20H, reserved, item-length 54
        + h("FF 00 00 00")  # presentation-context-ID 255, three reserved bytes
        + h("30 00 0019")  # abstract syntax sub-item, length 25
        + CT_STORAGE
        + h("40 00 0011")  # transfer syntax sub-item, length 17
        + IMPLICIT_LE
    )
    pcs = [PC_RQ, PresentationContextRQ(255, s(CT_STORAGE), [s(IMPLICIT_LE)])]
    assert encode_rq_contexts(pcs) == PC_RQ_ITEM + second
    assert decode_items(PC_RQ_ITEM + second) == (None, pcs, None)


PC_AC_ACCEPTED = (
    h("21 00 001B")  # item-type 21H, reserved, item-length 27
    + h("01")  # presentation-context-ID 1
    + h("00")  # reserved
    + h("00")  # result/reason 0: acceptance
    + h("00")  # reserved
    + h("40 00 0013")  # transfer syntax sub-item, length 19
    + EXPLICIT_LE
)


def test_presentation_context_ac_accepted() -> None:
    pc = PresentationContextAC(1, 0, s(EXPLICIT_LE))
    assert encode_ac_contexts([pc]) == PC_AC_ACCEPTED
    assert decode_items(PC_AC_ACCEPTED, is_rq=False) == (None, [pc], None)


@pytest.mark.parametrize(
    ("raw", "result"),
    [
        # item 21H, length 8, ID 3, result 1 (user-rejection), empty transfer syntax sub-item
        (h("21 00 0008  03 00 01 00  40 00 0000"), 1),
        # result 2: no-reason (provider rejection)
        (h("21 00 0008  03 00 02 00  40 00 0000"), 2),
        # result 3: abstract-syntax-not-supported (provider rejection)
        (h("21 00 0008  03 00 03 00  40 00 0000"), 3),
        # result 4: transfer-syntaxes-not-supported (provider rejection)
        (h("21 00 0008  03 00 04 00  40 00 0000"), 4),
    ],
)
def test_presentation_context_ac_rejected(raw: bytes, result: int) -> None:
    pc = PresentationContextAC(3, result)
    assert encode_ac_contexts([pc]) == raw
    assert decode_items(raw, is_rq=False) == (None, [pc], None)


def test_rejected_context_transfer_syntax_is_not_tested() -> None:
    # PS3.8 Table 9-18: when not accepted the sub-item "shall not be tested".
    garbage = h("21 00 000A  05 00 04 00  40 00 0002 FF 80")
    assert decode_items(garbage, is_rq=False)[1] == [PresentationContextAC(5, 4, "")]
    missing = h("21 00 0004  07 00 03 00")  # no transfer syntax sub-item at all
    assert decode_items(missing, is_rq=False)[1] == [PresentationContextAC(7, 3, "")]


# -- user information sub-items (PS3.8 D.1, PS3.7 D.3.3) ---------------------

MAX_LENGTH = (
    h("51 00 0004")  # item-type 51H, reserved, item-length 4
    + h("00004000")  # maximum-length-received 16384
)
IMPLEMENTATION_CLASS = (
    h("52 00 001B")  # item-type 52H, reserved, item-length 27
    + IMPL_UID  # implementation-class-uid
)
ASYNC_OPS = (
    h("53 00 0004")  # item-type 53H, reserved, item-length 4
    + h("0005")  # maximum-number-operations-invoked 5
    + h("0000")  # maximum-number-operations-performed 0 (unlimited)
)
ROLE = (
    h("54 00 001D")  # item-type 54H, reserved, item-length 29
    + h("0019")  # UID-length 25
    + CT_STORAGE  # SOP-class-uid
    + h("00")  # SCU-role 0: non-support of the SCU role
    + h("01")  # SCP-role 1: support of the SCP role
)
IMPLEMENTATION_VERSION = (
    h("55 00 000E")  # item-type 55H, reserved, item-length 14
    + VERSION  # implementation-version-name
)
EXTENDED = (
    h("56 00 0020")  # item-type 56H, reserved, item-length 32
    + h("001B")  # SOP-class-uid-length 27
    + PATIENT_ROOT_FIND  # SOP-class-uid
    + h("01 00 01")  # service-class-application-information (3 bytes)
)
COMMON_EXTENDED = (
    h("57")  # item-type 57H
    + h("00")  # sub-item-version 0
    + h("0053")  # item-length 83
    + h("001D")  # SOP-class-uid-length 29
    + PROC_LOG  # SOP-class-uid
    + h("0011")  # service-class-uid-length 17
    + STORAGE_SERVICE  # service-class-uid
    + h("001F")  # related-general-sop-class-identification-length 31
    + h("001D")  # related-general-sop-class-uid-length 29
    + ENHANCED_SR  # related-general-sop-class-uid
)
COMMON_EXTENDED_NO_RELATED = (
    h("57 00 0034")  # item-type 57H, sub-item-version 0, item-length 52
    + h("001D")  # SOP-class-uid-length 29
    + PROC_LOG
    + h("0011")  # service-class-uid-length 17
    + STORAGE_SERVICE
    + h("0000")  # related-general-sop-class-identification-length 0
)
COMMON_EXTENDED_TWO_RELATED = (
    h("57 00 0072")  # item-type 57H, sub-item-version 0, item-length 114
    + h("001D")  # SOP-class-uid-length 29
    + PROC_LOG
    + h("0011")  # service-class-uid-length 17
    + STORAGE_SERVICE
    + h("003E")  # related-general-sop-class-identification-length 62
    + h("001D")  # related-general-sop-class-uid-length 29
    + ENHANCED_SR
    + h("001D")  # related-general-sop-class-uid-length 29
    + COMPREHENSIVE_SR
)
IDENTITY_RQ_PASSCODE = (
    h("58 00 0011")  # item-type 58H, reserved, item-length 17
    + h("02")  # user-identity-type 2: username and passcode
    + h("01")  # positive-response-requested 1
    + h("0005")  # primary-field-length 5
    + b"alice"  # primary-field (username)
    + h("0006")  # secondary-field-length 6
    + b"s3cret"  # secondary-field (passcode)
)
IDENTITY_RQ_USERNAME = (
    h("58 00 000B")  # item-type 58H, reserved, item-length 11
    + h("01")  # user-identity-type 1: username
    + h("00")  # positive-response-requested 0
    + h("0005")  # primary-field-length 5
    + b"alice"
    + h("0000")  # secondary-field-length 0
)
IDENTITY_RQ_KERBEROS = (
    h("58 00 0009")  # item-type 58H, reserved, item-length 9
    + h("03 01")  # user-identity-type 3: Kerberos, positive response requested
    + h("0003 0A0B0C")  # primary-field-length 3, Kerberos service ticket
    + h("0000")  # secondary-field-length 0
)
IDENTITY_AC = (
    h("59 00 0006")  # item-type 59H, reserved, item-length 6
    + h("0004")  # server-response-length 4
    + h("DEADBEEF")  # server-response
)
IDENTITY_AC_EMPTY = h("59 00 0002  0000")  # item-type 59H, length 2, server-response-length 0

PROC_LOG_COMMON = SOPClassCommonExtended(s(PROC_LOG), s(STORAGE_SERVICE), (s(ENHANCED_SR),))

SUB_ITEMS = [
    pytest.param(MAX_LENGTH, UserInformation(max_length=16384), id="max-length"),
    pytest.param(
        IMPLEMENTATION_CLASS,
        UserInformation(implementation_class_uid=s(IMPL_UID)),
        id="implementation-class-uid",
    ),
    pytest.param(ASYNC_OPS, UserInformation(async_ops=(5, 0)), id="async-ops-window"),
    pytest.param(
        ROLE,
        UserInformation(roles=[RoleSelection(s(CT_STORAGE), scu_role=False, scp_role=True)]),
        id="role-selection",
    ),
    pytest.param(
        IMPLEMENTATION_VERSION,
        UserInformation(implementation_version_name=s(VERSION)),
        id="implementation-version-name",
    ),
    pytest.param(
        EXTENDED,
        UserInformation(extended=[SOPClassExtended(s(PATIENT_ROOT_FIND), h("01 00 01"))]),
        id="sop-class-extended",
    ),
    pytest.param(
        COMMON_EXTENDED, UserInformation(common_extended=[PROC_LOG_COMMON]), id="common-extended"
    ),
    pytest.param(
        COMMON_EXTENDED_NO_RELATED,
        UserInformation(common_extended=[SOPClassCommonExtended(s(PROC_LOG), s(STORAGE_SERVICE))]),
        id="common-extended-no-related",
    ),
    pytest.param(
        COMMON_EXTENDED_TWO_RELATED,
        UserInformation(
            common_extended=[
                SOPClassCommonExtended(
                    s(PROC_LOG), s(STORAGE_SERVICE), (s(ENHANCED_SR), s(COMPREHENSIVE_SR))
                )
            ]
        ),
        id="common-extended-two-related",
    ),
    pytest.param(
        IDENTITY_RQ_PASSCODE,
        UserInformation(identity_rq=UserIdentityRQ(2, True, b"alice", b"s3cret")),
        id="user-identity-rq-passcode",
    ),
    pytest.param(
        IDENTITY_RQ_USERNAME,
        UserInformation(identity_rq=UserIdentityRQ(1, False, b"alice")),
        id="user-identity-rq-username",
    ),
    pytest.param(
        IDENTITY_RQ_KERBEROS,
        UserInformation(identity_rq=UserIdentityRQ(3, True, h("0A0B0C"))),
        id="user-identity-rq-kerberos",
    ),
    pytest.param(
        IDENTITY_AC,
        UserInformation(identity_ac=UserIdentityAC(h("DEADBEEF"))),
        id="user-identity-ac",
    ),
    pytest.param(
        IDENTITY_AC_EMPTY,
        UserInformation(identity_ac=UserIdentityAC()),
        id="user-identity-ac-empty",
    ),
]


def user_info_item(value: bytes) -> bytes:
    """User information item header (PS3.8 Table 9-16) around ``value``."""
    return h("50 00") + len(value).to_bytes(2, "big") + value


@pytest.mark.parametrize(("raw", "ui"), SUB_ITEMS)
def test_user_information_sub_item(raw: bytes, ui: UserInformation) -> None:
    assert encode_user_information(ui) == user_info_item(raw)
    assert decode_ui_value(raw) == ui
    assert decode_items(user_info_item(raw)) == (None, [], ui)


def test_empty_user_information_item() -> None:
    assert encode_user_information(UserInformation()) == h("50 00 0000")
    assert decode_items(h("50 00 0000")) == (None, [], UserInformation())


USER_INFO_RQ_ALL = (
    h("50 00 00F2")  # item-type 50H, reserved, item-length 242 (= 8+31+8+33+18+36+87+21)
    + MAX_LENGTH  # 51H, 8 bytes
    + IMPLEMENTATION_CLASS  # 52H, 31 bytes
    + ASYNC_OPS  # 53H, 8 bytes
    + ROLE  # 54H, 33 bytes
    + IMPLEMENTATION_VERSION  # 55H, 18 bytes
    + EXTENDED  # 56H, 36 bytes
    + COMMON_EXTENDED  # 57H, 87 bytes
    + IDENTITY_RQ_PASSCODE  # 58H, 21 bytes
)
UI_RQ_ALL = UserInformation(
    max_length=16384,
    implementation_class_uid=s(IMPL_UID),
    implementation_version_name=s(VERSION),
    async_ops=(5, 0),
    roles=[RoleSelection(s(CT_STORAGE), False, True)],
    extended=[SOPClassExtended(s(PATIENT_ROOT_FIND), h("01 00 01"))],
    common_extended=[PROC_LOG_COMMON],
    identity_rq=UserIdentityRQ(2, True, b"alice", b"s3cret"),
)


def test_user_information_with_every_rq_sub_item() -> None:
    assert encode_user_information(UI_RQ_ALL) == USER_INFO_RQ_ALL
    assert decode_items(USER_INFO_RQ_ALL) == (None, [], UI_RQ_ALL)


def test_user_information_ac_sub_items_and_repeated_roles() -> None:
    role_verification = (
        h("54 00 0015")  # item-type 54H, reserved, item-length 21
        + h("0011")  # UID-length 17
        + VERIFICATION
        + h("01 01")  # SCU-role 1, SCP-role 1
    )
    raw = (
        h("50 00 0067")  # item-type 50H, reserved, item-length 103 (= 8+31+33+25+6)
        + MAX_LENGTH
        + IMPLEMENTATION_CLASS
        + ROLE
        + role_verification
        + IDENTITY_AC_EMPTY
    )
    ui = UserInformation(
        max_length=16384,
        implementation_class_uid=s(IMPL_UID),
        roles=[
            RoleSelection(s(CT_STORAGE), False, True),
            RoleSelection(s(VERIFICATION), True, True),
        ],
        identity_ac=UserIdentityAC(),
    )
    assert encode_user_information(ui) == raw
    assert decode_items(raw) == (None, [], ui)


def test_variable_items_together() -> None:
    raw = APPLICATION_CONTEXT_ITEM + PC_RQ_ITEM + USER_INFO_RQ_ALL
    assert decode_items(raw) == (s(APP_CTX), [PC_RQ], UI_RQ_ALL)
    raw_ac = APPLICATION_CONTEXT_ITEM + PC_AC_ACCEPTED + user_info_item(MAX_LENGTH)
    assert decode_items(raw_ac, is_rq=False) == (
        s(APP_CTX),
        [PresentationContextAC(1, 0, s(EXPLICIT_LE))],
        UserInformation(max_length=16384),
    )


# -- robustness: unknown items ----------------------------------------------


def test_unknown_user_information_sub_items_are_kept_and_round_trip() -> None:
    raw = (
        h("50 00 0032")  # item-type 50H, item-length 50 (= 8+31+7+4)
        + MAX_LENGTH
        + IMPLEMENTATION_CLASS
        + h("5A 00 0003 ABCDEF")  # unknown sub-item 5AH, length 3
        + h("FF 00 0000")  # unknown sub-item FFH, empty
    )
    ui = decode_ui_value(raw[4:])
    assert ui == UserInformation(
        max_length=16384,
        implementation_class_uid=s(IMPL_UID),
        unknown=[(0x5A, h("ABCDEF")), (0xFF, b"")],
    )
    assert encode_user_information(ui) == raw


def test_unknown_sub_items_are_encoded_in_increasing_type_order() -> None:
    # PS3.8 9.3.1: "Items shall appear in an increasing order of their item types."
    ui = UserInformation(
        max_length=0,
        identity_ac=UserIdentityAC(),
        unknown=[(0x70, b"x"), (0x50, b""), (0x5A, b"")],
    )
    raw = encode_user_information(ui)
    assert raw == (
        h("50 00 001B")  # item-type 50H, item-length 27 (= 4+8+6+4+5)
        + h("50 00 0000")  # unknown 50H (below every known sub-item)
        + h("51 00 0004 00000000")  # maximum length 0 (no maximum)
        + h("59 00 0002 0000")  # user identity AC, empty server response
        + h("5A 00 0000")  # unknown 5AH
        + h("70 00 0001")  # unknown 70H, length 1
        + b"x"
    )
    # decoding gives the sub-items back in wire order
    assert decode_ui_value(raw[4:]).unknown == [(0x50, b""), (0x5A, b""), (0x70, b"x")]


def test_unrecognized_items_are_skipped() -> None:
    # PS3.8 9.3.1: "Items of unrecognized types shall be ignored and skipped."
    pc_with_unknown = (
        h("20 00 004B")  # item-type 20H, item-length 75 (= 69 + 6)
        + PC_RQ_ITEM[4:50]  # ID, reserved bytes, abstract syntax, first transfer syntax
        + h("35 00 0002 1234")  # unrecognized sub-item type 35H
        + PC_RQ_ITEM[50:]  # second transfer syntax
    )
    raw = (
        APPLICATION_CONTEXT_ITEM
        + h("11 00 0001 00")  # unrecognized item type 11H
        + pc_with_unknown
        + h("60 00 0000")  # unrecognized item type 60H
        + user_info_item(MAX_LENGTH)
    )
    assert decode_items(raw) == (s(APP_CTX), [PC_RQ], UserInformation(max_length=16384))
    # item 21H, length 29 (= 4+4+21), an unrecognized empty 7FH sub-item, then the TS
    ac = h("21 00 001D  01 00 00 00  7F 00 0000") + h("40 00 0011") + IMPLICIT_LE
    assert decode_items(ac, is_rq=False)[1] == [PresentationContextAC(1, 0, s(IMPLICIT_LE))]


@pytest.mark.parametrize(
    ("raw", "is_rq"),
    [
        (PC_AC_ACCEPTED, True),  # AC presentation context in an A-ASSOCIATE-RQ
        (PC_RQ_ITEM, False),  # RQ presentation context in an A-ASSOCIATE-AC
        (h("40 00 0011") + IMPLICIT_LE, True),  # transfer syntax sub-item at the top level
        (h("30 00 0011") + VERIFICATION, False),  # abstract syntax sub-item at the top level
        # application context item inside a presentation context
        (h("20 00 001D  01 00 00 00") + APPLICATION_CONTEXT_ITEM, True),
        # abstract syntax sub-item inside an AC presentation context
        (h("21 00 0019  01 00 00 00  30 00 0011") + VERIFICATION, False),
        # two abstract syntax sub-items in one presentation context
        (
            h("20 00 003A  01 00 00 00")
            + h("30 00 0011")
            + VERIFICATION
            + h("30 00 0011")
            + VERIFICATION
            + h("40 00 0011")
            + IMPLICIT_LE,
            True,
        ),
    ],
)
def test_known_items_out_of_place_are_unexpected_parameters(raw: bytes, is_rq: bool) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_items(raw, is_rq)
    assert info.value.reason == 5


# -- robustness: padded UIDs --------------------------------------------------


def test_uids_padded_with_a_trailing_nul_decode() -> None:
    raw = (
        h("10 00 0016")  # application context item, length 22
        + APP_CTX
        + h("00")
        + h("20 00 0032  01 00 00 00")  # presentation context, length 50
        + h("30 00 0012")  # abstract syntax, length 18
        + VERIFICATION
        + h("00")
        + h("40 00 0014")  # transfer syntax, length 20
        + EXPLICIT_LE
        + h("00")
        + h("50 00 00B4")  # user information, length 180 (= 32+34+26+88)
        + h("52 00 001C")  # implementation class UID, length 28
        + IMPL_UID
        + h("00")
        + h("54 00 001E 001A")  # role selection, length 30, UID-length 26
        + CT_STORAGE
        + h("00 01 00")  # NUL pad, SCU-role 1, SCP-role 0
        + h("56 00 0016 0012")  # extended negotiation, length 22, UID-length 18
        + IMPLICIT_LE  # (any SOP class UID will do)
        + h("00 AA BB")  # NUL pad, application information AA BB
        + h("57 00 0054 001E")  # common extended, length 84, UID-length 30
        + PROC_LOG
        + h("00")
        + h("0011")
        + STORAGE_SERVICE
        + h("001F 001D")
        + ENHANCED_SR
    )
    app, pcs, ui = decode_items(raw)
    assert app == s(APP_CTX)
    assert pcs == [PresentationContextRQ(1, s(VERIFICATION), [s(EXPLICIT_LE)])]
    assert ui == UserInformation(
        implementation_class_uid=s(IMPL_UID),
        roles=[RoleSelection(s(CT_STORAGE), True, False)],
        extended=[SOPClassExtended(s(IMPLICIT_LE), h("AABB"))],
        common_extended=[PROC_LOG_COMMON],
    )
    accepted = h("21 00 001A  01 00 00 00  40 00 0012") + IMPLICIT_LE + h("00")
    assert decode_items(accepted, is_rq=False)[1] == [PresentationContextAC(1, 0, s(IMPLICIT_LE))]


def test_uid_padded_with_a_trailing_space_decodes() -> None:
    raw = h("10 00 0016") + APP_CTX + b" "
    assert decode_items(raw)[0] == s(APP_CTX)


def test_implementation_version_name_padding_is_dropped() -> None:
    assert decode_ui_value(h("55 00 0004") + b"V1\0\0").implementation_version_name == "V1"
    assert decode_ui_value(h("55 00 0004") + b"V1  ").implementation_version_name == "V1"


# -- robustness: malformed items -> A-ABORT reason 6 ------------------------

MALFORMED = [
    pytest.param(h("10 00 00"), id="truncated-item-header"),
    pytest.param(h("10 00 0016") + APP_CTX, id="item-overruns-container"),
    pytest.param(h("10 00 0000"), id="empty-uid"),
    pytest.param(h("10 00 0001 00"), id="uid-only-padding"),
    pytest.param(h("10 00 0041") + b"1" * 65, id="uid-longer-than-64"),
    pytest.param(h("10 00 0003 31 2E FF"), id="uid-not-ascii"),
    pytest.param(h("20 00 0003 01 00 00"), id="pc-shorter-than-4"),
    pytest.param(h("20 00 0004 01 00 00 00"), id="pc-without-sub-items"),
    pytest.param(h("20 00 0019 01 00 00 00 30 00 0011") + VERIFICATION, id="pc-without-ts"),
    pytest.param(h("20 00 0019 01 00 00 00 40 00 0011") + IMPLICIT_LE, id="pc-without-as"),
    pytest.param(h("20 00 0019 01 00 00 00 30 00 0012") + VERIFICATION, id="sub-item-overrun"),
    pytest.param(h("50 00 0007 51 00 0003 000040"), id="max-length-3-bytes"),
    pytest.param(h("50 00 0009 51 00 0005 0000400000"), id="max-length-5-bytes"),
    pytest.param(h("50 00 0006 53 00 0002 0001"), id="async-window-2-bytes"),
    pytest.param(h("50 00 0005 54 00 0001 00"), id="role-truncated-uid-length"),
    pytest.param(h("50 00 0009 54 00 0005 0001 31 01 01 01"), id="role-extra-byte"),
    pytest.param(h("50 00 0008 54 00 0004 0001 31 01"), id="role-missing-scp-byte"),
    pytest.param(h("50 00 0008 54 00 0004 0009 31 01"), id="role-uid-overruns"),
    pytest.param(h("50 00 0005 56 00 0001 00"), id="extended-truncated"),
    pytest.param(h("50 00 0008 57 00 0004 0001 31 00"), id="common-extended-truncated"),
    pytest.param(
        h("50 00 000E 57 00 000A 0001 31 0001 32 0003 0005 33"),
        id="common-extended-related-uid-overruns",
    ),
    pytest.param(h("50 00 0007 58 00 0003 01 00 00"), id="identity-rq-shorter-than-4"),
    pytest.param(h("50 00 0008 58 00 0004 01 00 0005"), id="identity-rq-primary-overruns"),
    pytest.param(h("50 00 000A 58 00 0006 01 00 0001 61 00"), id="identity-rq-no-secondary"),
    pytest.param(h("50 00 0005 59 00 0001 00"), id="identity-ac-truncated"),
    pytest.param(h("50 00 0006 59 00 0002 0001"), id="identity-ac-overruns"),
    pytest.param(h("50 00 0005 52 00 0001 FF"), id="implementation-uid-not-ascii"),
]


@pytest.mark.parametrize("raw", MALFORMED)
def test_malformed_items_are_invalid_parameter_values(raw: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_items(raw)
    assert info.value.reason == 6


def test_accepted_ac_context_without_transfer_syntax_is_invalid() -> None:
    for raw in (h("21 00 0004 01 00 00 00"), h("21 00 0008 01 00 00 00 40 00 0000")):
        with pytest.raises(RemoteProtocolError) as info:
            decode_items(raw, is_rq=False)
        assert info.value.reason == 6


def test_encoding_an_oversized_item_is_a_local_error() -> None:
    with pytest.raises(ValueError):
        encode_user_information(UserInformation(extended=[SOPClassExtended("1.2", bytes(70000))]))
