"""Hypothesis: hostile bytes and PDV sequences give a valid result or RemoteProtocolError only."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dicomstore.dimse import (
    CCancelRQ,
    CEchoRQ,
    CEchoRSP,
    CFindRQ,
    CFindRSP,
    CGetRQ,
    CGetRSP,
    CMoveRQ,
    CMoveRSP,
    CommandReceived,
    CStoreRQ,
    CStoreRSP,
    DatasetFragment,
    DimseAssembler,
    GenericRSP,
    InvalidRequest,
    NActionRQ,
    NActionRSP,
    NEventReportRQ,
    NEventReportRSP,
    RetrieveRQ,
    SubOperations,
    UnknownCommand,
    decode_command,
    decode_message,
)
from dicomstore.dimse.commands import ELEMENTS
from dicomstore.errors import RemoteProtocolError
from dicomstore.ul.pdu import PDV

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SEEDS = [
    CEchoRQ(1).encode(),
    CEchoRSP(1, 0).encode(),
    CStoreRQ(3, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", 2, "MOVER", 7).encode(),
    CStoreRSP(3, 0xB000, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "hm", (0x00100010,), 1).encode(),
    CFindRQ(4, "1.2.840.10008.5.1.4.1.2.2.1", 1).encode(),
    CFindRSP(4, 0xFF00, "1.2.840.10008.5.1.4.1.2.2.1", True).encode(),
    CCancelRQ(4).encode(),
    NActionRQ(5, "1.2.840.10008.1.20.1", "1.2.840.10008.1.20.1.1", 1).encode(),
    NActionRSP(5, 0, "1.2.840.10008.1.20.1", "1.2.840.10008.1.20.1.1", 1).encode(),
    NEventReportRQ(6, "1.2.840.10008.1.20.1", "1.2.840.10008.1.20.1.1", 2).encode(),
    NEventReportRSP(6, 0x0110, error_comment="x", error_id=3).encode(),
    CMoveRQ(5, "1.2.840.10008.5.1.4.1.2.2.2", 2, move_destination="STORESCP").encode(),
    CMoveRSP(5, 0xFF00, "1.2.840.10008.5.1.4.1.2.2.2", SubOperations(3, 1, 1, 0)).encode(),
    CGetRQ(6, "1.2.840.10008.5.1.4.1.2.2.3").encode(),
    CGetRSP(6, 0xB000, None, SubOperations(None, 2, 1, 0), True, "one failed").encode(),
]


def check_message(data: bytes) -> None:
    """decode_message either raises RemoteProtocolError or gives an answerable message."""
    try:
        msg = decode_message(data)
    except RemoteProtocolError:
        return
    assert isinstance(
        msg,
        CEchoRQ
        | CEchoRSP
        | CStoreRQ
        | CStoreRSP
        | CFindRQ
        | CFindRSP
        | CCancelRQ
        | NActionRQ
        | NActionRSP
        | NEventReportRQ
        | NEventReportRSP
        | CMoveRQ
        | CMoveRSP
        | CGetRQ
        | CGetRSP
        | UnknownCommand
        | InvalidRequest,
    )
    msg.encode()  # what we decoded we can re-encode
    if isinstance(msg, CEchoRQ | CStoreRQ | CFindRQ | RetrieveRQ | NActionRQ | NEventReportRQ):
        back = decode_message(msg.response(0).encode())
        assert getattr(back, "message_id_being_responded_to", None) == msg.message_id
    elif isinstance(msg, InvalidRequest):
        rsp = msg.response()
        assert isinstance(rsp, CEchoRSP | CStoreRSP | GenericRSP)
        back = decode_message(rsp.encode())
        assert getattr(back, "message_id_being_responded_to", None) == msg.message_id or (
            isinstance(back, UnknownCommand) and back.message_id == msg.message_id
        )
    elif isinstance(msg, UnknownCommand) and not msg.is_response and msg.command_field != 0x0FFF:
        decode_message(msg.response().encode())


@FAST
@given(st.binary(max_size=300))
def test_arbitrary_bytes(data: bytes) -> None:
    check_message(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif data:
            del data[pos : pos + draw(st.integers(1, 8))]
    return bytes(data)


@FAST
@given(mutated())
def test_mutated_commands(data: bytes) -> None:
    check_message(data)


@st.composite
def well_framed(draw: st.DrawFn) -> bytes:
    """Structurally valid command sets with arbitrary element values (mistyped ones too)."""
    elements = draw(
        st.dictionaries(
            st.sampled_from(sorted(ELEMENTS)[1:] + [0x0001, 0x0850]),
            st.one_of(
                st.binary(max_size=12),
                st.integers(0, 0xFFFF).map(lambda v: struct.pack("<H", v)),
                st.sampled_from([b"\x01\x00", b"\x30\x00", b"\x01\x80", b"\x01\x01", b"\0\0"]),
                st.sampled_from([b"1.2.3\0", b"1.2.840.10008.1.1\0", b"AE  ", b"\xff\xfe"]),
            ),
            max_size=10,
        )
    )
    body = b"".join(
        struct.pack("<HHI", 0, elem, len(value)) + value for elem, value in sorted(elements.items())
    )
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


@FAST
@given(well_framed())
def test_well_framed_commands(data: bytes) -> None:
    decode_command(data)  # structure is valid: never raises
    check_message(data)


@st.composite
def pdv_sequences(draw: st.DrawFn) -> list[PDV]:
    pdvs = []
    for _ in range(draw(st.integers(1, 12))):
        ctx = draw(st.sampled_from([1, 1, 1, 3, 0, 255]))
        if draw(st.booleans()):
            payload = draw(st.one_of(st.sampled_from(SEEDS), mutated(), st.binary(max_size=40)))
            pieces = draw(st.integers(1, 3))
            step = max(1, -(-len(payload) // pieces))
            chunks = [payload[i : i + step] for i in range(0, len(payload), step)] or [b""]
            for i, chunk in enumerate(chunks):
                pdvs.append(PDV(ctx, True, i == len(chunks) - 1, chunk))
        else:
            pdvs.append(PDV(ctx, False, draw(st.booleans()), draw(st.binary(max_size=16))))
    return pdvs


@FAST
@given(pdv_sequences())
def test_assembler_sequences(pdvs: list[PDV]) -> None:
    assembler = DimseAssembler()
    try:
        for pdv in pdvs:
            for event in assembler.receive(pdv):
                assert isinstance(event, CommandReceived | DatasetFragment)
                assert event.context_id == pdv.context_id
    except RemoteProtocolError:
        pass
