"""Outgoing fragmentation to the peer's maximum PDU length (PS3.8 9.3.5, D.1, E.1)."""

from __future__ import annotations

import pytest
from tests.ul.ul_vectors import Receiver, associated, sent_bytes

from dicomstore.dimse import (
    DEFAULT_FRAGMENT,
    CStoreRQ,
    DimseAssembler,
    command_pdvs,
    dataset_pdvs,
    max_pdv_data,
)
from dicomstore.errors import LocalProtocolError
from dicomstore.ul.events import DataIndication
from dicomstore.ul.pdu import PDataTF, encode

DATA = bytes(range(256)) * 400  # 102400 bytes


@pytest.mark.parametrize(("max_pdu", "size"), [(4096, 4090), (16384, 16378), (0, DEFAULT_FRAGMENT)])
def test_max_pdv_data(max_pdu: int, size: int) -> None:
    assert max_pdv_data(max_pdu) == size


def test_fragment_size_is_even() -> None:
    assert max_pdv_data(4097) == 4090
    assert max_pdv_data(8) == 2


@pytest.mark.parametrize("max_pdu", [-1, 0 + 1, 6, 7])
def test_too_small_max_pdu(max_pdu: int) -> None:
    with pytest.raises(LocalProtocolError):
        max_pdv_data(max_pdu)


@pytest.mark.parametrize("max_pdu", [4096, 16384, 0])
def test_dataset_split_fits_and_rejoins(max_pdu: int) -> None:
    pdvs = dataset_pdvs(3, DATA, max_pdu, last=True)
    limit = max_pdu - 6 if max_pdu else DEFAULT_FRAGMENT
    assert all(len(p.data) <= limit for p in pdvs)
    assert all(len(p.data) % 2 == 0 for p in pdvs)
    assert b"".join(bytes(p.data) for p in pdvs) == DATA
    assert [p.is_last for p in pdvs] == [False] * (len(pdvs) - 1) + [True]
    assert all(p.context_id == 3 and not p.is_command for p in pdvs)
    expected = -(-len(DATA) // limit)
    assert len(pdvs) == expected
    for pdv in pdvs:
        encoded = encode(PDataTF([pdv]))
        assert max_pdu == 0 or len(encoded) - 6 <= max_pdu


def test_slices_are_views_not_copies() -> None:
    pdvs = dataset_pdvs(1, DATA, 4096, last=False)
    assert all(isinstance(p.data, memoryview) for p in pdvs)
    assert pdvs[1].data.obj is DATA
    assert not pdvs[-1].is_last


def test_small_data_is_passed_through() -> None:
    (pdv,) = dataset_pdvs(1, b"abcd", 4096, last=True)
    assert pdv.data == b"abcd" and pdv.is_last


def test_empty_chunk() -> None:
    assert dataset_pdvs(1, b"", 4096, last=False) == []
    (pdv,) = dataset_pdvs(1, b"", 4096, last=True)
    assert pdv.is_last and len(pdv.data) == 0


def test_multibyte_memoryview_counts_bytes() -> None:
    view = memoryview(bytearray(10000)).cast("I")
    pdvs = dataset_pdvs(1, view, 4096, last=True)
    assert sum(len(p.data) for p in pdvs) == 10000


def test_command_fragments_carry_the_command_bit() -> None:
    cmd = CStoreRQ(1, "1.2.840.10008.5.1.4.1.1.2", "1.2.3." + "4" * 58).encode()
    pdvs = command_pdvs(5, cmd, 64)
    assert len(pdvs) > 1
    assert all(p.is_command and len(p.data) <= 58 for p in pdvs)
    assert [p.is_last for p in pdvs][-2:] == [False, True]
    assert b"".join(bytes(p.data) for p in pdvs) == cmd


@pytest.mark.parametrize("max_pdu", [4096, 16384, 0])
def test_wire_round_trip_through_the_assembler(max_pdu: int) -> None:
    """Fragments sent as aio sends them, through a UL connection pair whose
    receiver advertised ``max_pdu`` (a larger PDU would abort the association)."""
    rq = CStoreRQ(1, "1.2.840.10008.5.1.4.1.1.2", "1.2.3")
    sender, receiver = associated(max_pdata=max_pdu)
    sender.send_each(command_pdvs(1, rq.encode(), max_pdu))
    sender.send_each(dataset_pdvs(1, DATA, max_pdu, last=True))
    indications = Receiver(receiver.receive_view).receive(sent_bytes(sender))
    assert receiver.is_established and sent_bytes(receiver) == b""
    assembler = DimseAssembler()
    received = bytearray()
    events = []
    for indication in indications:
        assert isinstance(indication, DataIndication)
        for pdv in indication.pdvs:
            events += assembler.receive(pdv)
    assert events[0].message == rq
    for event in events[1:]:
        received += event.data
    assert bytes(received) == DATA and events[-1].is_last and assembler.idle
