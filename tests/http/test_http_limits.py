"""Every DICOMweb request is bounded (http/limits.py): 413 or 400 with the limit named,
a log line, nothing stored. The bodies are sent on raw sockets, so that a test shows
the answer comes as soon as a limit is crossed, not after the rest of the body."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from http_testlib import HttpThread, make_dataset, multipart_body, part10

from dicomstore.archive import Archive
from dicomstore.http.limits import HttpLimits
from dicomstore.services.storage import StoreLimits, StoreService

STUDY = "1.2.826.0.1.3680043.10.7"
BOUNDARY = "XbOuNdArYx"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def instance(sop: str, frames: int = 0) -> bytes:
    return part10(make_dataset(sop, study=STUDY, series=STUDY + ".1", frames=frames))


@pytest.fixture
def bounded(tmp_path: Path) -> Iterator[tuple[HttpThread, Archive]]:
    """STOW-RS with a 4 KB data set limit (the store service's) and a 64 KB body cap."""
    archive = Archive(tmp_path / "archive", fsync=False)
    store = StoreService(archive, limits=StoreLimits(max_instance_bytes=4000))
    limits = HttpLimits(max_body_bytes=64_000, max_parts=3, max_part_header_bytes=1000)
    with HttpThread(archive, store=store, limits=limits) as srv:
        yield srv, archive
    archive.close()


def raw_request(srv: HttpThread, head: str, chunks: list[bytes]) -> tuple[int, str]:
    """Send ``head`` and ``chunks`` (nothing more, the connection left open), then read
    the whole answer: the server must answer without waiting for more of the body."""
    with socket.create_connection(("127.0.0.1", srv.server.port), timeout=20) as sock:
        sock.sendall(head.encode("latin-1") + b"\r\n")
        for chunk in chunks:
            sock.sendall(chunk)
        answer = b""
        while True:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
            head, sep, body = answer.partition(b"\r\n\r\n")
            length = [v for v in head.lower().split(b"\r\n") if v.startswith(b"content-length:")]
            if sep and length and len(body) >= int(length[0].split(b":")[1]):
                break
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2].decode()


def chunked(data: bytes) -> bytes:
    """One chunk of a chunked transfer coding (RFC 9112 7.1)."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def stow_head(**headers: str) -> str:
    lines = ["POST /studies HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {CONTENT_TYPE}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return "\r\n".join(lines) + "\r\n"


def test_declared_length_over_the_cap_is_413_before_the_body(bounded, caplog) -> None:
    srv, archive = bounded
    status, text = raw_request(srv, stow_head(Content_Length="64001"), [])
    assert status == 413
    assert "larger than the limit of 64000 bytes" in text and "nothing was stored" in text
    assert any("refused (413)" in r.getMessage() for r in caplog.records)
    assert archive.instances() == []


def _answer_and_end(sock: socket.socket, keep_sending: bool) -> bytes:
    """Everything the server sends until its side ends (a FIN, or a reset once it has
    closed with our bytes unread), sending more body meanwhile if ``keep_sending``."""
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
            if keep_sending:
                sock.sendall(b"x" * 65536)
    except (ConnectionResetError, BrokenPipeError):
        pass
    return answer


def test_a_body_answered_before_its_end_is_not_read_on(bounded, monkeypatch) -> None:
    """review40 #8: after an early 413 the server read the rest of a body for as long as
    the client sent it (10 GiB declared, at full speed); now the answer says Connection:
    close, and the connection lingers, then closes, however fast the body still comes."""
    from dicomstore.http import guard

    monkeypatch.setattr(guard, "LINGER_MAX", 0.5)
    srv, archive = bounded
    with socket.create_connection(("127.0.0.1", srv.server.port), timeout=20) as sock:
        sock.sendall(stow_head(Content_Length=str(10 << 30)).encode() + b"\r\n")
        answer = _answer_and_end(sock, keep_sending=True)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"\r\nconnection: close\r\n" in answer.lower()
    assert archive.instances() == []


def test_a_client_sending_its_whole_body_first_gets_the_early_answer(bounded, monkeypatch) -> None:
    """review47 #1: past 64 KiB of body unread uvicorn stops reading; the linger did not
    read again, took the client (blocked sending) for quiet and closed on its unread
    bytes: the client (http.client sends all, then reads) got a broken pipe, not 413."""
    from dicomstore.http import guard

    monkeypatch.setattr(guard, "LINGER", 0.5)
    srv, archive = bounded
    body = b"x" * (4 << 20)
    with socket.create_connection(("127.0.0.1", srv.server.port), timeout=20) as sock:
        sock.sendall(stow_head(Content_Length=str(len(body))).encode() + b"\r\n" + body)
        answer = _answer_and_end(sock, keep_sending=False)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert archive.instances() == []


def test_an_answer_before_a_small_body_closes_the_connection_said_so(bounded) -> None:
    """The revert of the first try at review40 #8 (ec4ff88): a keep-alive connection
    whose body was unread when the answer went out was closed without a word, and the
    client's next request on it failed. An early answer says Connection: close; one
    given after the whole body keeps the connection."""
    srv, _ = bounded
    with socket.create_connection(("127.0.0.1", srv.server.port), timeout=20) as sock:
        sock.sendall(stow_head(Content_Length="64001").encode() + b"\r\n" + b"x" * 1000)
        answer = _answer_and_end(sock, keep_sending=False)  # (it closes: said so)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"\r\nconnection: close\r\n" in answer.lower()
    with httpx.Client(base_url=f"http://127.0.0.1:{srv.server.port}") as client:
        for _ in range(2):  # (after a whole body: the same connection serves the next)
            reply = client.post(
                "/studies", content=b"--x--", headers={"Content-Type": CONTENT_TYPE}
            )
            assert reply.status_code in (400, 409), reply.text
            assert reply.headers.get("connection") != "close"


def test_chunked_body_over_the_cap_is_413_as_it_streams(bounded) -> None:
    """A body of small instances, chunked: counted as it arrives; the instance being
    received when the cap is crossed is not stored, the reason names those before it."""
    srv, archive = bounded
    body, _ = multipart_body([instance("1.2.7.1"), instance("1.2.7.2")])
    chunks = [chunked(body[: -len(f"--{BOUNDARY}--\r\n")])]  # without the close delimiter
    head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    chunks += [chunked(head)] + [chunked(b"\0" * 1000)] * 70  # a third part crosses 64,000
    status, text = raw_request(srv, stow_head(Transfer_Encoding="chunked"), chunks)
    assert status == 413, text
    assert "larger than the limit of 64000 bytes" in text
    assert "stored before it: 1.2.7.1, 1.2.7.2" in text
    assert sorted(r["sop_instance_uid"] for r in archive.instances()) == ["1.2.7.1", "1.2.7.2"]
    assert archive.check() == []


def test_data_set_over_max_instance_size_is_a700_at_once(bounded) -> None:
    """The part is answered (A700, as C-STORE would) as soon as its data set passes the
    store service's limit, while the client is still sending it (here: it never sends
    the rest); the instance before it is stored and listed."""
    srv, archive = bounded
    big = instance("1.2.7.3", frames=2)[:-20]
    big += b"\0" * 8000  # past 4,000 bytes of data set, and no end
    body, _ = multipart_body([instance("1.2.7.4")])
    first = body[: -len(f"--{BOUNDARY}--\r\n")]
    head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    chunks = [chunked(first + head + big)]
    status, text = raw_request(srv, stow_head(Transfer_Encoding="chunked"), chunks)
    assert status == 202, text
    reply = json.loads(text)
    (failed,) = reply["00081198"]["Value"]
    assert failed["00081155"]["Value"] == ["1.2.7.3"]
    assert failed["00081197"]["Value"] == [0xA700]
    assert [i["00081155"]["Value"] for i in reply["00081199"]["Value"]] == [["1.2.7.4"]]
    assert [r["sop_instance_uid"] for r in archive.instances()] == ["1.2.7.4"]
    assert archive.check() == []
    assert list((archive.root).rglob("*.part")) == []  # the temporary file is gone


def test_too_many_parts_is_413(bounded) -> None:
    srv, archive = bounded
    body, content_type = multipart_body([instance(f"1.2.7.{n}") for n in range(10, 14)])
    with httpx.Client(base_url=srv.url) as client:
        r = client.post("/studies", content=body, headers={"content-type": content_type})
    assert r.status_code == 413
    assert "close" not in r.headers.get("connection", "")  # (review39 #1: a reset, no answer)
    assert "more than the limit of 3 parts" in r.text
    assert len(archive.instances()) == 3  # the three before it, named in the reason
    assert "1.2.7.10, 1.2.7.11, 1.2.7.12" in r.text


def test_part_headers_over_the_limit_are_413(bounded) -> None:
    srv, archive = bounded
    body = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\nX-Pad: {'p' * 2000}\r\n\r\n"
    with httpx.Client(base_url=srv.url) as client:
        r = client.post("/studies", content=body.encode(), headers={"content-type": CONTENT_TYPE})
    assert r.status_code == 413
    assert "part headers larger than the limit of 1000 bytes" in r.text
    assert archive.instances() == []


@pytest.mark.parametrize("boundary", ['""', "a\u00e9b", '"ends "', "x" * 201, '"a;b"'])
def test_malformed_boundary_is_400_with_the_reason(bounded, boundary, caplog) -> None:
    """Was a 500 (the parser's error escaped, and a non-Latin-1 boundary failed to encode)."""
    srv, archive = bounded
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    with httpx.Client(base_url=srv.url) as client:
        r = client.post(
            "/studies", content=b"--x--", headers={"content-type": content_type.encode()}
        )
    assert r.status_code == 400, r.text
    assert "boundary" in r.text
    assert any("refused (400)" in rec.getMessage() for rec in caplog.records)
    assert archive.instances() == []


def test_limits_leave_ordinary_requests_alone(bounded) -> None:
    srv, archive = bounded
    body, content_type = multipart_body([instance("1.2.7.20"), instance("1.2.7.21")])
    with httpx.Client(base_url=srv.url) as client:
        r = client.post("/studies", content=body, headers={"content-type": content_type})
    assert r.status_code == 200, r.text
    assert len(archive.instances()) == 2


def test_log_line_names_the_client(bounded, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="dicomstore.http.limits")
    srv, _ = bounded
    raw_request(srv, stow_head(Content_Length="100000"), [])
    (line,) = [r for r in caplog.records if r.name == "dicomstore.http.limits"]
    assert line.getMessage().startswith("POST /studies from 127.0.0.1 refused (413)")


@pytest.fixture
def client(tmp_path: Path) -> Iterator[httpx.Client]:
    archive = Archive(tmp_path / "archive", fsync=False)
    with HttpThread(archive) as srv, httpx.Client(base_url=srv.url) as client:
        yield client
    archive.close()


@pytest.mark.parametrize(
    ("path", "params", "reason"),
    [
        ("/studies", {"offset": str(10**23)}, "offset 1000000000000000000000"),
        ("/instances", {"limit": str(10**23)}, "limit 1000000000000000000000"),
        ("/", {"offset": str(10**23)}, "offset 100000000000000000000000 is beyond the limit"),
        ("/series", {"offset": "9" * 5000}, "must be a non-negative integer"),
    ],
)
def test_limit_and_offset_beyond_the_limit_are_400(client, path, params, reason) -> None:
    """offset=10^23 was a 500 (SQLite integers are 64-bit)."""
    r = client.get(path, params=params)
    assert r.status_code == 400, r.text
    assert reason in r.text


def test_includefield_list_is_bounded(client) -> None:
    names = ",".join(["PatientName", "StudyDate"] * 50)
    assert client.get("/studies", params={"includefield": names}).status_code == 200
    r = client.get("/studies", params={"includefield": names + ",Modality"})
    assert r.status_code == 400
    assert "includefield names more than the limit of 100 attributes" in r.text
    r = client.get("/studies", params=[("includefield", "PatientName")] * 101)
    assert r.status_code == 400


def test_a_data_set_too_large_alone_is_409_not_a_retry(bounded) -> None:
    """review87 F2: STOW-RS with no part stored for want of space is 503 with
    Retry-After (test_operations); one too large for --max-instance-size stays 409:
    sending it again will not help."""
    srv, _ = bounded
    big = instance("1.2.7.5", frames=2)[:-20] + b"\0" * 8000  # (past 4,000 bytes)
    body, content_type = multipart_body([big])
    r = httpx.post(f"{srv.url}/studies", content=body, headers={"content-type": content_type})
    assert r.status_code == 409 and "retry-after" not in r.headers, r.text
    assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA700]
