"""A Message ID is unique among the operations in progress on an association (PS3.7
9.1.1.1, review68 #5): while a C-FIND of Message ID 7 runs, a C-MOVE-RQ or a C-STORE-RQ of
Message ID 7 is answered 0210, whichever SCP runs it; another Message ID is served; and a
C-CANCEL-RQ cancels the operation it names only on that operation's presentation context."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.archive.archive_testlib import CT, dataset
from tests.conftest import ServerThread
from tests.services.query_testlib import STUDY_ROOT, audited_server, fill, identifier

from dicomstore import uids
from dicomstore.aio.client import associate
from dicomstore.dimse import (
    CCancelRQ,
    CFindRQ,
    CFindRSP,
    CMoveRQ,
    CommandReceived,
    CStoreRQ,
    command_pdvs,
    dataset_pdvs,
)
from dicomstore.services import query_scp
from dicomstore.services.conversion import encode_dataset

FIND_ID = 7
FIND = f"CFindRSP {FIND_ID}"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "archive"
    fill(root)  # (4 studies)
    return root


@pytest.fixture
def held_find(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ServerThread, threading.Event]]:
    """The server, its C-FINDs held until the returned event is set."""
    gate = threading.Event()
    real_answer = query_scp.QuerySCP.answer

    async def held(self: Any, op: Any) -> None:
        await asyncio.to_thread(gate.wait, 30)
        await real_answer(self, op)

    monkeypatch.setattr(query_scp.QuerySCP, "answer", held)
    with audited_server(root) as (srv, _audit):
        yield srv, gate
        gate.set()


async def _while_a_find_runs(
    port: int, gate: threading.Event, then: str
) -> tuple[dict[str, list[int]], list[int]]:
    """A C-FIND (Message ID 7, held), then ``then``: a C-MOVE-RQ or C-STORE-RQ of Message
    ID 7 and a C-STORE-RQ of 8 ("move", "store"), or a C-CANCEL-RQ for 7 on the C-MOVE
    context ("cancel"); the gate is opened once those are answered (or at once after a
    cancel). The statuses of the responses by type and Message ID, and those of the
    C-FIND answered before the gate opened."""
    contexts = [
        (STUDY_ROOT, (uids.EXPLICIT_VR_LE,)),
        (uids.STUDY_ROOT_QR_MOVE, (uids.EXPLICIT_VR_LE,)),
        (CT, (uids.EXPLICIT_VR_LE,)),
    ]
    assoc = await associate("127.0.0.1", port, contexts=contexts)
    answered: dict[str, list[int]] = {}
    other, find_done = asyncio.Event(), asyncio.Event()
    wanted = {"move": 1, "store": 2, "cancel": 0}[then]

    def on_dimse(event: Any) -> None:
        if isinstance(event, CommandReceived):
            rsp = event.message
            key = f"{type(rsp).__name__} {rsp.message_id_being_responded_to}"
            answered.setdefault(key, []).append(rsp.status)
            if isinstance(rsp, CFindRSP) and rsp.status != 0xFF00:
                find_done.set()
            elif sum(len(v) for k, v in answered.items() if "CFind" not in k) >= wanted:
                other.set()

    assoc._on_dimse = on_dimse  # type: ignore[method-assign]
    find_ctx, move_ctx, ct_ctx = (assoc.context_for(c) for c, _ in contexts)
    assert find_ctx and move_ctx and ct_ctx and assoc.negotiated is not None
    conn, max_pdu = assoc.t.conn, assoc.negotiated.peer_max_pdu

    def send(ctx: int, command: bytes, data: bytes | None = None) -> None:
        conn.send_each(command_pdvs(ctx, command, max_pdu))
        if data is not None:
            conn.send_each(dataset_pdvs(ctx, data, max_pdu, True))

    query = identifier("STUDY", StudyInstanceUID="")
    send(
        find_ctx.id,
        CFindRQ(FIND_ID, STUDY_ROOT).encode(),
        encode_dataset(query, uids.EXPLICIT_VR_LE),
    )
    if then == "move":
        move = CMoveRQ(FIND_ID, uids.STUDY_ROOT_QR_MOVE, move_destination="NOWHERE")
        send(move_ctx.id, move.encode(), encode_dataset(query, uids.EXPLICIT_VR_LE))
    elif then == "store":
        for message_id, uid in ((FIND_ID, "1.2.77.1"), (8, "1.2.77.2")):
            data = dataset(uid, study="1.2.77", series="1.2.77.1", patient_id="P77")
            send(ct_ctx.id, CStoreRQ(message_id, CT, uid).encode(), data)
    else:
        send(move_ctx.id, CCancelRQ(FIND_ID).encode())
    assoc.t.write_now()
    if wanted:
        await asyncio.wait_for(other.wait(), 30)
    finds_before = list(answered.get(FIND, []))
    gate.set()
    await asyncio.wait_for(find_done.wait(), 30)
    await asyncio.wait_for(assoc.release(), 30)
    return answered, finds_before


def test_a_c_move_of_a_message_id_a_c_find_runs_is_0210(held_find) -> None:
    srv, gate = held_find
    answered, finds_before = asyncio.run(_while_a_find_runs(srv.port, gate, "move"))
    assert finds_before == []  # (the C-MOVE was answered while the C-FIND was held)
    assert answered[f"CMoveRSP {FIND_ID}"] == [0x0210]
    assert answered[FIND] == [0xFF00] * 4 + [0x0000]


def test_a_c_store_of_a_message_id_a_c_find_runs_is_0210(held_find) -> None:
    srv, gate = held_find
    answered, finds_before = asyncio.run(_while_a_find_runs(srv.port, gate, "store"))
    assert finds_before == []
    assert answered[f"CStoreRSP {FIND_ID}"] == [0x0210]
    assert answered["CStoreRSP 8"] == [0x0000]  # (another Message ID: stored)
    assert answered[FIND][-1] == 0x0000


def test_a_c_cancel_on_another_context_cancels_nothing(held_find, caplog) -> None:
    srv, gate = held_find
    with caplog.at_level(logging.INFO, logger="dicomstore.server"):
        answered, _ = asyncio.run(_while_a_find_runs(srv.port, gate, "cancel"))
    assert answered[FIND] == [0xFF00] * 4 + [0x0000]  # (cancelled: FE00)
    assert any(f"C-CANCEL-RQ, message {FIND_ID} not in progress" in m for m in caplog.messages)


def test_the_id_of_an_operation_answered_is_free_at_once(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review72 F1: an ID was "in progress" until its task ended, a few loop turns after
    its final response: a peer reusing it at once was answered 0210 (1 in 100)."""
    gate = threading.Event()
    real_answer = query_scp.QuerySCP.answer

    async def lingering(self: Any, op: Any) -> None:
        await real_answer(self, op)
        await asyncio.to_thread(gate.wait, 30)  # (answered, its task not yet ended)

    monkeypatch.setattr(query_scp.QuerySCP, "answer", lingering)

    async def main(port: int) -> list[str]:
        contexts = [(STUDY_ROOT, (uids.EXPLICIT_VR_LE,)), (CT, (uids.EXPLICIT_VR_LE,))]
        assoc = await associate("127.0.0.1", port, contexts=contexts)
        finals: list[str] = []
        final = asyncio.Event()

        def on_dimse(event: Any) -> None:
            if isinstance(event, CommandReceived) and event.message.status != 0xFF00:
                finals.append(f"{type(event.message).__name__} {event.message.status:04X}")
                final.set()

        assoc._on_dimse = on_dimse  # type: ignore[method-assign]
        find_ctx, ct_ctx = (assoc.context_for(c) for c, _ in contexts)
        assert find_ctx and ct_ctx and assoc.negotiated is not None
        conn, max_pdu = assoc.t.conn, assoc.negotiated.peer_max_pdu
        query = encode_dataset(identifier("STUDY", StudyInstanceUID=""), uids.EXPLICIT_VR_LE)
        store = dataset("1.2.77.3", study="1.2.77", series="1.2.77.1", patient_id="P77")
        for ctx, command, data in (
            (find_ctx.id, CFindRQ(FIND_ID, STUDY_ROOT).encode(), query),
            (ct_ctx.id, CStoreRQ(FIND_ID, CT, "1.2.77.3").encode(), store),
            (find_ctx.id, CFindRQ(FIND_ID, STUDY_ROOT).encode(), query),
        ):
            final.clear()
            conn.send_each(command_pdvs(ctx, command, max_pdu))
            conn.send_each(dataset_pdvs(ctx, data, max_pdu, True))
            assoc.t.write_now()
            await asyncio.wait_for(final.wait(), 30)
        gate.set()
        await asyncio.wait_for(assoc.release(), 30)
        return finals

    with audited_server(root) as (srv, _audit):
        try:
            finals = asyncio.run(main(srv.port))
        finally:
            gate.set()
    assert finals == ["CFindRSP 0000", "CStoreRSP 0000", "CFindRSP 0000"]
