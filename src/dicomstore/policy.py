"""Who may associate, from where, as whom, to do what: the policy file (TOML).

``dicomstore serve --config policy.toml`` loads a :class:`Policy`, the
server's gatekeeper (:mod:`dicomstore.services.admission`).  At each
A-ASSOCIATE-RQ it checks, in this order:

1. the calling AE title against the known ``[peers]`` (unknown callers are
   admitted only with ``allow_unknown = true``);
2. for a known peer, the caller's IP address (``hosts``: addresses or CIDR
   networks) and its TLS client certificate subject (``tls_subject``);
3. the user identity (PS3.7 D.3.3.7): type 1 username, type 2 username and
   passcode (checked against a salted scrypt hash), type 5 JSON Web Token
   (signature, ``exp``/``nbf``, ``iss``/``aud``; the user is ``sub``).

Refusals (PS3.8 9.3.4, A-ASSOCIATE-RJ): an unknown calling AE title, or a
known one calling from the wrong address or with the wrong certificate, is
*rejected-permanent, DICOM UL service-user, calling-AE-title-not-recognized*
(the real cause goes to the log only, not to the caller).  A failed or missing
(when required) user identity is *rejected-permanent, DICOM UL service-user,
no-reason-given*: PS3.8 has no reason code for identities.  Called AE title
checks stay with the command line flags (``--require-called-aet``).

A presented identity must be valid even when none is required: a wrong
passcode is refused, never downgraded to an anonymous association.
Kerberos (3) and SAML (4) are not supported: they are refused when an
identity is required and otherwise ignored (the association goes on without
a user, as PS3.7 D.3.3.7 allows an acceptor that does not support them).
When the requestor asks for a positive response, the server response is
empty for types 1, 2 and 5 (PS3.7 D.3.3.7.2 defines content only for
Kerberos and SAML).

What a caller may do is the intersection of what its peer entry (or
``unknown_may``) and its user entry (if any) allow: ``echo`` (C-ECHO, else
status 0124), ``store`` (C-STORE, else status 0124), ``find`` (C-FIND, else
status 0124), ``move`` (C-MOVE, else status 0124), ``get`` (C-GET, else
status 0124) and ``commit`` (Storage Commitment requests, N-ACTION, else status
0124). An entry without ``may`` gets them all; a ``may`` list is exact:
``may = ["store"]`` grants no C-FIND.

C-MOVE destinations (PS3.4 C.4.2.2.1: a C-MOVE names its destination by AE
title only) are the ``[destinations.AET]`` sections, with those given by
``--move-destination AET=HOST:PORT`` (the command line wins for a title in
both); a C-MOVE to any other title is answered A801. Where a Storage
Commitment SCU listens for a report the archive sends on a new association
(PS3.4 J.3.3) is its ``[commitment_scus.AET]`` section, with those given by
``--commitment-scu AET=HOST:PORT`` (again the command line wins). A peer's ``move_to``
lists the destinations it may name (another is answered 0124); without it, a
peer with ``move`` may name every configured destination (callers not under
``[peers]`` always may).

The same file says who may do what over HTTP (DICOMweb and the browse page,
:mod:`dicomstore.http.auth`): HTTP Basic is checked against the ``[users]``
passcodes (a user without a passcode cannot use Basic), ``Authorization:
Bearer`` tokens as the ``[jwt]`` section says.  A user's ``may`` also holds
its HTTP rights: ``read`` (QIDO-RS, WADO-RS, metadata, browse pages, zip),
``store`` (STOW-RS, as well as C-STORE) and ``delete`` (reserved: no HTTP
endpoint deletes yet).  A token whose ``sub`` is not under ``[users]`` has
``[jwt] unknown_may`` (default: the default rights).  With ``[jwt] rights_claim``
a token may at most what its claim names (an identity provider's scopes or roles).
Requests without credentials get ``http_anonymous_may`` (default: nothing).

The file format, every key shown (only ``allow_unknown`` is needed)::

    # Callers not listed under [peers]: refused (false, the default) or
    # admitted with the rights in unknown_may (default: every DIMSE right).
    allow_unknown = false
    unknown_may = ["echo"]

    # What HTTP requests without credentials may do: any of read, store,
    # delete (default: nothing; 401 asks for credentials).
    http_anonymous_may = []

    # Every association must authenticate a user (types 1, 2 or 5).
    # Default false; a peer entry may override it.
    require_user_identity = false

    # Known peers, by calling AE title (quote titles with spaces or dots).
    [peers.MODALITY1]
    hosts = ["10.1.2.3", "192.168.7.0/24"]     # optional; IP addresses or CIDR
    tls_subject = "CN=modality1,O=Test Hospital"  # optional; or a list
    may = ["echo", "store"]                     # default: every DIMSE right

    [peers.WORKSTATION]
    may = ["echo", "find", "move"]
    move_to = ["WORKSTATION"]                   # optional: C-MOVE only to these

    [peers.MONITOR]
    may = ["echo"]                              # echo only: C-STORE gets 0124

    [peers."READING ROOM"]
    require_user_identity = true                # this peer must name a user

    # Users (User Identity types 1 and 2).  A user with a passcode must give
    # it (type 2); for one without, the name is enough (type 1, or type 2
    # whose passcode is then not checked).
    [users.alice]
    passcode = "scrypt$16384$8$1$<salt base64>$<hash base64>"

    [users.viewer]
    may = ["echo", "read"]    # optional, default the DIMSE rights and read

    # C-MOVE destinations, by AE title: where a C-MOVE naming it sends to.
    [destinations.WORKSTATION]
    address = "10.1.2.40:104"                   # host:port ([v6 address]:port)

    # Storage Commitment SCUs, by AE title: where a commitment report goes when
    # the association of the request has ended.
    [commitment_scus.MODALITY1]
    address = "10.1.2.3:104"

    # JSON Web Tokens (type 5).  The user is the "sub" claim; "exp" is required.
    [jwt]
    algorithms = ["HS256", "ES256"]   # default: what the keys below allow
    secret_file = "jwt-secret.bin"    # HS256/384/512 shared secret (>= 32 bytes),
    # secret = "..."                  #   or inline (keep this file private then)
    public_key_file = "idp-public.pem"  # RS256/384/512 (RSA) or ES256/384/512 (EC)
    issuer = "https://idp.example.org"  # optional: required "iss"
    audience = "dicomstore"             # optional: required in "aud"
    leeway = 30                         # seconds of clock skew for exp/nbf
    unknown_may = ["read"]              # a "sub" not under [users] (default: every
                                        #   right but delete, as a user's)
    rights_claim = "scope"              # optional: a token may at most the rights this
                                        #   claim names ("a b" or ["a", "b"]; a dotted
                                        #   name is nested: "realm_access.roles")
    rights_prefix = "dicomstore:"       # optional: only names with it count ("dicomstore:read")

Relative file names are relative to the policy file.  Make a passcode hash
with ``python -m dicomstore.policy hash-passcode`` (reads the passcode from
stdin, prompts twice on a terminal) and check a file with
``python -m dicomstore.policy check policy.toml``.

Passcode checks run scrypt on the event loop (tens of milliseconds with the
default parameters); successful checks are remembered, keyed by an HMAC of
the passcode under a per-process random key, so a modality that associates
again and again pays once.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import secrets
import sys
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dicomstore.jwt import InvalidToken, JWTVerifier, claim_strings
from dicomstore.passcodes import DECOY, PasscodeHash
from dicomstore.services.admission import Admission, AdmissionRequest
from dicomstore.services.destinations import Destination
from dicomstore.tls import normalize_subject
from dicomstore.ul import pdu as P

log = logging.getLogger("dicomstore.policy")

ECHO, STORE, READ, DELETE, FIND = "echo", "store", "read", "delete", "find"
MOVE, GET, COMMIT = "move", "get", "commit"
#: What a peer (a DIMSE caller) may be allowed: C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET,
#: Storage Commitment (N-ACTION).
ACTIONS = frozenset({ECHO, STORE, FIND, MOVE, GET, COMMIT})
#: What HTTP requests may be allowed: read (QIDO, WADO, browse), store (STOW), delete.
HTTP_ACTIONS = frozenset({READ, STORE, DELETE})
#: What a user may be allowed, over DIMSE and over HTTP.
USER_ACTIONS = ACTIONS | HTTP_ACTIONS
#: A user's rights when its entry has no ``may`` (delete must be granted).
USER_DEFAULT = ACTIONS | {READ}

#: User-Identity-Type values (PS3.7 Table D.3-14).
USERNAME, USERNAME_PASSCODE, KERBEROS, SAML, JWT = 1, 2, 3, 4, 5

#: Unknown calling AE title, or a known one from the wrong host or certificate.
REJECT_CALLER = P.AssociateRJ(
    P.REJECT_PERMANENT, P.REJECT_SOURCE_USER, P.REJECT_CALLING_AE_NOT_RECOGNIZED
)
#: User identity missing (when required) or not authenticated.
REJECT_IDENTITY = P.AssociateRJ(P.REJECT_PERMANENT, P.REJECT_SOURCE_USER, P.REJECT_NO_REASON)


class PolicyError(ValueError):
    """The policy file is unreadable or wrong; the message is one line."""


class IdentityRefused(Exception):
    """A user name and passcode, or a token, that does not authenticate (the
    message says why, for the log; the caller learns only that it failed)."""


# --------------------------------------------------------------------------- addresses


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class Peer:
    """A known calling AE title and what it must show and may do."""

    ae_title: str
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()  # () = anywhere
    tls_subjects: tuple[tuple[tuple[str, str], ...], ...] = ()  # () = no certificate check
    may: frozenset[str] = ACTIONS
    require_user_identity: bool | None = None  # None: the global setting
    #: the Move Destinations (AE titles) it may name in a C-MOVE; None: any configured
    move_to: frozenset[str] | None = None


@dataclass(frozen=True)
class User:
    """A user for identity types 1 and 2 (and rights for a JWT ``sub``)."""

    name: str
    passcode: PasscodeHash | None = None
    may: frozenset[str] = USER_DEFAULT


class _Refused(Exception):
    def __init__(self, reject: P.AssociateRJ, why: str) -> None:
        super().__init__(why)
        self.reject = reject


class Policy:
    """The gatekeeper configured by a policy file (see the module docstring)."""

    def __init__(
        self,
        *,
        peers: Iterable[Peer] = (),
        users: Iterable[User] = (),
        allow_unknown: bool = False,
        unknown_may: frozenset[str] = ACTIONS,
        require_user_identity: bool = False,
        jwt: JWTVerifier | None = None,
        jwt_unknown_may: frozenset[str] = USER_DEFAULT,
        jwt_rights_claim: str | None = None,
        jwt_rights_prefix: str = "",
        http_anonymous_may: frozenset[str] = frozenset(),
        destinations: Iterable[Destination] = (),
        commitment_scus: Iterable[Destination] = (),
    ) -> None:
        self.peers = {p.ae_title: p for p in peers}
        #: C-MOVE destinations by AE title (``[destinations.AET]``)
        self.destinations = {d.ae_title: d for d in destinations}
        #: Storage Commitment SCUs' addresses by AE title (``[commitment_scus.AET]``)
        self.commitment_scus = {d.ae_title: d for d in commitment_scus}
        self.users = {u.name: u for u in users}
        self.allow_unknown = allow_unknown
        self.unknown_may = unknown_may
        self.require_user_identity = require_user_identity
        self.jwt = jwt
        #: what a token whose ``sub`` is not under ``[users]`` may (``[jwt] unknown_may``)
        self.jwt_unknown_may = jwt_unknown_may
        #: the claim naming a token's rights (``[jwt] rights_claim``) and their prefix
        self.jwt_rights_claim, self.jwt_rights_prefix = jwt_rights_claim, jwt_rights_prefix
        self.http_anonymous_may = http_anonymous_may
        self._cache_key = secrets.token_bytes(32)
        self._verified: set[tuple[str, bytes]] = set()

    @classmethod
    def load(cls, path: Path | str) -> Policy:
        """Read a policy file; :class:`PolicyError` with a one-line message if wrong."""
        path = Path(path)
        try:
            with path.open("rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            raise PolicyError(f"{path}: cannot read: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"{path}: not valid TOML: {exc}") from None
        try:
            from dicomstore.policy_file import build  # (it builds Policy objects)

            return build(data, path.parent)
        except PolicyError as exc:
            raise PolicyError(f"{path}: {exc}") from None

    # -- admission

    def admit(self, request: AdmissionRequest) -> Admission:
        """Decide one A-ASSOCIATE-RQ (PS3.8 7.1.1, PS3.7 D.3.3.7)."""
        try:
            peer, may = self._caller(request)
            user, user_may, response = self._identity(request, peer)
        except _Refused as refused:
            log.warning("refusing %r from %s: %s", request.calling_ae, request.address, refused)
            return Admission(reject=refused.reject)
        may = may & user_may
        return Admission(
            may_echo=ECHO in may,
            may_store=STORE in may,
            may_find=FIND in may,
            may_move=MOVE in may,
            move_to=peer.move_to if peer is not None else None,
            may_get=GET in may,
            may_commit=COMMIT in may,
            identity_response=response,
            user=user,
        )

    def _caller(self, request: AdmissionRequest) -> tuple[Peer | None, frozenset[str]]:
        peer = self.peers.get(request.calling_ae)
        if peer is None:
            if not self.allow_unknown:
                raise _Refused(REJECT_CALLER, "calling AE title not in the policy")
            return None, self.unknown_may
        if peer.networks:
            ip = _ip(request.address)
            if ip is None or not any(ip in net for net in peer.networks):
                raise _Refused(REJECT_CALLER, f"address {request.address} not allowed for it")
        if peer.tls_subjects:
            if not request.tls_subject:
                raise _Refused(REJECT_CALLER, "no TLS client certificate")
            try:
                subject = normalize_subject(request.tls_subject)
            except ValueError:
                subject = ()
            if subject not in peer.tls_subjects:
                raise _Refused(
                    REJECT_CALLER, f"certificate subject '{request.tls_subject}' not allowed"
                )
        return peer, peer.may

    def _identity(
        self, request: AdmissionRequest, peer: Peer | None
    ) -> tuple[str | None, frozenset[str], bytes | None]:
        """The authenticated user, what it may, and the server response (None: no
        positive response)."""
        required = self.require_user_identity
        if peer is not None and peer.require_user_identity is not None:
            required = peer.require_user_identity
        ident = request.identity
        if ident is None:
            if required:
                raise _Refused(REJECT_IDENTITY, "no user identity, and one is required")
            return None, USER_ACTIONS, None
        kind = ident.identity_type
        try:
            if kind in (USERNAME, USERNAME_PASSCODE):
                try:
                    name = ident.primary.decode("utf-8")
                except UnicodeDecodeError:
                    raise IdentityRefused("username is not UTF-8") from None
                passcode = ident.secondary if kind == USERNAME_PASSCODE else None
                user = self.check_passcode(name, passcode)
                return user, self.user_may(user), b""
            if kind == JWT:
                return *self.check_token(ident.primary), b""
        except IdentityRefused as exc:
            raise _Refused(REJECT_IDENTITY, str(exc)) from None
        if required:
            raise _Refused(REJECT_IDENTITY, f"user identity type {kind} is not supported")
        log.info("%s: ignoring user identity of unsupported type %d", request.address, kind)
        return None, USER_ACTIONS, None

    # -- identities, for every door (user identity negotiation, HTTP)

    def check_passcode(
        self, name: str, passcode: bytes | None, *, passcode_required: bool = False
    ) -> str:
        """The user ``name`` if ``passcode`` is its passcode (or it has none and
        ``passcode_required`` is false: a type 1 identity); else :class:`IdentityRefused`.
        Blocking: may run scrypt (successful checks are remembered)."""
        user = self.users.get(name)
        if user is None or (user.passcode is None and passcode_required):
            if passcode is not None:
                DECOY.verify(passcode)  # as long as a real check: timing names no user
            if user is None:
                raise IdentityRefused(f"unknown user {name!r}")
            raise IdentityRefused(f"user {name!r} has no passcode in the policy file")
        if user.passcode is None:
            return name
        if passcode is None:
            raise IdentityRefused(f"user {name!r} needs a passcode")
        key = (name, hmac.new(self._cache_key, passcode, hashlib.sha256).digest())
        if key in self._verified:
            return name
        if not user.passcode.verify(passcode):
            raise IdentityRefused(f"wrong passcode for user {name!r}")
        if len(self._verified) >= 4096:
            self._verified.clear()
        self._verified.add(key)
        return name

    def check_token(self, token: str | bytes) -> tuple[str, frozenset[str]]:
        """The user (``sub``) of a JSON Web Token verified as ``[jwt]`` says and what it
        may (:meth:`user_may`, within what ``[jwt] rights_claim`` names); else
        :class:`IdentityRefused`."""
        if self.jwt is None:
            raise IdentityRefused("JSON Web Token given but [jwt] not configured")
        try:
            claims = self.jwt.verify(token)
            user = str(claims["sub"])
            if self.jwt_rights_claim is None:
                return user, self.user_may(user)
            names = claim_strings(claims, self.jwt_rights_claim) or []
        except InvalidToken as exc:
            raise IdentityRefused(f"JSON Web Token refused: {exc}") from None
        size = len(self.jwt_rights_prefix)
        named = {n[size:] for n in names if n.startswith(self.jwt_rights_prefix)}
        return user, self.user_may(user) & named

    def http_rights(self, user: str | None, may: frozenset[str] | None = None) -> frozenset[str]:
        """What an HTTP request may do (:data:`HTTP_ACTIONS`): an authenticated
        ``user``'s ``may`` (or what its token may, from :meth:`check_token`),
        ``http_anonymous_may`` without one."""
        if user is None:
            return self.http_anonymous_may
        return (self.user_may(user) if may is None else may) & HTTP_ACTIONS

    def user_may(self, user: str) -> frozenset[str]:
        """What an authenticated ``user`` may, at every door: its ``may`` under
        ``[users]``; else ``[jwt] unknown_may`` (only a token's ``sub`` can name a user
        not listed: a passcode is checked against a listed one; review76 F7)."""
        entry = self.users.get(user)
        return entry.may if entry is not None else self.jwt_unknown_may


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """``python -m dicomstore.policy`` (``policy_tools.py``)."""
    from dicomstore.policy_tools import main as run

    return run(argv)


if __name__ == "__main__":  # (through the package's module: its PolicyError is the one raised)
    from dicomstore.policy import main as _main

    sys.exit(_main())
