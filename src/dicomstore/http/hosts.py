"""Which names a request's ``Host`` may give: the guard against DNS rebinding.

A web page whose owner re-points its host name at this server (a DNS answer of
127.0.0.1, or of a LAN address) is same-origin with it: the browser's
same-origin policy no longer keeps the page's scripts from reading answers or
from POSTing a STOW-RS body. The browser sends no credentials to the rebound
name, so the page can do what a request without credentials may. While that is
anything (no ``--config``, or ``http_anonymous_may``), ``Host`` must name this
server the way no one else's DNS can (RFC 9110 7.2; review38web #1):

- an IP address (a page at an address is served from that address);
- ``localhost`` or a name under ``.localhost`` (RFC 6761 6.3: resolved to
  loopback by the host, not by DNS);
- this machine's host name;
- the host of ``--http-base-url`` and each ``--http-allowed-host`` (a name; or
  ``.example.org`` for every name under it; ``*`` turns the guard off).

Others are answered 400 naming ``--http-allowed-host``, logged once per name.
A request without ``Host``, or with an empty one (HTTP/1.0, a request with no
authority: never a browser's), passes. Behind a trusted proxy
(``--http-trust-forwarded``) the names in its ``X-Forwarded-Host`` headers (the one
the browser used, and any a page sent itself) must each be allowed too (review67
F3: a proxy passing its upstream's address as ``Host`` let a rebound page through;
review69 M2: only the first value was looked at).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from dicomstore.http.common import error_response
from dicomstore.http.forwarded import FORWARDED_HOST

log = logging.getLogger("dicomstore.http.hosts")

#: Names refused that were logged (each once; bounded: a client may send any)
MAX_LOGGED = 256


@dataclass(frozen=True)
class AllowedHosts:
    """The names (lower-case, no trailing dot) and ``.suffix`` es a Host may give."""

    names: frozenset[str]
    suffixes: tuple[str, ...] = ()
    any: bool = False

    @classmethod
    def of(cls, configured: Iterable[str]) -> AllowedHosts:
        """This machine's name and ``configured`` (``--http-allowed-host``, the
        base URL's host): ``*`` for any, ``.example.org`` for the names under it."""
        names = {socket.gethostname().lower().rstrip(".")}
        suffixes, any_name = [], False
        for entry in configured:
            name = entry.strip().lower().rstrip(".")
            if name == "*":
                any_name = True
            elif name.startswith("."):
                suffixes.append(name)
            elif name:
                names.add(name)
        return cls(frozenset(names - {""}), tuple(suffixes), any_name)

    def allows(self, host: str) -> bool:
        """Whether the ``Host`` header value ``host`` names this server."""
        if self.any:
            return True
        name = hostname(host)
        if name is None:
            return False
        if name == "localhost" or name.endswith(".localhost") or name in self.names:
            return True
        if any(name.endswith(suffix) for suffix in self.suffixes):
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True


def hostname(host: str) -> str | None:
    """The name or address in a ``Host`` value (``[::1]:8042`` gives ``::1``),
    lower-case without a trailing dot; None if malformed."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        rest = host[end + 1 :]
        if end < 0 or (rest and not (rest[0] == ":" and (rest[1:].isdigit() or rest == ":"))):
            return None
        return host[1:end] or None
    name, colon, port = host.partition(":")
    if colon and port and not port.isdigit():  # (an empty port is allowed: RFC 3986 3.2.3)
        return None
    return name.rstrip(".") or None


class HostGuard:
    """ASGI middleware: 400 for a ``Host`` that :class:`AllowedHosts` does not allow."""

    def __init__(self, app: ASGIApp, allowed: AllowedHosts) -> None:
        self.app = app
        self.allowed = allowed
        self._logged: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = next((v for k, v in scope["headers"] if k == b"host"), None)
            names = [("Host", host.decode("latin-1") if host else "")]
            names += [("X-Forwarded-Host", name) for name in scope.get(FORWARDED_HOST, ())]
            for header, text in names:
                if text and not self.allowed.allows(text):
                    self._log(text, scope)
                    message = (
                        f"{header} {text!r} is not a name of this server"
                        " (serve --http-allowed-host NAME admits it)"
                    )
                    await error_response(400, message)(scope, receive, send)
                    return
        await self.app(scope, receive, send)

    def _log(self, host: str, scope: Scope) -> None:
        if host in self._logged or len(self._logged) >= MAX_LOGGED:
            return
        self._logged.add(host)
        client = scope.get("client")
        log.warning(
            "HTTP request for Host %r from %s refused: not a name of this server (a page"
            " whose name points here: DNS rebinding); if clients reach the server by that"
            " name, give --http-allowed-host (logged once per name)",
            host,
            client[0] if client else "?",
        )
