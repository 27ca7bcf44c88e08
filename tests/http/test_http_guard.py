"""The HTTP connection's bounds (http/guard.py, review35a F1): a request left half sent
is answered 408 and closed, a connection beyond the most is answered 503, a response
the client is slow to read is not cut, and the DICOM door is not starved."""

from __future__ import annotations

import asyncio
import http.client
import logging
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from http_testlib import HttpThread, make_dataset, multipart_body, part10, store, store_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian
from tests.conftest import free_port, serve_command, wait_listening

from dicomstore.archive import Archive
from dicomstore.http import HttpServer
from dicomstore.http.limits import HttpLimits

STUDY = "1.2.826.0.1.3680043.10.35"
#: the deadline of these tests' servers: short, so that waiting for it is quick
TIMEOUT = 0.5


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[HttpThread, Archive]]:
    archive = Archive(tmp_path / "archive", fsync=False)
    limits = HttpLimits(max_connections=3, request_timeout=TIMEOUT, answer_timeout=30)
    with HttpThread(archive, limits=limits) as web:
        yield web, archive
    archive.close()


def _connect(web: HttpThread) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", web.server.port), timeout=30)
    return sock


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.mark.parametrize(
    "sent",
    [
        b"",  # nothing at all
        b"GET /studies HTTP/1.1\r\nHost: localhost\r\n",  # half a head
        b"POST /studies HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n"
        b'Content-Type: multipart/related; type="application/dicom"; boundary=B\r\n\r\n--B\r\n',
    ],
    ids=["nothing", "half-a-head", "half-a-body"],
)
def test_a_request_left_half_sent_is_408_and_closed(served, sent, caplog) -> None:
    web, archive = served
    with _connect(web) as sock:
        sock.sendall(sent)
        answer = _answer(sock)  # (the server closes it: no wait of ours)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert "dropped (408): no bytes of its request for 0.5s" in caplog.text
    assert not list(archive.instances())


def test_a_request_dropped_408_is_logged_408(served) -> None:
    """review87 F6: the access log said 400 (the app's answer to the disconnect it
    read, which never went out) for a request the guard answered 408."""
    web, _ = served
    logged, lines = threading.Event(), []

    class Lines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())
            logged.set()

    access, handler = logging.getLogger("dicomstore.http.access"), Lines()
    level = access.level
    access.setLevel(logging.INFO)
    access.addHandler(handler)
    try:
        with _connect(web) as sock:
            sock.sendall(
                b"POST /studies HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n"
                b'Content-Type: multipart/related; type="application/dicom"; boundary=B\r\n'
                b"\r\n--B\r\n"
            )
            assert _answer(sock).startswith(b"HTTP/1.1 408 ")
        assert logged.wait(30)
    finally:
        access.removeHandler(handler)
        access.setLevel(level)
    assert lines[0].startswith('127.0.0.1 - "POST /studies" 408 0B ')


def test_a_connection_beyond_the_most_is_503(served, caplog) -> None:
    web, _ = served
    held = [_connect(web) for _ in range(3)]
    try:
        for sock in held:  # (each seen by the server: it answers a whole request)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        with _connect(web) as fourth:  # (its request unread: answered, not reset)
            fourth.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert _answer(fourth).startswith(b"HTTP/1.1 503 Service Unavailable")
        assert "refused (503): 3 connections open, the most" in caplog.text
    finally:
        for sock in held:
            sock.close()
    for _ in range(200):  # once the server has seen them close, it serves again
        with _connect(web) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            if _answer(sock).startswith(b"HTTP/1.1 200 "):
                break
    else:
        pytest.fail("no connection served after the others closed")


def test_a_connection_beyond_the_most_from_its_address_is_503(tmp_path: Path, caplog) -> None:
    """--http-max-per-address: one client cannot hold every connection; another
    address is still served (as the DICOM door's --max-per-address)."""
    archive = Archive(tmp_path / "archive", fsync=False)
    limits = HttpLimits(max_connections=10, max_per_address=2, request_timeout=30)
    with HttpThread(archive, limits=limits) as web:
        held = [_connect(web) for _ in range(2)]
        try:
            for sock in held:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
                assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
            with _connect(web) as third:
                third.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
                assert _answer(third).startswith(b"HTTP/1.1 503 Service Unavailable")
            other = socket.create_connection(
                ("127.0.0.1", web.server.port), timeout=30, source_address=("127.0.0.2", 0)
            )
            with other:
                other.sendall(
                    b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                )
                assert _answer(other).startswith(b"HTTP/1.1 200 ")
        finally:
            for sock in held:
                sock.close()
    archive.close()
    assert "refused (503): 2 connections from 127.0.0.1 open, the most" in caplog.text


def test_the_per_address_option_reaches_the_limits() -> None:
    from dicomstore.cli import build_parser
    from dicomstore.cli.http_options import http_limits

    argv = ["serve", "--storage", "s", "--http-port", "0"]
    assert http_limits(build_parser(argv).parse_args(argv)).max_per_address == 0
    argv += ["--http-max-per-address", "4"]
    assert http_limits(build_parser(argv).parse_args(argv)).max_per_address == 4


def test_a_response_read_slowly_is_not_cut(served) -> None:
    """A client reading a large answer sends nothing meanwhile: it owes us nothing."""
    web, archive = served
    for n in range(1, 9):
        ds = make_dataset(f"{STUDY}.1.{n}", study=STUDY, series=STUDY + ".1", rows=512)
        store(archive, ds)
    expected = httpx.get(f"{web.url}/studies/{STUDY}", timeout=30).content
    slow = http.client.HTTPConnection("127.0.0.1", web.server.port, timeout=30)
    try:
        slow.request("GET", f"/studies/{STUDY}")
        reply = slow.getresponse()
        first = reply.read(100)
        # Two deadlines pass while `slow` reads nothing: an idle connection's 408 shows each.
        for _ in range(2):
            with _connect(web) as idle:
                assert _answer(idle).startswith(b"HTTP/1.1 408 ")
        body = first + reply.read()  # (IncompleteRead if it were cut)
    finally:
        slow.close()
    assert reply.status == 200 and len(body) == len(expected)  # (boundaries differ)


def test_serve_options_set_the_bounds(tmp_path: Path) -> None:
    """--http-timeout and --http-max-connections reach the HTTP door; the DICOM door
    still answers while a client leaves a request half sent."""
    port, http_port = free_port(), free_port()
    command = serve_command(
        port,
        tmp_path / "store",
        *("--http-port", str(http_port), "--http-timeout", "0.5"),
        *("--http-max-connections", "1"),
    )
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(http_port, proc)
        with socket.create_connection(("127.0.0.1", http_port), timeout=30) as half:
            half.sendall(b"GET /studies HTTP/1.1\r\n")
            with socket.create_connection(("127.0.0.1", http_port), timeout=30) as second:
                assert _answer(second).startswith(b"HTTP/1.1 503 ")
            echo = subprocess.run(
                [*serve_command(port, tmp_path)[:3], "echo", "127.0.0.1", str(port)],
                capture_output=True,
                timeout=60,
            )
            assert echo.returncode == 0, echo.stderr
            assert _answer(half).startswith(b"HTTP/1.1 408 ")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "refused (503)" in err and "dropped (408)" in err


@pytest.mark.parametrize(
    ("sent", "answer"),
    [
        (
            b"GET /studies?PatientName=" + b"a" * 200_000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n",
            431,
        ),
        (b"GET /studies HTTP/1.1\r\nHost: localhost\r\nX: " + b"a" * 1_000_000 + b"\r\n\r\n", 431),
        # (review87 F5: a head whole within uvicorn's second read of 64 KiB passed)
        (b"GET /studies HTTP/1.1\r\nHost: localhost\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", 431),
        (b"GET /studies HTTP/1.1\r\nHost: localhost\r\nX: " + b"a" * 100_000 + b"\r\n\r\n", 431),
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
    ],
    ids=["long-url", "long-header", "70k-header", "100k-header", "garbage"],
)
def test_a_head_too_long_or_not_http_is_answered_readably(served, sent, answer, caplog) -> None:
    """review35a F9: the connection was reset (the answer lost), the log said nothing
    of the client or the limit."""
    web, _ = served
    with _connect(web) as sock:
        sock.sendall(sent)  # (never shut down: the server lingers, reading, before closing)
        reply = _answer(sock)
    assert reply.startswith(f"HTTP/1.1 {answer} ".encode())
    assert f"refused ({answer})" in caplog.text
    assert "Invalid HTTP request received" not in caplog.text  # (uvicorn's: said once)


def test_a_request_framed_two_ways_is_400_and_the_next_one_is_not_read(served, caplog) -> None:
    """review118 F1: a request with both Content-Length and Transfer-Encoding was taken
    (read chunked) and its connection kept, the bytes after it read as a next request:
    a proxy framing by the length sees other requests (RFC 9112 6.3 rule 3, 11.2)."""
    web, archive = served
    with _connect(web) as sock:
        sock.sendall(
            b"POST /studies HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n"
            b'Content-Type: multipart/related; type="application/dicom"; boundary=B\r\n\r\n'
            b"0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
        )
        reply = _answer(sock)
    assert reply.startswith(b"HTTP/1.1 400 ") and reply.count(b"HTTP/1.1 ") == 1, reply
    assert b"Connection: close" in reply and b"Content-Length and Transfer-Encoding" in reply
    assert "refused (400): framed by both Content-Length and Transfer-Encoding" in caplog.text


def test_refused_connections_linger_a_bounded_few(served, monkeypatch) -> None:
    """review35d D1: each 503 lingered 2 s outside the cap, so a flood of them took
    every descriptor (and the DICOM port); at most MAX_LINGERING linger, the others
    are closed at once, and none counts toward the cap."""
    from dicomstore.http import guard

    monkeypatch.setattr(guard, "MAX_LINGERING", 2)
    web, _ = served
    protocol = web.server._server.config.http_protocol_class
    held = [_connect(web) for _ in range(3)]
    refused = []
    try:
        for sock in held:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        for _ in range(10):
            sock = _connect(web)
            refused.append(sock)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 503 ")
            assert protocol.lingering <= 2
    finally:
        for sock in held + refused:
            sock.close()


def test_two_servers_start_at_once_on_one_loop(tmp_path) -> None:
    """review35d D3: the second's start failed ('no attribute create_server') when both
    patched the loop's create_server for their TLS handshake timeout."""
    import asyncio

    from dicomstore.http import HttpServer, build_app

    archive = Archive(tmp_path / "archive", fsync=False)

    async def run() -> bool:
        servers = [HttpServer(build_app(archive), "127.0.0.1", 0) for _ in range(2)]
        await asyncio.gather(*(s.start() for s in servers))
        for s in servers:
            await s.close()
        return "create_server" in vars(asyncio.get_running_loop())

    try:
        assert asyncio.run(run()) is False  # (both started; the loop's own method again)
    finally:
        archive.close()


def test_a_request_head_sent_byte_by_byte_is_408_once_the_timeout_passed(served, caplog) -> None:
    """review53 #5: each byte within the timeout of the one before kept a head open for
    ever (a slowloris: 256 such held every connection). The head is whole within the
    timeout of its first byte, or 408."""
    web, _ = served
    head = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n" + b"X-Pad: " + b"a" * 1000
    with _connect(web) as sock:
        sock.settimeout(TIMEOUT / 5)  # (the pace of the trickle: the answer is waited on)
        answer = b""
        for byte in head:  # (never whole: the answer comes first)
            sock.sendall(bytes([byte]))
            try:
                answer = sock.recv(65536)
            except TimeoutError:
                continue
            break
        sock.settimeout(30)
        answer += _answer(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert "dropped (408): its request head not whole for 0.5s" in caplog.text


def _trickle(sock: socket.socket, body: bytes, chunk: int, pace: float) -> bytes:
    """Send ``body`` ``chunk`` bytes at a time, one each ``pace`` seconds (the pace is a
    wait on the answer); what the server answered."""
    sock.settimeout(pace)
    answer = b""
    for at in range(0, len(body), chunk):
        try:
            sock.sendall(body[at : at + chunk])
            answer = sock.recv(65536)
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            pass
        break
    sock.settimeout(30)
    return answer + _answer(sock)


def _stow_request(sop: str, size: int = 40) -> tuple[bytes, bytes]:
    ds = make_dataset(sop, study=STUDY, frames=1, rows=size, columns=size)  # (40: ~4 KB)
    body, content_type = multipart_body([part10(ds)])
    head = (
        f"POST /studies HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    return head, body


def test_a_body_trickled_under_the_least_rate_is_408(served, caplog) -> None:
    """review76 F8: each byte of a body within the timeout of the one before held its
    connection (and a STOW-RS) for ever. Under --http-min-body-rate over a span of
    --http-timeout: 408 and closed, nothing stored."""
    web, archive = served
    head, body = _stow_request(STUDY + ".1.81")
    with _connect(web) as sock:
        sock.sendall(head)
        answer = _trickle(sock, body, 1, TIMEOUT / 10)  # (about 10 bytes/s: under 500)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert "dropped (408): its body slower than --http-min-body-rate 500 bytes/s (" in caplog.text
    assert archive.path_of(STUDY + ".1.81") is None


def test_a_body_over_the_least_rate_is_stored_however_long_it_takes(served) -> None:
    """A slow link is not a slowloris: a body sent above the rate over several spans."""
    web, archive = served
    head, body = _stow_request(STUDY + ".1.82")
    chunk = len(body) // 15  # (15 chunks, TIMEOUT/5 apart: three spans or more, ~2 KB/s)
    with _connect(web) as sock:
        sock.sendall(head)
        answer = _trickle(sock, body, chunk, TIMEOUT / 5)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert archive.path_of(STUDY + ".1.82") is not None


def test_a_body_in_bursts_whose_average_keeps_up_is_stored(served) -> None:
    """review79 F6: measured over fixed spans, a span holding one burst of a body sent
    above the rate was under it (curl --limit-rate 800 got 408). Credit carries over:
    200 bytes every 0.6 TIMEOUT seconds (667 bytes/s) is stored."""
    web, archive = served
    head, body = _stow_request(STUDY + ".1.83", size=20)
    with _connect(web) as sock:
        sock.sendall(head)
        answer = _trickle(sock, body, 200, TIMEOUT * 0.6)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert archive.path_of(STUDY + ".1.83") is not None


def test_the_least_body_rate_option_reaches_the_limits() -> None:
    from dicomstore.cli import build_parser
    from dicomstore.cli.http_options import http_limits

    argv = ["serve", "--storage", "s", "--http-port", "0"]
    assert http_limits(build_parser(argv).parse_args(argv)).min_body_rate == 500
    argv += ["--http-min-body-rate", "0"]
    assert http_limits(build_parser(argv).parse_args(argv)).min_body_rate == 0


class _SlowReader:
    """An app that reads a request's body only once the test lets it."""

    def __init__(self, limits: HttpLimits) -> None:
        self.state = SimpleNamespace(limits=limits)
        self.go = asyncio.Event()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await self.go.wait()
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(size).encode()})


def test_a_client_waiting_for_100_continue_owes_nothing_meanwhile(caplog) -> None:
    """review79 F8: a client that waits for 100 Continue (RFC 9110 10.1.1) while the app
    is slow to start reading was dropped (408) and blamed for the server's delay."""
    app = _SlowReader(HttpLimits(request_timeout=TIMEOUT))
    loop = asyncio.new_event_loop()
    server = HttpServer(app, "127.0.0.1", 0)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(30)
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(
                b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n"
                b"Expect: 100-continue\r\n\r\n"
            )
            sock.settimeout(TIMEOUT * 3)  # (three timeouts: nothing comes meanwhile)
            with pytest.raises(TimeoutError):
                sock.recv(65536)
            sock.settimeout(30)
            loop.call_soon_threadsafe(app.go.set)
            assert sock.recv(65536).startswith(b"HTTP/1.1 100 ")
            sock.sendall(b"x" * 1000)
            answer = b""
            while not answer.endswith(b"0\r\n\r\n"):  # (the chunked answer's end)
                answer += sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200 ") and b"\r\n1000\r\n" in answer
        assert "dropped (408)" not in caplog.text
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


class _Said(logging.Handler):
    """Set :attr:`event` when a record of ``dicomstore.http.limits`` says ``words``."""

    def __init__(self, words: str) -> None:
        super().__init__()
        self.words, self.event = words, threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.words in record.getMessage():
            self.event.set()


def test_an_answer_left_unread_is_cut_off_and_its_transcoding_place_let_go(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    """review94 F1: a client that takes none of its answer held the connection, and a
    transcoded answer's place (8 in all), for ever: after --http-timeout seconds of
    nothing taken it is cut off and logged, and the place is free again; review94 F2:
    the 503 of a place asked for while all are taken is a WARNING naming the client."""
    from dicomstore.http import transcoding

    monkeypatch.setattr(transcoding.TRANSCODING, "free", threading.BoundedSemaphore(1))
    let_go, release = threading.Event(), transcoding.Slot.release

    def released(slot: Any) -> None:
        release(slot)
        let_go.set()

    monkeypatch.setattr(transcoding.Slot, "release", released)
    archive = Archive(tmp_path / "archive", fsync=False)
    # (16 MiB: more than the system's send buffer and the transport's hold)
    ds = make_dataset(f"{STUDY}.9.1", study=STUDY, series=STUDY + ".9", frames=1, rows=4096)
    ds.Columns = 2048
    ds.PixelData = bytes(4096 * 2048 * 2)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    path = tmp_path / "implicit.dcm"
    ds.save_as(path, enforce_file_format=True)
    store_file(archive, path)  # (stored Implicit VR: application/dicom transcodes it)
    target = f"/studies/{STUDY}/series/{STUDY}.9/instances/{STUDY}.9.1"
    request = f"GET {target} HTTP/1.1\r\nHost: localhost\r\nAccept: application/dicom\r\n\r\n"
    limits = HttpLimits(request_timeout=30, answer_timeout=TIMEOUT)
    said = _Said("took none of its answer")
    logger = logging.getLogger("dicomstore.http.limits")
    logger.addHandler(said)
    caplog.set_level(logging.INFO, logger="dicomstore")
    try:
        with HttpThread(archive, limits=limits) as web, socket.socket() as stalled:
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stalled.connect(("127.0.0.1", web.server.port))
            stalled.sendall(request.encode())
            assert stalled.recv(12) == b"HTTP/1.1 200"  # (its place is taken: reads no more)
            busy = httpx.get(web.url + target, headers={"accept": "application/dicom"})
            assert busy.status_code == 503
            assert said.event.wait(30)  # (cut off: its place let go)
            assert let_go.wait(30)
            with pytest.raises(ConnectionResetError):  # (review95 F3: a reset, not the rest)
                while stalled.recv(1 << 20):
                    pass
            fine = httpx.get(web.url + target, headers={"accept": "application/dicom"})
            assert fine.status_code == 200 and len(fine.content) > 16 * 1024 * 1024
    finally:
        logger.removeHandler(said)
        archive.close()
    assert "cut off: it took none of its answer for 0.5s (--http-timeout)" in caplog.text
    said = [r.getMessage() for r in caplog.records if r.name == "dicomstore.http.limits"]
    refused = [m for m in said if "(503)" in m]
    assert refused and "answers are being transcoded already" in refused[0]
