"""``serve``'s DICOMweb options (README: "dicomstore serve", "Security: HTTP"):
where HTTP listens, HTTPS, CORS, and the one :class:`HttpSecurity` they make."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dicomstore.archive.metacache import DEFAULT_MAX_ENTRIES
from dicomstore.cli.options import _int, _port, _positive, _size, log


def _origin(value: str) -> str:
    """A web origin (RFC 6454): ``scheme://host[:port]``, no path."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise argparse.ArgumentTypeError(
            f"not an origin (scheme://host[:port], e.g. https://viewer.example.org): {value!r}"
        )
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise argparse.ArgumentTypeError(f"not an origin: {value!r}")
    return f"{parts.scheme}://{parts.netloc}".lower()


_HOST_NAME = re.compile(r"\*|\.?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?", re.ASCII)


def _host_name(value: str) -> str:
    """A DNS name (``.example.org``: those under it; ``*``: any), without port."""
    if not _HOST_NAME.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"not a host name (e.g. pacs.example.org, .example.org or *): {value!r}"
        )
    return value


def _base_url(value: str) -> str:
    """The public URL of the service: ``scheme://host[:port][/prefix]``."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise argparse.ArgumentTypeError(
            f"not a base URL (scheme://host[:port][/path], e.g. https://pacs.example.org/dicomweb)"
            f": {value!r}"
        )
    return value


def add_http_options(s: Any) -> None:
    """The ``DICOMweb`` option group of ``serve``."""
    h = s.add_argument_group("DICOMweb and browse page (PS3.18)")
    h.add_argument("--http-port", type=_port, help="serve DICOMweb and the browse page here")
    h.add_argument(
        "--http-host",
        default="127.0.0.1",
        help="address for HTTP (default 127.0.0.1, whatever --host says; 0.0.0.0 for all)",
    )
    h.add_argument(
        "--http-tls-cert", type=Path, metavar="PEM", help="HTTPS: our certificate (and chain)"
    )
    h.add_argument("--http-tls-key", type=Path, metavar="PEM", help="private key for HTTPS")
    h.add_argument(
        "--http-max-body",
        type=_size,
        default=4 << 30,
        metavar="SIZE",
        help="largest STOW-RS request body, counted as it arrives; larger: 413 (default 4G)",
    )
    h.add_argument(
        "--http-max-connections",
        type=_int(1),
        default=256,
        metavar="N",
        help="HTTP connections open at once; one more is answered 503 and closed (default 256)",
    )
    h.add_argument(
        "--http-max-per-address",
        type=_int(0),
        default=0,
        metavar="N",
        help="of those, from one client address; one more is answered 503 and closed"
        " (default 0: no limit of its own; behind a proxy all share its address)",
    )
    h.add_argument(
        "--http-timeout",
        type=_positive,
        default=30.0,
        metavar="SECONDS",
        help="a client that sends nothing of a request it has not finished (its head, its"
        " body; or nothing at all) for this long gets 408 and is closed (default 30)",
    )
    h.add_argument(
        "--http-min-body-rate",
        type=_int(0),
        default=500,
        metavar="BYTES",
        help="bytes a second a request body (STOW-RS) must arrive at, over each"
        " --http-timeout seconds; slower gets 408 and is closed (default 500; 0: no minimum)",
    )
    h.add_argument(
        "--metadata-cache-entries",
        type=_int(1),
        default=DEFAULT_MAX_ENTRIES,
        metavar="N",
        help="most instances the WADO-RS metadata cache keeps (.cache/metadata.sqlite); "
        f"those used longest ago go first (default {DEFAULT_MAX_ENTRIES})",
    )
    h.add_argument(
        "--http-cors-origin",
        type=_origin,
        action="append",
        metavar="ORIGIN",
        help="let web pages from this origin call DICOMweb (repeatable; default: none)",
    )
    h.add_argument(
        "--http-gzip",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="gzip answers of DICOM JSON, JSON and HTML for clients that accept it (default);"
        " --no-http-gzip: never (a compressing proxy in front, say)",
    )
    h.add_argument(
        "--http-base-url",
        type=_base_url,
        metavar="URL",
        help="the public URL of DICOMweb, for Retrieve URLs and BulkDataURIs "
        "(default: from each request's Host, with our port when it names none)",
    )
    h.add_argument(
        "--http-allowed-host",
        type=_host_name,
        action="append",
        metavar="NAME",
        help="a name clients reach HTTP by, besides IP addresses, localhost, this machine's "
        "name and --http-base-url's host (repeatable; .example.org: every name under it; "
        "*: any); checked while requests without credentials have rights (DNS rebinding)",
    )
    h.add_argument(
        "--http-trust-forwarded",
        action="store_true",
        help="build those URLs from X-Forwarded-Proto/Host/Prefix, and take the client's "
        "address (logs, audit, limits) from X-Forwarded-For: only behind a proxy that "
        "sets them (any client could send them)",
    )


def http_limits(args: argparse.Namespace) -> Any:
    """The :class:`~dicomstore.http.limits.HttpLimits` of the options."""
    from dicomstore.http.limits import HttpLimits

    return HttpLimits(
        max_body_bytes=args.http_max_body,
        max_connections=args.http_max_connections,
        max_per_address=args.http_max_per_address,
        request_timeout=args.http_timeout,
        min_body_rate=args.http_min_body_rate,
    )


def http_security(args: argparse.Namespace, policy: Any, audit: Any, failed: Any = None) -> Any:
    """The :class:`~dicomstore.http.security.HttpSecurity` of the options, the
    policy file, the audit log and the DICOM door's count of refusals."""
    from dicomstore.http.security import HttpSecurity

    return HttpSecurity(
        policy=policy,
        audit=audit,
        cors_origins=tuple(args.http_cors_origin or ()),
        tls_cert=args.http_tls_cert,
        tls_key=args.http_tls_key,
        max_failed=args.max_failed_admissions,
        failed_window=args.failed_admission_window,
        max_failed_per_user=args.max_failed_logins_per_user,
        allowed_hosts=allowed_hosts(args),
        failed=failed,
    )


def allowed_hosts(args: argparse.Namespace) -> tuple[str, ...]:
    """``--http-allowed-host`` and the host of ``--http-base-url``."""
    names = list(args.http_allowed_host or ())
    if args.http_base_url:
        names.append(urlsplit(args.http_base_url).hostname or "")
    return tuple(names)


def https_context(args: argparse.Namespace) -> Any:
    """The HTTPS context of ``--http-tls-cert``/``--http-tls-key`` (None: plain
    HTTP), checked before anything is opened; ``OSError``/``ValueError`` in one line."""
    return http_security(args, None, None).ssl_context()


def announce(security: Any, host: str, url: str) -> None:
    """The start-up lines: where HTTP listens, what it asks, what is exposed."""
    from dicomstore.http.security import describe

    log.info("DICOMweb and browse page on %s (%s)", url, describe(security))
    for warning in security.warnings(host):
        log.warning("%s", warning)
