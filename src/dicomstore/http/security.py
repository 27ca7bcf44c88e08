"""How the HTTP door is guarded: one :class:`HttpSecurity` from ``serve``'s options.

It gathers the policy file (identities and rights, :mod:`dicomstore.http.auth`),
the audit trail (:mod:`dicomstore.http.read_audit`), the origins allowed
cross-origin requests (CORS, Fetch standard: none by default, so a web page
from elsewhere cannot read answers in a browser), and the HTTPS certificate
and key (:func:`dicomstore.tls.server_context`: TLS 1.2+, BCP 195 suites).
:func:`~dicomstore.http.app.build_app` turns it into middleware, outermost
first: access log, the headers of every answer (:mod:`dicomstore.http.headers`),
the Host guard, CORS, authentication, read audit.

Without a policy file HTTP is open: anyone who reaches the port may read and
store. That is why it binds to 127.0.0.1 unless ``--http-host`` says otherwise,
and :meth:`HttpSecurity.warnings` names the exposure when it is wider. While
requests without credentials may do anything, a web page elsewhere could reach
that through DNS rebinding: the Host guard (:mod:`dicomstore.http.hosts`) is on.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from dicomstore.http.access_log import AccessLogMiddleware
from dicomstore.http.auth import AuthMiddleware, HttpAuth
from dicomstore.http.headers import SecurityHeaders
from dicomstore.http.hosts import AllowedHosts, HostGuard
from dicomstore.http.read_audit import AuditWriter, ReadAuditMiddleware
from dicomstore.policy import HTTP_ACTIONS, Policy
from dicomstore.services.admission import FailedAdmissions
from dicomstore.tls import is_loopback

#: Request headers a cross-origin client may send (besides the CORS-safelisted ones).
CORS_HEADERS = ("Authorization", "Accept", "Content-Type")


@dataclass(frozen=True)
class HttpSecurity:
    """Who may use the HTTP door, over what, and what is recorded."""

    policy: Policy | None = None
    audit: AuditWriter | None = None
    cors_origins: tuple[str, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: failed credentials per client address before 429 (0: never), and their window
    max_failed: int = 10
    failed_window: float = 60.0
    #: failed passcodes of one user name (Basic, from any address) before 429 (0: never)
    max_failed_per_user: int = 0
    #: the refusals counted (``serve``: the DICOM door's, so that an address has
    #: one count for both doors); None: one of its own
    failed: FailedAdmissions | None = field(default=None, compare=False)
    #: names a request's Host may give besides the ones always allowed
    #: (``--http-allowed-host`` and the base URL's host; ``*``: any)
    allowed_hosts: tuple[str, ...] = ()

    def ssl_context(self) -> ssl.SSLContext | None:
        """The HTTPS context, or None for plain HTTP; ``TLSFileError`` or
        ``ValueError`` (one line naming the ``--http-tls-*`` option) if unusable."""
        if self.tls_cert is None and self.tls_key is None:
            return None
        if self.tls_cert is None or self.tls_key is None:
            raise ValueError("--http-tls-cert and --http-tls-key go together")
        from dicomstore.tls import server_context

        return server_context(self.tls_cert, self.tls_key, option_prefix="--http-tls-")

    @property
    def anonymous_rights(self) -> frozenset[str]:
        """What a request without credentials may do."""
        return HTTP_ACTIONS if self.policy is None else self.policy.http_anonymous_may

    def warnings(self, host: str) -> list[str]:
        """What the operator should know about serving HTTP on ``host``."""
        if is_loopback(host):
            return []
        found = []
        # (delete: accepted, reserved; no HTTP endpoint deletes: review100 W10)
        rights = ", ".join(sorted(set(self.anonymous_rights) - {"delete"}))
        if rights:
            why = "no --config" if self.policy is None else "http_anonymous_may"
            found.append(
                f"HTTP on {host} requires no credentials to {rights} ({why}): "
                "anyone who can reach it can"
            )
        if self.policy is not None and self.tls_cert is None:
            found.append(
                f"HTTP on {host} without --http-tls-cert: passcodes and tokens travel in clear"
            )
        return found

    def middleware(self) -> list[Middleware]:
        """The middleware stack, outermost first."""
        stack = [
            Middleware(AccessLogMiddleware),
            Middleware(SecurityHeaders, cross_origin=bool(self.cors_origins)),
        ]
        if self.anonymous_rights:  # (what a rebound page could do: hosts.py)
            stack.append(Middleware(HostGuard, allowed=AllowedHosts.of(self.allowed_hosts)))
        if self.cors_origins:
            stack.append(
                Middleware(
                    CORSMiddleware,
                    allow_origins=list(self.cors_origins),
                    allow_methods=["GET", "HEAD", "POST"],
                    allow_headers=list(CORS_HEADERS),
                    allow_credentials=True,
                    expose_headers=["Warning", "Content-Disposition"],
                )
            )
        if self.policy is not None:
            failed = self.failed
            if failed is None:
                failed = FailedAdmissions(
                    self.max_failed, self.failed_window, user_limit=self.max_failed_per_user
                )
            stack.append(Middleware(AuthMiddleware, auth=HttpAuth(self.policy, failed=failed)))
        if self.audit is not None:
            stack.append(Middleware(ReadAuditMiddleware, audit=self.audit))
        return stack


def describe(security: HttpSecurity | None) -> str:
    """One line for the start-up log: what HTTP asks of its clients."""
    if security is None or security.policy is None:
        return "open: no --config"
    rights = ", ".join(sorted(security.anonymous_rights)) or "nothing"
    return f"credentials from the policy file; anonymous may: {rights}"
