"""One JSON POST (RFC 9110 9.3.3, over HTTP/1.1 as RFC 9112 frames it), bounded as a
whole: the study-complete webhook (``--stable-webhook``).

On the event loop, never a worker thread: urllib's ``urlopen`` ran in asyncio's
shared threads with a timeout per socket read, and a receiver that answered a header
line every few seconds held a thread for ever; six such held every thread, and
forwarding and the event log waited behind them (review122 F1). Here the connection,
the request and the answer's status line and header fields must all be done within
``timeout`` seconds, else the connection is dropped; the answer's body is not read.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import urllib.request
from urllib.parse import unquote, urlsplit

#: Bytes of the status line and of each header field read at most.
MAX_LINE = 8192
#: Header fields read at most.
MAX_FIELDS = 100


class WebhookError(OSError):
    """The POST failed: no connection, no HTTP answer in time, or not HTTP."""


async def post_json(url: str, body: bytes, timeout: float) -> int:
    """POST ``body`` (JSON) to ``url`` (``http://`` or ``https://``), through the
    proxy the environment names for it (``HTTP_PROXY``, ``HTTPS_PROXY``, ``NO_PROXY``,
    as urllib: an ``http://`` proxy, ``CONNECT`` for https); the final answer's status
    code. :class:`WebhookError` (an ``OSError``) when it cannot be had within
    ``timeout`` seconds, or the answer is no HTTP; ``ssl.SSLError`` as it is."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http:// or https:// URL: {url!r}")
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    authority = host if parts.port is None else f"{host}:{parts.port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    proxy, credentials = _proxy_for(parts.scheme, parts.hostname)
    if proxy is not None and not secure:  # (RFC 9112 3.2.2: the absolute form)
        target = f"http://{authority}{target}"
    head = (
        f"POST {target} HTTP/1.1\r\nHost: {authority}\r\n{credentials}"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
        "User-Agent: dicomstore\r\n\r\n"
    ).encode("ascii", "replace")
    context = ssl.create_default_context() if secure else None
    writer = None
    try:
        async with asyncio.timeout(timeout):
            if proxy is None:
                reader, writer = await asyncio.open_connection(
                    parts.hostname, port, ssl=context, limit=MAX_LINE
                )
            else:
                reader, writer = await asyncio.open_connection(*proxy, limit=MAX_LINE)
                if context is not None:  # (a tunnel to the host, RFC 9110 9.3.6)
                    tunnel = f"{host}:{port}"
                    writer.write(f"CONNECT {tunnel} HTTP/1.1\r\nHost: {tunnel}\r\n"
                                 f"{credentials}\r\n".encode("ascii", "replace"))  # fmt: skip
                    status = await _answer(reader)
                    if not 200 <= status < 300:
                        raise WebhookError(f"the proxy refused the tunnel: HTTP {status}")
                    await writer.start_tls(context, server_hostname=parts.hostname)
            writer.write(head + body)
            await writer.drain()
            return await _answer(reader)
    except TimeoutError:
        raise WebhookError(f"no whole answer within {timeout:g} s") from None
    except ssl.SSLError:
        raise  # (a certificate refused, said as such: an OSError)
    except (ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        raise WebhookError(f"not an HTTP answer: {exc}") from None
    finally:
        if writer is not None:
            writer.close()


async def _answer(reader: asyncio.StreamReader) -> int:
    """The status of the final answer's head, read to its end (an interim 1xx answer,
    RFC 9110 15.2, comes before it)."""
    while True:
        status = _status(await reader.readline())
        for _ in range(MAX_FIELDS):
            if await reader.readline() in (b"\r\n", b"\n", b""):
                break
        else:
            raise WebhookError(f"over {MAX_FIELDS} header fields in the answer")
        if status >= 200:
            return status


def _proxy_for(scheme: str, hostname: str) -> tuple[tuple[str, int] | None, str]:
    """The (host, port) of the proxy the environment names for ``scheme`` unless
    ``hostname`` bypasses it (urllib's reading of it), and the Proxy-Authorization
    line its URL's credentials make (or "")."""
    named = urllib.request.getproxies().get(scheme)
    if not named or urllib.request.proxy_bypass(hostname):
        return None, ""
    proxy = urlsplit(named if "://" in named else f"http://{named}")
    if not proxy.hostname:
        return None, ""
    credentials = ""
    if proxy.username is not None:
        secret = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}".encode()
        credentials = f"Proxy-Authorization: Basic {base64.b64encode(secret).decode()}\r\n"
    return (proxy.hostname, proxy.port or 80), credentials


def _status(line: bytes) -> int:
    """The status code of an HTTP/1.x status line (RFC 9112 4)."""
    version, _, rest = line.partition(b" ")
    code = rest[:3]
    if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise ValueError(f"status line {line[:80]!r}")
    return int(code)
