"""One access log line per HTTP request, on the ``dicomstore.http.access`` logger.

At INFO, once the response is sent (or the request failed)::

    127.0.0.1 alice "GET /studies/1.2.3/metadata" 200 5321B 12.4ms

client address, user (``-``: anonymous or no policy), method and path (the
query string is left out: it can hold patient names), status (``-`` when the
client went away before an answer), body bytes sent, time taken. Refused
requests (401, 403, 429) are logged like any other, with the status.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Receive, Scope, Send

from dicomstore.http.answer import Answer, watch
from dicomstore.http.auth import client_of, identity_of

log = logging.getLogger("dicomstore.http.access")


class AccessLogMiddleware:
    """ASGI middleware writing the access log line of each HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        def log_line(answer: Answer, complete: bool) -> None:
            identity = identity_of(scope)
            user = identity.user if identity is not None and identity.user else "-"
            log.info(
                '%s %s "%s %s" %s %dB %.1fms',
                client_of(scope) or "-",
                user,
                scope["method"],
                scope["path"],
                answer.status or "-",
                answer.nbytes,
                (time.perf_counter() - start) * 1000,
            )

        await watch(self.app, scope, receive, send, log_line)
