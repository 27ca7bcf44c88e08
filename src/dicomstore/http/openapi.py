"""The OpenAPI 3.1 description of the DICOMweb service and the browse pages,
served at ``/openapi.json``.

Every operation lists each status it answers (errors as one ``text/plain``
line, :func:`~dicomstore.http.common.error_response`), and every parameter
the handlers read, with the bounds of :class:`~dicomstore.http.limits.HttpLimits`;
the QIDO-RS match keys are the attributes the index keeps
(:data:`dicomstore.archive.query.ATTRIBUTES`). ``tests/http/test_http_openapi_fuzz.py``
runs schemathesis against it.
"""

from __future__ import annotations

from typing import Any

from dicomstore import __version__
from dicomstore.archive.attributes import ATTRIBUTES
from dicomstore.archive.query import LEVELS
from dicomstore.http.limits import HttpLimits

_UID = {"type": "string", "pattern": "^[0-9.]{1,64}$"}
_JSON = "application/dicom+json"
_MULTIPART = 'multipart/related; type="application/dicom"'
_XML_PARTS = 'multipart/related; type="application/dicom+xml"'
_OCTETS = 'multipart/related; type="application/octet-stream"'
_FRAME_TYPES = (
    "image/jpeg",
    "image/jls",
    "image/jp2",
    "image/jpx",
    "image/dicom-rle",
    "image/jphc",
)
_TEXT = {"text/plain": {"schema": {"type": "string"}}}

_ERRORS = {
    400: "a parameter or the body is malformed or beyond a limit (the reason says which)",
    404: "not in the archive",
    405: "the method is not allowed here (STOW-RS: the server is read-only)",
    406: "no acceptable media type or transfer syntax",
    409: "none of the instances was stored; the reasons are listed",
    413: "the body, a part, a data set or a frame is larger than a limit (the reason says which)",
    415: 'the body is not multipart/related; type="application/dicom"',
    500: "the stored data cannot be read or decoded (damaged: the reason says which)",
    503: "the archive index is unavailable",
}


def _responses(ok: dict[str, Any], *errors: int) -> dict[str, Any]:
    out: dict[str, Any] = {"200": ok}
    for code in (*errors, 503):
        out[str(code)] = {"description": _ERRORS[code], "content": _TEXT}
    return out


def _path(name: str, description: str = "", schema: dict[str, Any] | None = None) -> dict:
    out: dict[str, Any] = {"name": name, "in": "path", "required": True, "schema": schema or _UID}
    if description:
        out["description"] = description
    return out


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def _count(name: str, description: str, limits: HttpLimits) -> dict[str, Any]:
    bounded = {"type": "integer", "minimum": 0, "maximum": limits.max_offset}
    return _query(name, description + f" (0 to {limits.max_offset}; beyond: 400)", bounded)


def _search_params(level: str, limits: HttpLimits) -> list[dict[str, Any]]:
    """limit, offset, includefield, fuzzymatching, stable and the match keys of ``level``
    and the levels above it (PS3.18 10.6.1.2, 8.3.4)."""
    depth = LEVELS.index(level)
    keys = [
        _query(
            keyword,
            f"match on {keyword} ({attr.vr}): a value, * and ? wildcards, date/time "
            "ranges A-B, UID lists separated by , or \\",
        )
        for keyword, attr in ATTRIBUTES.items()
        if attr.sql is not None and LEVELS.index(attr.level) <= depth
    ]
    return [
        _count("limit", "at most this many results", limits),
        _count("offset", "skip this many results", limits),
        _query(
            "includefield",
            "attributes to add, by keyword or tag, comma-separated, or 'all' "
            f"(at most {limits.max_includefields})",
        ),
        _query(
            "fuzzymatching",
            "accepted, no effect (Person Names match insensitive to ASCII case)",
            {"type": "boolean"},
        ),
        _query(
            "stable",
            "dicomstore's own, not PS3.18: only the studies reported stable (true) "
            "or not (false) by study-complete events; a stable study's results carry "
            '(0009,0010) LO "DICOMSTORE" and (0009,1010) DT, when it was reported stable',
            {"type": "boolean"},
        ),
        *keys,
    ]


def _search(summary: str, level: str, path: list[str], limits: HttpLimits) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary + " (QIDO-RS, PS3.18 10.6)",
            "parameters": [_path(p) for p in path] + _search_params(level, limits),
            "responses": _responses(
                {"description": "matching results", "content": {_JSON: {}}},
                400,
                *((404,) if path else ()),  # (a path that names no single UID)
                406,
            ),
        }
    }


_ACCEPT = _query("accept", "the media type wanted, overriding the Accept header (8.3.3.1)")


def _retrieve(summary: str, path: list[str], *, post: bool = False) -> dict[str, Any]:
    content: dict[str, Any] = {_MULTIPART: {}, "application/zip": {}}
    if "sop" in path:
        content["application/dicom"] = {}
    ops: dict[str, Any] = {
        "get": {
            "summary": summary + " (WADO-RS, PS3.18 10.4); ?accept=application/zip for a zip",
            "parameters": [_path(p) for p in path] + [_ACCEPT],
            "responses": _responses(
                {
                    "description": "the PS3.10 files: as stored with transfer-syntax=*,"
                    " else in Explicit VR Little Endian (transcoded)",
                    "content": content,
                },
                404,
                406,
                413,
                500,
            ),
        }
    }
    if post:
        ops["post"] = _stow(path)
    return ops


def _stow(path: list[str]) -> dict[str, Any]:
    answer: dict[str, Any] = {_JSON: {}, "application/dicom+xml": {}}  # (by the Accept header)
    responses = _responses(
        {"description": "all stored", "content": answer}, 400, 405, 406, 409, 413, 415
    )
    responses["202"] = {"description": "some stored; failures or warnings listed"}
    responses["409"]["content"] = answer
    if path:
        responses["404"] = {"description": "the path names no single UID", "content": _TEXT}
    return {
        "summary": "Store instances (STOW-RS, PS3.18 10.5)",
        "parameters": [_path(p) for p in path],
        "requestBody": {
            "required": True,
            "content": {_MULTIPART: {"schema": {"type": "string", "format": "binary"}}},
        },
        "responses": responses,
    }


def _metadata(path: list[str]) -> dict[str, Any]:
    return {
        "get": {
            "summary": "Metadata as DICOM JSON with BulkDataURI, or the Native DICOM Model "
            "(WADO-RS, PS3.18 10.4)",
            "parameters": [_path(p) for p in path] + [_ACCEPT],
            "responses": _responses(
                {"description": "metadata", "content": {_JSON: {}, _XML_PARTS: {}}}, 404, 406
            ),
        }
    }


def _page(summary: str, params: list[dict[str, Any]], media: str = "text/html") -> dict:
    errors = (400, 404)
    return {
        "get": {
            "summary": summary + " (browse page)",
            "parameters": params,
            "responses": _responses({"description": summary, "content": {media: {}}}, *errors),
        }
    }


def _browse(limits: HttpLimits) -> dict[str, Any]:
    offset = _count("offset", "the first row shown", limits)
    uid = _query("uid", "the UID of what to show")
    patient = [_query("id", "Patient ID"), _query("issuer", "Issuer of Patient ID")]
    return {
        "/": _page("The patients", [offset]),
        "/browse/patient": _page("A patient's studies", [*patient, offset]),
        "/browse/patient.zip": _page("A patient's studies as a zip", patient, "application/zip"),
        "/browse/study": _page("A study's series", [uid, offset]),
        "/browse/series": _page("A series' instances", [uid, offset]),
        "/browse/instance": _page("An instance's header", [uid]),
        "/browse/search": _page(
            "Studies by patient name or ID, accession, date",
            [
                _query("name", "Patient Name (a prefix, or with * and ? wildcards)"),
                _query("id", "Patient ID"),
                _query("accession", "Accession Number"),
                _query("from", "first Study Date, YYYY-MM-DD"),
                _query("to", "last Study Date, YYYY-MM-DD"),
                offset,
            ],
        ),
    }


def _rendered(summary: str, params: list[dict[str, Any]]) -> dict[str, Any]:
    ok = {"description": "the image", "content": {"image/jpeg": {}, "image/png": {}}}
    query = [
        _query("window", "center,width[,linear|linear-exact] (PS3.18 8.3.5.1.4)"),
        _query("viewport", "width,height: the box the image is fitted into (8.3.5.1.3)"),
        _query("quality", "JPEG quality 1-100", {"type": "integer", "minimum": 1, "maximum": 100}),
    ]
    return {
        "get": {
            "summary": summary + " (WADO-RS, PS3.18 10.4.1.1.5-6)",
            "parameters": [*params, *query, _ACCEPT],
            "responses": _responses(ok, 400, 404, 406, 413, 500),
        }
    }


def openapi(limits: HttpLimits | None = None) -> dict[str, Any]:
    """The whole description (its bounds those of ``limits``)."""
    lim = limits or HttpLimits()
    st, se, sop = ["study"], ["study", "series"], ["study", "series", "sop"]
    inst = "/studies/{study}/series/{series}/instances/{sop}"
    frames = _path("frames", "1,2,...", {"type": "string", "pattern": "^[0-9]+(,[0-9]+)*$"})
    tag = _path("tag", "GGGGEEEE", {"type": "string", "pattern": "^[0-9A-Fa-f]{8}$"})
    frame_types = [_OCTETS, *(f'multipart/related; type="{t}"' for t in _FRAME_TYPES)]
    per_frame = {
        "description": "one part per frame (bulk data: per value)",
        "content": {t: {} for t in frame_types},
    }
    sop_params = [_path(p) for p in sop]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "dicomstore DICOMweb",
            "version": __version__,
            "description": "QIDO-RS, WADO-RS and STOW-RS (DICOM PS3.18) over the archive "
            "that the Storage SCP fills; a browse page at /.",
        },
        "paths": {
            "/studies": {
                **_search("Search studies", "study", [], lim),
                "post": _stow([]),
            },
            "/series": _search("Search all series", "series", [], lim),
            "/instances": _search("Search all instances", "instance", [], lim),
            "/studies/{study}": _retrieve("Retrieve a study", st, post=True),
            "/studies/{study}/series": _search("Search a study's series", "series", st, lim),
            "/studies/{study}/instances": _search(
                "Search a study's instances", "instance", st, lim
            ),
            "/studies/{study}/metadata": _metadata(st),
            "/studies/{study}/series/{series}": _retrieve("Retrieve a series", se),
            "/studies/{study}/series/{series}/instances": _search(
                "Search a series' instances", "instance", se, lim
            ),
            "/studies/{study}/series/{series}/metadata": _metadata(se),
            inst: _retrieve("Retrieve an instance", sop),
            inst + "/metadata": _metadata(sop),
            inst + "/frames/{frames}": {
                "get": {
                    "summary": "Frames, uncompressed or as stored (WADO-RS, PS3.18 10.4)",
                    "parameters": [*sop_params, frames, _ACCEPT],
                    "responses": _responses(per_frame, 400, 404, 406, 413, 500),
                }
            },
            inst + "/bulkdata/{tag}": {
                "get": {
                    "summary": "A bulk data value named by its tag (BulkDataURI)",
                    "parameters": [*sop_params, tag, _ACCEPT],
                    "responses": _responses(per_frame, 400, 404, 406, 413, 500),
                }
            },
            "/studies/{study}/rendered": _rendered("A study's key image", [_path("study")]),
            "/studies/{study}/series/{series}/rendered": _rendered(
                "A series' middle image", [_path(p) for p in se]
            ),
            inst + "/rendered": _rendered("An instance (its first frame)", sop_params),
            inst + "/frames/{frames}/rendered": _rendered("One frame", [*sop_params, frames]),
            "/studies/{study}/thumbnail": _rendered("A study's thumbnail", [_path("study")]),
            "/studies/{study}/series/{series}/thumbnail": _rendered(
                "A series' thumbnail", [_path(p) for p in se]
            ),
            inst + "/thumbnail": _rendered("An instance's thumbnail", sop_params),
            inst + "/frames/{frames}/thumbnail": _rendered(
                "A frame's thumbnail", [*sop_params, frames]
            ),
            **_browse(lim),
            **_operations(),
        },
    }


def _operations() -> dict[str, Any]:
    """The operator's endpoints (``http/operations.py``; review45 L6: not described)."""

    def get(summary: str, ok: str, media: str, *errors: int) -> dict[str, Any]:
        answer = {"description": ok, "content": {media: {}}}
        return {
            "get": {"summary": summary, "parameters": [], "responses": _responses(answer, *errors)}
        }

    return {
        "/healthz": get("Liveness: the process serves HTTP (no credentials)", "ok", "text/plain"),
        "/readyz": get(
            "Readiness: the index answers, the server's parts run (no credentials);"
            " 503 with one line per problem",
            "ready",
            "text/plain",
        ),
        "/metrics": get(
            "The server's counters, Prometheus text exposition",
            "the counters",
            "text/plain; version=0.0.4",
            404,
        ),
    }
