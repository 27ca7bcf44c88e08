"""The seven PDUs of the DICOM upper layer, encoded and decoded (PS3.8 9.3).

Each PDU is a small dataclass; ``encode`` turns one into bytes and
``decode_pdu`` turns a type byte and body into one, raising
:class:`~dicomstore.errors.RemoteProtocolError` (with the A-ABORT reason of
PS3.8 9.3.8) for anything malformed.  ``PDUReader`` decodes the PDUs in a
receive buffer in place and refuses an over-long PDU from its 6-byte header,
before it is buffered.
Items and sub-items live in :mod:`dicomstore.ul.items`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from dicomstore.errors import NOT_A_DICOM_PEER, RemoteProtocolError
from dicomstore.ul.items import PresentationContextAC as PresentationContextAC
from dicomstore.ul.items import PresentationContextRQ as PresentationContextRQ
from dicomstore.ul.items import (
    UserInformation,
    decode_variable_items,
    encode_ac_contexts,
    encode_application_context,
    encode_rq_contexts,
    encode_user_information,
)
from dicomstore.vr import ae_title_problem

# PDU types (PS3.8 Table 9-11 and following)
ASSOCIATE_RQ = 0x01
ASSOCIATE_AC = 0x02
ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
RELEASE_RQ = 0x05
RELEASE_RP = 0x06
ABORT = 0x07

# A-ABORT reasons for a service-provider source (PS3.8 Table 9-26)
ABORT_REASON_NOT_SPECIFIED = 0
ABORT_UNRECOGNIZED_PDU = 1
ABORT_UNEXPECTED_PDU = 2
ABORT_UNRECOGNIZED_PDU_PARAMETER = 4
ABORT_UNEXPECTED_PDU_PARAMETER = 5
ABORT_INVALID_PDU_PARAMETER_VALUE = 6
ABORT_SOURCE_USER = 0
ABORT_SOURCE_PROVIDER = 2

# A-ASSOCIATE-RJ (PS3.8 Table 9-21)
REJECT_PERMANENT = 1
REJECT_TRANSIENT = 2
REJECT_SOURCE_USER = 1
REJECT_SOURCE_ACSE = 2
REJECT_SOURCE_PRESENTATION = 3
REJECT_NO_REASON = 1
REJECT_APPLICATION_CONTEXT_NOT_SUPPORTED = 2
REJECT_CALLING_AE_NOT_RECOGNIZED = 3
REJECT_CALLED_AE_NOT_RECOGNIZED = 7
REJECT_PROTOCOL_VERSION_NOT_SUPPORTED = 2  # source 2
REJECT_TEMPORARY_CONGESTION = 1  # source 3
REJECT_LOCAL_LIMIT_EXCEEDED = 2  # source 3

APPLICATION_CONTEXT_NAME = "1.2.840.10008.3.1.1.1"

_REJECT_TEXT = {
    (REJECT_SOURCE_USER, 1): "no reason given",
    (REJECT_SOURCE_USER, 2): "application context name not supported",
    (REJECT_SOURCE_USER, 3): "calling AE title not recognized",
    (REJECT_SOURCE_USER, 7): "called AE title not recognized",
    (REJECT_SOURCE_ACSE, 1): "no reason given",
    (REJECT_SOURCE_ACSE, 2): "protocol version not supported",
    (REJECT_SOURCE_PRESENTATION, 1): "temporary congestion",
    (REJECT_SOURCE_PRESENTATION, 2): "local limit exceeded",
}
_ABORT_TEXT = {
    0: "reason not specified",
    1: "unrecognized PDU",
    2: "unexpected PDU",
    4: "unrecognized PDU parameter",
    5: "unexpected PDU parameter",
    6: "invalid PDU parameter value",
}


def describe_reject(result: int, source: int, reason: int) -> str:
    """One line for an A-ASSOCIATE-RJ, e.g. for the CLI (PS3.8 9.3.4)."""
    kind = {1: "rejected (permanent)", 2: "rejected (transient)"}.get(result, f"result {result}")
    who = {1: "service user", 2: "service provider (ACSE)", 3: "service provider (presentation)"}
    why = _REJECT_TEXT.get((source, reason), f"reason {reason}")
    return f"association {kind} by {who.get(source, f'source {source}')}: {why}"


def describe_abort(source: int, reason: int) -> str:
    """One line for an A-ABORT (PS3.8 9.3.8)."""
    if source == ABORT_SOURCE_USER:
        return "association aborted by the peer (service user)"
    return f"association aborted by the peer's service provider: {_ABORT_TEXT.get(reason, reason)}"


@dataclass(slots=True)
class PDV:
    """One presentation data value item of a P-DATA-TF (PS3.8 9.3.5.1, Annex E)."""

    context_id: int
    is_command: bool
    is_last: bool
    data: bytes | bytearray | memoryview


@dataclass
class AssociateRQ:
    """A-ASSOCIATE-RQ PDU (PS3.8 9.3.2)."""

    called_ae: str
    calling_ae: str
    presentation_contexts: list[PresentationContextRQ]
    user_info: UserInformation = field(default_factory=UserInformation)
    application_context: str = APPLICATION_CONTEXT_NAME
    protocol_version: int = 1


@dataclass
class AssociateAC:
    """A-ASSOCIATE-AC PDU (PS3.8 9.3.3); AE titles echo the request's."""

    called_ae: str
    calling_ae: str
    presentation_contexts: list[PresentationContextAC]
    user_info: UserInformation = field(default_factory=UserInformation)
    application_context: str = APPLICATION_CONTEXT_NAME
    protocol_version: int = 1


@dataclass(frozen=True)
class AssociateRJ:
    """A-ASSOCIATE-RJ PDU (PS3.8 9.3.4)."""

    result: int
    source: int
    reason: int


@dataclass
class PDataTF:
    """P-DATA-TF PDU (PS3.8 9.3.5): one or more PDVs."""

    pdvs: Sequence[PDV]


@dataclass(frozen=True)
class ReleaseRQ:
    """A-RELEASE-RQ PDU (PS3.8 9.3.6)."""


@dataclass(frozen=True)
class ReleaseRP:
    """A-RELEASE-RP PDU (PS3.8 9.3.7)."""


@dataclass(frozen=True)
class Abort:
    """A-ABORT PDU (PS3.8 9.3.8); ``reason`` matters for source 2 only."""

    source: int = ABORT_SOURCE_USER
    reason: int = 0


PDU = AssociateRQ | AssociateAC | AssociateRJ | PDataTF | ReleaseRQ | ReleaseRP | Abort

_HEADER = struct.Struct(">BBL")
_ASSOC_FIXED = struct.Struct(">HH16s16s32s")
_FOUR = struct.Struct(">BBBB")
_PDV_HEADER = struct.Struct(">LBB")
#: Bytes of a PDV item besides its data: item length (4), context ID, control header
#: (PS3.8 9.3.5.1).
PDV_OVERHEAD = _PDV_HEADER.size
_PDU_PDV_HEADER = struct.Struct(">BBLLBB")  # a P-DATA-TF header and its one PDV's
#: PDV data shorter than this is copied next to its header rather than kept apart.
_INLINE = 4096


def _ae_bytes(ae: str) -> bytes:
    # Leading and trailing spaces are non-significant (PS3.8 Table 9-11), so
    # they are dropped rather than letting the 16-byte field cut off the title.
    problem = ae_title_problem(ae)
    if problem is not None:
        raise ValueError(f"not a valid AE title ({problem}): {ae!r}")
    return ae.strip(" ").encode("ascii").ljust(16, b" ")


def _ae_text(raw: bytes, strict: bool = True) -> str:
    try:
        return raw.decode("ascii").strip(" \0")
    except UnicodeDecodeError:
        if not strict:
            return raw.decode("ascii", "replace").strip(" \0")
        raise RemoteProtocolError(
            "AE title is not ASCII", ABORT_INVALID_PDU_PARAMETER_VALUE
        ) from None


def encode_pdata_parts(pdvs: Sequence[PDV]) -> list[bytes | bytearray | memoryview]:
    """A P-DATA-TF PDU as a list of buffers, headers apart from the PDV data.

    Nothing is copied: each PDV's data is one of the parts, so a shell can hand
    them to a vectored write (``b"".join`` of the parts is :func:`encode`'s bytes).
    Headers that follow each other (PDU header, PDV header, an empty PDV) are
    joined into one small part.
    """
    total = 0
    for pdv in pdvs:
        total += len(pdv.data) + 6
    parts: list[bytes | bytearray | memoryview] = []
    head = _HEADER.pack(P_DATA_TF, 0, total)
    for pdv in pdvs:
        data = pdv.data
        head += _PDV_HEADER.pack(len(data) + 2, pdv.context_id, pdv.is_command | (pdv.is_last << 1))
        if len(data) < _INLINE:
            head += data
        else:
            parts.append(head)
            parts.append(data)
            head = b""
    if head:
        parts.append(head)
    return parts


def encode_pdata_each(pdvs: list[PDV], out: list[bytes | bytearray | memoryview]) -> None:
    """Append to ``out`` one P-DATA-TF PDU per PDV, as in :func:`encode_pdata_parts`."""
    pack = _PDU_PDV_HEADER.pack
    for pdv in pdvs:
        data = pdv.data
        n = len(data)
        head = pack(P_DATA_TF, 0, n + 6, n + 2, pdv.context_id, pdv.is_command | (pdv.is_last << 1))
        if n < _INLINE:
            out.append(head + data)
        else:
            out.append(head)
            out.append(data)


def encode(pdu: PDU) -> bytes:
    """Encode any PDU to its bytes on the wire."""
    if isinstance(pdu, PDataTF):
        return b"".join(encode_pdata_parts(pdu.pdvs))
    if isinstance(pdu, AssociateRQ | AssociateAC):
        fixed = _ASSOC_FIXED.pack(
            pdu.protocol_version, 0, _ae_bytes(pdu.called_ae), _ae_bytes(pdu.calling_ae), b""
        )
        if isinstance(pdu, AssociateRQ):
            kind, contexts = ASSOCIATE_RQ, encode_rq_contexts(pdu.presentation_contexts)
        else:
            kind, contexts = ASSOCIATE_AC, encode_ac_contexts(pdu.presentation_contexts)
        body = b"".join(
            (
                fixed,
                encode_application_context(pdu.application_context),
                contexts,
                encode_user_information(pdu.user_info),
            )
        )
        return _HEADER.pack(kind, 0, len(body)) + body
    if isinstance(pdu, AssociateRJ):
        return _HEADER.pack(ASSOCIATE_RJ, 0, 4) + _FOUR.pack(0, pdu.result, pdu.source, pdu.reason)
    if isinstance(pdu, ReleaseRQ):
        return _HEADER.pack(RELEASE_RQ, 0, 4) + bytes(4)
    if isinstance(pdu, ReleaseRP):
        return _HEADER.pack(RELEASE_RP, 0, 4) + bytes(4)
    if isinstance(pdu, Abort):
        return _HEADER.pack(ABORT, 0, 4) + _FOUR.pack(0, 0, pdu.source, pdu.reason)
    raise TypeError(f"not a PDU: {pdu!r}")


#: PDVs decoded in one go: a P-DATA-TF's first ones when it is read (its later ones as
#: they are iterated), and about as many per :meth:`PDUReader.parse` call.
PDVS_AT_ONCE = 1024


def decode_pdata(body: bytes | bytearray | memoryview) -> PDataTF:
    """Decode the variable field of a P-DATA-TF into PDVs (PS3.8 9.3.5).

    Each PDV's data is a slice of ``body``: of a memoryview, a view into the
    same memory, valid as long as the caller leaves that memory alone.
    """
    return PDataTF(list(ReceivedPDVs(body)))


class ReceivedPDVs(Sequence[PDV]):
    """The PDV items of a received P-DATA-TF: the first :data:`PDVS_AT_ONCE` decoded
    at once, the others in batches as they are iterated.

    PS3.8 9.3.5.1 and E.1 allow any number of PDVs in a PDU, each fragment of any
    even length, even none: a 1 MiB PDU may hold 174,761 of them, which a reader
    of its events can then handle with bounded work per turn of its event loop.
    A malformed item raises :class:`RemoteProtocolError` (invalid PDU parameter
    value, PS3.8 9.3.8): in the first batch, when the PDU is read; else when its batch is.
    """

    __slots__ = ("_body", "_head", "_rest")

    def __init__(self, body: bytes | bytearray | memoryview) -> None:
        if not len(body):
            raise RemoteProtocolError(
                "P-DATA-TF without any PDV", ABORT_INVALID_PDU_PARAMETER_VALUE
            )
        self._body = body
        self._head, self._rest = _pdv_items(body, 0)

    @property
    def decoded(self) -> int:
        """How many PDVs were decoded when the PDU was read."""
        return len(self._head)

    def __iter__(self) -> Iterator[PDV]:
        yield from self._head
        body, off = self._body, self._rest
        while off < len(body):
            batch, off = _pdv_items(body, off)
            yield from batch

    def __len__(self) -> int:
        return len(self._head) if self._rest == len(self._body) else sum(1 for _ in self)

    def __getitem__(self, index):  # type: ignore[no-untyped-def]  # (Sequence's overloads)
        return (self._head if self._rest == len(self._body) else list(self))[index]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)


def _pdv_items(body: bytes | bytearray | memoryview, off: int) -> tuple[list[PDV], int]:
    """Up to :data:`PDVS_AT_ONCE` PDV items from ``off``, and the offset after them."""
    pdvs: list[PDV] = []
    end = len(body)
    unpack = _PDV_HEADER.unpack_from
    while off < end and len(pdvs) < PDVS_AT_ONCE:
        if end - off < 6:
            raise RemoteProtocolError(
                "truncated PDV item header", ABORT_INVALID_PDU_PARAMETER_VALUE
            )
        length, ctx, mch = unpack(body, off)
        if length < 2 or off + 4 + length > end:
            raise RemoteProtocolError(
                f"PDV item length {length} does not fit the P-DATA-TF",
                ABORT_INVALID_PDU_PARAMETER_VALUE,
            )
        if not ctx & 1:
            raise RemoteProtocolError(
                f"presentation context ID {ctx} is not odd", ABORT_INVALID_PDU_PARAMETER_VALUE
            )
        # Bits 2-7 of the message control header are "never checked by the
        # receiver" (PS3.8 E.2).
        pdvs.append(PDV(ctx, bool(mch & 1), bool(mch & 2), body[off + 6 : off + 4 + length]))
        off += 4 + length
    return pdvs, off


def _decode_associate(kind: int, body: memoryview) -> AssociateRQ | AssociateAC:
    if len(body) < _ASSOC_FIXED.size:
        raise RemoteProtocolError(
            "A-ASSOCIATE PDU shorter than its fixed fields", ABORT_INVALID_PDU_PARAMETER_VALUE
        )
    version, _, called, calling, _ = _ASSOC_FIXED.unpack_from(body, 0)
    app, contexts, user = decode_variable_items(body[_ASSOC_FIXED.size :], kind == ASSOCIATE_RQ)
    if app is None:
        raise RemoteProtocolError(
            "A-ASSOCIATE PDU without an application context item",
            ABORT_INVALID_PDU_PARAMETER_VALUE,
        )
    if kind == ASSOCIATE_AC and user is None:
        raise RemoteProtocolError(
            "A-ASSOCIATE-AC without user information", ABORT_INVALID_PDU_PARAMETER_VALUE
        )
    user_info = user if user is not None else UserInformation()
    if kind == ASSOCIATE_RQ:
        return AssociateRQ(
            called_ae=_ae_text(called),
            calling_ae=_ae_text(calling),
            presentation_contexts=[c for c in contexts if isinstance(c, PresentationContextRQ)],
            user_info=user_info,
            application_context=app,
            protocol_version=version,
        )
    # In an A-ASSOCIATE-AC the AE title fields are reserved: "its value shall
    # not be tested when received" (PS3.8 Table 9-17).
    return AssociateAC(
        called_ae=_ae_text(called, strict=False),
        calling_ae=_ae_text(calling, strict=False),
        presentation_contexts=[c for c in contexts if isinstance(c, PresentationContextAC)],
        user_info=user_info,
        application_context=app,
        protocol_version=version,
    )


def decode_pdu(kind: int, body: bytes | bytearray | memoryview) -> PDU:
    """Decode a PDU from its type byte and variable field (after the 6-byte header)."""
    if kind == P_DATA_TF:
        return decode_pdata(body)
    view = memoryview(body)
    if kind in (ASSOCIATE_RQ, ASSOCIATE_AC):
        return _decode_associate(kind, view)
    if kind in (ASSOCIATE_RJ, RELEASE_RQ, RELEASE_RP, ABORT):
        if len(view) != 4:
            raise RemoteProtocolError(
                f"PDU type {kind:#04x} must have length 4, not {len(view)}",
                ABORT_INVALID_PDU_PARAMETER_VALUE,
            )
        _, b1, b2, b3 = _FOUR.unpack_from(view, 0)
        if kind == ASSOCIATE_RJ:
            return AssociateRJ(b1, b2, b3)
        if kind == ABORT:
            return Abort(b2, b3)
        return ReleaseRQ() if kind == RELEASE_RQ else ReleaseRP()
    raise RemoteProtocolError(f"unrecognized PDU type {kind:#04x}", ABORT_UNRECOGNIZED_PDU)


def pdu_size(data: bytes | bytearray | memoryview) -> int:
    """Bytes the PDU at the start of ``data`` takes in all (6 while its header is incomplete)."""
    if len(data) < 6:
        return 6
    length: int = _HEADER.unpack_from(data, 0)[2]
    return 6 + length


#: first bytes of what other protocols send, for the message (review38scu #15)
_NOT_DICOM = {
    ord("H"): f" (it begins like 'HTTP': {NOT_A_DICOM_PEER[0]})",
    0x16: f" (a TLS handshake: {NOT_A_DICOM_PEER[1]})",
    0x15: f" (a TLS alert: {NOT_A_DICOM_PEER[1]})",
}


class PDUReader:
    """Cut inbound bytes into PDUs, in a buffer the caller owns (PS3.8 9.3.1).

    ``max_pdata`` is the maximum length we advertised (0 = unlimited): a
    P-DATA-TF whose length field exceeds it is refused from its header.
    ``max_other`` caps every other PDU (association PDUs are small).
    """

    def __init__(self, max_pdata: int = 0, max_other: int = 256 * 1024) -> None:
        self.max_pdata = max_pdata
        self.max_other = max_other

    def parse(self, view: memoryview) -> tuple[list[PDU], int]:
        """Decode the complete PDUs at the start of ``view`` in place (no copy).

        PDV data are views into ``view``.  Returns the PDUs and how many bytes
        they took; what follows (the start of a PDU, whose header, if complete,
        passed the checks) is the caller's to keep and present again with more
        bytes after it.  A malformed PDU raises :class:`RemoteProtocolError`
        whose ``pdus`` attribute holds the good PDUs before it (they must still
        be handled, in order).
        """
        out: list[PDU] = []
        off = decoded = 0
        size = len(view)
        try:
            while size - off >= 6:
                kind, _, length = _HEADER.unpack_from(view, off)
                self._check_header(kind, length)
                start = off + 6
                if size - start < length:
                    break
                body = view[start : start + length]
                if kind == P_DATA_TF:  # (its later PDVs decoded as the user reads them)
                    pdvs = ReceivedPDVs(body)
                    out.append(PDataTF(pdvs))
                    decoded += pdvs.decoded
                else:  # small, and kept by the user: not views of the buffer
                    out.append(decode_pdu(kind, bytes(body)))
                off = start + length
                if decoded >= PDVS_AT_ONCE:  # bounded work per call: the rest, next call
                    break
        except RemoteProtocolError as exc:
            exc.pdus = out
            raise
        return out, off

    def _check_header(self, kind: int, length: int) -> None:
        if not ASSOCIATE_RQ <= kind <= ABORT:
            hint = _NOT_DICOM.get(kind, "")
            raise RemoteProtocolError(
                f"unrecognized PDU type {kind:#04x}{hint}", ABORT_UNRECOGNIZED_PDU
            )
        if kind == P_DATA_TF:
            if self.max_pdata and length > self.max_pdata:
                raise RemoteProtocolError(
                    f"P-DATA-TF of {length} bytes exceeds our maximum of {self.max_pdata}",
                    ABORT_INVALID_PDU_PARAMETER_VALUE,
                )
        elif length > self.max_other:
            raise RemoteProtocolError(
                f"PDU type {kind:#04x} of {length} bytes exceeds the cap of {self.max_other}",
                ABORT_INVALID_PDU_PARAMETER_VALUE,
            )
