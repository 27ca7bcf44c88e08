"""gzip of DICOMweb answers (http/content_coding.py, RFC 9110 8.4, 12.5.3; review57 #3):
DICOM JSON, JSON and HTML coded when the client accepts gzip, streamed answers
compressed chunk by chunk, pixel data never."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import logging
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from http_testlib import HttpThread, make_dataset, split_multipart, store
from starlette.types import Message, Receive, Scope, Send

from dicomstore.archive import Archive
from dicomstore.cli import build_parser
from dicomstore.http import build_app, metadata
from dicomstore.http.content_coding import GzipAnswers, accepts_gzip
from dicomstore.http.security import HttpSecurity

STUDY, SERIES = "1.2.826.0.1.3680043.10.57", "1.2.826.0.1.3680043.10.57.1"
INSTANCES = 20
SERIES_PATH = f"/studies/{STUDY}/series/{SERIES}"
INSTANCE_PATH = f"{SERIES_PATH}/instances/1.2.57.1"
ORIGIN = "http://viewer.example"
GZIP = {"Accept-Encoding": "gzip, deflate, br, zstd"}  # (Chromium's)


def _fill(root: Path) -> Archive:
    archive = Archive(root, fsync=False)
    for n in range(1, INSTANCES + 1):
        ds = make_dataset(f"1.2.57.{n}", study=STUDY, series=SERIES, number=n, frames=2)
        store(archive, ds)
    return archive


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    archive = _fill(tmp_path_factory.mktemp("coding") / "archive")
    yield archive
    archive.close()


@pytest.fixture(scope="module")
def web(archive: Archive) -> Iterator[HttpThread]:
    with HttpThread(archive) as web:
        yield web


def _request(
    web: HttpThread, target: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, http.client.HTTPMessage, bytes | None]:
    """(status, headers, body as sent: not decoded; None if cut off), with no
    Accept-Encoding but the one given (http.client would add ``identity``)."""
    conn = http.client.HTTPConnection("127.0.0.1", web.server.port, timeout=30)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        reply = conn.getresponse()
        try:
            return reply.status, reply.headers, reply.read()
        except http.client.IncompleteRead:
            return reply.status, reply.headers, None
    finally:
        conn.close()


def _vary(headers: http.client.HTTPMessage) -> list[str]:
    return [v.strip().lower() for v in ",".join(headers.get_all("vary") or []).split(",")]


def test_series_metadata_is_gzipped_and_the_same_once_gunzipped(web: HttpThread) -> None:
    status, plain_headers, plain = _request(web, SERIES_PATH + "/metadata")
    assert status == 200 and plain is not None
    assert len(json.loads(plain)) == INSTANCES
    status, headers, coded = _request(web, SERIES_PATH + "/metadata", GZIP)
    assert status == 200 and coded is not None
    assert headers["content-encoding"] == "gzip"
    assert headers["content-type"] == "application/dicom+json"
    assert "accept-encoding" in _vary(headers) and "accept-encoding" in _vary(plain_headers)
    assert headers["content-length"] is None  # (streamed: chunked, no length known)
    assert gzip.decompress(coded) == plain
    assert len(coded) * 5 < len(plain)


def test_series_metadata_in_xml_is_gzipped(web: HttpThread) -> None:
    """XML metadata (multipart/related of application/dicom+xml, PS3.18 8.7.3.2) is text
    as its JSON is: gzipped when asked, its parts whole once gunzipped."""
    xml = 'multipart/related; type="application/dicom+xml"'
    status, headers, coded = _request(web, SERIES_PATH + "/metadata", {**GZIP, "Accept": xml})
    assert status == 200 and coded is not None
    assert headers["content-encoding"] == "gzip"
    plain = gzip.decompress(coded)
    assert len(split_multipart(plain, headers["content-type"])) == INSTANCES
    assert len(coded) * 5 < len(plain)


@pytest.mark.parametrize(
    "accept_encoding",
    [None, "gzip;q=0", "identity", "br, deflate", "gzip;q=0, *", "*;q=0", "x-gzip;q=0.000"],
)
def test_not_gzipped_unless_accepted(web: HttpThread, accept_encoding: str | None) -> None:
    headers = {} if accept_encoding is None else {"Accept-Encoding": accept_encoding}
    status, got, body = _request(web, SERIES_PATH + "/metadata", headers)
    assert status == 200 and body is not None and len(json.loads(body)) == INSTANCES
    assert got["content-encoding"] is None
    assert "accept-encoding" in _vary(got)  # (another Accept-Encoding: another answer)


@pytest.mark.parametrize(
    "accept_encoding", ["gzip", "GZIP;q=0.5", "x-gzip", "*", "br;q=1, *;q=0.1", "gzip ; q=1.0"]
)
def test_accept_encoding_accepting_gzip(accept_encoding: str) -> None:
    assert accepts_gzip(accept_encoding)


@pytest.mark.parametrize("accept_encoding", [None, "", "gzip;q=0", "gzip;q=x", "*;q=0, gzip;q=0"])
def test_accept_encoding_refusing_gzip(accept_encoding: str | None) -> None:
    assert not accepts_gzip(accept_encoding)


@pytest.mark.parametrize(
    ("tail", "accept"),
    [
        ("/frames/1", "multipart/related; type=application/octet-stream; transfer-syntax=*"),
        ("/frames/1", "*/*"),
        ("/bulkdata/7FE00010", "*/*"),
        ("/rendered", "image/png"),
        ("/thumbnail", "image/jpeg"),
        ("", 'multipart/related; type="application/dicom"; transfer-syntax=*'),
        ("", "application/dicom"),
    ],
)
def test_pixel_data_and_instances_never_gzipped(web: HttpThread, tail: str, accept: str) -> None:
    status, headers, body = _request(web, INSTANCE_PATH + tail, {**GZIP, "Accept": accept})
    assert status == 200 and body
    assert headers["content-encoding"] is None
    assert "accept-encoding" not in _vary(headers)
    # (while the same instance's metadata, asked the same way, is)
    status, headers, _ = _request(web, INSTANCE_PATH + "/metadata", GZIP)
    assert status == 200 and headers["content-encoding"] == "gzip"


@pytest.mark.parametrize(
    ("target", "media"),
    [
        (f"/studies/{STUDY}/instances", "application/dicom+json"),
        ("/openapi.json", "application/json"),
        (f"/browse/series?uid={SERIES}", "text/html"),
    ],
)
def test_a_whole_answer_is_gzipped_with_its_length(web: HttpThread, target: str, media: str):
    _, _, plain = _request(web, target)
    status, headers, coded = _request(web, target, GZIP)
    assert status == 200 and coded is not None and plain is not None
    assert headers["content-type"].startswith(media)
    assert headers["content-encoding"] == "gzip"
    assert int(headers["content-length"]) == len(coded)
    assert gzip.decompress(coded) == plain


def test_a_small_answer_is_sent_as_it_is(web: HttpThread) -> None:
    status, headers, body = _request(web, "/studies/1.2.3/metadata", GZIP)
    assert status == 404 and body is not None and body.startswith(b"404 Not Found")
    assert headers["content-encoding"] is None
    assert int(headers["content-length"]) == len(body) < 1024
    assert "accept-encoding" in _vary(headers)


def test_head_has_the_headers_of_get(web: HttpThread) -> None:
    status, headers, body = _request(web, SERIES_PATH + "/metadata", GZIP, method="HEAD")
    assert status == 200 and body == b""
    assert headers["content-encoding"] == "gzip"
    assert headers["content-type"] == "application/dicom+json"
    assert "accept-encoding" in _vary(headers)
    assert headers["content-length"] is None  # (not the identity length)


def test_cors_answers_say_both_origin_and_encoding(archive: Archive) -> None:
    security = HttpSecurity(cors_origins=(ORIGIN,))
    with HttpThread(archive, security=security) as web:
        preflight = {
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "accept",
        }
        status, headers, _ = _request(web, SERIES_PATH + "/metadata", preflight, "OPTIONS")
        assert status == 200 and headers["access-control-allow-origin"] == ORIGIN
        asked = {**GZIP, "Origin": ORIGIN, "Accept": "application/dicom+json"}
        status, headers, coded = _request(web, SERIES_PATH + "/metadata", asked)
    assert status == 200 and coded is not None
    assert headers["content-encoding"] == "gzip"
    assert headers["access-control-allow-origin"] == ORIGIN
    assert {"origin", "accept-encoding"} <= set(_vary(headers))
    assert len(json.loads(gzip.decompress(coded))) == INSTANCES


def test_gzip_can_be_switched_off(archive: Archive) -> None:
    with HttpThread(archive, gzip=False) as web:
        status, headers, body = _request(web, SERIES_PATH + "/metadata", GZIP)
    assert status == 200 and body is not None and len(json.loads(body)) == INSTANCES
    assert headers["content-encoding"] is None and headers["vary"] is None


def test_the_serve_option() -> None:
    serve = ["serve", "--storage", "x", "--http-port", "8042"]
    assert build_parser(serve).parse_args(serve).http_gzip is True
    off = build_parser(serve).parse_args([*serve, "--no-http-gzip"])
    assert off.http_gzip is False


def test_a_cut_answer_is_cut_as_without_gzip(tmp_path: Path, caplog, monkeypatch) -> None:
    """An instance whose file is gone before the first chunk (after the status: the
    check before it passed over): 200 then cut, as the answer is uncoded
    (test_http_damaged), not a 500 of uvicorn's."""
    from dicomstore.http import wado

    monkeypatch.setattr(wado, "_readable", lambda request, rows: None)
    archive = _fill(tmp_path / "archive")
    path = archive.path_of("1.2.57.2")
    assert path is not None
    path.unlink()
    with HttpThread(archive) as web, caplog.at_level(logging.WARNING):
        status, headers, body = _request(web, SERIES_PATH + "/metadata", GZIP)
    archive.close()
    assert status == 200 and body is None
    assert "accept-encoding" in _vary(headers)
    assert "1.2.57.2 is indexed but its file cannot be read" in caplog.text
    assert "without starting response" not in caplog.text


async def _call(app: Any, path: str, headers: dict[str, str], send: Send) -> None:
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1")]
        + [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    await app(scope, receive, send)


def test_each_chunk_goes_out_compressed_before_the_next_is_made() -> None:
    """The body is never held whole: each chunk the app sends is compressed and
    sent on (flushed: it decodes whole) before the app makes the next."""
    chunks = [json.dumps({"n": k, "text": "x" * 2000}).encode() for k in range(10)]
    out: list[bytes] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": 200}
        await send({**start, "headers": [(b"content-type", b"application/dicom+json")]})
        for k, chunk in enumerate(chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            assert len(out) == k + 1  # (sent on before the next chunk is made)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    decoded: list[bytes] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            out.append(message["body"])
            decoded.append(decoder.decompress(message["body"]))

    asyncio.run(_call(GzipAnswers(app), "/", {"accept-encoding": "gzip"}, send))
    assert decoded[:-1] == chunks and decoded[-1] == b"" and decoder.eof
    assert all(len(piece) < len(chunk) for piece, chunk in zip(out, chunks, strict=False))


def test_the_metadata_stream_is_compressed_chunk_by_chunk(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real app: a series' metadata in several chunks (http/metadata.py CHUNK)
    goes out as as many gzip pieces, each decoding to whole instances."""
    monkeypatch.setattr(metadata, "CHUNK", 1)  # (one instance a chunk)
    app = build_app(archive)
    messages: list[Message] = []

    async def send(message: Message) -> None:
        messages.append(message)

    try:
        asyncio.run(_call(app, SERIES_PATH + "/metadata", GZIP, send))
    finally:
        app.state.metadata_cache.close()
    start, *bodies = messages
    assert dict(start["headers"])[b"content-encoding"] == b"gzip"
    assert len(bodies) == INSTANCES + 2  # ("[" and the first, one each, "]", the end)
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    pieces = [decoder.decompress(m["body"]) for m in bodies]
    assert pieces[0].startswith(b"[{") and pieces[-2:] == [b"]", b""] and decoder.eof
    assert all(p.startswith(b",{") and p.endswith(b"}") for p in pieces[1:-2])
    assert len(json.loads(b"".join(pieces))) == INSTANCES
