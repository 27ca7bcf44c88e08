"""The browse pages: patients → studies → series → instances, server-rendered HTML.

Every value from the archive is escaped (``html.escape``, attributes quoted)
and every link is built with ``urlencode``/``quote``: patient names, IDs and
descriptions are attacker-controlled text. Downloads are DICOMweb URLs:
a study or series as a zip stream (``?accept=application/zip``), an instance
as its PS3.10 file (``?accept=application/dicom``), metadata as DICOM JSON;
all of a patient's studies as a zip at ``/browse/patient.zip?id=&issuer=``.
A patient is its Patient ID *and* Issuer of Patient ID, matched exactly; a
patient without Patient ID is a patient of its one study, and its links go to
that study: no link or download selects "everything" from an empty value.
No scripts, no build step.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, StreamingResponse

from dicomstore import __version__, uids
from dicomstore.archive.query import Exact
from dicomstore.http.common import HttpError, attachment, one_uid, reader
from dicomstore.http.header_text import SHOWN_VALUE, header_text
from dicomstore.http.limits import inflated_limit, limits, refuse
from dicomstore.http.zipstream import instance_files, zip_files
from dicomstore.inflation import TooLarge
from dicomstore.sizes import human_size

log = logging.getLogger("dicomstore.http.browse")

PAGE = 200
_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin-top:.5em}
th,td{padding:.25em .7em;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.n{text-align:right}nav{margin-bottom:1em}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:90%}
img.thumb{max-width:64px;max-height:64px}img.preview{max-width:512px;display:block;margin:.5em 0}
"""


def _h(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def _counted(n: int, one: str, many: str) -> str:
    """``1 study``, ``2 studies`` (review56: "1 patients")."""
    return f"{_h(n)} {one if n == 1 else many}"


def _date(value: str | None) -> str:
    v = value or ""
    return f"{v[:4]}-{v[4:6]}-{v[6:8]}" if len(v) == 8 and v.isdigit() else v


def _time(value: str | None) -> str:
    v = value or ""
    return f"{v[:2]}:{v[2:4]}:{v[4:6]}" if len(v) >= 6 and v[:6].isdigit() else v


def _link(href: str, text: Any) -> str:
    return f'<a href="{_h(href)}">{_h(text)}</a>'


def _image(src: str, alt: str, css: str) -> str:
    """An image the server renders (``/thumbnail``, ``/rendered``), loaded lazily;
    a non-image instance leaves it empty (alt text only)."""
    return f'<img src="{_h(src)}" alt="{_h(alt)}" class="{css}" loading="lazy">'


def _page_url(path: str, /, **params: Any) -> str:
    # (positional: a query parameter named "path" is one of ``params``: review38web #6)
    return f"{path}?{urlencode(params)}"


def _dicomweb(study: str, series: str | None = None, sop: str | None = None) -> str:
    url = f"/studies/{quote(study, safe='')}"
    if series is not None:
        url += f"/series/{quote(series, safe='')}"
    if sop is not None:
        url += f"/instances/{quote(sop, safe='')}"
    return url


def _render(title: str, crumbs: Sequence[tuple[str, str]], body: str) -> HTMLResponse:
    nav = " › ".join(_link(href, text) for href, text in crumbs)
    html = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_h(title)} – dicomstore</title><style>{_STYLE}</style></head><body>"
        f"<nav>{nav}</nav><h1>{_h(title)}</h1>{body}"
        f"<footer><p><small>dicomstore {_h(__version__)} · "
        f'<a href="/openapi.json">DICOMweb API</a></small></p></footer></body></html>'
    )
    return HTMLResponse(html)


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: set[int]) -> str:
    head = "".join(f"<th>{_h(h)}</th>" for h in headers)
    lines = []
    for row in rows:
        cells = "".join(
            f'<td class="n">{cell}</td>' if n in numeric else f"<td>{cell}</td>"
            for n, cell in enumerate(row)
        )
        lines.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"


def _offset(request: Request) -> int:
    """The page's ``offset`` (0 when absent or not a number; 400 beyond the limit)."""
    try:
        offset = max(0, int(request.query_params.get("offset", "0")))
    except ValueError:
        return 0
    limit = limits(request).max_offset
    if offset > limit:
        raise refuse(request, 400, f"offset {offset} is beyond the limit of {limit}")
    return offset


def _pager(request: Request, more: bool) -> str:
    offset = _offset(request)
    links = []
    params = {k: v for k, v in request.query_params.items() if k != "offset"}
    if offset:
        links.append(
            _link(_page_url(request.url.path, **params, offset=max(0, offset - PAGE)), "‹ previous")
        )
    if more:
        links.append(_link(_page_url(request.url.path, **params, offset=offset + PAGE), "next ›"))
    return f"<p>{' · '.join(links)}</p>" if links else ""


def _search(request: Request, level: str, filters: dict[str | int, Any]) -> tuple[list[dict], bool]:
    rows = reader(request).search(level, filters, limit=PAGE + 1, offset=_offset(request))
    return rows[:PAGE], len(rows) > PAGE


def home(request: Request) -> HTMLResponse:
    """GET / : the patients (a WADO-URI request, PS3.18 9, is a 400: not served here)."""
    if "requestType" in request.query_params:  # (it got the patients page, 200)
        raise HttpError(400, "WADO-URI (requestType=WADO) is not served: use WADO-RS, /studies/...")
    rows, more = _search(request, "patient", {})
    table = _table(
        [
            "Patient",
            "Patient ID",
            "Birth date",
            "Sex",
            "Studies",
            "Series",
            "Instances",
            "Size",
            "",
        ],
        (
            [
                _link(_patient_url(r), r["patient_name"] or "(no name)"),
                _h(r["patient_id"]),
                _h(_date(r["birth_date"])),
                _h(r["sex"]),
                _h(r["n_studies"]),
                _h(r["n_series"]),
                _h(r["n_instances"]),
                _h(human_size(r["size"])),
                _link(_patient_zip_url(r), "download zip"),
            ]
            for r in rows
        ),
        {4, 5, 6, 7},
    )
    total = reader(request).totals()
    counts = [
        _counted(total[key], one, many)
        for key, one, many in (
            ("patients", "patient", "patients"),
            ("studies", "study", "studies"),
            ("instances", "instance", "instances"),
        )
    ]
    summary = f"<p>{', '.join(counts)}, {_h(human_size(total['bytes']))}.</p>"
    from dicomstore.http.browse_search import form

    body = form() + summary + table + _pager(request, more)
    return _render("Patients", [("/", "Archive")], body)


def _patient_url(row: dict[str, Any]) -> str:
    """The page of a row's patient: by Patient ID and Issuer, or its one study."""
    if not row["patient_id"]:
        return _page_url("/browse/study", uid=row.get("scope") or row["study_uid"])
    return _page_url("/browse/patient", id=row["patient_id"], issuer=row["issuer"] or "")


def _patient_zip_url(row: dict[str, Any]) -> str:
    if not row["patient_id"]:
        return _dicomweb(row["scope"]) + "?accept=application/zip"
    return _page_url("/browse/patient.zip", id=row["patient_id"], issuer=row["issuer"] or "")


def _patient_filters(request: Request) -> dict[str | int, Any]:
    """The exact identity of the patient a page names (400 without a Patient ID)."""
    patient_id = request.query_params.get("id", "")
    if not patient_id.strip():
        raise HttpError(400, "no patient ID given (a patient without one is found by its study)")
    return {
        "PatientID": Exact(patient_id),
        "IssuerOfPatientID": Exact(request.query_params.get("issuer", "")),
    }


def patient(request: Request) -> HTMLResponse:
    """GET /browse/patient?id=&issuer= : a patient's studies."""
    filters = _patient_filters(request)
    patient_id = filters["PatientID"]
    found = reader(request).search("patient", filters, limit=1)
    if not found:
        raise HttpError(404, f"patient {patient_id!r} is not in the archive")
    rows, more = _search(request, "study", filters)
    table = studies_table(rows)
    name = found[0]["patient_name"] or "(no name)"
    crumbs = [("/", "Archive"), (_patient_url(found[0]), name)]
    return _render(f"Studies of {name}", crumbs, table + _pager(request, more))


def studies_table(rows: Iterable[dict[str, Any]], *, with_patient: bool = False) -> str:
    """A table of study rows, each linking to its page (and, ``with_patient``, to
    its patient's)."""
    patient_headers = ["Patient", "Patient ID"] if with_patient else []
    headers = ["Date", "Time", "Description", "Accession", "Modalities", "Series"]
    numeric = {5, 6, 7} if not with_patient else {7, 8, 9}

    def cells(r: dict[str, Any]) -> list[str]:
        patient = (
            [_link(_patient_url(r), r["patient_name"] or "(no name)"), _h(r["patient_id"])]
            if with_patient
            else []
        )
        return patient + [
            _link(
                _page_url("/browse/study", uid=r["study_uid"]),
                _date(r["study_date"]) or "(no date)",
            ),
            _h(_time(r["study_time"])),
            _h(r["study_description"]),
            _h(r["accession_number"]),
            _h(", ".join(r["modalities"])),
            _h(r["n_series"]),
            _h(r["n_instances"]),
            _h(human_size(r["size"])),
            _link(_dicomweb(r["study_uid"]) + "?accept=application/zip", "download zip"),
        ]

    return _table(
        patient_headers + headers + ["Instances", "Size", ""], (cells(r) for r in rows), numeric
    )


def patient_zip(request: Request) -> StreamingResponse:
    """GET /browse/patient.zip?id=&issuer= : every study of a patient, as a zip stream."""
    filters = _patient_filters(request)
    patient_id = filters["PatientID"]
    rows = reader(request).search("instance", filters)
    if not rows:
        raise HttpError(404, f"patient {patient_id!r} is not in the archive")
    files = instance_files(reader(request), rows)
    headers = {"Content-Disposition": attachment(patient_id, ".zip", "patient", 60)}
    return StreamingResponse(zip_files(files), media_type="application/zip", headers=headers)


def _one(request: Request, level: str, keyword: str) -> dict[str, Any]:
    uid = request.query_params.get("uid", "")
    if not uid:  # (as the patient page without an ID: review118 F4)
        raise HttpError(400, f"no {level} UID given (?uid=)")
    rows = reader(request).search(level, {keyword: uid}, limit=1) if one_uid(uid) else []
    if not rows:
        raise HttpError(404, f"{level} {uid!r} is not in the archive")
    return rows[0]


def _crumbs(row: dict[str, Any], depth: int) -> list[tuple[str, str]]:
    crumbs = [
        ("/", "Archive"),
        (_patient_url(row), row["patient_name"] or "(no name)"),
    ]
    if depth >= 1:
        crumbs.append(
            (_page_url("/browse/study", uid=row["study_uid"]), f"Study {_date(row['study_date'])}")
        )
    if depth >= 2:
        crumbs.append(
            (
                _page_url("/browse/series", uid=row["series_uid"]),
                f"Series {row['series_number'] or ''}",
            )
        )
    return crumbs


def study(request: Request) -> HTMLResponse:
    """GET /browse/study?uid= : a study's series."""
    st = _one(request, "study", "StudyInstanceUID")
    rows, more = _search(request, "series", {"StudyInstanceUID": st["study_uid"]})
    table = _table(
        ["", "Number", "Modality", "Description", "Body part", "Instances", "Size", ""],
        (
            [
                _image(_dicomweb(r["study_uid"], r["series_uid"]) + "/thumbnail", "", "thumb"),
                _link(
                    _page_url("/browse/series", uid=r["series_uid"]),
                    r["series_number"] if r["series_number"] is not None else "(none)",
                ),
                _h(r["modality"]),
                _h(r["series_description"]),
                _h(r["body_part"]),
                _h(r["n_instances"]),
                _h(human_size(r["size"])),
                _link(
                    _dicomweb(r["study_uid"], r["series_uid"]) + "?accept=application/zip",
                    "download zip",
                ),
            ]
            for r in rows
        ),
        {5, 6},
    )
    info = (
        f"<p>Study Instance UID {_h(st['study_uid'])} · accession {_h(st['accession_number'])}"
        f" · {_h(st['n_instances'])} instances, {_h(human_size(st['size']))} · "
        f"{_link(_dicomweb(st['study_uid']) + '?accept=application/zip', 'download zip')} · "
        f"{_link(_dicomweb(st['study_uid']) + '/metadata', 'metadata (JSON)')}</p>"
    )
    title = f"Study {_date(st['study_date'])} {st['study_description'] or ''}".strip()
    return _render(title, _crumbs(st, 0), info + table + _pager(request, more))


def series(request: Request) -> HTMLResponse:
    """GET /browse/series?uid= : a series' instances."""
    se = _one(request, "series", "SeriesInstanceUID")
    rows, more = _search(request, "instance", {"SeriesInstanceUID": se["series_uid"]})
    table = _table(
        ["", "Number", "SOP Class", "Transfer syntax", "Size", "Received", "From", ""],
        (
            [
                _image(
                    _dicomweb(r["study_uid"], r["series_uid"], r["sop_instance_uid"])
                    + "/thumbnail",
                    "",
                    "thumb",
                ),
                _link(
                    _page_url("/browse/instance", uid=r["sop_instance_uid"]),
                    r["instance_number"]
                    if r["instance_number"] is not None
                    else r["sop_instance_uid"],
                ),
                _h(uids.uid_name(r["sop_class_uid"])),
                _h(uids.uid_name(r["transfer_syntax_uid"])),
                _h(human_size(r["file_size"])),
                _h((r["received_at"] or "")[:19].replace("T", " ")),
                _h(r["calling_ae"]),
                _link(
                    _dicomweb(r["study_uid"], r["series_uid"], r["sop_instance_uid"])
                    + "?accept=application/dicom%3B%20transfer-syntax%3D*",  # (as stored)
                    "download .dcm",
                ),
            ]
            for r in rows
        ),
        {4},
    )
    zip_url = _dicomweb(se["study_uid"], se["series_uid"]) + "?accept=application/zip"
    info = (
        f"<p>Series Instance UID {_h(se['series_uid'])} · {_h(se['modality'])} · "
        f"{_h(se['n_instances'])} instances, {_h(human_size(se['size']))} · "
        f"{_link(zip_url, 'download zip')}</p>"
    )
    title = f"Series {se['series_number'] or ''} {se['series_description'] or ''}".strip()
    return _render(title, _crumbs(se, 1), info + table + _pager(request, more))


def instance(request: Request) -> HTMLResponse:
    """GET /browse/instance?uid= : an instance's header."""
    row = _one(request, "instance", "SOPInstanceUID")
    bounds = limits(request)
    try:
        ds = reader(request).dataset(  # (a long value is not read: review38mem D5)
            row,
            stop_before_pixels=True,
            inflated_limit=inflated_limit(request),
            defer_size=SHOWN_VALUE,
        )
        parts = [getattr(ds, "file_meta", None), ds]
        header = "\n\n".join(
            header_text(
                part,
                max_depth=bounds.max_sequence_depth,
                max_elements=bounds.max_rendered_elements,
            )
            for part in parts
            if part is not None
        )
    except TooLarge as exc:  # a deflated data set (PS3.5 A.5) past the limit: not inflated
        log.warning("browse: header of %s not shown: %s", row["sop_instance_uid"], exc)
        header = f"(not shown: {exc})"
    except Exception as exc:  # noqa: BLE001 - any file pydicom cannot read: say so
        header = f"(cannot read the file: {type(exc).__name__}: {exc})"[:500]
    url = _dicomweb(row["study_uid"], row["series_uid"], row["sop_instance_uid"])
    info = (
        f"<p>SOP Instance UID {_h(row['sop_instance_uid'])} · "
        f"{_h(uids.uid_name(row['sop_class_uid']))}"
        f" · {_h(human_size(row['file_size']))} · received {_h(row['received_at'])} from "
        f"{_h(row['calling_ae'] or '(unknown)')} · "
        f"{_link(url + '?accept=application/dicom', 'download .dcm')} · "
        f"{_link(url + '/metadata', 'metadata (JSON)')}</p>"
    )
    title = (
        f"Instance {row['instance_number'] if row['instance_number'] is not None else ''}".strip()
    )
    preview = _image(url + "/rendered?viewport=512,512", "(no image to show)", "preview")
    return _render(title, _crumbs(row, 2), info + preview + f"<pre>{_h(header)}</pre>")
