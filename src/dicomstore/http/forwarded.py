"""The client's address behind a trusted proxy (``--http-trust-forwarded``).

A reverse proxy connects for every client: the address the connection comes
from is the proxy's. With ``--http-trust-forwarded`` the client is the last
address of ``X-Forwarded-For`` instead, the one the proxy appended (those
before it are what the client itself sent, and any client can send them): the
access log, the audit trail and the count of failed credentials
(:class:`~dicomstore.services.admission.FailedAdmissions`) name it. Before,
one guesser's ten failures behind a proxy were every user's (review38web #2).
A malformed value is ignored with a WARNING, and the connection's address kept.

The name the client asked for is then the proxy's ``X-Forwarded-Host`` (its last
value, as :func:`~dicomstore.http.common.base_url` takes it), not ``Host`` (often
the upstream's address): every name of those headers is kept in the scope
(:data:`FORWARDED_HOST`) for the guard against DNS rebinding
(:mod:`~dicomstore.http.hosts`, review67 F3: each must be allowed, review69 M2: a
page can send the header itself, and a proxy that appends keeps it first).
"""

from __future__ import annotations

import ipaddress
import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from dicomstore.http.common import forwarded_hosts, well_formed_host

log = logging.getLogger("dicomstore.http")

#: The scope key of every name of the trusted proxy's ``X-Forwarded-Host`` headers.
FORWARDED_HOST = "dicomstore.forwarded_hosts"


def forwarded_for(value: str) -> str | None:
    """The last address of an ``X-Forwarded-For`` value, or None if it is not one."""
    last = value.rsplit(",", 1)[-1].strip()
    if last.startswith("[") and last.endswith("]"):
        last = last[1:-1]
    try:
        return str(ipaddress.ip_address(last))
    except ValueError:
        return None


class ForwardedClient:
    """ASGI middleware: ``scope["client"]`` from the trusted proxy's ``X-Forwarded-For``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            values = [v for k, v in scope["headers"] if k == b"x-forwarded-for"]
            if values:
                text = values[-1].decode("latin-1")
                address = forwarded_for(text)
                if address is None:
                    log.warning("ignored the proxy's malformed X-Forwarded-For: %r", text[:100])
                else:
                    scope = dict(scope, client=(address, 0))
            hosts = [v.decode("latin-1") for k, v in scope["headers"] if k == b"x-forwarded-host"]
            if hosts:  # (a malformed name is never used: base_url)
                named = [n for n in forwarded_hosts(hosts) if well_formed_host(n)]
                scope = dict(scope, **{FORWARDED_HOST: named})
        await self.app(scope, receive, send)
