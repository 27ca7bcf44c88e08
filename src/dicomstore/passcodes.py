"""Passcodes of user identity negotiation (PS3.7 D.3.3.7, type 2), stored hashed.

A policy file keeps no passcode, only its salted scrypt hash
(``scrypt$n$r$p$salt_b64$hash_b64``), made by ``python -m dicomstore.policy
hash-passcode``; :meth:`PasscodeHash.verify` checks a received passcode against
it in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass

#: scrypt defaults: 16 MiB and tens of milliseconds per check.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_MAX_SCRYPT_MEMORY = 256 * 2**20


def _scrypt_memory(n: int, r: int, p: int) -> int:
    return 128 * r * (n + p + 2) + 2**20


@dataclass(frozen=True)
class PasscodeHash:
    """A salted scrypt hash, encoded ``scrypt$n$r$p$salt_b64$hash_b64``."""

    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, text: str) -> PasscodeHash:
        parts = text.split("$")
        if len(parts) != 6 or parts[0] != "scrypt":
            raise ValueError("not of the form scrypt$n$r$p$salt_b64$hash_b64")
        try:
            n, r, p = (int(x) for x in parts[1:4])
            salt = base64.b64decode(parts[4], validate=True)
            digest = base64.b64decode(parts[5], validate=True)
        except (ValueError, binascii.Error):
            raise ValueError("n, r, p must be integers and salt, hash base64") from None
        if n < 2 or n & (n - 1) or not 1 <= r <= 64 or not 1 <= p <= 16:
            raise ValueError("n must be a power of 2, r in 1..64, p in 1..16")
        if _scrypt_memory(n, r, p) > _MAX_SCRYPT_MEMORY:
            raise ValueError("n and r ask for more than 256 MiB")
        if len(salt) < 8 or len(digest) < 16:
            raise ValueError("salt must be at least 8 bytes and hash at least 16")
        return cls(n, r, p, salt, digest)

    def encode(self) -> str:
        b64 = base64.b64encode
        return (
            f"scrypt${self.n}${self.r}${self.p}$"
            f"{b64(self.salt).decode('ascii')}${b64(self.digest).decode('ascii')}"
        )

    def verify(self, passcode: bytes) -> bool:
        derived = hashlib.scrypt(
            passcode,
            salt=self.salt,
            n=self.n,
            r=self.r,
            p=self.p,
            maxmem=_scrypt_memory(self.n, self.r, self.p),
            dklen=len(self.digest),
        )
        return hmac.compare_digest(derived, self.digest)


#: Checked against when the user is unknown, so that a refusal costs the same scrypt
#: either way and its timing does not tell which user names exist.
DECOY = PasscodeHash(SCRYPT_N, SCRYPT_R, SCRYPT_P, secrets.token_bytes(16), secrets.token_bytes(32))


def hash_passcode(
    passcode: bytes | str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P
) -> str:
    """The encoded scrypt hash of ``passcode`` (UTF-8 when a str) with a fresh salt."""
    if isinstance(passcode, str):
        passcode = passcode.encode("utf-8")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        passcode, salt=salt, n=n, r=r, p=p, maxmem=_scrypt_memory(n, r, p), dklen=32
    )
    encoded = PasscodeHash(n, r, p, salt, digest).encode()
    PasscodeHash.parse(encoded)  # the parameters are within what load accepts
    return encoded
