"""One message at a time on the wire (PS3.7 8.2, PS3.8 E.1): a message queued while a
data set is being streamed goes out after its last fragment (the acceptor answers
while it sends a C-GET's C-STOREs); Message IDs of an Invoker (PS3.7 9.3.1.1)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dicomstore import uids
from dicomstore.aio.association import DRAIN_EVERY, Timeouts, Transport
from dicomstore.aio.invoker import Invoker
from dicomstore.dimse import CEchoRQ
from dicomstore.ul import items as I
from dicomstore.ul import pdu as P
from dicomstore.ul.connection import Connection, Role
from dicomstore.ul.negotiation import AcceptorPolicy, negotiate
from tests.ul.ul_vectors import read_pdus, receive

CT = "1.2.840.10008.5.1.4.1.1.2"


class FakeStream:
    """The writing half of a Stream, in memory; ``on_drain`` runs at each drain."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.on_drain: list[Any] = []

    def get_extra_info(self, name: str) -> None:
        return None

    def write(self, data: bytes) -> None:
        self.written += data

    def write_parts(self, parts: list[bytes]) -> None:
        for part in parts:
            self.written += part

    async def drain(self, timeout: float | None = None) -> None:
        while self.on_drain:
            self.on_drain.pop(0)()


def accepted_transport() -> tuple[Transport, FakeStream]:
    """An acceptor's transport in Sta6: Verification (1) and CT (3) accepted."""
    rq = P.AssociateRQ(
        called_ae="DICOMSTORE",
        calling_ae="PEER",
        presentation_contexts=[
            I.PresentationContextRQ(1, uids.VERIFICATION, [uids.IMPLICIT_VR_LE]),
            I.PresentationContextRQ(3, CT, [uids.EXPLICIT_VR_LE]),
        ],
        user_info=I.UserInformation(max_length=16384),
    )
    policy = AcceptorPolicy(
        abstract_syntaxes={
            uids.VERIFICATION: (uids.IMPLICIT_VR_LE,),
            CT: (uids.EXPLICIT_VR_LE,),
        }
    )
    ac, negotiated = negotiate(rq, policy)
    assert isinstance(ac, P.AssociateAC)
    conn = Connection(Role.ACCEPTOR)
    conn.transport_connected()
    receive(conn, P.encode(rq))
    conn.accept(ac)
    stream = FakeStream()
    t = Transport(stream, conn, Timeouts())  # type: ignore[arg-type]
    t.negotiated = negotiated
    stream.written.clear()
    t.write_now()  # the A-ASSOCIATE-AC
    stream.written.clear()
    return t, stream


def pdvs(data: bytes) -> list[P.PDV]:
    return [pdv for pdu in read_pdus(data) if isinstance(pdu, P.PDataTF) for pdv in pdu.pdvs]


def test_a_message_queued_mid_data_set_follows_its_last_fragment() -> None:
    t, stream = accepted_transport()
    chunks = [bytes([n]) * DRAIN_EVERY for n in range(3)]  # a drain after each chunk
    echo = CEchoRQ(9).encode()
    stream.on_drain.append(lambda: t.queue_message(1, echo))  # another task answers
    sent = asyncio.run(t.send_dataset_chunks(3, chunks))
    assert sent == 3 * DRAIN_EVERY
    out = pdvs(bytes(stream.written))
    data = [p for p in out if p.context_id == 3]
    assert b"".join(bytes(p.data) for p in data) == b"".join(chunks)
    assert [p.is_last for p in data] == [False] * (len(data) - 1) + [True]
    # the C-ECHO's command comes after the data set's last fragment, not among them
    assert [(p.context_id, p.is_command) for p in out[len(data) :]] == [(1, True)]
    assert bytes(out[-1].data) == echo


def test_a_stream_that_fails_drops_what_was_held() -> None:
    t, stream = accepted_transport()

    def chunks():
        yield bytes(DRAIN_EVERY)
        yield bytes(DRAIN_EVERY)
        raise OSError("the file went away")

    stream.on_drain.append(lambda: t.queue_message(1, CEchoRQ(9).encode()))
    with pytest.raises(OSError):
        asyncio.run(t.send_dataset_chunks(3, chunks()))
    assert all(p.context_id == 3 for p in pdvs(bytes(stream.written)))
    t.queue_message(1, CEchoRQ(10).encode())  # later messages go out at once again
    assert pdvs(bytes(stream.written))[-1].context_id == 1


def test_invoker_message_ids_skip_those_outstanding_and_zero() -> None:
    t, _stream = accepted_transport()

    async def ids() -> list[int]:
        invoker = Invoker(t, lambda: asyncio.sleep(0))
        invoker.waiting[2] = asyncio.get_running_loop().create_future()
        first = [invoker.next_id() for _ in range(3)]
        invoker._ids = iter([0xFFFF, 0x10000, 0x10001])  # type: ignore[assignment]
        return first + [invoker.next_id(), invoker.next_id()]

    assert asyncio.run(ids()) == [1, 3, 4, 0xFFFF, 1]


def test_a_command_goes_out_in_the_write_of_its_first_fragment() -> None:
    t, stream = accepted_transport()
    writes: list[int] = []
    write, write_parts = stream.write, stream.write_parts
    stream.write = lambda data: (writes.append(1), write(data))  # type: ignore[method-assign]
    stream.write_parts = lambda parts: (writes.append(len(parts)), write_parts(parts))  # type: ignore[method-assign]
    command = CEchoRQ(7).encode()  # (any command set: the transport does not read it)
    asyncio.run(t.send_dataset_chunks(3, [b"\x08\x00" * 100], command))
    assert len(writes) == 1  # a small message: one system call, one wake-up of the peer
    out = pdvs(bytes(stream.written))
    assert [(p.is_command, p.is_last) for p in out] == [(True, True), (False, True)]
    assert bytes(out[0].data) == command
    writes.clear()
    stream.written.clear()
    chunks = [bytes([n]) * DRAIN_EVERY for n in range(3)]
    asyncio.run(t.send_dataset_chunks(3, chunks, command))
    out = pdvs(bytes(stream.written))
    assert out[0].is_command and not any(p.is_command for p in out[1:])
    assert b"".join(bytes(p.data) for p in out[1:]) == b"".join(chunks)
    assert len(writes) == 3  # (the command with the first chunk, then one per chunk)


def test_with_its_size_known_each_chunk_goes_out_before_the_next_is_read() -> None:
    t, stream = accepted_transport()
    chunks = [bytes([n]) * 1000 for n in range(4)]
    seen: list[int] = []  # bytes of data set on the wire when each chunk is read

    def reading():
        for chunk in chunks:
            seen.append(sum(len(p.data) for p in pdvs(bytes(stream.written)) if not p.is_command))
            yield chunk

    sent = asyncio.run(t.send_dataset_chunks(3, reading(), CEchoRQ(7).encode(), 4000))
    assert sent == 4000 and seen == [0, 1000, 2000, 3000]
    data = [p for p in pdvs(bytes(stream.written)) if not p.is_command]
    assert b"".join(bytes(p.data) for p in data) == b"".join(chunks)
    assert [p.is_last for p in data] == [False, False, False, True]
    # without the size, a chunk waits for the next (only then is it known not the last)
    stream.written.clear()
    seen.clear()
    asyncio.run(t.send_dataset_chunks(3, reading()))
    assert seen == [0, 0, 1000, 2000]


@pytest.mark.parametrize(("size", "reason"), [(3999, "runs past"), (4001, "ended at 4000")])
def test_chunks_that_do_not_add_up_to_the_size_stop_the_stream(size: int, reason: str) -> None:
    from dicomstore.errors import LocalProtocolError

    t, stream = accepted_transport()
    chunks = [bytes(1000)] * 4
    with pytest.raises(LocalProtocolError, match=reason):
        asyncio.run(t.send_dataset_chunks(3, chunks, None, size))
    assert not any(p.is_last for p in pdvs(bytes(stream.written)))  # no last fragment sent


def test_an_empty_data_set_of_size_zero_is_one_empty_last_fragment() -> None:
    t, stream = accepted_transport()
    assert asyncio.run(t.send_dataset_chunks(3, [], None, 0)) == 0
    assert [(len(p.data), p.is_last) for p in pdvs(bytes(stream.written))] == [(0, True)]
