"""The operator's endpoints beside DICOMweb (README: "Operations"):

``GET /healthz``
    200 ``ok``: the process answers (liveness). Open: no credentials asked,
    even with a policy file (:data:`OPEN_PATHS`); it tells nothing stored.
``GET /readyz``
    200 ``ready`` when this node can store (:mod:`dicomstore.services.readiness`:
    the archive index can be read, and, with a store service, free space above
    ``--min-free``, its temporary folder writable, its index file neither removed
    nor found damaged) and the DICOM listener is up (the ``ready`` check
    ``serve`` gives), else 503 with one line per problem; bounded in time.
    Open like ``/healthz``: the index's error is logged, not answered (it can
    name the PostgreSQL host, user and database: review38web #9).
``GET /metrics``
    the server's counters in the Prometheus text format
    (:mod:`dicomstore.services.metrics`); 404 when the app was built without
    them. With a policy file it needs the ``read`` right like any GET
    (``http_anonymous_may = ["read"]``, or a scraper user with ``read``): the
    counts reveal the traffic, not what is stored.

:class:`RequestMetrics` counts every HTTP request by method and status.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from contextlib import closing
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from dicomstore.archive.engine import DatabaseOrOSError
from dicomstore.http.answer import watch
from dicomstore.http.common import HttpError
from dicomstore.services.metrics import CONTENT_TYPE, ServerMetrics
from dicomstore.services.readiness import Readiness, cannot_store

log = logging.getLogger("dicomstore.http.operations")

#: paths answered without credentials (:class:`~dicomstore.http.auth.AuthMiddleware`)
OPEN_PATHS = frozenset({"/healthz", "/readyz"})

#: what ``serve`` says about its other parts: one line per problem, none when ready
ReadyCheck = Callable[[], list[str]]


async def healthz(request: Request) -> Response:
    """Liveness: the process serves HTTP."""
    return PlainTextResponse("ok\n")


def readiness(state: Any, ready: ReadyCheck | None) -> Readiness:
    """The checks of ``/readyz`` for the app whose state is ``state``: the index read,
    the store service's (when the app has one), ``ready``."""
    checks = [functools.partial(_index_problems, state), functools.partial(_store_problems, state)]
    return Readiness(checks + ([ready] if ready is not None else []))


def _index_problems(state: Any) -> list[str]:
    try:  # (its last error logged: once while it lasts)
        with closing(state.reader.connect()) as db:
            db.execute("SELECT 1 FROM instance LIMIT 1").fetchall()
    except DatabaseOrOSError as exc:
        if str(exc) != getattr(state, "readyz_logged", None):
            state.readyz_logged = str(exc)
            log.warning("/readyz: the archive index is not readable: %s", exc)
        return ["the archive index is not readable (the server's log says why)"]
    state.readyz_logged = None
    return []


def _store_problems(state: Any) -> list[str]:
    store = state.store
    return [] if store is None else cannot_store(store)


async def readyz(request: Request) -> Response:
    """Readiness: whether this node can store (:func:`readiness`)."""
    problems = await request.app.state.readiness.problems()
    if problems:
        return PlainTextResponse("".join(f"{p}\n" for p in problems), status_code=503)
    return PlainTextResponse("ready\n")


async def metrics(request: Request) -> Response:
    """The Prometheus text exposition of the server's counters."""
    found: ServerMetrics | None = request.app.state.metrics
    if found is None:
        raise HttpError(404, "no metrics here (dicomstore serve --http-port has them)")
    return Response(await found.gathered(), media_type=CONTENT_TYPE)


class RequestMetrics:
    """ASGI middleware: count each HTTP request by method and status (outermost, so
    that refusals by the authentication are counted too)."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await watch(
            self.app,
            scope,
            receive,
            send,
            lambda answer, complete: self.metrics.request(scope["method"], answer.status),
        )
