"""The upper layer's only ways in and out: a buffer view in, a list of buffers out.

``PDUReader.parse`` / ``Connection.receive_view`` decode in a buffer the shell
owns (P-DATA PDV data are views into it), ``encode_pdata_parts`` /
``encode_pdata_each`` / ``Connection.parts_to_send`` leave PDV data uncopied.
However the input is cut, the same PDUs and events come out, each as soon as
its last byte is there; what goes out joins into what ``encode`` gives.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ul_vectors import Receiver, associated, pdu_receiver, read_pdus, sent_bytes

from dicomstore.errors import RemoteProtocolError
from dicomstore.ul import items as I
from dicomstore.ul import pdu as P
from dicomstore.ul.connection import Connection, Role
from dicomstore.ul.events import DataIndication

CT = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT = "1.2.840.10008.1.2"

RQ = P.AssociateRQ("SCP", "SCU", [I.PresentationContextRQ(1, CT, [IMPLICIT])])
PDVS = [
    P.PDV(1, True, True, b"\x01\x02" * 20),
    P.PDV(1, False, False, bytes(range(256)) * 40),
    P.PDV(1, False, True, b""),
]
STREAM_PDUS: list[P.PDU] = [
    RQ,
    P.PDataTF(PDVS[:1]),
    P.PDataTF(PDVS[1:]),
    P.ReleaseRQ(),
    P.Abort(2, 6),
]
STREAM = b"".join(P.encode(pdu) for pdu in STREAM_PDUS)


def _plain(pdu: P.PDU) -> P.PDU:
    """``pdu`` with its PDV data as bytes (views compare equal only to views)."""
    if isinstance(pdu, P.PDataTF):
        return P.PDataTF(
            [P.PDV(v.context_id, v.is_command, v.is_last, bytes(v.data)) for v in pdu.pdvs]
        )
    return pdu


def test_parse_whole_stream() -> None:
    buf = bytearray(STREAM)
    pdus, used = P.PDUReader().parse(memoryview(buf))
    assert used == len(STREAM)
    assert [_plain(p) for p in pdus] == STREAM_PDUS


@given(st.sets(st.integers(1, len(STREAM) - 1), max_size=40))
@settings(max_examples=100, deadline=None)
def test_parse_random_chunks_gives_each_pdu_when_complete(cuts: set[int]) -> None:
    ends, end = [], 0
    for pdu in STREAM_PDUS:
        end += len(P.encode(pdu))
        ends.append(end)
    bounds = [0, *sorted(cuts), len(STREAM)]
    shell = pdu_receiver()
    out: list[P.PDU] = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        got = shell.receive(STREAM[a:b])
        # the PDUs at the same moments: every one whose last byte has come, no other
        assert [_plain(pdu) for pdu in got] == STREAM_PDUS[len(out) : sum(e <= b for e in ends)]
        out += got
    assert len(out) == len(STREAM_PDUS)
    assert shell.buffered == 0


def test_parse_gives_views_into_the_buffer() -> None:
    buf = bytearray(P.encode(P.PDataTF(PDVS)))
    (pdu,), _ = P.PDUReader().parse(memoryview(buf))
    data = pdu.pdvs[1].data
    assert isinstance(data, memoryview) and data.obj is buf
    buf[12 + 40 + 6] ^= 0xFF  # the shell reusing its buffer shows through
    assert data[0] == 0xFF


def test_parse_checks_the_header_of_an_incomplete_pdu() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        P.PDUReader(max_pdata=16384).parse(
            memoryview(P.encode(P.ReleaseRQ()) + b"\x04\0\0\0\x40\x01")
        )
    assert info.value.reason == 6
    assert info.value.pdus == [P.ReleaseRQ()]
    pdus, used = P.PDUReader(max_pdata=16384).parse(memoryview(b"\x04\0\0\0\x40\x00"))
    assert (pdus, used) == ([], 0)


def test_pdu_size() -> None:
    assert P.pdu_size(b"") == 6
    assert P.pdu_size(b"\x04\0\0\0") == 6
    assert P.pdu_size(b"\x04\0\0\0\x40\x00") == 6 + 0x4000
    assert P.pdu_size(STREAM) == len(P.encode(RQ))


@pytest.mark.parametrize("size", [0, 1, 4094, 4095, 4096, 70000])
def test_encode_pdata_each_is_one_pdu_per_pdv(size: int) -> None:
    pdvs = [P.PDV(3, False, False, memoryview(bytes(size))), P.PDV(5, True, True, b"ab")]
    out: list = []
    P.encode_pdata_each(pdvs, out)
    assert b"".join(out) == b"".join(P.encode(P.PDataTF([pdv])) for pdv in pdvs)
    if size >= 4096:  # long data is not copied
        assert any(part is pdvs[0].data for part in out)
    assert b"".join(P.encode_pdata_parts(pdvs)) == P.encode(P.PDataTF(pdvs))
    assert read_pdus(b"".join(out)) == [P.PDataTF([pdv]) for pdv in pdvs]


def test_send_each_is_send_pdvs_once_per_pdv_and_copies_no_long_data() -> None:
    big = P.PDV(1, False, False, memoryview(bytes(range(256)) * 64))
    a, _ = associated()
    b, _ = associated()
    a.send_each([PDVS[0], big, PDVS[2]])
    for pdv in (PDVS[0], big, PDVS[2]):
        b.send_pdvs([pdv])
    parts = a.parts_to_send()
    assert any(part is big.data for part in parts)
    assert b"".join(parts) == sent_bytes(b)
    assert read_pdus(b"".join(parts)) == [P.PDataTF([pdv]) for pdv in (PDVS[0], big, PDVS[2])]
    assert a.parts_to_send() == [] and b.parts_to_send() == []


def test_send_each_outside_sta6_follows_the_state_table() -> None:
    conn = Connection(Role.ACCEPTOR)
    conn.transport_connected()  # Sta2: a P-DATA request is not allowed
    with pytest.raises(Exception) as via_each:
        conn.send_each([PDVS[0]])
    other = Connection(Role.ACCEPTOR)
    other.transport_connected()
    with pytest.raises(Exception) as via_pdvs:
        other.send_pdvs([PDVS[0]])
    assert type(via_each.value) is type(via_pdvs.value)


def _plain_events(events: list) -> list:
    """``events`` with their PDV data as bytes, to compare and show."""
    return [
        DataIndication(_plain(P.PDataTF(e.pdvs)).pdvs) if isinstance(e, DataIndication) else e
        for e in events
    ]


@given(st.sets(st.integers(1, 2000), max_size=12))
@settings(max_examples=50, deadline=None)
def test_receive_view_gives_the_same_events_however_the_input_is_cut(cuts: set[int]) -> None:
    req, _ = associated()
    req.send_pdvs(PDVS[:1])
    req.send_pdvs(PDVS[1:])
    req.release()
    stream = sent_bytes(req) + b"\x09garbage"  # then an unrecognized PDU
    _, whole = associated()
    _, cut = associated()
    expected, used = whole.receive_view(memoryview(stream))  # all of it in one call
    assert used == len(stream)
    assert [type(e).__name__ for e in expected] == [
        "DataIndication",
        "DataIndication",
        "ReleaseIndication",
        "AbortIndication",
    ]
    got = Receiver(cut.receive_view).receive_chunks(stream, cuts)
    assert _plain_events(got) == _plain_events(expected)
    assert cut.state is whole.state
    assert sent_bytes(cut) == sent_bytes(whole)
    assert cut.receive_view(memoryview(b"more")) == ([], 4)  # input is discarded now
