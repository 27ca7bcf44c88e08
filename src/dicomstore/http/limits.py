"""The bounds every DICOMweb request is held to, so that no client can exhaust the server.

One :class:`HttpLimits` per app (``build_app(limits=...)``, kept in
``app.state.limits``). A request outside a limit is answered 413 (a body, a
part, too many parts) or 400 (a parameter) with the limit named in the
reason, a log line is written, and nothing stored is touched: STOW-RS aborts
the instance it was receiving. The STOW-RS data set limit itself is the store
service's (``--max-instance-size``): a part whose data set exceeds it is
answered 413 at once instead of being read to its end. The same limit bounds
what a stored deflated data set is inflated to when it is read (WADO-RS
metadata, bulk data, frames, rendered, the browse page: :func:`inflated_limit`);
beyond it, 413 naming the limit, and a log line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from starlette.requests import Request

from dicomstore.http.common import HttpError
from dicomstore.inflation import DEFAULT_MAX_INFLATED
from dicomstore.services.storage import StoreService

log = logging.getLogger("dicomstore.http.limits")

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Each bound; the defaults leave every real-world request inside them."""

    #: a whole request body (STOW-RS), counted as it arrives (chunked or not)
    max_body_bytes: int = 4 * GiB
    #: parts of one multipart body
    max_parts: int = 10_000
    #: the header lines of one part (a few lines in practice)
    max_part_header_bytes: int = 16 * KiB
    #: attributes named by ``includefield`` in one QIDO-RS request
    max_includefields: int = 100
    #: ``limit`` and ``offset`` of a search (and ``offset`` of a browse page)
    max_offset: int = 1 << 40
    #: levels of nested sequences rendered (browse page, WADO-RS metadata)
    max_sequence_depth: int = 32
    #: elements (at every level) rendered on one browse page
    max_rendered_elements: int = 20_000
    #: one frame once decoded (WADO-RS frames, rendered, thumbnails): larger, 413
    max_frame_bytes: int = 512 * MiB
    #: a request's line and headers while they arrive (h11's buffer); more: 431
    #: (``http/guard.py``; a head that arrives in one read may be a little longer)
    max_head_bytes: int = 64 * KiB
    #: HTTP connections open at once; one more: 503 and closed (``http/guard.py``)
    max_connections: int = 256
    #: of those, from one client address (0: no limit of its own; behind a proxy
    #: every client has the proxy's address); one more: 503 and closed
    max_per_address: int = 0
    #: seconds a client may send nothing of a request it owes (its head, the rest of
    #: its body); then 408 and closed (``http/guard.py``)
    request_timeout: float = 30.0
    #: bytes a second a request body must arrive at, over each ``request_timeout``
    #: seconds we read it; slower: 408 and closed (0: no minimum; ``http/guard.py``)
    min_body_rate: int = 500
    #: seconds a client may take none of an answer waiting for it; then cut off
    #: (``http/guard.py``; None: ``request_timeout``, as ``--http-timeout`` sets both)
    answer_timeout: float | None = None

    @property
    def unread_limit(self) -> float:
        """How long an answer may wait untaken (:attr:`answer_timeout`)."""
        return self.request_timeout if self.answer_timeout is None else self.answer_timeout

    def too_many(self, others: int, host: str | None, from_host: int) -> str:
        """Why one more connection is one too many, with ``others`` open already,
        ``from_host`` of them from its address ``host``; '' when it is not (the HTTP
        door and its HTTPS accept both ask here: ``guard.py``, ``tls_accept.py``)."""
        if others >= self.max_connections:
            most = self.max_connections
            return f"{most} connections open, the most --http-max-connections allows"
        per = self.max_per_address
        if per and host is not None and from_host >= per:
            return f"{per} connections from {host} open, the most --http-max-per-address allows"
        return ""


DEFAULT = HttpLimits()


def limits(request: Request) -> HttpLimits:
    """The limits of the app serving ``request``."""
    found = getattr(request.app.state, "limits", None)
    return found if isinstance(found, HttpLimits) else DEFAULT


def inflated_limit(request: Request) -> int:
    """What a stored deflated data set may inflate to when it is read (PS3.5 A.5): the
    store service's limit (``--max-instance-size``, else ``DEFAULT_MAX_INFLATED``),
    the one it was received under; beyond it, 413 (:func:`too_large`)."""
    store = getattr(request.app.state, "store", None)
    if isinstance(store, StoreService):
        return store.limits.inflated_limit
    return DEFAULT_MAX_INFLATED


def refuse(
    request: Request, status: int, reason: str, headers: dict[str, str] | None = None
) -> HttpError:
    """The error to raise for a request outside a limit, after its log line. (The
    connection is not closed at once: a client still sending its body would get a
    reset, not the answer: review39 #1. uvicorn then reads and discards the rest of
    the body, in bounded memory but with no limit of ours on its size: review40 #8.)"""
    client = request.client.host if request.client is not None else "?"
    log.warning(
        "%s %s from %s refused (%d): %s", request.method, request.url.path, client, status, reason
    )
    return HttpError(status, reason, headers)
