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
    (adopted,), lost = handoff.receive(worker)
    assert lost == 0
    adopted.sendall(b"hello")
    assert peer.recv(5) == b"hello"
    assert handoff.receive(worker) == ([], 0)  # (nothing more yet)
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


def test_nothing_is_passed_to_workers_being_stopped(pairs) -> None:
    dispatcher = handoff.Dispatcher([first for first, _ in pairs])
    dispatcher.stopping = True
    assert [_passes(dispatcher, 5) for _ in range(3)] == [0, 0, 0]  # all served here


def test_a_full_channel_serves_here_for_now_and_keeps_the_worker(pairs) -> None:
    """A worker slow to read (starting, busy) fills its channel: the connection is
    served here, and the worker gets connections again once it has read them."""
    (first, worker), _ = pairs
    dispatcher = handoff.Dispatcher([first])
    first.setblocking(False)
    first.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    passed = 0
    while _passes(dispatcher, 10_000) == 1:  # (this process always the busier)
        passed += 1
        assert passed < 5000, "the channel never filled"
    worker.setblocking(False)
    received, _ = handoff.receive(worker)
    assert len(received) == passed
    for conn in received:
        conn.close()
    assert _passes(dispatcher, 10_000) == 1  # (not taken for gone)


def test_the_first_process_listens_on_every_address_of_its_host() -> None:
    """As ``loop.create_server``: an empty host is every interface, IPv6 too."""
    from dicomstore.aio.listener import bound

    sockets = bound("", 0)
    try:
        families = {sock.family for sock in sockets}
        assert socket.AF_INET in families
        if socket.has_ipv6 and any(i[0] == socket.AF_INET6 for i in socket.getaddrinfo("::", 0)):
            assert socket.AF_INET6 in families
        assert len({sock.getsockname()[1] for sock in sockets}) == 1  # one port for all
    finally:
        for sock in sockets:
            sock.close()


def _serve_passed(connections: int, ssl_context=None, peer_sends: bytes = b"") -> tuple:
    """A worker's Listener served ``connections`` passed on its channel (each peer
    sends ``peer_sends`` and closes): (connections served, bytes said back)."""
    import asyncio

    from dicomstore.aio.listener import Listener

    async def run() -> tuple[int, bytes]:
        first, worker = handoff.channels(1)[0]
        served: list[object] = []
        ended = asyncio.Event()

        async def on_connect(stream) -> None:
            served.append(stream)

        listener = Listener("127.0.0.1", 0, on_connect, ssl_context=ssl_context, share=worker)
        await listener.start()
        loop = asyncio.get_running_loop()
        said = bytearray()
        first.setblocking(False)

        def hear() -> None:
            said.extend(first.recv(64))
            if len(said) >= connections:
                ended.set()

        loop.add_reader(first.fileno(), hear)
        peers = []
        for _ in range(connections):
            conn, peer = socket.socketpair()
            socket.send_fds(first, [b"c"], [conn.fileno()])
            conn.close()
            peer.sendall(peer_sends)
            peer.shutdown(socket.SHUT_WR)
            peers.append(peer)
        await asyncio.wait_for(ended.wait(), 20)
        await listener.close(grace=1)
        loop.remove_reader(first.fileno())
        try:
            said.extend(first.recv(64))  # (nothing more: one byte per connection)
        except BlockingIOError:
            pass
        for peer in peers:
            peer.close()
        first.close()
        return len(served), bytes(said)

    return asyncio.run(run())


def test_a_worker_says_once_that_each_connection_passed_to_it_ended() -> None:
    assert _serve_passed(3) == (3, handoff.ENDED * 3)


def test_a_failed_tls_handshake_in_a_worker_is_said_ended_once(tmp_path) -> None:
    import ssl
    import subprocess

    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "k.pem"]
        + ["-out", "c.pem", "-days", "1", "-subj", "/CN=test"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    # (a peer that speaks no TLS: the handshake fails, nothing is served)
    assert _serve_passed(2, context, b"A-ASSOCIATE-RQ, not TLS\r\n") == (0, handoff.ENDED * 2)


def test_a_connection_whose_descriptor_did_not_arrive_is_said_ended(pairs) -> None:
    """(As when the worker is out of descriptors: the kernel drops them, MSG_CTRUNC.)"""
    (first, worker), _ = pairs
    first.send(b"c")  # a connection's byte, no descriptor with it
    worker.setblocking(False)
    assert handoff.receive(worker) == ([], 1)


def test_an_end_said_into_a_full_channel_goes_when_it_has_room() -> None:
    """The worker's byte back must not be dropped when its channel is full: the
    first process would count that connection as served there for ever."""
    import asyncio

    from dicomstore.aio.listener import Listener

    async def run() -> tuple[int, int]:
        first, worker = handoff.channels(1)[0]
        worker.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        listener = Listener("127.0.0.1", 0, lambda stream: asyncio.sleep(0), share=worker)
        await listener.start()
        worker.setblocking(False)
        filler = 0
        try:
            while True:
                filler += worker.send(b"x" * 4096)
        except BlockingIOError:
            pass  # (the channel is full: the first process reads nothing meanwhile)
        for _ in range(3):
            listener._ended()  # three connections end
        dispatcher = handoff.Dispatcher([first])
        dispatcher.loads[0] = 3 + filler  # (the filler bytes read as ends too)
        room = asyncio.Event()
        loop = asyncio.get_running_loop()

        def hear() -> None:
            dispatcher._ended(0)
            if dispatcher.loads[0] == 0:
                room.set()

        loop.add_reader(first.fileno(), hear)
        await asyncio.wait_for(room.wait(), 20)
        loop.remove_reader(first.fileno())
        await listener.close(grace=1)
        unsaid = listener._unsaid
        first.close()
        worker.close()
        return dispatcher.loads[0], unsaid

    assert asyncio.run(run()) == (0, 0)


def test_the_first_process_asks_a_worker_for_its_exposition(monkeypatch) -> None:
    """A numbered question, the answer with its number; a worker that does not answer
    in time is left out, and its late answer skipped at the next question."""
    import asyncio

    async def run() -> tuple[bytes | None, bytes | None, bytes | None, bytes | None]:
        first, worker = handoff.channels(1)[0]
        asker = handoff.Asker(first, 1)
        served = asyncio.create_task(handoff.answer(worker, lambda: b"x_total 3\n" * 1000))
        got = await asker.ask(), await asker.ask()
        served.cancel()
        slow_first, slow_worker = handoff.channels(1)[0]
        monkeypatch.setattr(handoff, "ASK_TIMEOUT", 0.05)
        slow = handoff.Asker(slow_first, 2)
        late = await slow.ask()  # (nobody answers yet: a worker still starting)
        texts = iter([b"old\n", b"new\n"])
        started = asyncio.create_task(handoff.answer(slow_worker, lambda: next(texts)))
        again = await slow.ask()  # (the answer to the first question is skipped)
        started.cancel()
        worker.close()
        first.close()
        gone = await handoff.Asker(*handoff.channels(1)[0][:1], 3).ask()  # (peer closed)
        return (*got, late, again, gone)

    one, two, late, again, gone = asyncio.run(run())
    assert one == two == b"x_total 3\n" * 1000
    assert late is None and again == b"new\n" and gone is None


def test_an_answer_cut_midway_closes_the_channel(monkeypatch) -> None:
    """A timeout inside an answer leaves the stream unreadable: the channel is given up
    (that worker is left out of the scrapes), not misread."""
    import asyncio

    async def run() -> tuple[bytes | None, bool, bytes | None]:
        first, worker = handoff.channels(1)[0]
        monkeypatch.setattr(handoff, "ASK_TIMEOUT", 0.05)
        asker = handoff.Asker(first, 1)
        worker.sendall((1).to_bytes(4, "big") + (100).to_bytes(4, "big") + b"partial")
        cut = await asker.ask()
        closed = first.fileno() < 0
        again = await asker.ask()
        worker.close()
        return cut, closed, again

    assert asyncio.run(run()) == (None, True, None)
