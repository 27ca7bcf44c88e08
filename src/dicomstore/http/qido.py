"""QIDO-RS: the Search Transaction of the Studies Service (PS3.18 10.6).

Resources (Table 10.6.1-2): ``/studies``, ``/studies/{study}/series``,
``/series``, ``/studies/{study}/series/{series}/instances``,
``/studies/{study}/instances``, ``/instances``.

Query parameters (10.6.1.2, 8.3.4): ``{attributeID}={value}`` by keyword or
tag, matched as :mod:`dicomstore.archive.query` describes (single value,
``*``/``?`` wildcards, date and time ranges, UID lists separated by ``,``
or ``\\``); ``limit``, ``offset``; ``includefield`` (repeatable,
comma-separated, or ``all``); ``fuzzymatching``, ``emptyvaluematching`` and
``multiplevaluematching`` ``=true`` are answered with the Warning 8.3.4.2, .5 and .6
give for a server without them (Person Names always match insensitive to ASCII
case); ``charset`` is taken and changes nothing (the answer is UTF-8).

Results (10.6.3.3) are built from the index, with the attributes of Tables
10.6.3-3/4/5 the index keeps, Retrieve URL and Instance Availability; a result's
study's and series' counts and lists read from their own rows (a row's are of its
own level), a patient's not given.
``includefield`` of attributes the index does not keep (and at the instance level
``all``: Rows, Columns, Bits Allocated, Number of Frames) are read from the
files' headers: an instance's own; a study's or series' from one of its instances,
those of that level or above (``query_identifier.read_from_header``, as C-FIND).
Attributes known to DICOM but not kept by the index are
ignored as match keys, with a ``Warning: 299`` header naming them (8.3.4.1);
unknown names are a 400. More results than ``limit`` (or than
:data:`MAX_RESULTS`) add a Warning that more can be requested.

Study-complete events (issue 16): results with study attributes carry, for a
study reported stable, dicomstore's private block (PS3.5 7.8.1), (0009,0010)
LO "DICOMSTORE" and (0009,1010) DT when it was reported stable (F.2.2: private
elements are written like any other). ``stable=true|false``, dicomstore's own
parameter (not PS3.18), keeps only the studies that are stable, or not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import keyword_for_tag, tag_for_keyword
from starlette.requests import Request
from starlette.responses import Response

from dicomstore.archive import attributes
from dicomstore.archive import query as q
from dicomstore.http.common import DICOM_JSON, HttpError, base_url, negotiate, reader, url_of
from dicomstore.http.dicomjson import element, row_to_json, stable_elements, tag_key
from dicomstore.http.instancejson import read_metadata
from dicomstore.http.limits import limits, refuse
from dicomstore.services import stable_search
from dicomstore.services.query_identifier import read_from_header

#: The most results one response carries (more: a Warning, use offset).
MAX_RESULTS = 10_000
#: PS3.18 8.3.4's matching options this server does not support: true is answered with
#: the Warning each section gives (8.3.4.2, 8.3.4.5, 8.3.4.6), the search done without.
_NOT_SUPPORTED = {
    "fuzzymatching": "The fuzzymatching parameter is not supported."
    " Only literal matching has been performed.",
    "emptyvaluematching": "The emptyvaluematching parameter is not supported."
    " Empty Value Matching has not been performed.",
    "multiplevaluematching": "The multiplevaluematching parameter is not supported."
    " Multiple Value Matching has not been performed.",
}
_RESERVED = {"limit", "offset", "includefield", "accept", "charset", *_NOT_SUPPORTED}
#: dicomstore's own query parameter (not PS3.18): stable studies, or the others.
STABLE = "stable"
_ALL_INSTANCE_TAGS = (0x00280010, 0x00280011, 0x00280100, 0x00280008)  # Table 10.6.3-5


@dataclass
class Search:
    """A parsed QIDO-RS request."""

    filters: dict[str, str] = field(default_factory=dict)
    limit: int | None = None
    offset: int = 0
    include_all: bool = False
    include_tags: list[int] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    contradicts_path: bool = False  # a UID parameter differs from the path's: no match
    stable: bool | None = None  # only studies reported stable (True) or not (False)
    #: the options of :data:`_NOT_SUPPORTED` asked for (a Warning says so)
    not_done: list[str] = field(default_factory=list)


def _tag_of(name: str) -> int | None:
    tag = attributes.parse_tag(name)
    if tag is not None:
        return tag
    found = tag_for_keyword(name)
    return int(found) if found is not None else None


#: Parameters that take one value.
_ONCE = frozenset({"limit", "offset", STABLE, *_NOT_SUPPORTED})


def _count(request: Request, name: str, value: str, limit: int) -> int:
    """A ``limit`` or ``offset`` value: an integer from 0 to ``limit`` (else 400)."""
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise HttpError(400, f"{name} must be a non-negative integer, not {value[:40]!r}")
    if number > limit:
        raise refuse(request, 400, f"{name} {value[:40]} is beyond the limit of {limit}")
    return number


def parse_search(request: Request, fixed: dict[str, str]) -> Search:
    """Filters and options of a search; ``fixed`` are the UIDs of the path."""
    bounds = limits(request)
    search = Search(filters=dict(fixed))
    seen: set[str] = set()
    for key, value in request.query_params.multi_items():
        if key in _ONCE:
            if key in seen:  # (as a matching key given twice: which would win?)
                raise HttpError(400, f"{key} is given more than once")
            seen.add(key)
        if key == "limit":
            search.limit = _count(request, key, value, bounds.max_offset)
        elif key == "offset":
            search.offset = _count(request, key, value, bounds.max_offset)
        elif key == "includefield":
            for name in filter(None, (v.strip() for v in value.split(","))):
                if name == "all":
                    search.include_all = True
                    continue
                tag = _tag_of(name)
                if tag is None:
                    raise HttpError(400, f"includefield names no DICOM attribute: {name[:80]!r}")
                search.include_tags.append(tag)
                if len(search.include_tags) > bounds.max_includefields:
                    raise refuse(
                        request,
                        400,
                        f"includefield names more than the limit of "
                        f"{bounds.max_includefields} attributes",
                    )
        elif key in (STABLE, *_NOT_SUPPORTED):
            if value not in ("true", "false"):
                raise HttpError(400, f"{key} must be true or false, not {value[:40]!r}")
            if key == STABLE:
                search.stable = value == "true"
            elif value == "true":
                search.not_done.append(key)
        elif key in _RESERVED:
            continue
        else:
            attr = attributes.attribute(key)
            if attr is not None and attr.sql is not None:
                if attr.keyword in search.filters and attr.keyword not in fixed:
                    raise HttpError(400, f"{key} is given more than once")
                if attr.keyword in fixed and value.strip() and value != fixed[attr.keyword]:
                    search.contradicts_path = True
                elif attr.keyword not in fixed:
                    search.filters[attr.keyword] = value
            elif attr is not None or _tag_of(key) is not None:
                search.unsupported.append(key)
            else:
                raise HttpError(400, f"unknown query parameter or attribute {key[:80]!r}")
    return search


def _includes(search: Search, level: str) -> tuple[list[str], list[int]]:
    """Index keywords and file-header tags ``includefield`` adds at ``level`` (of a
    patient's counts, none: :func:`_upper_counts` gives a study's and a series')."""
    keywords, from_files = [], []
    depth = q.LEVELS.index(level)
    for tag in search.include_tags:
        attr = attributes.attribute(tag)
        if attr is not None:
            above = q.LEVELS.index(attr.level) <= depth
            if above and (attributes.in_row_of(attr, level) or attr.level in _COMPUTED):
                keywords.append(attr.keyword)
        elif level == "instance" or read_from_header(keyword_for_tag(tag), level.upper()):
            from_files.append(tag)  # (above instances: from one instance's header, as C-FIND)
    if search.include_all and level == "instance":
        from_files.extend(_ALL_INSTANCE_TAGS)
    return keywords, from_files


def _warnings(search: Search, more: bool) -> dict[str, str]:
    notes = []
    if search.unsupported:
        names = ", ".join(search.unsupported)
        notes.append(f'299 dicomstore "The following Query Parameters are unsupported: {names}"')
    if more:
        notes.append('299 dicomstore "There are additional results that can be requested"')
    for key in search.not_done:  # (Person Names match insensitive to ASCII case alone)
        notes.append(f'299 dicomstore "{_NOT_SUPPORTED[key]}"')
    return {"Warning": ", ".join(notes)} if notes else {}


#: The counts and lists of a study and a series, made for their own rows (PS3.18 Tables
#: 10.6.3-3, -4): an All Series or All Instances result carries its study's (and
#: series') too (10.6.3.3.2-3), read by :func:`_upper_counts`.
_COMPUTED = {
    level: [
        a for a in attributes.ATTRIBUTES.values() if a.level == level and attributes.computed(a)
    ]
    for level in ("study", "series")
}


def _upper_counts(
    request: Request,
    rows: list[dict[str, Any]],
    level: str,
    wanted: list[str],
    levels: tuple[str, ...],
) -> dict[tuple[str, ...], dict[str, Any]]:
    """The rows of the studies and series (above ``level``) that ``rows`` are of, by
    :func:`_entity` (their patient's too: two patients may hold one Study Instance UID
    under ``--on-relational-mismatch accept``, review113 M2), when their counts or
    lists are wanted (``levels`` shows them, or ``includefield`` asks: ``wanted``): a
    result row's own are of its own level (review111 F1: a series' instance count was
    given as its study's). Those counts and lists alone are made (review113 L6)."""
    uppers = {u for u in levels if u in _COMPUTED and u != level}
    uppers |= {
        attributes.ATTRIBUTES[k].level
        for k in wanted
        if attributes.ATTRIBUTES[k].level in _COMPUTED
        and not attributes.in_row_of(attributes.ATTRIBUTES[k], level)
    }
    found: dict[tuple[str, ...], dict[str, Any]] = {}
    for upper in sorted(uppers):
        uids = sorted({str(row[f"{upper}_uid"]) for row in rows})
        name = "StudyInstanceUID" if upper == "study" else "SeriesInstanceUID"
        made = [a.key for a in _COMPUTED[upper]]
        if uids:
            filters = {name: "\\".join(uids)}
            for r in reader(request).search(upper, filters, computed=made):
                found[_entity(r, upper)] = r
    return found


def _entity(row: dict[str, Any], level: str) -> tuple[str, ...]:
    """Who a study or series of ``row`` is: its patient (ID, issuer), study and series."""
    named = (str(row["patient_id"]), str(row.get("issuer") or ""), str(row["study_uid"]))
    return (level, *named, *((str(row["series_uid"]),) if level == "series" else ()))


def _row_json(
    request: Request,
    row: dict[str, Any],
    level: str,
    levels: tuple[str, ...],
    extra: list[str],
    stable_at: str | None,
    uppers: dict[tuple[str, ...], dict[str, Any]],
) -> dict[str, Any]:
    base = base_url(request)
    if level == "study":
        url = url_of(base, row["study_uid"])
    elif level == "series":
        url = url_of(base, row["study_uid"], row["series_uid"])
    else:
        url = url_of(base, row["study_uid"], row["series_uid"], row["sop_instance_uid"])
    out = row_to_json(row, levels, url)
    made = len(out)  # (in tag order: sorted again only if more are added)
    wanted = [attributes.ATTRIBUTES[keyword] for keyword in extra]
    wanted += [a for above in levels if above != level for a in _COMPUTED.get(above, ())]
    for attr in dict.fromkeys(wanted):
        own = attributes.in_row_of(attr, level)
        of = row if own else uppers.get(_entity(row, attr.level))
        if of is not None and attr.key in of:
            out[tag_key(attr.tag)] = element(attr, of[attr.key])
    out.update(stable_elements(stable_at))
    return dict(sorted(out.items())) if len(out) > made else out


def run_search(request: Request, level: str, levels: tuple[str, ...], fixed: dict[str, str]):
    """Answer one QIDO-RS request at ``level`` with the attributes of ``levels``."""
    negotiate(request, [(DICOM_JSON, None), ("application/json", None)])
    search = parse_search(request, fixed)
    cap = MAX_RESULTS if search.limit is None else min(search.limit, MAX_RESULTS)
    archive = reader(request)
    keywords, from_files = _includes(search, level)
    try:
        rows = stable_search.search(
            archive,
            level,
            search.filters,
            stable=search.stable,
            limit=cap + 1,
            offset=search.offset,
            sample=bool(from_files) and level != "instance",
        )
        if search.contradicts_path:
            rows = []
    except q.QueryError as exc:
        raise HttpError(400, str(exc)) from None
    more = len(rows) > cap
    rows = rows[:cap]
    states: dict[str, str | None] = {}
    if "study" in levels:  # one statement for the page's studies
        states = stable_search.stable_states(archive, {row["study_uid"] for row in rows})
    uppers = _upper_counts(request, rows, level, keywords, levels)
    results = []
    for row in rows:
        out = _row_json(request, row, level, levels, keywords, states.get(row["study_uid"]), uppers)
        if from_files:
            out.update(_header_fields(request, row, from_files))
            out = dict(sorted(out.items()))
        results.append(out)
    body = json.dumps(results, ensure_ascii=False, separators=(",", ":"))
    return Response(body, media_type=DICOM_JSON, headers=_warnings(search, more))


def _header_fields(request: Request, row: dict[str, Any], tags: list[int]) -> dict[str, Any]:
    """Attributes read from a stored file's header: an instance's own; a study's or
    series' from one of its instances (``sample_path``, as C-FIND reads them), but
    for a value that would be bulk data (no instance URL to give it by)."""
    storage = reader(request).storage
    depth = limits(request).max_sequence_depth
    try:
        if "sample_path" not in row:
            url = url_of(
                base_url(request), row["study_uid"], row["series_uid"], row["sop_instance_uid"]
            )
            ts = row["transfer_syntax_uid"]
            return read_metadata(
                storage, row["path"], ts, lambda t: f"{url}/bulkdata/{t:08X}", tags, max_depth=depth
            )
        key = row["sample_path"]
        if not key:
            return {}
        # (its transfer syntax from its file meta, read in the same opening)
        read = read_metadata(storage, key, None, lambda t: "", tags, max_depth=depth)
        return {k: v for k, v in read.items() if "BulkDataURI" not in v}
    except (OSError, ValueError, RecursionError):
        return {}


def studies(request: Request) -> Response:
    """GET /studies (10.6.1.1: All Studies)."""
    return run_search(request, "study", ("study",), {})


def study_series(request: Request) -> Response:
    """GET /studies/{study}/series (Study's Series)."""
    fixed = {"StudyInstanceUID": request.path_params["study"]}
    return run_search(request, "series", ("series",), fixed)


def all_series(request: Request) -> Response:
    """GET /series (All Series: study attributes included, 10.6.3.3.2)."""
    return run_search(request, "series", ("study", "series"), {})


def series_instances(request: Request) -> Response:
    """GET /studies/{study}/series/{series}/instances (Study's Series' Instances)."""
    fixed = {
        "StudyInstanceUID": request.path_params["study"],
        "SeriesInstanceUID": request.path_params["series"],
    }
    return run_search(request, "instance", ("instance",), fixed)


def study_instances(request: Request) -> Response:
    """GET /studies/{study}/instances (series attributes included, 10.6.3.3.3)."""
    fixed = {"StudyInstanceUID": request.path_params["study"]}
    return run_search(request, "instance", ("series", "instance"), fixed)


def all_instances(request: Request) -> Response:
    """GET /instances (study and series attributes included, 10.6.3.3.3)."""
    return run_search(request, "instance", ("study", "series", "instance"), {})
