"""The ASGI application: DICOMweb (PS3.18 10.4-10.6), the browse pages, OpenAPI.

Every door reads the same index through one :class:`ArchiveReader`; STOW-RS
writes through the :class:`~dicomstore.archive.Archive` the SCP uses (pass
it), so both doors share one writer, one lock, one duplicate policy.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.convertors import register_url_convertor
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dicomstore.archive import Archive
from dicomstore.archive.engine import OperationalError, error_cause
from dicomstore.archive.metacache import DEFAULT_MAX_ENTRIES, MetadataCache
from dicomstore.archive.query import QueryError
from dicomstore.archive.reader import ArchiveNotFoundError, ArchiveReader, NotStoredError
from dicomstore.http import browse, browse_search, frames, operations, qido, render, stow, wado
from dicomstore.http.answer import EndsBroken
from dicomstore.http.common import HttpError, UidConvertor, error_response
from dicomstore.http.content_coding import GzipAnswers
from dicomstore.http.forwarded import ForwardedClient
from dicomstore.http.limits import HttpLimits, refuse
from dicomstore.http.openapi import openapi
from dicomstore.http.security import HttpSecurity
from dicomstore.inflation import TooLarge
from dicomstore.services.metrics import ServerMetrics
from dicomstore.services.storage import StoreService

log = logging.getLogger("dicomstore.http")

register_url_convertor("uid", UidConvertor())
_STUDY = "/studies/{study:uid}"
_SERIES = _STUDY + "/series/{series:uid}"
_INSTANCE = _SERIES + "/instances/{sop:uid}"


def _routes() -> list[Route]:
    return [
        Route("/", browse.home),
        Route("/browse/search", browse_search.search),
        Route("/browse/patient", browse.patient),
        Route("/browse/patient.zip", browse.patient_zip),
        Route("/browse/study", browse.study),
        Route("/browse/series", browse.series),
        Route("/browse/instance", browse.instance),
        Route("/openapi.json", lambda request: JSONResponse(openapi(request.app.state.limits))),
        Route("/healthz", operations.healthz),
        Route("/readyz", operations.readyz),
        Route("/metrics", operations.metrics),
        # QIDO-RS (10.6) and STOW-RS (10.5)
        Route("/studies", qido.studies, methods=["GET"]),
        Route("/studies", stow.store, methods=["POST"]),
        Route("/series", qido.all_series),
        Route("/instances", qido.all_instances),
        Route(_STUDY + "/series", qido.study_series),
        Route(_STUDY + "/instances", qido.study_instances),
        Route(_SERIES + "/instances", qido.series_instances),
        # WADO-RS (10.4)
        Route(_STUDY, wado.retrieve, methods=["GET"]),
        Route(_STUDY, stow.store, methods=["POST"]),
        Route(_STUDY + "/metadata", wado.metadata),
        Route(_SERIES, wado.retrieve),
        Route(_SERIES + "/metadata", wado.metadata),
        Route(_INSTANCE, wado.retrieve),
        Route(_INSTANCE + "/metadata", wado.metadata),
        Route(_INSTANCE + "/frames/{frames}", frames.frames),
        Route(_INSTANCE + "/bulkdata/{tag}", frames.bulkdata),
        # rendered and thumbnails (10.4.1.1.5-6)
        Route(_STUDY + "/rendered", render.rendered),
        Route(_SERIES + "/rendered", render.rendered),
        Route(_INSTANCE + "/rendered", render.rendered),
        Route(_INSTANCE + "/frames/{frames}/rendered", render.rendered),
        Route(_STUDY + "/thumbnail", render.thumbnail),
        Route(_SERIES + "/thumbnail", render.thumbnail),
        Route(_INSTANCE + "/thumbnail", render.thumbnail),
        Route(_INSTANCE + "/frames/{frames}/thumbnail", render.thumbnail),
    ]


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HttpError)
    return error_response(exc.status, exc.message, exc.headers)


async def _starlette_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = exc.detail if exc.status_code != 404 else f"no resource at {request.url.path}"
    headers = dict(exc.headers or {})
    if exc.status_code == 405:  # (every route of the path's methods: RFC 9110 15.5.6;
        # review116 L6: /studies/{study} said HEAD, GET, its first route's, not POST)
        headers["Allow"] = ", ".join(_allowed(request))
    return error_response(exc.status_code, str(detail), headers)


def _allowed(request: Request) -> list[str]:
    """The methods the routes of the request's path take."""
    methods: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.path_regex.match(request.url.path):
            methods |= route.methods or set()
    return sorted(methods)


async def _known_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, QueryError):
        return error_response(400, str(exc))
    if isinstance(exc, NotStoredError):
        return error_response(404, str(exc))
    if isinstance(exc, ArchiveNotFoundError):
        return error_response(503, "the archive index is unavailable: no archive")
    # (its cause, never where the index is: review50 #4 gave its URL, a password in it,
    # to any client; the log line has it whole)
    path = request.url.path
    log.warning("%s %s: the archive index is unavailable: %s", request.method, path, exc)
    return error_response(503, f"the archive index is unavailable: {error_cause(exc)}")


async def _too_large(request: Request, exc: Exception) -> Response:
    """A stored deflated data set inflating to over the limit (PS3.5 A.5): 413, logged."""
    found = refuse(request, 413, f"{exc}: not served")
    return error_response(found.status, found.message)


async def _internal_error(request: Request, exc: Exception) -> Response:
    """Anything else: 500 (Starlette logs the traceback after this answer)."""
    return error_response(500, f"internal error: {type(exc).__name__}")


def build_app(
    source: Archive | Path | str,
    *,
    writable: bool = False,
    ae_title: str = "DICOMSTORE",
    stow_ae: str = "STOW-RS",
    accept_unknown: bool = False,
    base_url: str | None = None,
    trust_forwarded: bool = False,
    store: StoreService | None = None,
    security: HttpSecurity | None = None,
    limits: HttpLimits | None = None,
    metrics: ServerMetrics | None = None,
    ready: operations.ReadyCheck | None = None,
    index: str | None = None,
    metadata_cache_entries: int = DEFAULT_MAX_ENTRIES,
    gzip: bool = True,
) -> Starlette:
    """The DICOMweb ASGI app over the archive ``source``.

    ``source`` is the :class:`Archive` a server already uses (STOW-RS stores
    through it), or an archive root: read-only unless ``writable``, in which
    case the app opens its own ``Archive`` — never do that next to another
    ``Archive`` of the same root in the same process. ``stow_ae`` is recorded
    as the sender (calling AE) of STOW-RS instances, ``ae_title`` as the
    receiver; ``accept_unknown`` lets STOW-RS store non-storage SOP classes.
    ``base_url`` is the public URL of the service (behind a proxy) used in
    Retrieve URLs and BulkDataURIs; by default each request's own (its Host, with
    our port when Host has none), or with ``trust_forwarded`` what the proxy's
    ``X-Forwarded-Proto/Host/Prefix`` say (never trusted by default: any client
    could send them; :func:`~dicomstore.http.common.base_url`).
    ``store`` is the store service STOW-RS stores through: the server's, so
    that its authorization, limits, accepted transfer syntaxes, audit and events
    hold for STOW-RS too (``Server.store``); without one, that of the server
    serving ``source`` (``Archive.store_service``), else a service over the
    archive with none of them.
    ``security`` guards the app (identities and rights from the policy file,
    CORS, the read audit; :mod:`dicomstore.http.security`); without it HTTP is
    open, and STOW-RS callers are judged as the AE title ``stow_ae`` by the
    store service's gatekeeper. Every request gets an access log line.
    ``limits`` bound every request (:class:`~dicomstore.http.limits.HttpLimits`).
    ``metrics`` are served at ``/metrics`` and count each request; ``ready`` is
    asked by ``/readyz`` besides the index and the store service
    (:mod:`dicomstore.http.operations`).
    ``index``: the index of an archive root given as ``source``, when not the
    SQLite file in it (a ``postgresql://`` URL; an :class:`Archive` knows its own).
    ``metadata_cache_entries``: the most instances the WADO-RS metadata cache keeps
    (those used longest ago go first, :mod:`~dicomstore.archive.metacache`).
    ``gzip``: answers of DICOM JSON, JSON, XML and text gzipped for the clients that
    accept it (:mod:`~dicomstore.http.content_coding`; innermost, so that the access
    log, the audit and CORS see the answer as sent).
    """
    archive = source if isinstance(source, Archive) else None
    root = archive.root if archive is not None else Path(source)  # type: ignore[arg-type]
    owns_archive = archive is None and writable
    if archive is not None:
        index = archive.index_url

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if owns_archive:
            app.state.archive = Archive(root, index=index)
            app.state.store = StoreService(app.state.archive, accept_unknown=accept_unknown)
        try:
            yield
        finally:
            app.state.metadata_cache.close()
            if owns_archive and app.state.archive is not None:
                app.state.archive.close()

    app = Starlette(
        routes=_routes(),
        lifespan=lifespan,
        middleware=[
            Middleware(EndsBroken),
            *([Middleware(ForwardedClient)] if trust_forwarded else []),
            *([Middleware(operations.RequestMetrics, metrics=metrics)] if metrics else []),
            *(security or HttpSecurity()).middleware(),
            *([Middleware(GzipAnswers)] if gzip else []),
        ],
        exception_handlers={
            HttpError: _http_error,
            HTTPException: _starlette_error,
            TooLarge: _too_large,
            QueryError: _known_error,
            NotStoredError: _known_error,
            ArchiveNotFoundError: _known_error,
            **dict.fromkeys(OperationalError, _known_error),
            Exception: _internal_error,
        },
    )
    if owns_archive:
        Archive(root, index=index).close()  # create the index now, so the reader can open it
    app.state.archive = archive
    if store is None and archive is not None:  # (review54 F5: the server's, if one serves it)
        store = archive.store_service or StoreService(archive, accept_unknown=accept_unknown)
    app.state.store = store
    storage = archive.storage if archive is not None else None
    app.state.reader = ArchiveReader(root, index=index, storage=storage)
    app.state.metadata_cache = MetadataCache(root, metadata_cache_entries)
    app.state.ae_title = ae_title
    app.state.stow_ae = stow_ae
    app.state.limits = limits or HttpLimits()
    app.state.base_url = base_url.rstrip("/") + "/" if base_url else None
    app.state.trust_forwarded = trust_forwarded
    app.state.metrics = metrics
    app.state.readiness = operations.readiness(app.state, ready)
    if metrics is not None:  # (the gauges of readiness and free space: review58 M2)
        metrics.watch_readiness(app.state.readiness, root)
    return app
