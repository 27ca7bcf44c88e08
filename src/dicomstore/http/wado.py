"""WADO-RS: the Retrieve Transaction of the Studies Service (PS3.18 10.4).

- Instances of a study, series or instance (10.4.1.1.1) as
  ``multipart/related; type="application/dicom"``, each part one stored
  PS3.10 file **exactly as stored**, streamed in 1 MiB chunks from disk; the
  part's ``transfer-syntax`` parameter names what it is. No transcoding: an
  Accept naming another transfer syntax gets 406. ``application/zip``
  (8.7.3.5) gives the same files in a zip stream.
- Metadata (10.4.1.1.2) as ``application/dicom+json``, Pixel Data and large
  binary values as BulkDataURI (``.../bulkdata/{tag}``, 10.4.1.1.3).
- Frames (10.4.1.1.4) of uncompressed little-endian instances as
  ``multipart/related; type="application/octet-stream"``, one part per frame,
  read by seeking to the frame.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomstore import uids
from dicomstore.archive.layout import resolve
from dicomstore.archive.stored import read_range, read_stored
from dicomstore.http.common import DICOM_JSON, HttpError, base_url, negotiate, reader
from dicomstore.http.limits import limits
from dicomstore.http.metadata import stream_metadata
from dicomstore.http.multipart import closing, new_boundary, part_header
from dicomstore.http.zipstream import zip_files

CHUNK = 1 << 20
_LITTLE_UNCOMPRESSED = (uids.EXPLICIT_VR_LE, uids.IMPLICIT_VR_LE)


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


def stream_parts(request: Request, rows: list[dict[str, Any]], boundary: str) -> Iterator[bytes]:
    """The multipart body: for each instance its part header, then its file in chunks."""
    root = reader(request).root
    first = True
    for row in rows:
        try:
            f = open(resolve(root, row["path"]), "rb")  # noqa: SIM115 - closed below
        except (OSError, ValueError):
            continue  # deleted since the query: skip it rather than break the stream
        with f:
            content_type = f"application/dicom; transfer-syntax={row['transfer_syntax_uid']}"
            yield part_header(boundary, content_type, first=first)
            first = False
            while block := f.read(CHUNK):
                yield block
    yield closing(boundary, empty=first)


def retrieve(request: Request) -> Response:
    """GET /studies/{study}[/series/{series}[/instances/{sop}]] (10.4.1.1.1)."""
    rows = _rows(request)
    offers = [("multipart/related", "application/dicom"), ("application/zip", None)]
    if "sop" in request.path_params:
        offers.append(("application/dicom", None))
    choice, accept = negotiate(request, offers)
    syntax = accept.params.get("transfer-syntax", "*")
    if syntax != "*":
        others = sorted({r["transfer_syntax_uid"] for r in rows} - {syntax})
        if others:
            raise HttpError(
                406, f"stored as {', '.join(others)}; not transcoded to transfer syntax {syntax}"
            )
    if choice == 1:
        name = rows[0]["sop_instance_uid" if "sop" in request.path_params else "study_uid"]
        headers = {"Content-Disposition": f'attachment; filename="{_safe(name)}.zip"'}
        files = [(r["path"], resolve(reader(request).root, r["path"])) for r in rows]
        return StreamingResponse(zip_files(files), media_type="application/zip", headers=headers)
    if choice == 2:
        return _single_file(request, rows[0])
    boundary = new_boundary()
    media_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return StreamingResponse(stream_parts(request, rows, boundary), media_type=media_type)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in ".-_" else "_" for c in name)[:80] or "dicom"


def _single_file(request: Request, row: dict[str, Any]) -> Response:
    path = resolve(reader(request).root, row["path"])
    name = _safe(row["sop_instance_uid"])
    size = row["file_size"]
    media = f"application/dicom; transfer-syntax={row['transfer_syntax_uid']}"
    headers = {
        "Content-Disposition": f'attachment; filename="{name}.dcm"',
        "Content-Length": str(size),
    }
    return StreamingResponse(read_range(path, 0, size, CHUNK), media_type=media, headers=headers)


def metadata(request: Request) -> Response:
    """GET .../metadata (10.4.1.1.2): DICOM JSON, one object per instance, streamed
    (through the metadata cache: :mod:`dicomstore.http.metadata`)."""
    rows = _rows(request)
    negotiate(request, [(DICOM_JSON, None), ("application/json", None)])
    body = stream_metadata(
        rows,
        reader(request).root,
        base_url(request),
        limits(request).max_sequence_depth,
        request.app.state.metadata_cache,
    )
    return StreamingResponse(body, media_type=DICOM_JSON)


def _frame_numbers(text: str) -> list[int]:
    try:
        numbers = [int(v) for v in text.replace("%2C", ",").split(",") if v.strip()]
    except ValueError:
        numbers = []
    if not numbers or min(numbers) < 1:
        raise HttpError(400, f"frame list must be numbers from 1, separated by commas: {text!r}")
    return numbers


def _octet_stream(request: Request, row: dict[str, Any]) -> None:
    _, accept = negotiate(request, [("multipart/related", "application/octet-stream")])
    wanted = accept.params.get("transfer-syntax", "*")
    if wanted not in ("*", uids.EXPLICIT_VR_LE, row["transfer_syntax_uid"]):
        raise HttpError(406, f"frames are sent uncompressed, not as {wanted}")


def frames(request: Request) -> Response:
    """GET .../instances/{sop}/frames/{list} (10.4.1.1.4): uncompressed frames."""
    row = _rows(request)[0]
    numbers = _frame_numbers(request.path_params["frames"])
    _octet_stream(request, row)
    if row["transfer_syntax_uid"] not in _LITTLE_UNCOMPRESSED:
        raise HttpError(
            406, f"frames of {row['transfer_syntax_uid']} are not served (only uncompressed LE)"
        )
    path = resolve(reader(request).root, row["path"])
    stored = read_stored(path, row["transfer_syntax_uid"])
    ds, pixels = stored.dataset, stored.pixels
    if pixels is None or pixels.tag != 0x7FE00010 or pixels.length is None:
        raise HttpError(404, "the instance has no native Pixel Data")
    try:
        bits = int(ds.BitsAllocated)
        size = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * bits // 8
        count = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        raise HttpError(404, "the instance's image pixel attributes are incomplete") from None
    if bits % 8 or size <= 0 or size * count > pixels.length:
        raise HttpError(406, f"frames of {bits}-bit or inconsistent Pixel Data are not served")
    missing = [n for n in numbers if n > count]
    if missing:
        raise HttpError(404, f"frame {missing[0]} does not exist (the instance has {count})")
    boundary = new_boundary()
    content_type = f"application/octet-stream; transfer-syntax={uids.EXPLICIT_VR_LE}"

    def body() -> Iterator[bytes]:
        for n, number in enumerate(numbers):
            yield part_header(boundary, content_type, first=n == 0)
            yield from read_range(path, pixels.offset + (number - 1) * size, size, CHUNK)
        yield closing(boundary)

    media_type = f'multipart/related; type="application/octet-stream"; boundary={boundary}'
    return StreamingResponse(body(), media_type=media_type)


def bulkdata(request: Request) -> Response:
    """GET .../instances/{sop}/bulkdata/{tag}: a top-level binary value (10.4.1.1.3)."""
    row = _rows(request)[0]
    _octet_stream(request, row)
    try:
        tag = int(request.path_params["tag"], 16)
    except ValueError:
        raise HttpError(400, "bulk data is named by an 8-digit hex tag") from None
    path = resolve(reader(request).root, row["path"])
    stored = read_stored(path, row["transfer_syntax_uid"])
    boundary = new_boundary()
    head = part_header(boundary, "application/octet-stream", first=True)
    if stored.pixels is not None and stored.pixels.tag == tag:
        if stored.pixels.length is None:
            raise HttpError(406, "encapsulated Pixel Data is not served as bulk data")
        chunks = read_range(path, stored.pixels.offset, stored.pixels.length, CHUNK)
    elif tag in stored.dataset and isinstance(stored.dataset[tag].value, bytes):
        chunks = iter([stored.dataset[tag].value])
    else:
        raise HttpError(404, f"no bulk data ({tag:08X}) in the instance")

    def body() -> Iterator[bytes]:
        yield head
        yield from chunks
        yield closing(boundary)

    media_type = f'multipart/related; type="application/octet-stream"; boundary={boundary}'
    return StreamingResponse(body(), media_type=media_type)
