"""Audit records of reads over HTTP: who read or searched what (PS3.15 A.5.3.6, .7, .10).

With ``serve --audit-log``, each successful (2xx) read of stored instances
adds one JSON line to the same audit trail as associations and stores
(:class:`~dicomstore.audit.AuditLog`), written once the response is sent:

- WADO-RS retrieve, frames, bulk data and rendered images, and the browse
  page's patient zip,
  in the spirit of *DICOM Instances Transferred* (A.5.3.7, EV 110104, action R);
- WADO-RS metadata and thumbnails, and the browse pages of a study, series or instance,
  in the spirit of *DICOM Instances Accessed* (A.5.3.6, EV 110103, action R);
- QIDO-RS searches, the browse page's patient list, its search and a patient's
  page (its studies), in the spirit of *Query* (A.5.3.10, EV 110112, action E),
  with the query string as sent (``query``): what was searched for.

A HEAD request is recorded too (``"method": "HEAD"``, ``bytes`` 0): it sends no
body, but its status and length answer (a search's matches, whether a patient or a
study exists: review67 F1); one of a transfer's URL is recorded as an access, as
nothing was transferred.

For example (one line)::

    {"time": "...", "event": "read", "audit_event": "DICOM Instances Transferred",
     "event_id": "110104", "service": "WADO-RS", "user": "alice", "address": "10.0.0.7",
     "method": "GET", "path": "/studies/1.2.3", "study_instance_uid": "1.2.3",
     "series_instance_uid": null, "sop_instance_uid": null, "patient_id": null,
     "status": 200, "bytes": 1048576, "complete": true}

``complete`` is false when the client went away mid-response. STOW-RS stores
are audited by the store service (``event: "instance"``, with the user).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from dicomstore.http import browse, browse_search, frames, qido, render, wado
from dicomstore.http.answer import Answer, watch
from dicomstore.http.auth import client_of, identity_of

TRANSFERRED = ("DICOM Instances Transferred", "110104")  # PS3.15 A.5.3.7
ACCESSED = ("DICOM Instances Accessed", "110103")  # PS3.15 A.5.3.6
QUERY = ("Query", "110112")  # PS3.15 A.5.3.10


class AuditWriter(Protocol):
    """Where records go (:meth:`dicomstore.audit.AuditLog.write`)."""

    def write(self, record: dict[str, Any], event: str | None = None) -> None: ...


def _wado_target(scope: Scope, query: dict[str, str]) -> dict[str, str | None]:
    params = scope.get("path_params", {})
    return {
        "study_instance_uid": params.get("study"),
        "series_instance_uid": params.get("series"),
        "sop_instance_uid": params.get("sop"),
    }


def _page(key: str) -> Callable[[Scope, dict[str, str]], dict[str, str | None]]:
    return lambda scope, query: {key: query.get("uid")}


def _none(scope: Scope, query: dict[str, str]) -> dict[str, str | None]:
    return {}  # (what was searched for: the query string, ``query``)


def _patient(scope: Scope, query: dict[str, str]) -> dict[str, str | None]:
    return {"patient_id": query.get("id"), "issuer_of_patient_id": query.get("issuer") or None}


#: The audited endpoints: their event, the service named, where the target is.
_AUDITED: dict[Any, tuple[tuple[str, str], str, Any]] = {
    wado.retrieve: (TRANSFERRED, "WADO-RS", _wado_target),
    frames.frames: (TRANSFERRED, "WADO-RS", _wado_target),
    frames.bulkdata: (TRANSFERRED, "WADO-RS", _wado_target),
    render.rendered: (TRANSFERRED, "WADO-RS", _wado_target),
    render.thumbnail: (ACCESSED, "WADO-RS", _wado_target),
    wado.metadata: (ACCESSED, "WADO-RS", _wado_target),
    browse.patient_zip: (TRANSFERRED, "browse", _patient),
    browse.study: (ACCESSED, "browse", _page("study_instance_uid")),
    browse.series: (ACCESSED, "browse", _page("series_instance_uid")),
    browse.instance: (ACCESSED, "browse", _page("sop_instance_uid")),
    browse.patient: (QUERY, "browse", _patient),  # (review52 L3: a patient's studies,
    browse_search.search: (QUERY, "browse", _none),  # a search: queries, not audited;
    browse.home: (QUERY, "browse", _none),  # review67 F2: every patient, page by page)
    qido.studies: (QUERY, "QIDO-RS", _wado_target),
    qido.study_series: (QUERY, "QIDO-RS", _wado_target),
    qido.all_series: (QUERY, "QIDO-RS", _wado_target),
    qido.series_instances: (QUERY, "QIDO-RS", _wado_target),
    qido.study_instances: (QUERY, "QIDO-RS", _wado_target),
    qido.all_instances: (QUERY, "QIDO-RS", _wado_target),
}


class ReadAuditMiddleware:
    """ASGI middleware adding an audit record for each successful read of instances."""

    def __init__(self, app: ASGIApp, audit: AuditWriter) -> None:
        self.app = app
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        head = scope["method"] == "HEAD"  # (no body, but its status and length answer:
        # a search's matches, a patient's existence: review67 F1)

        def record(answer: Answer, complete: bool) -> None:
            audited = _AUDITED.get(scope.get("endpoint"))
            if audited is not None and 200 <= answer.status < 300:
                self._record(scope, audited, answer.status, answer.nbytes, complete or head)

        await watch(self.app, scope, receive, send, record)

    def _record(self, scope: Scope, audited: Any, status: int, nbytes: int, complete: bool) -> None:
        (name, event_id), service, target = audited
        if scope["method"] == "HEAD" and (name, event_id) == TRANSFERRED:
            name, event_id = ACCESSED  # (nothing transferred)
        query_string = scope.get("query_string", b"").decode("latin-1")
        query = dict(parse_qsl(query_string))
        identity = identity_of(scope)
        record: dict[str, Any] = {
            "event": "read",
            "audit_event": name,
            "event_id": event_id,
            "service": service,
            "user": identity.user if identity is not None else None,
            "address": client_of(scope) or None,
            "method": scope["method"],
            "path": scope["path"],
            "study_instance_uid": None,
            "series_instance_uid": None,
            "sop_instance_uid": None,
            "patient_id": None,
        }
        record.update(target(scope, query))
        if (name, event_id) == QUERY:
            record["query"] = query_string
        record.update(status=status, bytes=nbytes, complete=complete)
        self.audit.write(record)
