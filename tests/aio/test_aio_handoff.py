"""aio/handoff.py: the first process of ``serve --workers`` passes each connection to
the process serving the fewest, ties in turn; a worker gets working sockets and
says when one ends; a worker gone gets no more."""

from __future__ import annotations

import socket

import pytest

from dicomstore.aio import handoff


@pytest.fixture
def pairs():
    made = handoff.channels(2)
    yield made
    for first, worker in made:
        first.close()
        worker.close()


def _connection() -> tuple[socket.socket, socket.socket]:
    """(what the first process accepted, the peer's end)."""
    return socket.socketpair()


def _passes(dispatcher: handoff.Dispatcher, here: int) -> int:
    """Which process serves a new connection: 0 this one, n worker n."""
    conn, peer = _connection()
    before = list(dispatcher.loads)
    try:
        if not dispatcher.pass_on(conn, here):
            conn.close()
            return 0
        grown = zip(before, dispatcher.loads, strict=True)
        (slot,) = [n for n, (a, b) in enumerate(grown, 1) if b > a]
        return slot
    finally:
        peer.close()


def test_the_fewest_first_and_ties_in_turn(pairs) -> None:
    dispatcher = handoff.Dispatcher([first for first, _ in pairs])
    # all idle: here, worker 1, worker 2, in turn
    assert [_passes(dispatcher, 0) for _ in range(3)] == [0, 1, 2]
    assert dispatcher.loads == [1, 1]
    # this process serves 3: the workers take the next ones until they serve as many
    assert [_passes(dispatcher, 3) for _ in range(4)] == [1, 2, 1, 2]
    assert dispatcher.loads == [3, 3]


def test_a_worker_gets_a_working_socket_and_says_when_it_ends(pairs) -> None:
    (first, worker), _ = pairs
    dispatcher = handoff.Dispatcher([first])
    conn, peer = _connection()
    assert dispatcher.pass_on(conn, 1)  # (this process serves one: the worker takes it)
    assert conn.fileno() == -1  # (closed here)
    worker.setblocking(False)
    (adopted,) = handoff.receive(worker)
    adopted.sendall(b"hello")
    assert peer.recv(5) == b"hello"
    assert handoff.receive(worker) == []  # (nothing more yet)
    assert dispatcher.loads == [1]
    worker.send(handoff.ENDED)
    first.setblocking(False)
    dispatcher._ended(0)
    assert dispatcher.loads == [0]
    adopted.close()
    peer.close()


def test_a_worker_gone_gets_no_more_connections(pairs) -> None:
    (first, worker), _ = pairs
    dispatcher = handoff.Dispatcher([first])
    worker.close()  # (the worker process ended)
    first.setblocking(False)
    dispatcher._ended(0)  # (its channel reads EOF)
    for here in (0, 5, 50):
        conn, peer = _connection()
        assert not dispatcher.pass_on(conn, here)  # served here
        conn.close()
        peer.close()


def test_a_worker_sees_the_first_process_gone(pairs) -> None:
    (first, worker), _ = pairs
    first.close()
    worker.setblocking(False)
    with pytest.raises(EOFError):
        handoff.receive(worker)
