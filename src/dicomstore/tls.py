"""TLS contexts for the Secure Transport Connection Profiles (PS3.15 B.9, BCP 195).

TLS 1.2 or newer only, forward-secret AEAD cipher suites for TLS 1.2 (the TLS
1.3 suites are all fine), certificates verified against a configured CA.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from pathlib import Path
from typing import Any

from dicomstore.errors import CERTIFICATE_REFUSED

#: BCP 195 (RFC 9325) recommended TLS 1.2 suites: ECDHE/DHE with AES-GCM or ChaCha20.
BCP195_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL"


class TLSFileError(ValueError):
    """A certificate, key or CA file that cannot be used; the message names it."""


def _readable(prefix: str = "--tls-", **files: Path | str | None) -> None:
    """Raise :class:`TLSFileError` naming the first file (by option) that cannot be read."""
    for option, path in files.items():
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            flag = prefix + option.replace("_", "-")
            raise TLSFileError(f"{flag} {path}: {exc.strerror or exc}") from None


def _load(what: str, action: Any, *args: str | None) -> None:
    try:
        action(*args)
    except ssl.SSLError as exc:
        raise TLSFileError(f"{what}: not usable: {exc.reason or exc}") from None


def _harden(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(BCP195_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx


def server_context(
    cert: Path | str,
    key: Path | str,
    ca: Path | str | None = None,
    *,
    require_client_cert: bool = False,
    option_prefix: str = "--tls-",
) -> ssl.SSLContext:
    """The acceptor's context: our certificate, optionally verifying the peer's.
    Errors name the files by their options (``option_prefix`` + ``cert``...)."""
    o = option_prefix
    _readable(o, cert=cert, key=key, ca=ca)
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    _load(f"{o}cert {cert} with {o}key {key}", ctx.load_cert_chain, str(cert), str(key))
    if ca is not None:
        _load(f"{o}ca {ca}", ctx.load_verify_locations, str(ca))
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    elif require_client_cert:
        raise ValueError("--tls-require-client-cert needs --tls-ca to verify clients")
    return ctx


def client_context(
    ca: Path | str | None = None,
    cert: Path | str | None = None,
    key: Path | str | None = None,
    *,
    verify: bool = True,
    server_name: str | None = None,
) -> ssl.SSLContext:
    """The requestor's context: verify the server against ``ca`` (or the system
    store), present our certificate when one is given.

    Whose name the certificate must bear (RFC 9525; BCP 195): ``server_name`` when
    given; else, trusting the system store, the host connected to (a public CA vouches
    for names: without the check any certificate of any site would do); else, with
    our own ``ca``, none: DICOM peers are named by AE title, and a private CA's
    certificates often name no host (DCMTK's ``+tls`` checks the chain alone)."""
    _readable(ca=ca if verify else None, cert=cert, key=key)
    kind = _Named if server_name is not None else ssl.SSLContext
    ctx = _harden(kind(ssl.PROTOCOL_TLS_CLIENT))
    if isinstance(ctx, _Named):
        ctx.server_name = server_name
    ctx.check_hostname = verify and (ca is None or server_name is not None)
    if verify:
        ctx.verify_mode = ssl.CERT_REQUIRED
        if ca is not None:
            _load(f"--tls-ca {ca}", ctx.load_verify_locations, str(ca))
        else:
            ctx.load_default_certs()
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        keyfile = str(key) if key is not None else None
        _load(f"--tls-cert {cert}", ctx.load_cert_chain, str(cert), keyfile)
    return ctx


class _Named(ssl.SSLContext):
    """A client context that asks for (SNI) and checks :attr:`server_name`, whatever
    host it connects to (``--tls-server-name``: a server reached by its address)."""

    server_name: str | None = None

    def wrap_bio(  # type: ignore[override]
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        return super().wrap_bio(incoming, outgoing, server_side, self.server_name, session)

    def wrap_socket(  # type: ignore[override]
        self,
        sock: Any,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        return super().wrap_socket(
            sock, server_side, do_handshake_on_connect, suppress_ragged_eofs,
            self.server_name, session,
        )  # fmt: skip


#: Attribute types by their short names (RFC 4514 3), from Python's long names.
_DN_SHORT = {
    "COMMONNAME": "CN",
    "ORGANIZATIONNAME": "O",
    "ORGANIZATIONALUNITNAME": "OU",
    "COUNTRYNAME": "C",
    "LOCALITYNAME": "L",
    "STATEORPROVINCENAME": "ST",
    "DOMAINCOMPONENT": "DC",
}
#: Escaped wherever they are in a value (RFC 4514 2.4; ``=`` too, which it allows).
_DN_SPECIAL = frozenset(',+"\\<>;=')
#: What a backslash escapes (RFC 4514 2.4, 3: specials, a space, ``#``).
_DN_ESCAPABLE = frozenset(',+"\\<>;= #')
#: An attribute type and its ``=``: a name or a dotted OID (RFC 4514 3).
_DN_TYPE = re.compile(r"\s*([A-Za-z][A-Za-z0-9.-]*|[0-9]+(?:\.[0-9]+)*)\s*=")


def escape_dn_value(value: str) -> str:
    """An attribute value escaped as RFC 4514 2.4 says (and what is not printable as
    ``\\HH`` of its UTF-8), so that no value reads as another attribute."""
    out = []
    last = len(value) - 1
    for i, ch in enumerate(value):
        if ch in _DN_SPECIAL or (i == 0 and ch in " #") or (i == last and ch == " "):
            out.append("\\" + ch)
        elif not ch.isprintable():
            out.extend(f"\\{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
        else:
            out.append(ch)
    return "".join(out)


def peer_subject(peercert: dict | None) -> str | None:
    """A certificate subject as a one-line string, e.g. ``CN=modality1,O=Hospital``:
    its RDNs in the certificate's order, values escaped (RFC 4514 2), so that the
    text tells every subject apart and :func:`normalize_subject` reads it back."""
    if not peercert:
        return None
    rdns = []
    for rdn in peercert.get("subject", ()):
        attributes = []
        for key, value in rdn:
            short = _DN_SHORT.get(key.upper(), key)
            attributes.append(f"{short}={escape_dn_value(value)}")
        rdns.append("+".join(attributes))
    return ",".join(rdns)


def normalize_subject(subject: str) -> tuple[tuple[str, str], ...]:
    """``CN=a,O=b`` as sorted (attribute, value) pairs: order and key case do not
    matter, ``commonName`` equals ``CN``; values compare exactly, unescaped (RFC 4514
    2.4: ``\\,`` or ``\\2C`` is a comma of the value). As the policy files written
    so far, a ``,`` or ``+`` separates attributes only when ``TYPE=`` follows it, and
    spaces around a value are dropped unless escaped."""
    pairs = []
    pos, end = 0, len(subject)
    while True:
        match = _DN_TYPE.match(subject, pos)
        if match is None:
            raise ValueError(f"{subject!r} is not of the form CN=...,O=...")
        key, pos = match.group(1).upper(), match.end()
        value, pos = _dn_value(subject, pos)
        pairs.append((_DN_SHORT.get(key, key), value))
        if pos >= end:
            return tuple(sorted(pairs))
        pos += 1  # (the separator)


def _dn_value(subject: str, pos: int) -> tuple[str, int]:
    """The value starting at ``pos``, unescaped, and where it ends (a separator or
    the end); unescaped spaces around it dropped."""
    chars: list[tuple[str, bool]] = []  # (character, escaped)
    end = len(subject)
    while pos < end:
        ch = subject[pos]
        if ch == "\\":
            raw, at = bytearray(), pos
            while re.match(r"\\[0-9A-Fa-f]{2}", subject[at : at + 3]):
                raw.append(int(subject[at + 1 : at + 3], 16))
                at += 3
            try:
                text = raw.decode("utf-8", "surrogatepass")
            except UnicodeDecodeError:
                text = ""  # (not RFC 4514: as written before it, a backslash itself)
            if text:
                chars.extend((c, True) for c in text)
                pos = at
                continue
            if pos + 1 < end and subject[pos + 1] in _DN_ESCAPABLE:
                chars.append((subject[pos + 1], True))
                pos += 2
                continue
            # (no escape of RFC 4514: a policy written before escaping, CN=CORP\host)
            chars.append(("\\", True))
            pos += 1
            continue
        if ch in ",+" and _DN_TYPE.match(subject, pos + 1):
            break
        chars.append((ch, False))
        pos += 1
    while chars and not chars[0][1] and chars[0][0].isspace():
        chars.pop(0)
    while chars and not chars[-1][1] and chars[-1][0].isspace():
        chars.pop()
    return "".join(c for c, _ in chars), pos


def handshake_failure(exc: BaseException) -> str | None:
    """Why a server's TLS handshake failed, in words for its WARNING: a certificate
    refused and why, a client speaking plain DICOM or HTTP to the TLS port, no client
    certificate, a handshake not done in time (the DICOM and the HTTPS listeners);
    ``None`` when the client left without trying (connected and closed: a probe)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"its certificate: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        if reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL"):
            return f"not TLS ({reason}): a client without TLS on the TLS port?"
        if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return "no client certificate (--tls-require-client-cert)"
        return reason
    # (asyncio and uvloop abort a handshake past its timeout with ConnectionAbortedError
    # "SSL handshake is taking longer than N seconds")
    if isinstance(exc, TimeoutError) or "taking longer than" in str(exc):
        return "handshake not done in time"
    return None


def failed_words(exc: ssl.SSLError) -> str:
    """A client's one line for a TLS handshake that failed: the verifier's words (the
    name, the CA, the dates) or OpenSSL's reason, not its text with its C source place
    (every SCU: echo, find, move, get and send's results; review110 L1)."""
    why = getattr(exc, "verify_message", None) or exc.reason or exc
    if why in ("WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL"):  # (a DICOM PDU, say)
        return f"TLS failed: the server answered without TLS ({why}): a port without TLS?"
    return f"TLS failed: {why}"


def alert_words(exc: BaseException | None) -> str | None:
    """The TLS alert that ended a connection after its handshake, in words for a
    client (with TLS 1.3 a server refuses a client's certificate, or the want of
    one, only then: the client saw the handshake succeed); None if it was no alert."""
    if not isinstance(exc, ssl.SSLError):
        return None
    reason = exc.reason or str(exc)
    if "CERTIFICATE_REQUIRED" in reason:
        return f"{CERTIFICATE_REFUSED[0]} (--tls-cert, --tls-key)"
    if "ALERT" in reason and ("CERTIFICATE" in reason or "UNKNOWN_CA" in reason):
        return f"{CERTIFICATE_REFUSED[1]} (TLS alert {reason})"
    return f"TLS: {reason}"


#: What a client is told of a server that closes new connections at once.
_CROWDED = "with too many connections pending from here: its log says why"


def refused_after_handshake(context: ssl.SSLContext | None) -> str | None:
    """A client's guess at why a TLS connection closed before the association was
    answered: a TLS 1.3 server refuses a client's certificate (or the want of one)
    after the client's handshake ended, and asyncio's server closes without the
    alert; without TLS, that the port may be a TLS one (review100 W7: a plain client
    on the TLS port was told only that the connection closed); either way, that a
    server with too many connections pending closes new ones so (review107 L1)."""
    if context is None:
        return f"before any answer (a TLS port? then --tls; or one {_CROWDED})"
    return (
        "over TLS, before any answer (a server that requires a client certificate,"
        f" --tls-cert/--tls-key, or refuses ours closes so, or one {_CROWDED})"
    )


def closed_in_handshake() -> str:
    """A client's words for a connection closed (reset) during its TLS handshake: a port
    without TLS resets a ClientHello; a server with too many connections pending from
    the client's address closes new ones before their handshake (review109 M1)."""
    return f"the connection closed during the TLS handshake (a port without TLS, or one {_CROWDED})"


def is_loopback(host: str) -> bool:
    """Whether a listener on ``host`` is reachable from this host only (what travels
    in clear there stays on it)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: How long before its end a certificate of ours is said to expire soon, at start.
EXPIRES_SOON_DAYS = 14


def validity_problem(cert: Path | str, option: str, now: Any = None) -> str | None:
    """What is wrong with the dates of our own certificate (the first in the PEM file
    ``cert``, given by ``option``): expired, not valid yet, or ending within
    :data:`EXPIRES_SOON_DAYS`, in words for a WARNING at start (review110 I4: every
    verifying client refused it, and the server said nothing); None when in date or
    unreadable (loading it says why)."""
    import datetime

    from cryptography import x509

    try:
        made = x509.load_pem_x509_certificate(Path(cert).read_bytes())
    except (OSError, ValueError):
        return None
    now = now or datetime.datetime.now(datetime.UTC)
    start, end = made.not_valid_before_utc, made.not_valid_after_utc
    ours, refused = f"{option} {cert}: our certificate", ": clients that verify it refuse it"
    if end < now:
        return f"{ours} expired on {end:%Y-%m-%d %H:%M} UTC{refused}"
    if start > now:
        return f"{ours} is not valid before {start:%Y-%m-%d %H:%M} UTC{refused}"
    if end - now < datetime.timedelta(days=EXPIRES_SOON_DAYS):
        return f"{ours} expires on {end:%Y-%m-%d %H:%M} UTC"
    return None
