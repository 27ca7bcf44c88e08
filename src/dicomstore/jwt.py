"""JSON Web Token verification for user identity type 5 (PS3.7 D.3.3.7, RFC 7519).

HS256/384/512 with a shared secret, RS256/384/512 and ES256/384/512 with a
public key (the ``cryptography`` package, loaded only then).  "none" and
unknown algorithms are never accepted; ``exp`` and ``sub`` are required.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import time
from collections.abc import Callable, Iterable
from typing import Any


class InvalidToken(Exception):
    """A JSON Web Token failed verification (the message says why)."""


_HASHES = {"256": hashlib.sha256, "384": hashlib.sha384, "512": hashlib.sha512}
_EC_CURVES = {"ES256": ("secp256r1", 32), "ES384": ("secp384r1", 48), "ES512": ("secp521r1", 66)}
JWT_ALGORITHMS = frozenset({"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", *_EC_CURVES})
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def b64url_decode(part: str) -> bytes:
    """base64url without padding (RFC 7515 section 2)."""
    if not _B64URL.fullmatch(part) or len(part) % 4 == 1:
        raise InvalidToken("not base64url")
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:  # (NaN and Infinity are Python's, not JSON's: RFC 8259 6)
        value = json.loads(raw, parse_constant=_not_json)
    except (ValueError, UnicodeDecodeError):
        raise InvalidToken(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidToken(f"{what} is not a JSON object")
    return value


def _number(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidToken(f'"{name}" is not a number')
    try:
        number = float(value)
    except OverflowError:  # (an integer of 400 digits)
        number = math.inf
    if not math.isfinite(number):  # (1e999: a NumericDate is finite, RFC 7519 2)
        raise InvalidToken(f'"{name}" is not a finite number')
    return number


class JWTVerifier:
    """Verifies a compact JWS JSON Web Token (RFC 7519) against configured keys.

    HS* use the shared ``secret`` only, RS*/ES* the ``public_key`` only, so a
    public key can never be misused as an HMAC secret.  ``none`` is never
    accepted, nor is a header with ``crit`` extensions we do not know.
    """

    def __init__(
        self,
        *,
        algorithms: Iterable[str],
        secret: bytes | None = None,
        public_key: Any = None,
        issuer: str | None = None,
        audience: str | None = None,
        leeway: float = 30,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.algorithms = frozenset(algorithms)
        self.secret = secret
        self.public_key = public_key
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.clock = clock
        for alg in self.algorithms:
            problem = _key_problem(alg, secret, public_key)
            if problem:
                raise ValueError(problem)

    def verify(self, token: str | bytes) -> dict[str, Any]:
        """The claims of a valid token; raises :class:`InvalidToken` otherwise."""
        if isinstance(token, bytes):
            try:
                token = token.decode("ascii")
            except UnicodeDecodeError:
                raise InvalidToken("not ASCII") from None
        token = token.strip()
        parts = token.split(".")
        if len(parts) != 3:
            raise InvalidToken("not a compact JWS (three dot-separated parts)")
        header = _json_object(b64url_decode(parts[0]), "header")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise InvalidToken(f"algorithm {alg!r} is not allowed")
        if "crit" in header:
            raise InvalidToken("critical header extensions are not supported")
        signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
        if not self._signature_ok(alg, signing_input, b64url_decode(parts[2])):
            raise InvalidToken("bad signature")
        claims = _json_object(b64url_decode(parts[1]), "payload")
        self._check_claims(claims)
        return claims

    def _signature_ok(self, alg: str, data: bytes, signature: bytes) -> bool:
        digest = _HASHES[alg[2:]]
        if alg.startswith("HS"):
            assert self.secret is not None
            expected = hmac.new(self.secret, data, digest).digest()
            return hmac.compare_digest(expected, signature)
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, padding
        from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

        hash_algorithm: dict[str, Callable[[], hashes.HashAlgorithm]] = {
            "256": hashes.SHA256,
            "384": hashes.SHA384,
            "512": hashes.SHA512,
        }
        chosen = hash_algorithm[alg[2:]]()
        try:
            if alg.startswith("RS"):
                self.public_key.verify(signature, data, padding.PKCS1v15(), chosen)
            else:  # ES*: the JWS signature is R || S, fixed size (RFC 7518 3.4)
                size = _EC_CURVES[alg][1]
                if len(signature) != 2 * size:
                    return False
                r = int.from_bytes(signature[:size], "big")
                s = int.from_bytes(signature[size:], "big")
                der = encode_dss_signature(r, s)
                self.public_key.verify(der, data, ec.ECDSA(chosen))
        except InvalidSignature:
            return False
        return True

    def _check_claims(self, claims: dict[str, Any]) -> None:
        now = self.clock()
        exp = _number(claims, "exp")
        if exp is None:
            raise InvalidToken('no "exp" claim')
        if now > exp + self.leeway:
            raise InvalidToken("expired")
        nbf = _number(claims, "nbf")
        if nbf is not None and now + self.leeway < nbf:
            raise InvalidToken("not valid yet (nbf)")
        if self.issuer is not None and claims.get("iss") != self.issuer:
            raise InvalidToken(f"issuer {claims.get('iss')!r} is not {self.issuer!r}")
        if "aud" in claims or self.audience is not None:
            aud = claims.get("aud")
            audiences = [aud] if isinstance(aud, str) else aud
            if not isinstance(audiences, list) or self.audience not in audiences:
                # RFC 7519 4.1.3: reject a token whose audience does not name us.
                wanted = repr(self.audience) if self.audience else "configured"
                raise InvalidToken(f"audience {aud!r} does not name us ({wanted})")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise InvalidToken('no "sub" claim naming the user')


def claim_strings(claims: dict[str, Any], name: str) -> list[str] | None:
    """The strings of claim ``name`` (None when absent): a JSON array of strings, or
    one string of space-separated names (RFC 8693 4.2 ``scope``). A dotted ``name`` not
    present as such is looked up nested (``realm_access.roles``); :class:`InvalidToken`
    for another type."""
    value: Any = claims.get(name)
    if name not in claims:
        value = claims
        for part in name.split("."):
            if not isinstance(value, dict) or part not in value:
                return None
            value = value[part]
    if isinstance(value, str):  # (RFC 6749 3.3: scope-tokens separated by a space)
        return [name for name in value.split(" ") if name]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise InvalidToken(f'claim "{name}" is neither a string nor a list of strings')


def _key_problem(alg: str, secret: bytes | None, public_key: Any) -> str | None:
    """Why ``alg`` cannot be used with these keys, or None."""
    if alg == "none":
        return "algorithm 'none' is never accepted"
    if alg not in JWT_ALGORITHMS:
        return f"unknown algorithm {alg!r} (known: {', '.join(sorted(JWT_ALGORITHMS))})"
    if alg.startswith("HS"):
        return None if secret is not None else f"{alg} needs a secret or secret_file"
    if public_key is None:
        return f"{alg} needs a public_key_file"
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if alg.startswith("RS"):
        return None if isinstance(public_key, rsa.RSAPublicKey) else f"{alg} needs an RSA key"
    curve = _EC_CURVES[alg][0]
    if isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.name == curve:
        return None
    return f"{alg} needs an EC key on curve {curve}"


def default_algorithms(secret: bytes | None, public_key: Any) -> list[str]:
    algs = ["HS256"] if secret is not None else []
    if public_key is not None:
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        if isinstance(public_key, rsa.RSAPublicKey):
            algs.append("RS256")
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            algs += [a for a, (curve, _) in _EC_CURVES.items() if curve == public_key.curve.name]
    return algs


# --------------------------------------------------------------------------- subjects
