"""What every DICOMweb endpoint shares: errors, content negotiation, URLs (PS3.18 8).

Errors are raised as :class:`HttpError` and answered as ``text/plain`` with
one readable line (PS3.18 8.6 lets the payload be a Status Report of any
form). Content negotiation follows PS3.18 8.7: the ``accept`` query parameter
(8.3.3.1) overrides the Accept header; an absent Accept means ``*/*``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import quote

from starlette.convertors import StringConvertor
from starlette.requests import Request
from starlette.responses import PlainTextResponse

from dicomstore.archive.reader import ArchiveReader
from dicomstore.http.multipart import parse_media_type, repeated_parameters

DICOM_JSON = "application/dicom+json"
#: One UID as a URL names it (PS3.18 10.4.1: ``{study}``, ``{series}``, ``{instance}``
#: are single UIDs): none of the matching keys' universal value, wildcards or list
#: separators (``*``, ``?``, ``,``, ``\\``), no space nor control character (review76
#: F4: a trailing ``%00`` matched the UID without it). A stored UID that PS3.5 9.1
#: would not allow (letters, say) is still reachable.
ONE_UID = r"[^/*?,\\\s\x00-\x1f\x7f]+"
_ONE_UID = re.compile(ONE_UID)


def one_uid(value: str) -> bool:
    """``value`` names one UID (:data:`ONE_UID`): a search by it is an exact match."""
    return _ONE_UID.fullmatch(value) is not None


class UidConvertor(StringConvertor):
    """The ``{name:uid}`` path parameter: one UID (:data:`ONE_UID`); any other path
    value matches no route (404), so ``/studies/*`` is not the whole archive."""

    regex = ONE_UID


log = logging.getLogger("dicomstore.http")


class HttpError(Exception):
    """An HTTP error status with a one-line explanation."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_response(status: int, message: str, headers: dict[str, str] | None = None):
    """``<status> <phrase>: <message>`` as text/plain."""
    phrase = HTTPStatus(status).phrase
    text = f"{status} {phrase}: {message}\n"
    return PlainTextResponse(text, status_code=status, headers=headers)


def reader(request: Request) -> ArchiveReader:
    """The archive's read side, shared by every request."""
    return request.app.state.reader


def base_url(request: Request) -> str:
    """The service root as the client sees it, ending with ``/``, for Retrieve URLs and
    BulkDataURIs: the configured public URL (``--http-base-url``), else, when the app
    trusts its proxy (``--http-trust-forwarded``), the ``X-Forwarded-Proto``,
    ``-Host`` and ``-Prefix`` headers, else the request's own scheme and Host, with the
    port we listen on when Host names none (some clients omit it)."""
    configured = request.app.state.base_url
    if configured:
        return str(configured)
    own = request.url
    scheme, host = own.scheme, request.headers.get("host", "")
    if not host or not _HOST.fullmatch(host):
        return str(request.base_url)
    server = request.scope.get("server")
    if _port_of(host) is None and server and server[1] and server[1] != _DEFAULT_PORT[scheme]:
        host = f"{host}:{server[1]}"
    prefix = request.scope.get("root_path", "")
    if getattr(request.app.state, "trust_forwarded", False):
        scheme, host, prefix = _forwarded(request, scheme, host, prefix)
    return f"{scheme}://{host}{prefix.rstrip('/')}/"


_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-_]+)(:[0-9]{1,5})?")
_PREFIX = re.compile(r"(/[A-Za-z0-9._~!$&'()*+,;=:@%\-]*)*")
_DEFAULT_PORT = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _port_of(host: str) -> str | None:
    head, colon, port = host.rpartition(":")
    return port if colon and not head.endswith(":") and "]" not in port else None


def forwarded_hosts(values: list[str]) -> list[str]:
    """Every name of the ``X-Forwarded-Host`` headers ``values`` (a header may be a
    comma list: a proxy that appends puts its own last), in order, empty ones left out."""
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def well_formed_host(name: str) -> bool:
    """``name`` is a host, with or without a port (a malformed one is never used)."""
    return bool(_HOST.fullmatch(name))


def _forwarded(request: Request, scheme: str, host: str, prefix: str) -> tuple[str, str, str]:
    """The scheme, host and path prefix the trusted proxy says the client used."""
    headers = request.headers
    proto = headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    named = forwarded_hosts(headers.getlist("x-forwarded-host"))
    fwd_host = named[-1] if named else ""
    fwd_prefix = headers.get("x-forwarded-prefix", "").split(",")[0].strip()
    for name, value, ok in (
        ("X-Forwarded-Proto", proto, proto in ("http", "https")),
        ("X-Forwarded-Host", fwd_host, bool(_HOST.fullmatch(fwd_host))),
        ("X-Forwarded-Prefix", fwd_prefix, bool(_PREFIX.fullmatch(fwd_prefix))),
    ):
        if value and not ok:
            log.warning("ignored the proxy's malformed %s: %r", name, value[:100])
    if proto in ("http", "https"):
        scheme = proto
    if fwd_host and _HOST.fullmatch(fwd_host):
        host = fwd_host
    if fwd_prefix and _PREFIX.fullmatch(fwd_prefix):
        prefix = fwd_prefix
    return scheme, host, prefix


def url_of(base: str, study: str, series: str | None = None, sop: str | None = None) -> str:
    """The Retrieve URL of a study, series or instance (PS3.18 10.4.1)."""
    url = f"{base}studies/{_segment(study)}"
    if series is not None:
        url += f"/series/{_segment(series)}"
        if sop is not None:
            url += f"/instances/{_segment(sop)}"
    return url


def _segment(uid: str) -> str:
    """A UID as one path segment: percent-encoded, and one of dots alone (a sender's
    ``..``) as ``%2E``s, no dot-segment a client would resolve (RFC 3986 5.2.4;
    review52 L8)."""
    if uid and not uid.strip("."):
        return "%2E" * len(uid)
    return quote(uid, safe="")


@dataclass(frozen=True, slots=True)
class Accepted:
    """One media range of an Accept field: type, its parameters, quality."""

    media_type: str
    params: dict[str, str]
    quality: float


def accepted(request: Request) -> list[Accepted]:
    """The acceptable media ranges, best first (``accept`` parameter, then header)."""
    # (every Accept line of the request, as one: RFC 9110 5.3; review116 L1)
    values = request.query_params.getlist("accept") or request.headers.getlist("accept") or ["*/*"]
    ranges: list[Accepted] = []
    for value in values:
        for item in value.split(","):
            if not item.strip():
                continue
            twice = repeated_parameters(item)
            if twice:  # (which one counts is ambiguous: RFC 9110 5.6.6, review43 #8)
                raise HttpError(400, f"the media range {item.strip()!r} gives {twice[0]} twice")
            media_type, params = parse_media_type(item)
            try:
                quality = float(params.pop("q", "1"))
            except ValueError:
                quality = 1.0
            if quality > 0:
                ranges.append(Accepted(media_type, params, quality))
    ranges.sort(key=lambda a: -a.quality)  # stable: ties keep the client's order
    return ranges


def _matches(accept: Accepted, media_type: str, part_type: str | None) -> bool:
    main, _, _ = media_type.partition("/")
    if accept.media_type not in (media_type, f"{main}/*", "*/*"):
        return False
    wanted = accept.params.get("type")
    if part_type is None or wanted is None or accept.media_type != media_type:
        return True
    wanted = wanted.lower()
    return wanted == part_type or wanted == f"{part_type.partition('/')[0]}/*" or wanted == "*/*"


def negotiate(
    request: Request,
    offers: Sequence[tuple[str, str | None]],
    producible: Callable[[int, Accepted], str | None] | None = None,
) -> tuple[int, Accepted]:
    """Index of the first offer (media type, multipart ``type``) the client accepts,
    and the media range that accepted it, best range first; ``producible(n, range)``
    says why offer ``n`` cannot be made as the range asks (its transfer syntax), and
    the next range is tried (PS3.18 8.7.3.5.2 Note: ranges offer a choice of
    syntaxes). 406 when none is acceptable, with the last reason."""
    ranges = accepted(request)
    why = None
    for accept in ranges:
        for n, (media_type, part_type) in enumerate(offers):
            if _matches(accept, media_type, part_type):
                why = producible(n, accept) if producible is not None else None
                if why is None:
                    return n, accept
    if why is not None:
        raise HttpError(406, why)
    names = ", ".join(m if t is None else f'{m}; type="{t}"' for m, t in offers)
    raise HttpError(406, f"none of the accepted media types can be produced; offered: {names}")


def attachment(name: str, suffix: str, fallback: str, most: int = 80) -> str:
    """A ``Content-Disposition`` naming the download ``name`` + ``suffix``: ``filename``
    in ASCII letters, digits and ``.-_`` (others ``_``), and, when ``name`` holds other
    letters, ``filename*`` with them in UTF-8 (RFC 6266 4.3; a header is Latin-1:
    review38web #5, a Patient ID in Japanese answered 500)."""
    kept = "".join(c if c.isascii() and (c.isalnum() or c in ".-_") else "_" for c in name)
    value = f'attachment; filename="{kept[:most] or fallback}{suffix}"'
    full = "".join(c if c.isalnum() or c in ".-_" else "_" for c in name)[:most]
    if full != kept[:most]:
        value += f"; filename*=UTF-8''{quote(full + suffix, safe='')}"
    return value
