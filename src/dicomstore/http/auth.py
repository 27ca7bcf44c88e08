"""Who is asking over HTTP, and may they: identities and rights from the policy file.

The same :class:`~dicomstore.policy.Policy` that admits DIMSE callers decides
HTTP requests (``serve --config``):

- ``Authorization: Basic`` (RFC 7617): a ``[users]`` name and its passcode,
  checked against the scrypt hash as for user identity type 2 (PS3.7
  D.3.3.7; a user without a passcode cannot use Basic);
- ``Authorization: Bearer`` (RFC 6750): a JSON Web Token verified as the
  ``[jwt]`` section says, as for user identity type 5; the user is ``sub``;
- no credentials: the rights in ``http_anonymous_may`` (default none).

``/healthz`` and ``/readyz`` need none (:data:`~dicomstore.http.operations.OPEN_PATHS`);
``/metrics`` needs ``read`` like any GET.

Each request needs one right, by its method (:func:`action_of`): ``read``
(GET, HEAD: QIDO-RS, WADO-RS, metadata, browse pages, zip), ``store`` (POST:
STOW-RS) or ``delete`` (DELETE). Without it: **401** with ``WWW-Authenticate``
challenges (Basic, and Bearer when ``[jwt]`` is configured) when the request
is anonymous or its credentials fail, **403** when an authenticated user
lacks the right. Credentials that fail are never downgraded to anonymous.
Failures are counted per client address like refused associations
(:class:`~dicomstore.services.admission.FailedAdmissions`): past the limit,
429 with ``Retry-After`` and no passcode check. Each refusal is logged on
``dicomstore.http.auth``; the caller learns only that its credentials failed.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

from dicomstore.http.common import error_response
from dicomstore.http.operations import OPEN_PATHS
from dicomstore.policy import DELETE, READ, STORE, IdentityRefused, Policy
from dicomstore.services.admission import FailedAdmissions
from dicomstore.services.storage import Caller, StoreService

log = logging.getLogger("dicomstore.http.auth")

#: Longest Authorization header read (a JWT with an RSA signature is ~1 KB).
MAX_AUTHORIZATION = 16 * 1024


@dataclass(frozen=True)
class HttpIdentity:
    """An HTTP request's user (``None``: anonymous) and what it may do."""

    user: str | None
    rights: frozenset[str]
    scheme: str | None = None  # "Basic" or "Bearer"

    def caller(
        self, store: StoreService, service: str, name: str, called_ae: str, address: str
    ) -> Caller:
        """The store service's caller for this identity (STOW-RS): its ``store``
        right, then ``--store-aet`` for the AE title ``name`` it stores as."""
        may_store = store.may_store(name, STORE in self.rights)
        return Caller(service, name, address, called_ae, may_store=may_store, user=self.user)


def identity_of(scope: Scope) -> HttpIdentity | None:
    """The identity :class:`AuthMiddleware` found (``None``: no policy, HTTP is open)."""
    state = scope.get("state")
    return state.get("identity") if isinstance(state, dict) else None


def client_of(scope: Scope) -> str:
    """The client's IP address, or ``""``."""
    client = scope.get("client")
    return str(client[0]) if client else ""


def action_of(method: str) -> str:
    """The right a request method needs."""
    if method in ("POST", "PUT"):
        return STORE
    if method == "DELETE":
        return DELETE
    return READ


class Unauthorized(Exception):
    """Credentials that do not authenticate; ``bearer`` marks a refused token."""

    def __init__(self, why: str, *, bearer: bool = False) -> None:
        super().__init__(why)
        self.bearer = bearer


class HttpAuth:
    """Checks the credentials of requests against a :class:`Policy`."""

    def __init__(
        self, policy: Policy, *, realm: str = "dicomstore", failed: FailedAdmissions | None = None
    ) -> None:
        self.policy = policy
        self.realm = realm
        self.failed = failed if failed is not None else FailedAdmissions()

    def challenges(self, token_refused: bool = False) -> list[str]:
        """The ``WWW-Authenticate`` values (RFC 9110 11.6.1): Basic, and Bearer with ``[jwt]``."""
        found = [f'Basic realm="{self.realm}", charset="UTF-8"']
        if self.policy.jwt is not None:
            bearer = f'Bearer realm="{self.realm}"'
            if token_refused:
                bearer += ', error="invalid_token"'  # RFC 6750 3.1
            found.append(bearer)
        return found

    async def identify(self, authorization: str | None) -> HttpIdentity:
        """The identity an ``Authorization`` value proves; :class:`Unauthorized` if none."""
        if authorization is None:
            return HttpIdentity(None, self.policy.http_rights(None))
        if len(authorization) > MAX_AUTHORIZATION:
            raise Unauthorized("Authorization header too long")
        scheme, credentials = _scheme(authorization)
        try:
            if scheme.lower() == "basic":
                name, passcode = _basic(credentials)
                user = await anyio.to_thread.run_sync(self._check_passcode, name, passcode)
                return HttpIdentity(user, self.policy.http_rights(user), "Basic")
            if scheme.lower() == "bearer":
                try:
                    user, may = self.policy.check_token(credentials)
                except IdentityRefused as exc:
                    raise Unauthorized(str(exc), bearer=True) from None
                return HttpIdentity(user, self.policy.http_rights(user, may), "Bearer")
        except IdentityRefused as exc:
            raise Unauthorized(str(exc)) from None
        raise Unauthorized(f"unsupported authorization scheme {scheme[:20]!r}")

    def _check_passcode(self, name: str, passcode: bytes) -> str:
        return self.policy.check_passcode(name, passcode, passcode_required=True)


def _basic_user(authorization: str | None) -> str | None:
    """The user Basic credentials name (their refusals count toward
    ``--max-failed-logins-per-user``); ``None`` for other schemes or malformed ones."""
    if authorization is None or len(authorization) > MAX_AUTHORIZATION:
        return None
    scheme, credentials = _scheme(authorization)
    if scheme.lower() != "basic":
        return None
    try:
        return _basic(credentials)[0]
    except IdentityRefused:
        return None


def _scheme(authorization: str) -> tuple[str, str]:
    """An ``Authorization`` value's scheme and credentials (RFC 9110 11.6.2)."""
    scheme, _, credentials = authorization.strip().partition(" ")
    return scheme, credentials.strip()


def _basic(credentials: str) -> tuple[str, bytes]:
    """User and passcode of Basic credentials (RFC 7617 2: base64 of ``user:pass``)."""
    try:
        raw = base64.b64decode(credentials.encode("ascii"), validate=True)
        name, sep, passcode = raw.decode("utf-8").partition(":")
    except (UnicodeError, binascii.Error):
        raise IdentityRefused("Basic credentials are not base64 of UTF-8 user:passcode") from None
    if not sep or not name:
        raise IdentityRefused("Basic credentials have no user:passcode")
    return name, passcode.encode("utf-8")


class AuthMiddleware:
    """ASGI middleware: identify each HTTP request, refuse what it may not do."""

    def __init__(self, app: ASGIApp, auth: HttpAuth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path, address = scope["method"], scope["path"], client_of(scope)
        if path in OPEN_PATHS:  # health checks: no credentials (http/operations.py)
            await self.app(scope, receive, send)
            return
        given = [v for k, v in scope["headers"] if k == b"authorization"]
        if len(given) > 1:  # (a singleton field, RFC 9110 11.6.2: which one would count?)
            log.warning(
                "HTTP %s %s from %s: %d Authorization headers", method, path, address, len(given)
            )
            await _answer(scope, receive, send, 400, "more than one Authorization header")
            return
        failed = self.auth.failed
        authorization = given[0].decode("latin-1") if given else None
        # credentials are checked in turns (FailedAdmissions): refusals counted, bounded;
        # a request without them checks nothing: not held back (review38web #2: behind
        # a proxy, one guesser's address is every user's)
        user = _basic_user(authorization)
        wait = None if authorization is None else await failed.attempt(address, user)
        if wait is not None:
            log.warning(
                "HTTP %s %s from %s: too many failed credentials (%s)",
                method, path, address, failed.why(address, user),
            )  # fmt: skip
            retry = {"Retry-After": str(math.ceil(wait))}
            await _answer(scope, receive, send, 429, "too many failed credentials", retry)
            return
        refused: Unauthorized | None = None
        try:
            identity = await self.auth.identify(authorization)
        except Unauthorized as error:
            refused = error
        finally:
            if authorization is not None:  # (its turn ends: FailedAdmissions.attempt)
                failed.done(address, admitted=refused is None, user=user)
        if refused is not None:
            log.warning(
                "HTTP %s %s from %s: credentials refused: %s", method, path, address, refused
            )
            message = "the token is not accepted" if refused.bearer else "credentials not accepted"
            challenges = self.auth.challenges(refused.bearer)
            await _answer(scope, receive, send, 401, message, challenges=challenges)
            return

        scope.setdefault("state", {})["identity"] = identity
        action = action_of(method)
        if action in identity.rights:
            await self.app(scope, receive, send)
            return
        if identity.user is None:
            log.info("HTTP %s %s from %s: credentials required", method, path, address)
            message = f"credentials required ({action})"
            challenges = self.auth.challenges()
            await _answer(scope, receive, send, 401, message, challenges=challenges)
            return
        why, challenges = f"user {identity.user!r} may not {action}", []
        claim = self.auth.policy.jwt_rights_claim if identity.scheme == "Bearer" else None
        if claim is not None and action in self.auth.policy.user_may(identity.user):
            why += f" (the token's {claim!r} claim does not grant it)"  # (review79 F5)
            challenges = [f'Bearer realm="{self.auth.realm}", error="insufficient_scope"']
        log.warning("HTTP %s %s from %s: %s", method, path, address, why)
        await _answer(scope, receive, send, 403, why, challenges=challenges)


async def _answer(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
    *,
    challenges: list[str] | None = None,
) -> None:
    response: Any = error_response(status, message, headers)
    for challenge in challenges or ():
        response.headers.append("WWW-Authenticate", challenge)
    await response(scope, receive, send)
