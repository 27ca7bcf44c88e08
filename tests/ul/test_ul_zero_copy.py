"""The zero-copy entry points beside the byte-oriented ones.

``PDUReader.parse`` / ``Connection.receive_view`` decode in a buffer the shell
owns (P-DATA PDV data are views into it), ``encode_pdata_parts`` /
``encode_pdata_each`` / ``Connection.parts_to_send`` leave PDV data uncopied.
Each must give exactly what ``feed`` / ``receive_data`` / ``encode_pdata`` /
``data_to_send`` give.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


class Shell:
    """What aio's Stream does with a buffer: append, parse, drop what was used."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def parse(self, reader: P.PDUReader, data: bytes) -> list[P.PDU]:
        self.buf += data
        view = memoryview(self.buf)
        pdus, used = reader.parse(view)
        plain = [_plain(pdu) for pdu in pdus]
        del pdus
        view.release()
        del self.buf[:used]
        return plain


def test_parse_whole_stream() -> None:
    buf = bytearray(STREAM)
    pdus, used = P.PDUReader().parse(memoryview(buf))
    assert used == len(STREAM)
    assert [_plain(p) for p in pdus] == STREAM_PDUS


@given(st.sets(st.integers(1, len(STREAM) - 1), max_size=40))
@settings(max_examples=100, deadline=None)
def test_parse_random_chunks_is_feed(cuts: set[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    shell, reader, fed = Shell(), P.PDUReader(), P.PDUReader()
    out: list[P.PDU] = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        chunk = STREAM[a:b]
        got = shell.parse(reader, chunk)
        assert got == fed.feed(chunk)  # the same PDUs at the same moments
        out += got
    assert out == STREAM_PDUS
    assert not shell.buf


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
    assert b"".join(out) == b"".join(P.encode_pdata([pdv]) for pdv in pdvs)
    if size >= 4096:  # long data is not copied
        assert any(part is pdvs[0].data for part in out)
    assert b"".join(P.encode_pdata_parts(pdvs)) == P.encode_pdata(pdvs)


def _established() -> tuple[Connection, Connection]:
    req, acc = Connection(Role.REQUESTOR), Connection(Role.ACCEPTOR)
    req.request(RQ)
    acc.transport_connected()
    req.transport_connected()
    acc.receive_data(req.data_to_send())
    acc.accept(P.AssociateAC("SCP", "SCU", [I.PresentationContextAC(1, 0, IMPLICIT)]))
    req.receive_data(acc.data_to_send())
    assert req.is_established and acc.is_established
    return req, acc


def test_send_each_and_parts_to_send_are_send_pdvs_and_data_to_send() -> None:
    big = P.PDV(1, False, False, memoryview(bytes(range(256)) * 64))
    a, _ = _established()
    b, _ = _established()
    a.send_each([PDVS[0], big, PDVS[2]])
    for pdv in (PDVS[0], big, PDVS[2]):
        b.send_pdvs([pdv])
    parts = a.parts_to_send()
    assert any(part is big.data for part in parts)
    assert b"".join(parts) == b.data_to_send()
    assert a.parts_to_send() == [] and a.data_to_send() == b""


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


def _view_events(conn: Connection, stream: bytes, cuts: list[int]) -> list:
    buf = bytearray()
    events = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=False):
        buf += stream[a:b]
        view = memoryview(buf)
        got, used = conn.receive_view(view)
        for event in got:
            if isinstance(event, DataIndication):
                event = DataIndication(
                    [
                        P.PDV(v.context_id, v.is_command, v.is_last, bytes(v.data))
                        for v in event.pdvs
                    ]
                )
            events.append(event)
        buf = bytearray(buf[used:])  # a new buffer: the connection may still hold views
    return events


@given(st.sets(st.integers(1, 2000), max_size=12))
@settings(max_examples=50, deadline=None)
def test_receive_view_is_receive_data(cuts: set[int]) -> None:
    req, _ = _established()
    req.send_pdvs(PDVS[:1])
    req.send_pdvs(PDVS[1:])
    req.release()
    stream = req.data_to_send() + b"\x09garbage"  # then an unrecognized PDU
    cut = sorted(c for c in cuts if c < len(stream))
    _, by_data = _established()
    _, by_view = _established()
    expected = by_data.receive_data(stream)
    assert _view_events(by_view, stream, cut) == expected
    assert by_view.state is by_data.state
    assert by_view.data_to_send() == by_data.data_to_send()
    assert by_view.receive_view(memoryview(b"more")) == ([], 4)  # input is discarded now
