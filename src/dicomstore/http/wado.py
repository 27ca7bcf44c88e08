"""WADO-RS: the Retrieve Transaction of the Studies Service (PS3.18 10.4).

- Instances of a study, series or instance (10.4.1.1.1) as
  ``multipart/related; type="application/dicom"``, each part one stored
  PS3.10 file in the Selected Transfer Syntax (8.7.8.2): with ``transfer-syntax=*``
  exactly as stored, streamed in 1 MiB chunks from disk; else (the default is
  Explicit VR Little Endian) transcoded when stored otherwise
  (:mod:`dicomstore.http.transcoding`; to another syntax: 406). The part's
  ``transfer-syntax`` parameter names what it is. ``application/zip`` (8.7.3.5)
  gives the files as stored in a zip stream.
- Metadata (10.4.1.1.2) as ``application/dicom+json``, or each instance a part of
  ``multipart/related; type="application/dicom+xml"`` (the Native DICOM Model);
  Pixel Data and large binary values as BulkDataURI (``.../bulkdata/{tag}``, 10.4.1.1.3).
- Frames and bulk data (10.4.1.1.3-4): :mod:`dicomstore.http.frames`;
  rendered and thumbnails (10.4.1.1.5-6): :mod:`dicomstore.http.render`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from typing import Any

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomstore.archive.reader import ArchiveReader
from dicomstore.http.answer import AnswerBroken, unless_gone
from dicomstore.http.auth import client_of
from dicomstore.http.common import (
    DICOM_JSON,
    HttpError,
    attachment,
    base_url,
    negotiate,
    reader,
)
from dicomstore.http.heldvalues import Held
from dicomstore.http.limits import inflated_limit, limits, refuse
from dicomstore.http.metadata import stream_metadata
from dicomstore.http.multipart import closing, new_boundary, part_header
from dicomstore.http.nativexml import DICOM_XML
from dicomstore.http.transcoding import (
    TARGET,
    TRANSCODING,
    HeldResponse,
    Transcoded,
    as_sent,
    gone,
    no_decoder,
    selected_syntax,
    transcode,
    transcode_or_refuse,
    unproducible,
)
from dicomstore.http.zipstream import instance_files, open_stored, zip_files
from dicomstore.services.sources import NotDicom, Unreadable, one_line

CHUNK = 1 << 20
log = logging.getLogger("dicomstore.http")


def _target(request: Request) -> tuple[dict[str, str], str]:
    """Filters naming the target resource, and how to name it in an error."""
    p = request.path_params
    filters = {"StudyInstanceUID": p["study"]}
    what = f"study {p['study']}"
    if "series" in p:
        filters["SeriesInstanceUID"] = p["series"]
        what = f"series {p['series']} of {what}"
    if "sop" in p:
        filters["SOPInstanceUID"] = p["sop"]
        what = f"instance {p['sop']} of {what}"
    return filters, what


def _rows(request: Request) -> list[dict[str, Any]]:
    filters, what = _target(request)
    rows = reader(request).search("instance", filters)
    if not rows:
        raise HttpError(404, f"{what} is not in the archive")
    return rows


def _readable(request: Request, rows: list[dict[str, Any]]) -> None:
    """Every file of ``rows`` opens before a status is sent (review77 F5: a study with
    one missing was a 200 cut off, a ZIP no client opens): one still indexed that
    cannot be read is a 500 naming it; one deleted since the search is left out of
    the body (404 when every one was), one replaced since is answered as it is now.
    A file that breaks after the status still cuts the answer off (review35b F10)."""
    gone = 0
    for row in rows:
        try:
            open_stored(reader(request), row).close()
        except AnswerBroken as exc:
            raise HttpError(500, f"{exc}: its file is missing or unreadable") from None
        except OSError:  # (replaced since: its answer follows it, review85 F3)
            gone += reader(request).follow(row) is None
    if gone == len(rows):  # (every one: not a 200 of nothing, review85 F5)
        raise HttpError(404, "deleted since the search")


def _follow(archive: ArchiveReader, row: dict[str, Any], todo: deque[dict[str, Any]]) -> None:
    """An instance whose file was gone: its row now next in ``todo`` if it was
    replaced since the search (``ArchiveReader.follow``: review51 #1, a study's
    answer without it looked whole)."""
    moved = archive.follow(row)
    if moved is not None:
        todo.appendleft(moved)


def _left_out(
    archive: ArchiveReader, row: dict[str, Any], todo: deque[dict[str, Any]], exc: BaseException
) -> None:
    """A file gone before it was transcoded, as :func:`open_stored` tells one gone before
    it was sent as stored: still indexed at its path, the answer is cut off (a damaged
    archive); deleted since the query, left out; replaced, its new version next."""
    unless_gone(archive.indexed, row, exc)
    _follow(archive, row, todo)


def target_rows(request: Request) -> list[dict[str, Any]]:
    """The index rows of the instances the URL names (study, series or instance); 404 if none."""
    return _rows(request)


def instance_row(request: Request) -> dict[str, Any]:
    """The index row of the instance the URL names; 404 if not stored."""
    return _rows(request)[0]


def stream_parts(
    request: Request,
    rows: list[dict[str, Any]],
    boundary: str,
    syntax: str = "*",
    ready: Transcoded | None = None,
) -> Iterator[bytes]:
    """The multipart body: for each instance its part header, then its file in chunks,
    as stored or transcoded to the selected ``syntax`` (``transcoding.py``; ``ready``:
    the first one's, made before answering). An instance that cannot be transcoded is
    left out, logged (the answer has begun: no status can say it)."""
    archive = reader(request)
    first = True
    todo = deque(rows)
    while todo:
        row = todo.popleft()
        sent_as = as_sent(row, syntax)
        if sent_as != row["transfer_syntax_uid"]:
            done, ready = ready, None
            if done is None:
                try:
                    bounds = inflated_limit(request), limits(request).max_frame_bytes
                    done = transcode(archive, row, *bounds)
                except (Unreadable, OSError) as exc:  # (its read's error: gone since, or not)
                    if gone(archive, row, exc):  # (review64 L1)
                        _left_out(archive, row, todo, exc)
                        continue
                    raise _cut(row, sent_as, exc) from None
                except NotDicom as exc:  # (an answer without it would look whole)
                    raise _cut(row, sent_as, exc) from None
            media = f"application/dicom; transfer-syntax={sent_as}"
            yield part_header(boundary, media, first=first)
            first = False
            yield from done.chunks(CHUNK)
            continue
        try:
            f = open_stored(archive, row)
        except OSError:  # (deleted since the query: left out rather than break the stream)
            _follow(archive, row, todo)
            continue
        with f:
            content_type = f"application/dicom; transfer-syntax={sent_as}"
            yield part_header(boundary, content_type, first=first)
            first = False
            while block := f.read(CHUNK):
                yield block
    yield closing(boundary, empty=first)


def _cut(row: dict[str, Any], syntax: str, exc: BaseException) -> AnswerBroken:
    """An instance of a study or series that cannot be transcoded: the answer is cut off
    (its client sees it incomplete, the audit record says so, as for a file that cannot
    be read), logged naming it (review43 #5: left out, the answer looked whole)."""
    log.warning(
        "WADO-RS: answer cut at %s: not transcoded to %s: %s (transfer-syntax=* gives it as"
        " stored)",
        row["sop_instance_uid"],
        syntax,
        one_line(exc),
    )
    return AnswerBroken(f"{row['sop_instance_uid']} cannot be transcoded to {syntax}")


def retrieve(request: Request) -> Response:
    """GET /studies/{study}[/series/{series}[/instances/{sop}]] (10.4.1.1.1)."""
    rows = _rows(request)
    offers: list[tuple[str, str | None]] = [("multipart/related", "application/dicom")]
    if "sop" in request.path_params:  # (before zip: application/* asks for it)
        offers.append(("application/dicom", None))
    offers.append(("application/zip", None))
    stored = {r["transfer_syntax_uid"] for r in rows}

    def producible(n: int, accept: Any) -> str | None:
        zipped = offers[n][0] == "application/zip"
        return None if zipped else unproducible(selected_syntax(accept.params), stored)

    choice, accept = negotiate(request, offers, producible)
    kind = offers[choice][0]
    _readable(request, rows)
    if kind == "application/zip":  # (the files as stored)
        name = rows[0]["sop_instance_uid" if "sop" in request.path_params else "study_uid"]
        headers = {"Content-Disposition": attachment(name, ".zip", "dicom")}
        files = instance_files(reader(request), rows)
        return StreamingResponse(zip_files(files), media_type="application/zip", headers=headers)
    syntax = selected_syntax(accept.params)
    transcoding = any(as_sent(r, syntax) != r["transfer_syntax_uid"] for r in rows)
    boundary = new_boundary()
    multipart = f'multipart/related; type="application/dicom"; boundary={boundary}'
    if transcoding and request.method == "HEAD":  # (its headers: nothing transcoded)
        refused = no_decoder(rows[0]) if len(rows) == 1 else None
        if refused is not None:  # (the status its GET gets: review64 L5)
            raise refused
        single = f"application/dicom; transfer-syntax={TARGET}"
        head = Response(media_type=single if kind == "application/dicom" else multipart)
        del head.headers["content-length"]  # (unknown until transcoded: not 0)
        return head
    if not transcoding:
        if kind == "application/dicom":
            media, headers, body = _single_file(request, rows[0], None)
            return StreamingResponse(body, media_type=media, headers=headers)
        return StreamingResponse(stream_parts(request, rows, boundary), media_type=multipart)
    try:
        slot = TRANSCODING.take(client_of(request.scope))
    except HttpError as busy:  # (503: too many answers transcode; review94 F2: logged)
        raise refuse(request, busy.status, busy.message, busy.headers) from None
    try:
        ready = None  # (one instance transcoded before answering: its failure has a status)
        if len(rows) == 1:
            bounds = inflated_limit(request), limits(request).max_frame_bytes
            ready = transcode_or_refuse(reader(request), rows[0], *bounds)
        if kind == "application/dicom":
            media, headers, body = _single_file(request, rows[0], ready)
        else:
            media, headers = multipart, {}
            body = stream_parts(request, rows, boundary, syntax, ready)
    except BaseException:
        slot.release()
        raise
    return HeldResponse(body, slot, ready, media_type=media, headers=headers)


def _single_file(
    request: Request, row: dict[str, Any], ready: Transcoded | None
) -> tuple[str, dict[str, str], Iterator[bytes]]:
    """(media type, headers, body) of one instance as ``application/dicom``."""
    syntax = TARGET if ready is not None else row["transfer_syntax_uid"]
    headers = {
        "Content-Disposition": attachment(row["sop_instance_uid"], ".dcm", "dicom"),
        "Content-Length": str(ready.length if ready is not None else row["file_size"]),
    }
    media = f"application/dicom; transfer-syntax={syntax}"
    if ready is not None:
        return media, headers, ready.chunks(CHUNK)
    return media, headers, _file_chunks(reader(request), row)


def _file_chunks(archive: ArchiveReader, row: dict[str, Any]) -> Iterator[bytes]:
    """The stored file of ``row`` in chunks, read through its digest (``open_stored``)."""
    with open_stored(archive, row) as f:
        while block := f.read(CHUNK):
            yield block


def metadata(request: Request) -> Response:
    """GET .../metadata (10.4.1.1.2): DICOM JSON, one object per instance, or one
    Native DICOM Model part per instance (``multipart/related;
    type="application/dicom+xml"``; of an instance, ``application/dicom+xml`` too),
    streamed (through the metadata cache: :mod:`dicomstore.http.metadata`). An instance's own
    metadata is made before answering, so that a deflated data set inflating to over
    the limit is answered 413 (of a series or study, it is left out and logged).
    What is made for the metadata cache is written once the answer is sent."""
    rows = _rows(request)
    alone = "sop" in request.path_params
    offers: list[tuple[str, str | None]] = [(DICOM_JSON, None), ("application/json", None)]
    offers.append(("multipart/related", DICOM_XML))  # (required, Table 10.4.4-1)
    if alone:  # (one item: its single part type too, 10.4.4)
        offers.append((DICOM_XML, None))
    kind = offers[negotiate(request, offers)[0]][0]
    _readable(request, rows)
    xml = kind in ("multipart/related", DICOM_XML)
    boundary = new_boundary() if kind == "multipart/related" else None
    cache, held = request.app.state.metadata_cache, Held()
    body = stream_metadata(
        rows,
        reader(request).storage,
        base_url(request),
        limits(request).max_sequence_depth,
        cache,
        inflated_limit(request),
        strict=alone,
        indexed=reader(request).indexed,
        follow=reader(request).follow,
        held=held,
        still=reader(request).instance_rows,
        xml=xml,
        boundary=boundary,
    )
    if alone:
        try:
            body = iter([b"".join(body)])
        except AnswerBroken as exc:  # (nothing sent yet: say it)
            raise HttpError(500, f"{exc}: its file is missing or unreadable") from None
    written = BackgroundTask(held.write, cache, reader(request).instance_rows)
    media = DICOM_XML if kind == DICOM_XML else DICOM_JSON
    if boundary is not None:
        media = f'multipart/related; type="{DICOM_XML}"; boundary={boundary}'
    return StreamingResponse(body, media_type=media, background=written)
