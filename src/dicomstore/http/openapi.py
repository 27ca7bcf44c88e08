"""The OpenAPI 3.1 description of the DICOMweb service, served at ``/openapi.json``."""

from __future__ import annotations

from typing import Any

from dicomstore import __version__

_UID = {"type": "string", "pattern": "^[0-9.]{1,64}$"}
_JSON = "application/dicom+json"
_MULTIPART = 'multipart/related; type="application/dicom"'


def _p(name: str, where: str = "path", description: str = "") -> dict[str, Any]:
    schema = _UID if where == "path" else {"type": "string"}
    out = {"name": name, "in": where, "required": where == "path", "schema": schema}
    if description:
        out["description"] = description
    return out


_SEARCH_PARAMS = [
    _p("limit", "query", "at most this many results"),
    _p("offset", "query", "skip this many results"),
    _p("includefield", "query", "attributes to add (keyword or tag), or 'all'"),
    _p("fuzzymatching", "query", "accepted, no effect (PN matching ignores ASCII case)"),
    {
        "name": "{attributeID}",
        "in": "query",
        "required": False,
        "description": "match on a keyword or tag: value, * ? wildcards, date/time ranges "
        "A-B, UID lists separated by , or \\",
        "schema": {"type": "string"},
    },
]


def _search(summary: str, *path: str) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary + " (QIDO-RS, PS3.18 10.6)",
            "parameters": [_p(p) for p in path] + _SEARCH_PARAMS,
            "responses": {
                "200": {"description": "matching results", "content": {_JSON: {}}},
                "400": {"description": "invalid query parameter"},
                "406": {"description": "no acceptable media type"},
            },
        }
    }


def _retrieve(summary: str, *path: str, post: bool = False) -> dict[str, Any]:
    ops: dict[str, Any] = {
        "get": {
            "summary": summary + " (WADO-RS, PS3.18 10.4); ?accept=application/zip for a zip",
            "parameters": [_p(p) for p in path] + [_p("accept", "query", "media type")],
            "responses": {
                "200": {
                    "description": "the stored PS3.10 files, streamed",
                    "content": {_MULTIPART: {}, "application/zip": {}},
                },
                "404": {"description": "not in the archive"},
                "406": {"description": "no acceptable media type or transfer syntax"},
            },
        }
    }
    if post:
        ops["post"] = {
            "summary": "Store instances (STOW-RS, PS3.18 10.5)",
            "parameters": [_p(p) for p in path],
            "requestBody": {"required": True, "content": {_MULTIPART: {}}},
            "responses": {
                "200": {"description": "all stored", "content": {_JSON: {}}},
                "202": {"description": "some stored; failures or warnings listed"},
                "400": {"description": "malformed multipart body"},
                "409": {"description": "none stored; reasons listed"},
                "415": {"description": "not multipart/related of application/dicom"},
            },
        }
    return ops


def _metadata(*path: str) -> dict[str, Any]:
    return {
        "get": {
            "summary": "Metadata as DICOM JSON with BulkDataURI (WADO-RS, PS3.18 10.4)",
            "parameters": [_p(p) for p in path],
            "responses": {"200": {"description": "metadata", "content": {_JSON: {}}}},
        }
    }


def openapi() -> dict[str, Any]:
    """The whole description."""
    st, se, sop = "study", "series", "sop"
    inst = "/studies/{study}/series/{series}/instances/{sop}"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "dicomstore DICOMweb",
            "version": __version__,
            "description": "QIDO-RS, WADO-RS and STOW-RS (DICOM PS3.18) over the archive "
            "that the Storage SCP fills; a browse page at /.",
        },
        "paths": {
            "/studies": {**_search("Search studies"), "post": _retrieve("", post=True)["post"]},
            "/series": _search("Search all series"),
            "/instances": _search("Search all instances"),
            "/studies/{study}": _retrieve("Retrieve a study", st, post=True),
            "/studies/{study}/series": _search("Search a study's series", st),
            "/studies/{study}/instances": _search("Search a study's instances", st),
            "/studies/{study}/metadata": _metadata(st),
            "/studies/{study}/series/{series}": _retrieve("Retrieve a series", st, se),
            "/studies/{study}/series/{series}/instances": _search(
                "Search a series' instances", st, se
            ),
            "/studies/{study}/series/{series}/metadata": _metadata(st, se),
            inst: _retrieve("Retrieve an instance", st, se, sop),
            inst + "/metadata": _metadata(st, se, sop),
            inst + "/frames/{frames}": {
                "get": {
                    "summary": "Frames of an uncompressed instance (WADO-RS, PS3.18 10.4)",
                    "parameters": [_p(st), _p(se), _p(sop), _p("frames", "path", "1,2,...")],
                    "responses": {
                        "200": {
                            "description": "one part per frame",
                            "content": {'multipart/related; type="application/octet-stream"': {}},
                        }
                    },
                }
            },
            inst + "/bulkdata/{tag}": {
                "get": {
                    "summary": "A bulk data value named by its tag (BulkDataURI)",
                    "parameters": [_p(st), _p(se), _p(sop), _p("tag", "path", "GGGGEEEE")],
                    "responses": {"200": {"description": "the value"}},
                }
            },
        },
    }
