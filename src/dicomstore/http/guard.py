"""The HTTP connection's own bounds (RFC 9112 9.3, RFC 9110 15.5.9 and 15.6.4): how
many connections at once, and how long a client may leave a request half sent.

uvicorn bounds neither: a connection that sends part of a request head, or a
body slower than it promised, is held for ever, and enough of them take every
file descriptor, the DICOM port's included (review35a F1). :class:`GuardedH11`
is uvicorn's h11 protocol with two checks, as the DICOM door has its ARTIM timer
and its association limit:

- beyond :attr:`HttpLimits.max_connections` open connections (or
  :attr:`HttpLimits.max_per_address` from its client's address, as the DICOM
  door's ``--max-per-address``) a new one is answered ``503 Service
  Unavailable`` with ``Retry-After`` and closed before anything of it is read;
- a connection that owes us bytes (a request head begun or not yet sent, or a
  body not yet complete) and sends none for :attr:`HttpLimits.request_timeout`
  seconds is answered ``408 Request Timeout`` and closed. While we are the ones
  not reading (flow control: the app has not taken what arrived) the clock does
  not run, nor while a response is being sent (a long download); and a request
  head (request line and header fields) must be whole within those seconds of its
  first byte, however it trickles in (review53 #5: one byte a second held a
  connection for ever), and a body must keep up :attr:`HttpLimits.min_body_rate`
  bytes a second while we read it (review76 F8: a STOW-RS body trickled at a byte a
  second held its connection for ever): it has those seconds from its start (or
  since we last paused or resumed reading), and each byte adds ``1 / min_body_rate``
  seconds, never to more than those seconds ahead (as Apache's mod_reqtimeout
  ``MinRate`` extends its timeout; credit carries over, so bursts are not cut
  while their average keeps up);
- a client that takes none of its answer for :attr:`HttpLimits.unread_limit`
  seconds (``--http-timeout``: our writing paused by flow control, and not a byte
  of what waits taken meanwhile) is cut off and logged (review94 F1: eight
  connections left unread held every place of the transcoded answers, and their
  worker threads, for ever), as the DICOM door aborts a peer that reads none of
  its answers;
- a request answered before its body ended (an early 401, 413, 503, a STOW-RS data
  set refused while it arrives) is answered with ``Connection: close`` (RFC 9112
  9.6), decided when the answer starts (:class:`_Connection`), and the connection
  lingers instead of reading the rest of the body for as long as the client
  sends it (review40 #8: a body declared 10 GiB was read to its end at full
  speed).

Every connection closed while its client may still be sending (a refusal, a
timeout, an early answer) lingers (:meth:`GuardedH11._linger`, RFC 9112 9.6):
it stops sending, drops what still comes, and closes once the client has been
quiet for :data:`LINGER` seconds or after :data:`LINGER_MAX` in all. Closing at
once with bytes unread would reset the connection, the answer lost with it.

Each refusal is a log line naming the client (``dicomstore.http.limits``).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import socket
import struct
import sys
import termios
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from dicomstore.http.answer import CUT_OFF, SENT_BY_GUARD
from dicomstore.http.limits import HttpLimits

log = logging.getLogger("dicomstore.http.limits")

#: uvicorn's messages that repeat, in worse words, what this module or the app has
#: logged already: a request h11 cannot parse (:meth:`GuardedH11.send_400_response`
#: logs the answer and the client), an answer cut off on purpose (``answer.py``).
_SAID_ALREADY = "Invalid HTTP request received."
_CUT_OFF = "ASGI callable returned without completing response."


class _Unrepeated(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == _SAID_ALREADY:
            return False
        return not (record.msg == _CUT_OFF and CUT_OFF.get())


#: uvicorn's error logger as the guarded protocol uses it (a child: its records
#: reach whatever handles ``uvicorn.error``), without the repeats above.
_UVICORN = logging.getLogger("uvicorn.error.guarded")
_UVICORN.addFilter(_Unrepeated())

#: The whole answer to a connection refused or timed out (it has read nothing).
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 33\r\n\r\n"
    b"503 Service Unavailable: too busy"
)
_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 36\r\n\r\n"
    b"408 Request Timeout: request too slow"
)


#: A lingering connection closes when its client has sent nothing for LINGER seconds,
#: or LINGER_MAX seconds after it began to linger (nginx's lingering_timeout and
#: lingering_time); at most MAX_LINGERING linger at once (beyond: closed at once, their
#: answer perhaps lost to a reset; so that a flood of refusals holds no more descriptors).
LINGER = 2.0
LINGER_MAX = 30.0
MAX_LINGERING = 64


class _Connection(h11.Connection):
    """h11's server side, which says ``Connection: close`` in an answer begun before
    the request's body ended (RFC 9112 9.6, 9.3): the client then opens a new
    connection for its next request rather than send it on one that is closing; and
    tells :attr:`on_continue` when it sends ``100 Continue``."""

    on_continue: Any = None
    #: the last request's line and headers were over the limit (then 431, not 400)
    head_too_big = False
    #: why the last request was refused, when it parsed but may not be taken
    refused: str | None = None

    def next_event(self) -> Any:
        """h11's, but a request whose head came whole in one read and is over the
        limit (h11 bounds only a head still incomplete after a read: up to about
        twice the limit passed, review87 F5) is a protocol error too, and so is one
        framed both by ``Content-Length`` and ``Transfer-Encoding`` (RFC 9112 6.3
        rule 3: h11 takes the chunked framing; a proxy in front that takes the
        length sees another request there, review118 F1: request smuggling)."""
        event = super().next_event()
        if isinstance(event, h11.Request) and _head_size(event) > self._max_incomplete_event_size:
            self.head_too_big = True
            raise h11.RemoteProtocolError("request line and headers over the limit")
        if isinstance(event, h11.Request):
            names = {name for name, _ in event.headers}
            if b"content-length" in names and b"transfer-encoding" in names:
                self.refused = "framed by both Content-Length and Transfer-Encoding"
                raise h11.RemoteProtocolError(self.refused)
        return event

    def send(self, event: h11.Event) -> bytes | None:  # type: ignore[override]
        if isinstance(event, h11.InformationalResponse) and self.on_continue is not None:
            self.on_continue()  # (the client waiting for it owes us its body from now)
        if (
            isinstance(event, h11.Response)
            and self.their_state is h11.SEND_BODY
            and (b"connection", b"close") not in event.headers
        ):
            event = h11.Response(
                status_code=event.status_code,
                headers=[*event.headers, (b"connection", b"close")],
                reason=event.reason,
                http_version=event.http_version,
            )
        return super().send(event)


def _head_size(request: h11.Request) -> int:
    """About the bytes of ``request``'s line and headers as sent (h11 keeps no count)."""
    line = len(request.method) + len(request.target) + 12  # (spaces, HTTP/1.1, CRLF)
    return line + sum(len(name) + len(value) + 4 for name, value in request.headers) + 2


class _Transport:
    """A connection's transport as uvicorn holds it, but for :meth:`close`: while the
    client may still be sending, the connection lingers (:meth:`GuardedH11._close`)."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedH11) -> None:
        self._transport = transport
        self._protocol = protocol

    def close(self) -> None:
        self._protocol._close()

    def pause_reading(self) -> None:
        self._transport.pause_reading()
        self._protocol._new_span()  # (not the client's pace while we do not read)

    def resume_reading(self) -> None:
        self._transport.resume_reading()
        self._protocol._new_span()

    def is_closing(self) -> bool:
        return self._protocol._lingering or self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def guarded(limits: HttpLimits) -> type[H11Protocol]:
    """uvicorn's ``http`` protocol class held to ``limits``."""
    return type("GuardedH11", (GuardedH11,), {"limits": limits, "lingering": 0})


class GuardedH11(H11Protocol):
    """See the module notes; :func:`guarded` sets :attr:`limits`."""

    limits: HttpLimits = HttpLimits()
    #: connections of this server lingering now (:meth:`_linger`)
    lingering: int = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logger = _UVICORN
        self.conn = _Connection(h11.SERVER, self.conn._max_incomplete_event_size)  # (uvicorn's)
        self.conn.on_continue = self._continued
        self._lingering = False
        self._lost = False
        #: when a body not keeping up the least rate is dropped (:meth:`_new_span`)
        self._deadline = 0.0
        #: since when our writing is paused, and how much waited then (:meth:`_unread`)
        self._stuck: tuple[float, int] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._raw = transport
        super().connection_made(_Transport(transport, self))  # type: ignore[arg-type]
        self._idle_since = self.loop.time()
        self._head_began: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._answered = False  # (a request on it answered: see _owed)
        self._received = 0  # (bytes read; and at the start of the body's span: _new_span)
        self._new_span(self._idle_since)
        why = self._over_limit()
        if why:
            log.warning("HTTP connection from %s refused (503): %s", _client(self), why)
            self.transport.write(_BUSY)
            self._linger()  # (closing with its request unread would reset it: 503 lost)
            return
        self._arm(self.limits.request_timeout)

    def _over_limit(self) -> str:
        """Why this new connection is one too many (it is counted), or ''."""
        host = self.client[0] if self.client else None
        same = sum((getattr(c, "client", None) or ("",))[0] == host for c in self.connections)
        return self.limits.too_many(len(self.connections) - 1, host, same - 1)

    def data_received(self, data: bytes) -> None:
        if self._lingering:  # (answered and closing: what still comes is dropped)
            self._heard = self.loop.time()
            return
        now = self.loop.time()
        self._idle_since = now
        self._received += len(data)
        limit, least = self.limits.request_timeout, self.limits.min_body_rate
        if least:  # (the body's deadline moves on with what came: see the module notes)
            self._deadline = min(self._deadline + len(data) / least, now + limit)
        if self._head_began is None and self.conn.their_state is h11.IDLE:
            self._head_began = now  # (a request head begins: whole within the timeout)
        body = self.conn.their_state is h11.SEND_BODY
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._head_began = None
        if not body and self.conn.their_state is h11.SEND_BODY:
            self._new_span(now, len(data))  # (a body begins: its rate from this read)

    def pause_writing(self) -> None:
        super().pause_writing()
        now, limit = self.loop.time(), self.limits.unread_limit
        self._stuck = (now, self._waiting())
        timer = self._timer
        if timer is not None and timer.when() > now + limit:  # (checked in time)
            timer.cancel()
            self._arm(limit)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stuck = None

    def _waiting(self) -> int:
        """Bytes of our answers not yet taken by the client: in the transport's buffer,
        and in the socket's send queue not yet acknowledged (Linux ``SIOCOUTQ``): a
        slow client takes some of the latter long before the former moves."""
        waiting = self._raw.get_write_buffer_size()
        sock = self._raw.get_extra_info("socket")
        try:
            queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        except (AttributeError, OSError, ValueError):  # (no socket, or not Linux)
            return waiting
        return waiting + int.from_bytes(queued, sys.byteorder, signed=True)

    def _unread(self, now: float) -> float:
        """Seconds left before a client that takes none of our answer is cut off (0:
        it is now, logged). Taking some of what waits starts the time again."""
        stuck, limit = self._stuck, self.limits.unread_limit
        if stuck is None or not self.flow.write_paused:
            return limit
        waiting = self._waiting()
        if waiting < stuck[1]:
            self._stuck = stuck = (now, waiting)
        left = stuck[0] + limit - now
        if left > 0:
            return left
        why = f"it took none of its answer for {limit:g}s (--http-timeout)"
        log.warning("HTTP connection from %s cut off: %s", _client(self), why)
        sock = self._raw.get_extra_info("socket")
        if sock is not None:  # a reset: the kernel drops what it still holds for it
            try:  # (review95 F3: a close sent it all, megabytes, then a clean EOF)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self._raw.abort()  # (its request ends: the app's receive says disconnect)
        return 0.0

    def on_response_complete(self) -> None:
        self._answered = True
        self._idle_since = self.loop.time()
        super().on_response_complete()
        # (a next request's bytes already here: its head began now)
        self._head_began = self._idle_since if self.conn.trailing_data[0] else None

    def send_400_response(self, msg: str) -> None:
        """A request h11 cannot parse: 431 when its head outgrew the buffer (RFC 6585
        5), else 400; logged naming the client, and closed after a lingering wait
        (closing at once with its bytes unread would reset the connection, the
        answer lost with it)."""
        limit = self.limits.max_head_bytes
        if getattr(self.conn, "head_too_big", False) or len(self.conn.trailing_data[0]) > limit:
            why = f"request line and headers over {limit} bytes"
            status, phrase = 431, "Request Header Fields Too Large"
        else:
            why = getattr(self.conn, "refused", None) or "not a valid HTTP/1.1 request"
            status, phrase = 400, "Bad Request"
        log.warning("HTTP connection from %s refused (%d): %s", _client(self), status, why)
        body = f"{status} {phrase}: {why}".encode()
        self.transport.write(
            f"HTTP/1.1 {status} {phrase}\r\nConnection: close\r\nContent-Type: text/plain;"
            f" charset=utf-8\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        self._linger()

    def _close(self) -> None:
        """uvicorn closing the connection: it lingers if the client may still be sending
        a request's body (answered early: ``Connection: close`` said so), else closes."""
        if self._lingering:
            return  # (the linger closes it)
        if not self._lost and self.conn.their_state is h11.SEND_BODY:
            self._linger()
        else:
            self._raw.close()

    def _linger(self) -> None:
        """Stop sending, read and drop what still comes until the client is quiet, then
        close (a request the app is reading ends for it now: its receive says
        disconnect, what it sends is dropped)."""
        if self._lingering:
            return
        self._lingering = True
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.connections.discard(self)  # (answered: no longer counted toward the most)
        server = type(self)
        if server.lingering >= MAX_LINGERING:  # (a flood: close at once, fds bounded)
            self._raw.close()
            return
        server.lingering += 1
        self._counted = True
        if self._raw.can_write_eof():
            self._raw.write_eof()
        # read again (uvicorn stops reading past 64 KiB of body the app has not taken):
        # a client still sending would otherwise seem quiet, be closed on with its bytes
        # unread, and lose the answer to a reset (review47 #1)
        self.flow.resume_reading()
        self._heard = self._since = self.loop.time()
        self._timer = self.loop.call_later(LINGER, self._linger_on)

    def _linger_on(self) -> None:
        """Close once the client has been quiet for :data:`LINGER` seconds, or
        :data:`LINGER_MAX` after the linger began."""
        now = self.loop.time()
        end = min(self._heard + LINGER, self._since + LINGER_MAX)
        if now >= end:
            self._timer = None
            self._raw.close()
        else:
            self._timer = self.loop.call_later(end - now, self._linger_on)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if getattr(self, "_counted", False):
            type(self).lingering -= 1
            self._counted = False
        super().connection_lost(exc)

    def _arm(self, delay: float) -> None:
        self._timer = self.loop.call_later(delay, self._check)

    def _owed(self) -> bool:
        """The client owes us bytes (a request head, or the rest of a body) and we
        are ready to read them."""
        if self.flow.read_paused:  # (we are not reading: not the client's delay)
            return False
        conn = self.conn
        if conn.their_state is h11.SEND_BODY:  # (unless it waits for our 100 Continue)
            return not conn.they_are_waiting_for_100_continue
        if conn.their_state is not h11.IDLE or conn.our_state is not h11.IDLE:
            return False
        # Between requests: the first is owed; after one, only a next one begun (an
        # idle keep-alive connection is uvicorn's to close, --timeout-keep-alive).
        return not self._answered or bool(conn.trailing_data[0])

    def _continued(self) -> None:
        """``100 Continue`` is being sent (RFC 9110 10.1.1): a client that waited for it
        owes its body from now, not from its head (review79 F8)."""
        self._idle_since = self.loop.time()
        self._new_span(self._idle_since)

    def _new_span(self, now: float | None = None, read: int = 0) -> None:
        """Begin a span over which a body's rate is measured (at its start, with the
        ``read`` bytes of the read that began it, and when we stop or start reading)."""
        now = self.loop.time() if now is None else now
        least = self.limits.min_body_rate
        self._span = (now, self._received - read)
        self._deadline = now + self.limits.request_timeout + (read / least if least else 0)

    def _too_slow(self, now: float, limit: float) -> str:
        """Why the request is dropped now (408), or ''."""
        if now - self._idle_since >= limit:
            return f"no bytes of its request for {limit:g}s (--http-timeout)"
        began = self._head_began if self.conn.their_state is h11.IDLE else None
        if began is not None and now - began >= limit:
            return f"its request head not whole for {limit:g}s (--http-timeout)"
        least = self.limits.min_body_rate
        if self.conn.their_state is not h11.SEND_BODY or not least or now < self._deadline:
            return ""
        since, received = self._span
        span = f"{self._received - received} bytes in {now - since:.3g}s"
        return f"its body slower than --http-min-body-rate {least} bytes/s ({span})"

    def _check(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        now, limit = self.loop.time(), self.limits.request_timeout
        unread = self._unread(now)
        if not unread:
            return
        began = self._head_began if self.conn.their_state is h11.IDLE else None
        owed = self._owed()
        why = self._too_slow(now, limit) if owed else ""
        if not owed:
            self._idle_since = now  # (the clock starts again when they owe us)
            self._new_span()
        elif why:
            log.warning("HTTP connection from %s dropped (408): %s", _client(self), why)
            if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):  # (no answer begun)
                if self.conn.their_state is h11.SEND_BODY and self.cycle is not None:
                    self.cycle.scope[SENT_BY_GUARD] = 408  # type: ignore[literal-required]
                self.transport.write(_TIMEOUT)
                self._linger()  # (a body half read: the app's receive says disconnect)
            else:
                self.transport.close()
            return
        left = limit - (now - self._idle_since)
        if began is not None:
            left = min(left, limit - (now - began))
        if self.conn.their_state is h11.SEND_BODY and self.limits.min_body_rate:
            left = min(left, self._deadline - now)
        self._arm(max(0.05, min(left, unread)))


def _client(protocol: Any) -> str:
    client = protocol.client
    return f"{client[0]}:{client[1]}" if client else "?"
