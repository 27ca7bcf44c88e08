"""``python -m dicomstore.policy``: hash a passcode for ``[users]``, check a policy
file and summarize it (what it lets in, and the users whose name alone identifies
them over DICOM: PS3.7 D.3.3.7 type 1)."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from dicomstore.passcodes import SCRYPT_N, SCRYPT_P, SCRYPT_R, hash_passcode
from dicomstore.policy import ACTIONS, ECHO, MOVE, STORE, Policy, PolicyError


def _read_passcode() -> bytes:
    if sys.stdin.isatty():
        first = getpass.getpass("passcode: ")
        if getpass.getpass("again: ") != first:
            raise PolicyError("the two passcodes differ")
        raw = first.encode("utf-8")
    else:
        raw = sys.stdin.buffer.read()
        if raw.endswith(b"\n"):
            raw = raw[:-1].removesuffix(b"\r")
        if b"\n" in raw:
            raise PolicyError("give one passcode on one line")
    if not raw:
        raise PolicyError("empty passcode")
    return raw


def summary(name: Path, policy: Policy) -> list[str]:
    """What ``check`` says of a loaded policy: one line of what it lets in, then a
    note naming the users without a passcode that hold a DIMSE right (anyone who
    sends their name over DICOM is them: review83 F8), and one when every token of
    the identity provider may store (``[jwt] unknown_may`` by default, no
    ``rights_claim``: the fail-open default, said where it is configured)."""
    jwt = "off" if policy.jwt is None else "on: " + ",".join(sorted(policy.jwt.algorithms))
    if policy.jwt is not None and policy.jwt_rights_claim is not None:  # (review79 F9)
        claim, prefix = policy.jwt_rights_claim, policy.jwt_rights_prefix
        jwt += f" (rights within claim {claim!r}, prefix {prefix!r})"
    lines = [
        f"{name}: {len(policy.peers)} peers, {len(policy.users)} users, "
        f"unknown callers {'allowed' if policy.allow_unknown else 'refused'}, "
        f"user identity {'required' if policy.require_user_identity else 'optional'}, "
        f"JWT {jwt}, "
        f"anonymous HTTP may: {','.join(sorted(policy.http_anonymous_may)) or 'nothing'}"
    ]
    open_users = sorted(
        u.name for u in policy.users.values() if u.passcode is None and u.may & ACTIONS
    )
    if open_users:
        lines.append(
            f"note: user(s) {', '.join(open_users)} have no passcode: over DICOM their name"
            " alone identifies them (type 1), with their DIMSE rights"
        )
    moot = pins_unknown_callers_pass(policy)
    if moot is not None:
        lines.append(f"note: {moot}")
    open_jwt = policy.jwt is not None and policy.jwt_rights_claim is None
    if open_jwt and STORE in policy.jwt_unknown_may:
        lines.append(
            "note: any token the [jwt] issuer signs for this audience whose sub is not under"
            f" [users] may {', '.join(sorted(policy.jwt_unknown_may))}: narrow it with [jwt]"
            " unknown_may or rights_claim"
        )
    return lines


def pins_unknown_callers_pass(policy: Policy) -> str | None:
    """What a caller gets by naming an AE title not under ``[peers]``, when that passes
    what a peer there is held to (``allow_unknown = true`` without a narrow
    ``unknown_may``: review108 L1; a pinned peer's ``hosts``, ``tls_subject``,
    ``require_user_identity``, ``may`` and ``move_to`` then keep out no one, review109
    M3/L1), or None. Said by ``check`` and at start."""
    unknown = policy.unknown_may
    if not policy.allow_unknown or not unknown - {ECHO}:
        return None
    held = []
    for peer in sorted(policy.peers.values(), key=lambda peer: peer.ae_title):
        pins = [
            name
            for name, pinned in (
                ("hosts", peer.networks),
                ("tls_subject", peer.tls_subjects),
                (
                    "require_user_identity",
                    peer.require_user_identity and not policy.require_user_identity,
                ),
                ("may", unknown - peer.may),
                ("move_to", peer.move_to is not None and MOVE in unknown),
            )
            if pinned
        ]
        if pins:
            held.append(f"{peer.ae_title} ({', '.join(pins)})")
    if not held:
        return None
    named = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
    anywhere = ", to every Move Destination" if MOVE in unknown else ""
    return (
        f"callers not under [peers] may {', '.join(sorted(unknown))} (allow_unknown ="
        f" true){anywhere}: a caller held back as {named} gets that by calling under"
        " another AE title; narrow unknown_may, or set allow_unknown = false"
    )


def certificates_never_asked(policy: Policy, asks_certificates: bool) -> str | None:
    """The peers pinned by ``tls_subject`` that a server asking no client certificate
    (no TLS, or TLS without ``--tls-ca``) refuses whatever they present ("no TLS client
    certificate": review110 L2), in words for its start, or None."""
    if asks_certificates:
        return None
    pinned = sorted(peer.ae_title for peer in policy.peers.values() if peer.tls_subjects)
    if not pinned:
        return None
    named = ", ".join(pinned[:5]) + (f" and {len(pinned) - 5} more" if len(pinned) > 5 else "")
    return (
        f"{named}: pinned by tls_subject, refused whatever certificate they present:"
        " no client certificate is asked for without --tls-cert, --tls-key and --tls-ca"
    )


def main(argv: list[str] | None = None) -> int:
    # (an option given whole, not by a prefix of its name: review112 L3, as the CLI's)
    parser = argparse.ArgumentParser(
        prog="python -m dicomstore.policy",
        description="dicomstore policy file tools",
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    h = sub.add_parser(
        "hash-passcode",
        help="read a passcode from stdin, print its scrypt hash for [users]",
        allow_abbrev=False,
    )
    h.add_argument("--n", type=int, default=SCRYPT_N, help=f"scrypt cost (default {SCRYPT_N})")
    h.add_argument("--r", type=int, default=SCRYPT_R, help=f"block size (default {SCRYPT_R})")
    h.add_argument("--p", type=int, default=SCRYPT_P, help=f"parallelism (default {SCRYPT_P})")
    c = sub.add_parser("check", help="load a policy file and summarize it", allow_abbrev=False)
    c.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "hash-passcode":
            passcode = _read_passcode()
            try:
                print(hash_passcode(passcode, n=args.n, r=args.r, p=args.p))
            except ValueError as exc:
                raise PolicyError(f"bad scrypt parameters: {exc}") from None
        else:
            print("\n".join(summary(args.file, Policy.load(args.file))))
    except PolicyError as exc:
        print(f"dicomstore.policy: {exc}", file=sys.stderr)
        return 2
    return 0
