"""Variable items and user-information sub-items of A-ASSOCIATE PDUs.

PS3.8 9.3.2.1-9.3.3.3 (application context, presentation context RQ/AC,
abstract and transfer syntax, user information), PS3.8 Annex D.1 (maximum
length) and PS3.7 Annex D.3.3 (implementation class UID and version name,
asynchronous operations window, SCP/SCU role selection, SOP class extended
and common extended negotiation, user identity RQ/AC).  Unknown user
information sub-items are kept as raw bytes and otherwise ignored
(PS3.8 D.2 note 2).  Items of unrecognized types elsewhere in an A-ASSOCIATE
PDU are skipped (PS3.8 9.3.1: "Items of unrecognized types shall be ignored
and skipped"); an item type this module knows, found where it does not
belong (e.g. an AC presentation context in an A-ASSOCIATE-RQ), is an
unexpected PDU parameter (A-ABORT reason 5).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from dicomstore.errors import RemoteProtocolError

INVALID = 6  # A-ABORT reason: invalid PDU parameter value
UNRECOGNIZED_PARAMETER = 4
UNEXPECTED_PARAMETER = 5

ITEM_APPLICATION_CONTEXT = 0x10
ITEM_CONTEXT_RQ = 0x20
ITEM_CONTEXT_AC = 0x21
ITEM_ABSTRACT_SYNTAX = 0x30
ITEM_TRANSFER_SYNTAX = 0x40
ITEM_USER_INFORMATION = 0x50
SUB_MAX_LENGTH = 0x51
SUB_IMPLEMENTATION_CLASS = 0x52
SUB_ASYNC_OPS = 0x53
SUB_ROLE = 0x54
SUB_IMPLEMENTATION_VERSION = 0x55
SUB_EXTENDED = 0x56
SUB_COMMON_EXTENDED = 0x57
SUB_IDENTITY_RQ = 0x58
SUB_IDENTITY_AC = 0x59

# Item types of PS3.8 9.3.2-9.3.3: recognized, so out of place rather than unknown
_KNOWN_ITEMS = frozenset(
    (
        ITEM_APPLICATION_CONTEXT,
        ITEM_CONTEXT_RQ,
        ITEM_CONTEXT_AC,
        ITEM_ABSTRACT_SYNTAX,
        ITEM_TRANSFER_SYNTAX,
        ITEM_USER_INFORMATION,
    )
)

# Presentation context results (PS3.8 Table 9-18)
ACCEPTANCE = 0
USER_REJECTION = 1
NO_REASON = 2
ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
TRANSFER_SYNTAXES_NOT_SUPPORTED = 4

_ITEM = struct.Struct(">BBH")
_H = struct.Struct(">H")
_L = struct.Struct(">L")


@dataclass
class PresentationContextRQ:
    """Presentation context item of an A-ASSOCIATE-RQ (PS3.8 9.3.2.2)."""

    id: int
    abstract_syntax: str
    transfer_syntaxes: list[str]


@dataclass
class PresentationContextAC:
    """Presentation context item of an A-ASSOCIATE-AC (PS3.8 9.3.3.2).

    ``transfer_syntax`` is only significant when ``result`` is 0 (acceptance).
    """

    id: int
    result: int
    transfer_syntax: str = ""


@dataclass(frozen=True)
class RoleSelection:
    """SCP/SCU role selection sub-item (PS3.7 D.3.3.4)."""

    sop_class_uid: str
    scu_role: bool
    scp_role: bool


@dataclass(frozen=True)
class SOPClassExtended:
    """SOP class extended negotiation sub-item (PS3.7 D.3.3.5)."""

    sop_class_uid: str
    info: bytes


@dataclass(frozen=True)
class SOPClassCommonExtended:
    """SOP class common extended negotiation sub-item (PS3.7 D.3.3.6)."""

    sop_class_uid: str
    service_class_uid: str
    related_general_sop_classes: tuple[str, ...] = ()


@dataclass(frozen=True)
class UserIdentityRQ:
    """User identity negotiation, requestor side (PS3.7 D.3.3.7.1).

    Types: 1 username, 2 username and passcode, 3 Kerberos, 4 SAML, 5 JWT.
    """

    identity_type: int
    positive_response_requested: bool
    primary: bytes
    secondary: bytes = b""


@dataclass(frozen=True)
class UserIdentityAC:
    """User identity negotiation, acceptor side (PS3.7 D.3.3.7.2)."""

    server_response: bytes = b""


@dataclass
class UserInformation:
    """User information item (PS3.8 9.3.2.3, 9.3.3.3) and its sub-items."""

    max_length: int | None = None
    implementation_class_uid: str | None = None
    implementation_version_name: str | None = None
    async_ops: tuple[int, int] | None = None  # (max invoked, max performed); 0 = unlimited
    roles: list[RoleSelection] = field(default_factory=list)
    extended: list[SOPClassExtended] = field(default_factory=list)
    common_extended: list[SOPClassCommonExtended] = field(default_factory=list)
    identity_rq: UserIdentityRQ | None = None
    identity_ac: UserIdentityAC | None = None
    unknown: list[tuple[int, bytes]] = field(default_factory=list)


def _item(kind: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError(f"item {kind:#04x} value too long ({len(value)} bytes)")
    return _ITEM.pack(kind, 0, len(value)) + value


def _uid(uid: str) -> bytes:
    return uid.encode("ascii")


def _u16_prefixed(value: bytes) -> bytes:
    return _H.pack(len(value)) + value


def encode_application_context(name: str) -> bytes:
    """Application context item (PS3.8 9.3.2.1)."""
    return _item(ITEM_APPLICATION_CONTEXT, _uid(name))


def encode_rq_contexts(contexts: list[PresentationContextRQ]) -> bytes:
    """Presentation context items of an A-ASSOCIATE-RQ (PS3.8 9.3.2.2)."""
    out = []
    for pc in contexts:
        subs = _item(ITEM_ABSTRACT_SYNTAX, _uid(pc.abstract_syntax)) + b"".join(
            _item(ITEM_TRANSFER_SYNTAX, _uid(ts)) for ts in pc.transfer_syntaxes
        )
        out.append(_item(ITEM_CONTEXT_RQ, bytes((pc.id, 0, 0, 0)) + subs))
    return b"".join(out)


def encode_ac_contexts(contexts: list[PresentationContextAC]) -> bytes:
    """Presentation context items of an A-ASSOCIATE-AC (PS3.8 9.3.3.2)."""
    out = []
    for pc in contexts:
        ts = _item(ITEM_TRANSFER_SYNTAX, _uid(pc.transfer_syntax))
        out.append(_item(ITEM_CONTEXT_AC, bytes((pc.id, 0, pc.result, 0)) + ts))
    return b"".join(out)


def encode_user_information(ui: UserInformation) -> bytes:
    """User information item with its sub-items, in the PS3.7 D.3.3 order."""
    subs: list[bytes] = []
    if ui.max_length is not None:
        subs.append(_item(SUB_MAX_LENGTH, _L.pack(ui.max_length)))
    if ui.implementation_class_uid is not None:
        subs.append(_item(SUB_IMPLEMENTATION_CLASS, _uid(ui.implementation_class_uid)))
    if ui.async_ops is not None:
        subs.append(_item(SUB_ASYNC_OPS, struct.pack(">HH", *ui.async_ops)))
    for role in ui.roles:
        value = _u16_prefixed(_uid(role.sop_class_uid)) + bytes((role.scu_role, role.scp_role))
        subs.append(_item(SUB_ROLE, value))
    if ui.implementation_version_name is not None:
        subs.append(
            _item(SUB_IMPLEMENTATION_VERSION, ui.implementation_version_name.encode("ascii"))
        )
    for ext in ui.extended:
        subs.append(_item(SUB_EXTENDED, _u16_prefixed(_uid(ext.sop_class_uid)) + ext.info))
    for com in ui.common_extended:
        related = b"".join(_u16_prefixed(_uid(u)) for u in com.related_general_sop_classes)
        value = (
            _u16_prefixed(_uid(com.sop_class_uid))
            + _u16_prefixed(_uid(com.service_class_uid))
            + _u16_prefixed(related)
        )
        subs.append(_item(SUB_COMMON_EXTENDED, value))
    if ui.identity_rq is not None:
        rq = ui.identity_rq
        value = (
            bytes((rq.identity_type, rq.positive_response_requested))
            + _u16_prefixed(rq.primary)
            + _u16_prefixed(rq.secondary)
        )
        subs.append(_item(SUB_IDENTITY_RQ, value))
    if ui.identity_ac is not None:
        subs.append(_item(SUB_IDENTITY_AC, _u16_prefixed(ui.identity_ac.server_response)))
    for kind, raw in ui.unknown:
        subs.append(_item(kind, raw))
    # PS3.8 9.3.1: items appear in increasing order of their types.  The known
    # sub-items are built in that order; the sort (stable) slots the unknown ones in.
    subs.sort(key=lambda sub: sub[0])
    return _item(ITEM_USER_INFORMATION, b"".join(subs))


# -- decoding ---------------------------------------------------------------


def _iter_items(data: memoryview, what: str) -> Iterator[tuple[int, memoryview]]:
    off = 0
    end = len(data)
    while off < end:
        if end - off < 4:
            raise RemoteProtocolError(f"truncated {what} item header", INVALID)
        kind, _, length = _ITEM.unpack_from(data, off)
        if off + 4 + length > end:
            raise RemoteProtocolError(
                f"{what} item {kind:#04x} of length {length} overruns its container", INVALID
            )
        yield kind, data[off + 4 : off + 4 + length]
        off += 4 + length


def _text_uid(raw: memoryview, what: str) -> str:
    try:
        text = bytes(raw).decode("ascii")
    except UnicodeDecodeError:
        raise RemoteProtocolError(f"{what} is not ASCII", INVALID) from None
    text = text.rstrip("\0 ")
    if not text or len(text) > 64:
        raise RemoteProtocolError(f"{what} has an invalid length ({len(text)})", INVALID)
    return text


def _prefixed(data: memoryview, off: int, what: str) -> tuple[memoryview, int]:
    if len(data) - off < 2:
        raise RemoteProtocolError(f"truncated {what} length", INVALID)
    (n,) = _H.unpack_from(data, off)
    if off + 2 + n > len(data):
        raise RemoteProtocolError(f"{what} length {n} overruns its sub-item", INVALID)
    return data[off + 2 : off + 2 + n], off + 2 + n


def _out_of_place(kind: int, where: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"unexpected item {kind:#04x} in {where}", UNEXPECTED_PARAMETER)


def _decode_context_rq(value: memoryview) -> PresentationContextRQ:
    if len(value) < 4:
        raise RemoteProtocolError("truncated presentation context item", INVALID)
    abstract = None
    transfers = []
    for kind, sub in _iter_items(value[4:], "presentation context"):
        if kind == ITEM_ABSTRACT_SYNTAX:
            if abstract is not None:
                raise RemoteProtocolError(
                    "two abstract syntaxes in one context", UNEXPECTED_PARAMETER
                )
            abstract = _text_uid(sub, "abstract syntax name")
        elif kind == ITEM_TRANSFER_SYNTAX:
            transfers.append(_text_uid(sub, "transfer syntax name"))
        elif kind in _KNOWN_ITEMS:
            raise _out_of_place(kind, "a presentation context")
        # else: unrecognized item type, ignored and skipped (PS3.8 9.3.1)
    if abstract is None or not transfers:
        raise RemoteProtocolError(
            "presentation context without abstract or transfer syntax", INVALID
        )
    return PresentationContextRQ(value[0], abstract, transfers)


def _decode_context_ac(value: memoryview) -> PresentationContextAC:
    if len(value) < 4:
        raise RemoteProtocolError("truncated presentation context item", INVALID)
    ts = ""
    for kind, sub in _iter_items(value[4:], "presentation context"):
        if kind != ITEM_TRANSFER_SYNTAX:
            if kind in _KNOWN_ITEMS:
                raise _out_of_place(kind, "an A-ASSOCIATE-AC presentation context")
            continue  # unrecognized item type, ignored and skipped (PS3.8 9.3.1)
        # The transfer syntax of a rejected context "shall not be tested" (Table 9-18)
        if value[2] == ACCEPTANCE:
            ts = _text_uid(sub, "transfer syntax name")
    if value[2] == ACCEPTANCE and not ts:
        raise RemoteProtocolError("accepted presentation context without transfer syntax", INVALID)
    return PresentationContextAC(value[0], value[2], ts)


def _decode_identity_rq(value: memoryview) -> UserIdentityRQ:
    if len(value) < 4:
        raise RemoteProtocolError("truncated user identity sub-item", INVALID)
    primary, off = _prefixed(value, 2, "user identity primary field")
    secondary, off = _prefixed(value, off, "user identity secondary field")
    return UserIdentityRQ(value[0], bool(value[1]), bytes(primary), bytes(secondary))


def _decode_common_extended(value: memoryview) -> SOPClassCommonExtended:
    sop, off = _prefixed(value, 0, "SOP class UID")
    service, off = _prefixed(value, off, "service class UID")
    related_raw, off = _prefixed(value, off, "related general SOP class identification")
    related = []
    roff = 0
    while roff < len(related_raw):
        uid, roff = _prefixed(related_raw, roff, "related general SOP class UID")
        related.append(_text_uid(uid, "related general SOP class UID"))
    return SOPClassCommonExtended(
        _text_uid(sop, "SOP class UID"), _text_uid(service, "service class UID"), tuple(related)
    )


def decode_user_information(value: memoryview) -> UserInformation:
    """Decode the sub-items of a user information item (PS3.7 D.3.3)."""
    ui = UserInformation()
    for kind, sub in _iter_items(value, "user information"):
        if kind == SUB_MAX_LENGTH:
            if len(sub) != 4:
                raise RemoteProtocolError("maximum length sub-item is not 4 bytes", INVALID)
            ui.max_length = _L.unpack_from(sub, 0)[0]
        elif kind == SUB_IMPLEMENTATION_CLASS:
            ui.implementation_class_uid = _text_uid(sub, "implementation class UID")
        elif kind == SUB_IMPLEMENTATION_VERSION:
            ui.implementation_version_name = bytes(sub).decode("ascii", "replace").strip("\0 ")
        elif kind == SUB_ASYNC_OPS:
            if len(sub) != 4:
                raise RemoteProtocolError("asynchronous operations window is not 4 bytes", INVALID)
            ui.async_ops = struct.unpack_from(">HH", sub, 0)
        elif kind == SUB_ROLE:
            uid, off = _prefixed(sub, 0, "role selection SOP class UID")
            if len(sub) - off != 2:
                raise RemoteProtocolError("role selection sub-item has a bad length", INVALID)
            ui.roles.append(
                RoleSelection(
                    _text_uid(uid, "role selection SOP class UID"),
                    bool(sub[off]),
                    bool(sub[off + 1]),
                )
            )
        elif kind == SUB_EXTENDED:
            uid, off = _prefixed(sub, 0, "extended negotiation SOP class UID")
            ui.extended.append(
                SOPClassExtended(
                    _text_uid(uid, "extended negotiation SOP class UID"), bytes(sub[off:])
                )
            )
        elif kind == SUB_COMMON_EXTENDED:
            ui.common_extended.append(_decode_common_extended(sub))
        elif kind == SUB_IDENTITY_RQ:
            ui.identity_rq = _decode_identity_rq(sub)
        elif kind == SUB_IDENTITY_AC:
            response, _ = _prefixed(sub, 0, "user identity server response")
            ui.identity_ac = UserIdentityAC(bytes(response))
        else:
            ui.unknown.append((kind, bytes(sub)))
    return ui


def decode_variable_items(
    data: memoryview, is_rq: bool
) -> tuple[str | None, list[PresentationContextRQ | PresentationContextAC], UserInformation | None]:
    """Decode the variable items of an A-ASSOCIATE-RQ/AC (PS3.8 9.3.2, 9.3.3).

    Returns (application context name, presentation contexts, user information).
    """
    app: str | None = None
    contexts: list[PresentationContextRQ | PresentationContextAC] = []
    user: UserInformation | None = None
    want_ctx = ITEM_CONTEXT_RQ if is_rq else ITEM_CONTEXT_AC
    for kind, value in _iter_items(data, "A-ASSOCIATE"):
        if kind == ITEM_APPLICATION_CONTEXT:
            app = _text_uid(value, "application context name")
        elif kind == want_ctx:
            contexts.append(_decode_context_rq(value) if is_rq else _decode_context_ac(value))
        elif kind == ITEM_USER_INFORMATION:
            user = decode_user_information(value)
        elif kind in _KNOWN_ITEMS:
            raise _out_of_place(kind, "an A-ASSOCIATE-RQ" if is_rq else "an A-ASSOCIATE-AC")
        # else: unrecognized item type, ignored and skipped (PS3.8 9.3.1)
    return app, contexts, user
