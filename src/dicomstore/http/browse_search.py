"""The browse page's search: studies by patient name or ID, accession number, date.

``GET /browse/search?name=&id=&accession=&from=&to=`` lists the matching
studies with their patients, through the same index search as QIDO-RS
(PS3.4 C.2.2.2 matching): the name is matched case-insensitively, as a
prefix unless it holds its own ``*`` or ``?`` wildcards; the Patient ID and
accession number exactly unless they hold wildcards; the dates as a Study
Date range (either end may be left open). An empty form lists every study.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse

from dicomstore.http.browse import _h, _pager, _render, _search, studies_table
from dicomstore.http.common import HttpError

_DATE = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})")
#: Longest value a search field takes (a PN has 64 characters per component group).
MAX_FIELD = 200


def _field(request: Request, name: str) -> str:
    value = request.query_params.get(name, "").strip()
    if len(value) > MAX_FIELD:
        raise HttpError(400, f"{name}: longer than {MAX_FIELD} characters")
    if "\\" in value:
        raise HttpError(400, f"{name}: a backslash is not allowed (no value lists)")
    return value


def _date(request: Request, name: str) -> str:
    value = _field(request, name)
    if not value:
        return ""
    match = _DATE.fullmatch(value)
    if match is None:
        raise HttpError(400, f"{name}: {value!r} is not a date (YYYY-MM-DD or YYYYMMDD)")
    return "".join(match.groups())


def filters_of(request: Request) -> dict[str | int, Any]:
    """The index filters the form asks for (400 with the reason for a bad field)."""
    filters: dict[str | int, Any] = {}
    name = _field(request, "name")
    if name:
        filters["PatientName"] = name if any(c in name for c in "*?") else name + "*"
    for field, keyword in (("id", "PatientID"), ("accession", "AccessionNumber")):
        value = _field(request, field)
        if value:
            filters[keyword] = value
    start, end = _date(request, "from"), _date(request, "to")
    if start and end and start > end:
        raise HttpError(400, f"from {start} is after to {end}")
    if start or end:
        filters["StudyDate"] = f"{start}-{end}" if start != end else start
    return filters


def form(request: Request | None = None) -> str:
    """The search form, filled with the request's values."""

    def value(name: str) -> str:
        return _h(request.query_params.get(name, "")) if request is not None else ""

    inputs = "".join(
        f'<label>{label} <input name="{name}" value="{value(name)}"'
        f' size="{size}" maxlength="{MAX_FIELD}"></label> '
        for label, name, size in (
            ("Patient name", "name", 20),
            ("Patient ID", "id", 14),
            ("Accession", "accession", 14),
            ("Study date from", "from", 10),
            ("to", "to", 10),
        )
    )
    return f'<form action="/browse/search" method="get">{inputs}<button>Search</button></form>'


def search(request: Request) -> HTMLResponse:
    """GET /browse/search : the studies matching the form."""
    filters = filters_of(request)
    rows, more = _search(request, "study", filters)
    found = "No study matches." if not rows else ""
    body = form(request) + (f"<p>{found}</p>" if found else "")
    body += studies_table(rows, with_patient=True) if rows else ""
    return _render("Search", [("/", "Archive")], body + _pager(request, more))
