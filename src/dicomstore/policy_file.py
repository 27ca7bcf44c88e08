"""Reading a policy file (TOML, see :mod:`dicomstore.policy`): every table and
key checked, one-line :class:`~dicomstore.policy.PolicyError` naming where.

:func:`build` turns the parsed TOML into a :class:`~dicomstore.policy.Policy`:
peers (AE title, hosts as IP or CIDR, TLS subjects, what they may do), users
(scrypt passcodes, PS3.7 D.3.3.7 type 2), the JWT verifier (type 5), the
C-MOVE destinations and the Storage Commitment SCUs' addresses.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any

from dicomstore.jwt import JWTVerifier, default_algorithms
from dicomstore.passcodes import SCRYPT_N, PasscodeHash
from dicomstore.policy import (
    ACTIONS,
    HTTP_ACTIONS,
    USER_ACTIONS,
    USER_DEFAULT,
    Peer,
    Policy,
    PolicyError,
    User,
)
from dicomstore.services.destinations import Destination, destination
from dicomstore.tls import normalize_subject
from dicomstore.vr import ae_title_problem

log = logging.getLogger("dicomstore.policy")


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        known = ", ".join(sorted(allowed))
        raise PolicyError(f"{where}unknown key {unknown[0]!r} (known: {known})")


def _typed(table: dict[str, Any], key: str, kind: type, where: str, default: Any = None) -> Any:
    value = table.get(key, default)
    if value is not None and not isinstance(value, kind):
        raise PolicyError(f"{where}{key} must be a {kind.__name__}, not {value!r}")
    return value


def _strings(table: dict[str, Any], key: str, where: str) -> list[str]:
    value = table.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{where}{key} must be a string or a list of strings")
    return value


#: Why an action is not allowed where it was given (the others are unknown).
_WRONG_PLACE = {
    "read": "an HTTP right, for [users] and http_anonymous_may",
    "delete": "an HTTP right, for [users] and http_anonymous_may",
    "echo": "a DIMSE right, for [peers], unknown_may and [users]",
    "find": "a DIMSE right, for [peers], unknown_may and [users]",
    "move": "a DIMSE right, for [peers], unknown_may and [users]",
    "get": "a DIMSE right, for [peers], unknown_may and [users]",
    "commit": "a DIMSE right, for [peers], unknown_may and [users]",
}


def _may(
    table: dict[str, Any],
    key: str,
    where: str,
    allowed: frozenset[str] = ACTIONS,
    default: frozenset[str] = ACTIONS,
) -> frozenset[str]:
    """The actions listed under ``key``: each known and allowed here."""
    if key not in table:
        return default
    actions = _strings(table, key, where)
    here = ", ".join(sorted(allowed))
    for action in actions:
        if action in allowed:
            continue
        if action in _WRONG_PLACE:
            why = _WRONG_PLACE[action]
            raise PolicyError(f"{where}{key}: {action!r} is {why} (allowed here: {here})")
        raise PolicyError(f"{where}{key}: unknown action {action!r} (allowed here: {here})")
    return frozenset(actions)


def _peer(title: str, table: Any) -> Peer:
    where = f"peers.{title}: "
    problem = ae_title_problem(title)
    if problem is None and title != title.strip(" "):
        problem = "leading or trailing spaces (a calling AE title is compared without them)"
    if problem is not None:
        raise PolicyError(f"{where}not a valid AE title: {problem}")
    if not isinstance(table, dict):
        raise PolicyError(f"{where}must be a table")
    _check_keys(table, {"hosts", "tls_subject", "may", "require_user_identity", "move_to"}, where)
    networks = []
    for host in _strings(table, "hosts", where):
        try:
            networks.append(ipaddress.ip_network(host.strip(), strict=True))
        except ValueError as exc:
            raise PolicyError(
                f"{where}hosts: {host!r} is not an IP address or CIDR network ({exc}); "
                "host names are not resolved"
            ) from None
    subjects = []
    for subject in _strings(table, "tls_subject", where):
        try:
            subjects.append(normalize_subject(subject))
        except ValueError as exc:
            raise PolicyError(f"{where}tls_subject: {exc}") from None
    return Peer(
        title,
        tuple(networks),
        tuple(subjects),
        _may(table, "may", where),
        _typed(table, "require_user_identity", bool, where),
        frozenset(t.strip() for t in _strings(table, "move_to", where))
        if "move_to" in table
        else None,
    )


def _destination(title: str, table: Any, section: str = "destinations") -> Destination:
    where = f"{section}.{title}: "
    if not isinstance(table, dict):
        raise PolicyError(f"{where}must be a table")
    _check_keys(table, {"address"}, where)
    address = _typed(table, "address", str, where)
    if address is None:
        raise PolicyError(f'{where}needs address = "host:port"')
    try:
        return destination(title, address)
    except ValueError as exc:
        raise PolicyError(f"{where}{exc}") from None


def _user(name: str, table: Any) -> User:
    where = f"users.{name}: "
    if not name:
        raise PolicyError("users: empty user name")
    if not isinstance(table, dict):
        raise PolicyError(f"{where}must be a table")
    _check_keys(table, {"passcode", "may"}, where)
    encoded = _typed(table, "passcode", str, where)
    passcode = None
    if encoded is not None:
        try:
            passcode = PasscodeHash.parse(encoded)
        except ValueError as exc:
            raise PolicyError(
                f"{where}passcode: bad hash ({exc}); make one with "
                "'python -m dicomstore.policy hash-passcode'"
            ) from None
        if passcode.n < SCRYPT_N:
            log.warning("user %r: scrypt n=%d is weaker than %d", name, passcode.n, SCRYPT_N)
    return User(name, passcode, _may(table, "may", where, USER_ACTIONS, USER_DEFAULT))


def _read_key_file(base: Path, name: str, where: str) -> bytes:
    path = base / name
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"{where}cannot read {path}: {exc.strerror or exc}") from None


def _jwt(table: Any, base: Path) -> JWTVerifier:
    where = "jwt: "
    if not isinstance(table, dict):
        raise PolicyError("jwt must be a table")
    keys = {"algorithms", "secret", "secret_file", "public_key_file", "issuer", "audience"}
    _check_keys(table, keys | {"leeway", "unknown_may", "rights_claim", "rights_prefix"}, where)
    secret: bytes | None = None
    inline = _typed(table, "secret", str, where)
    secret_file = _typed(table, "secret_file", str, where)
    if inline is not None and secret_file is not None:
        raise PolicyError(f"{where}give secret or secret_file, not both")
    if inline is not None:
        secret = inline.encode("utf-8")
    elif secret_file is not None:
        secret = _read_key_file(base, secret_file, where).rstrip(b"\r\n")
    if secret is not None and len(secret) < 32:
        raise PolicyError(f"{where}the HMAC secret must be at least 32 bytes (RFC 7518 3.2)")
    public_key = None
    key_file = _typed(table, "public_key_file", str, where)
    if key_file is not None:
        pem = _read_key_file(base, key_file, where)
        try:
            from cryptography.hazmat.primitives.serialization import load_pem_public_key
        except ImportError:
            raise PolicyError(f"{where}public_key_file needs the 'cryptography' package") from None
        try:
            public_key = load_pem_public_key(pem)
        except ValueError:
            raise PolicyError(f"{where}{key_file} is not a PEM public key") from None
    if secret is None and public_key is None:
        raise PolicyError(f"{where}needs secret, secret_file or public_key_file")
    if "algorithms" in table:
        algorithms = _strings(table, "algorithms", where)
    else:
        algorithms = default_algorithms(secret, public_key)
    if not algorithms:
        raise PolicyError(f"{where}no usable algorithm for the configured key")
    leeway = table.get("leeway", 30)
    if isinstance(leeway, bool) or not isinstance(leeway, int | float) or leeway < 0:
        raise PolicyError(f"{where}leeway must be a number of seconds >= 0")
    try:
        return JWTVerifier(
            algorithms=algorithms,
            secret=secret,
            public_key=public_key,
            issuer=_typed(table, "issuer", str, where),
            audience=_typed(table, "audience", str, where),
            leeway=leeway,
        )
    except ValueError as exc:
        raise PolicyError(f"{where}algorithms: {exc}") from None


def _rights_claim(table: dict[str, Any]) -> str | None:
    """``[jwt] rights_claim``: the claim whose names bound a token's rights."""
    claim = _typed(table, "rights_claim", str, "jwt: ")
    if claim is not None and (not claim.strip() or claim != claim.strip()):
        raise PolicyError('jwt: rights_claim must name a claim, without spaces (e.g. "scope")')
    if claim is None and "rights_prefix" in table:  # (review79 F1: else no bound at all)
        raise PolicyError("jwt: rights_prefix needs rights_claim (the claim it applies to)")
    return claim


def build(data: dict[str, Any], base: Path) -> Policy:
    top = {"allow_unknown", "unknown_may", "require_user_identity", "peers", "users", "jwt"}
    top |= {"http_anonymous_may", "destinations", "commitment_scus"}
    _check_keys(data, top, "")
    peers_table = data.get("peers", {})
    users_table = data.get("users", {})
    destinations_table = data.get("destinations", {})
    scus_table = data.get("commitment_scus", {})
    tables = (("peers", peers_table), ("users", users_table))
    addresses = (("destinations", destinations_table), ("commitment_scus", scus_table))
    for name, value in (*tables, *addresses):
        if not isinstance(value, dict):
            raise PolicyError(f"{name} must be a table ([{name}.NAME] sections)")
    allow_unknown = _typed(data, "allow_unknown", bool, "", False)
    return Policy(
        peers=[_peer(title, table) for title, table in peers_table.items()],
        users=[_user(name, table) for name, table in users_table.items()],
        allow_unknown=allow_unknown,
        unknown_may=_may(data, "unknown_may", ""),
        require_user_identity=_typed(data, "require_user_identity", bool, "", False),
        jwt=_jwt(data["jwt"], base) if "jwt" in data else None,
        jwt_unknown_may=_may(
            data.get("jwt", {}), "unknown_may", "jwt: ", USER_ACTIONS, USER_DEFAULT
        ),
        jwt_rights_claim=_rights_claim(data.get("jwt", {})),
        jwt_rights_prefix=_typed(data.get("jwt", {}), "rights_prefix", str, "jwt: ", ""),
        http_anonymous_may=_may(data, "http_anonymous_may", "", HTTP_ACTIONS, frozenset()),
        destinations=[_destination(t, table) for t, table in destinations_table.items()],
        commitment_scus=[
            _destination(t, table, "commitment_scus") for t, table in scus_table.items()
        ],
    )
