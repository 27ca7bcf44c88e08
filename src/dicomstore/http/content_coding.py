"""HTTP content coding: gzip of the answers that compress well (RFC 9110 8.4, 12.5.3).

DICOM JSON is verbose: a 500-image series' metadata is 2 MB, 52 KB gzipped, and
browsers (OHIF) ask for gzip (review57 #3). :class:`GzipAnswers` codes an answer
when

- its media type compresses well (:func:`compressible`: DICOM JSON, JSON, XML,
  ``text/*``); pixel data, ``multipart/related``, ``application/dicom``, images and
  zip never are: they do not compress or already are compressed, and cost CPU;
- the request's ``Accept-Encoding`` accepts gzip (:func:`accepts_gzip`, 12.5.3:
  its own q-value, else that of ``*``; without the header: not coded);
- its status is a whole answer (not 1xx, 204, 206, 304) not coded already, and its
  body is not under :data:`MIN_SIZE` bytes sent whole.

A streamed answer stays streamed: each chunk is compressed as it comes and
flushed (``Z_SYNC_FLUSH``), so memory is the compressor's, not the body's.
``Content-Length`` is the gzipped body's (a whole body) or dropped (a streamed
one); every answer of those media types says ``Vary: Accept-Encoding`` (12.5.5),
coded or not. A HEAD answer has the headers of the GET's but its length (9.3.2);
nothing is compressed for it. No ETag or range is served on these media types.
"""

from __future__ import annotations

import zlib

import anyio.to_thread
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomstore.http.answer import AnswerBroken
from dicomstore.http.multipart import parse_media_type

#: Whole bodies shorter than this go as they are (a gzip header and trailer are 18 bytes).
MIN_SIZE = 1024
#: zlib's fastest kind of search (levels 1-3): review57's 500-image CT series' metadata,
#: 2.15 MB, is 52 KB at 630 MB/s here; level 6 (zlib's default) makes it 37 KB at
#: 200 MB/s, which pays only on links slower than about 15 Mbit/s.
LEVEL = 3
#: Chunks at least this long are compressed in a worker thread, not on the event loop.
THREAD_SIZE = 64 * 1024
#: Media types coded besides ``text/*`` (their parameters aside).
COMPRESSIBLE = frozenset(
    {"application/dicom+json", "application/json", "application/dicom+xml", "application/xml"}
)
_NOT_CODED = (204, 206, 304)


def compressible(content_type: str) -> bool:
    """Whether an answer of ``content_type`` is gzipped when its client asks."""
    media, params = parse_media_type(content_type)
    if media == "multipart/related":  # (XML metadata's parts, PS3.18 8.7.3.2)
        return params.get("type", "").lower() in COMPRESSIBLE
    return media in COMPRESSIBLE or media.startswith("text/")


def _quality(weight: str) -> float:
    """The qvalue of a ``q=`` parameter (RFC 9110 12.4.2); 0 if malformed."""
    name, _, value = weight.partition("=")
    if name.strip().lower() != "q":
        return 0.0
    try:
        q = float(value.strip())
    except ValueError:
        return 0.0
    return q if 0.0 <= q <= 1.0 else 0.0


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an ``Accept-Encoding`` value accepts gzip (RFC 9110 12.5.3): gzip (or
    its alias x-gzip, 8.4.1.3) with a nonzero q-value, else ``*`` with one. None (no
    header): no, though 12.5.3 would allow it, as clients that decode it say so."""
    if accept_encoding is None:
        return False
    named: list[float] = []
    anything: list[float] = []
    for item in accept_encoding.split(","):
        coding, *params = item.split(";")
        coding = coding.strip().lower()
        q = _quality(params[0]) if params else 1.0
        if coding in ("gzip", "x-gzip"):
            named.append(q)
        elif coding == "*":
            anything.append(q)
    found = named or anything
    return bool(found) and max(found) > 0


class GzipAnswers:
    """ASGI middleware: the coding above of every HTTP answer of ``app``."""

    def __init__(self, app: ASGIApp, level: int = LEVEL, min_size: int = MIN_SIZE) -> None:
        self.app = app
        self.level = level
        self.min_size = min_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        wanted = accepts_gzip(Headers(scope=scope).get("accept-encoding"))
        coding = _Coding(send, wanted, scope["method"] == "HEAD", self.level, self.min_size)
        try:
            await self.app(scope, receive, coding.send)
        except AnswerBroken:  # (before its first chunk: cut off as an uncoded one is)
            await coding.unhold()
            raise


class _Coding:
    """One answer going out: its start held until its first body chunk decides."""

    def __init__(self, send: Send, wanted: bool, head: bool, level: int, min_size: int) -> None:
        self._send = send
        self.wanted = wanted
        self.head = head
        self.level = level
        self.min_size = min_size
        self.start: Message | None = None
        self.compressor: zlib._Compress | None = None

    async def send(self, message: Message) -> None:
        """The app's ``send``: ``message`` on its way, coded or held."""
        kind = message["type"]
        if kind == "http.response.start":
            headers = MutableHeaders(scope=message)
            if self._codable(message["status"], headers):
                headers.add_vary_header("Accept-Encoding")
                if self.wanted:
                    self.start = message
                    return
        elif kind == "http.response.body" and self._coding:
            await self._body(message)
            return
        else:  # (anything else: the start held, if any, as it is, first)
            await self.unhold()
        await self._send(message)

    @property
    def _coding(self) -> bool:
        """Whether the body is to be coded (or decided on): a start was held."""
        return self.start is not None or self.compressor is not None

    async def unhold(self) -> None:
        """The start held, if any, sent as it is (the answer a client without gzip has)."""
        start, self.start = self.start, None
        if start is not None:
            await self._send(start)

    @staticmethod
    def _codable(status: int, headers: MutableHeaders) -> bool:
        if status < 200 or status in _NOT_CODED or "content-encoding" in headers:
            return False
        return compressible(headers.get("content-type", ""))

    async def _body(self, message: Message) -> None:
        body = message.get("body", b"")
        more = message.get("more_body", False)
        start, self.start = self.start, None
        if start is not None:
            headers = MutableHeaders(scope=start)
            if not more and len(body) < self.min_size:  # (too small to gain)
                await self._send(start)
                await self._send(message)
                return
            headers["Content-Encoding"] = "gzip"
            del headers["Content-Length"]
            if self.head:  # (its body is not sent: EndsBroken)
                await self._send(start)
                await self._send(message)
                return
            self.compressor = zlib.compressobj(self.level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
            data = await self._compress(body, more)
            if not more:
                headers["Content-Length"] = str(len(data))
            await self._send(start)
        else:
            data = await self._compress(body, more)
        await self._send({**message, "body": data})

    async def _compress(self, body: bytes, more: bool) -> bytes:
        if len(body) >= THREAD_SIZE:
            return await anyio.to_thread.run_sync(self._compressed, body, more)
        return self._compressed(body, more)

    def _compressed(self, body: bytes, more: bool) -> bytes:
        """``body`` through the compressor, all of it out: flushed to a byte
        boundary while ``more`` follows (the client decodes as it comes), else ended."""
        assert self.compressor is not None
        data = self.compressor.compress(body)
        return data + self.compressor.flush(zlib.Z_SYNC_FLUSH if more else zlib.Z_FINISH)
