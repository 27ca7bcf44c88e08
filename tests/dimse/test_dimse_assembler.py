"""DimseAssembler: PDVs in, CommandReceived / DatasetFragment out (PS3.7 6.3, PS3.8 E.1)."""

from __future__ import annotations

import pytest

from dicomstore.dimse import (
    CEchoRQ,
    CommandReceived,
    CStoreRQ,
    CStoreRSP,
    DatasetFragment,
    DimseAssembler,
    InvalidRequest,
    command_pdvs,
)
from dicomstore.errors import RemoteProtocolError
from dicomstore.ul.pdu import PDV

CT = "1.2.840.10008.5.1.4.1.1.2"
STORE = CStoreRQ(1, CT, "1.2.3.4")
ECHO = CEchoRQ(2)


def cmd(message: object, ctx: int = 1, max_pdu: int = 0) -> list[PDV]:
    return command_pdvs(ctx, message.encode(), max_pdu)  # type: ignore[attr-defined]


def data(payload: bytes, ctx: int = 1, last: bool = False) -> PDV:
    return PDV(ctx, False, last, payload)


def feed(assembler: DimseAssembler, pdvs: list[PDV]) -> list[object]:
    events: list[object] = []
    for pdv in pdvs:
        events += assembler.receive(pdv)
    return events


def test_store_then_echo_sequence() -> None:
    a = DimseAssembler()
    assert a.idle and not a.dataset_in_progress
    events = feed(a, cmd(STORE))
    assert events == [CommandReceived(1, STORE)]
    assert a.dataset_in_progress and not a.idle
    assert a.receive(data(b"ab")) == [DatasetFragment(1, b"ab", False)]
    assert a.receive(data(b"cd", last=True)) == [DatasetFragment(1, b"cd", True)]
    assert a.idle
    assert feed(a, cmd(ECHO, ctx=3)) == [CommandReceived(3, ECHO)]
    assert a.idle


def test_an_empty_data_set_fragment_gives_nothing_unless_it_is_the_last() -> None:
    """PS3.8 E.1: a fragment has an even length, none included (review53 #2)."""
    a = DimseAssembler()
    feed(a, cmd(STORE))
    assert a.receive(data(b"")) == [] and a.dataset_in_progress
    assert a.receive(data(b"ab")) == [DatasetFragment(1, b"ab", False)]
    assert a.receive(data(b"", last=True)) == [DatasetFragment(1, b"", True)]
    assert a.idle


def test_fragmented_command_is_emitted_on_the_last_fragment() -> None:
    a = DimseAssembler()
    pdvs = cmd(STORE, max_pdu=20)
    assert len(pdvs) > 3
    for pdv in pdvs[:-1]:
        assert a.receive(pdv) == []
        assert a.command_in_progress
    assert a.receive(pdvs[-1]) == [CommandReceived(1, STORE)]
    assert not a.command_in_progress


def test_dataset_fragments_are_passed_through_untouched() -> None:
    a = DimseAssembler()
    feed(a, cmd(STORE))
    chunk = memoryview(b"x" * 1000)
    (event,) = a.receive(data(chunk))
    assert event.data is chunk  # type: ignore[attr-defined]


def test_response_without_dataset() -> None:
    a = DimseAssembler()
    rsp = CStoreRSP(1, 0, CT, "1.2.3.4")
    assert feed(a, cmd(rsp)) == [CommandReceived(1, rsp)]
    assert a.idle


def test_invalid_request_with_dataset_still_streams_its_dataset() -> None:
    a = DimseAssembler()
    raw = ECHO.encode().replace(b"\x01\x01", b"\x00\x00")  # C-ECHO-RQ declaring a data set
    (event,) = a.receive(PDV(1, True, True, raw))
    assert isinstance(event.message, InvalidRequest)  # type: ignore[attr-defined]
    assert a.dataset_in_progress
    assert a.receive(data(b"zz", last=True)) == [DatasetFragment(1, b"zz", True)]


@pytest.mark.parametrize(
    ("pdvs", "match"),
    [
        ([data(b"ab")], "no command awaiting"),
        ([*cmd(ECHO), data(b"ab")], "declares none"),
        ([*cmd(STORE), data(b"ab", last=True), data(b"cd")], "no command awaiting"),
        ([*cmd(STORE), data(b"ab", ctx=3)], "its command came on context 1"),
        ([*cmd(STORE), data(b"ab"), data(b"cd", ctx=5)], "its command came on context 1"),
        ([*cmd(STORE), *cmd(ECHO)], "while a data set"),
        ([*cmd(STORE), data(b"ab"), *cmd(ECHO)], "while a data set"),
        ([cmd(STORE, max_pdu=20)[0], cmd(STORE, ctx=3, max_pdu=20)[1]], "switch"),
        ([cmd(STORE, max_pdu=20)[0], data(b"ab")], "while a command set is incomplete"),
        ([PDV(1, True, True, b"\x00\x00")], "too short"),
    ],
)
def test_protocol_errors(pdvs: list[PDV], match: str) -> None:
    a = DimseAssembler()
    with pytest.raises(RemoteProtocolError, match=match):
        feed(a, pdvs)


def test_command_cap() -> None:
    a = DimseAssembler(max_command_length=100)
    a.receive(PDV(1, True, False, b"\0" * 60))
    with pytest.raises(RemoteProtocolError, match="larger than 100"):
        a.receive(PDV(1, True, False, b"\0" * 60))
    with pytest.raises(RemoteProtocolError, match="larger than 100"):
        DimseAssembler(100).receive(PDV(1, True, False, b"\0" * 101))
    with pytest.raises(RemoteProtocolError, match="larger than 100"):
        DimseAssembler(100).receive(PDV(1, True, True, b"\0" * 101))


def test_error_reason_is_unexpected_parameter() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        DimseAssembler().receive(data(b"ab"))
    assert info.value.reason == 5


def test_many_messages_back_to_back() -> None:
    a = DimseAssembler()
    for i in range(1, 50):
        rq = CStoreRQ(i, CT, f"1.2.3.{i}")
        events = feed(a, [*cmd(rq, ctx=2 * i + 1), data(b"1234", ctx=2 * i + 1, last=True)])
        assert events[0] == CommandReceived(2 * i + 1, rq)
        assert a.idle
