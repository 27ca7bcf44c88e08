"""STOW-RS: the Store Transaction of the Studies Service (PS3.18 10.5).

``POST /studies`` and ``POST /studies/{study}`` with
``multipart/related; type="application/dicom"``: each part a PS3.10 file.
The body is parsed as it arrives (:class:`~dicomstore.http.multipart.MultipartParser`);
of each part only the File Meta Information is buffered, to learn the SOP
Class, SOP Instance and Transfer Syntax UIDs, then the data set bytes after
it stream into the **same store service as C-STORE**
(``services/storage.py``): the same authorization (the caller is the AE
title ``stow_ae`` at the client's address, as the HTTP user when the policy
file guards HTTP (its ``store`` right, ``http/auth.py``), judged by
``--store-aet`` and the policy file: 0124 when it may not store), limits (``--max-instance-size``,
``--min-free``: A700), checks, durability (the commit runs in a worker
thread: it fsyncs), duplicate and relational policies, statuses, log line,
audit record and ``on_stored`` event. The archive writes its own File Meta
Information; the data set is stored byte for byte.

The response (Annex I) lists stored instances in Referenced SOP Sequence
(with Retrieve URL, and Warning Reason for a B000 kept duplicate) and the
others in Failed SOP Sequence with the C-STORE status as Failure Reason
(Table I.2-2: A7xx, A900, Cxxx, C122 transfer syntax, 0122 SOP class,
0110; and 0124 for a caller that may not store); the Error Comment of each
failure or warning goes in a ``Warning: 299`` header. Status (Table
10.5.3-1): 200 all stored, 202 some failed or warned, 409 none stored (503 with
``Retry-After`` when every one was A7xx and the archive has no room now: a full
disk, below ``--min-free``), 400 malformed body, 415 not ``application/dicom`` parts.
With ``/studies/{study}`` an instance of another study fails with A900.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from dicomstore import status
from dicomstore.archive.dicomfile import HeaderError, dataset_offset, read_header
from dicomstore.archive.fields import STUDY_INSTANCE_UID, raw_uid
from dicomstore.archive.layout import normalize_uid
from dicomstore.framing import FramingError, file_meta
from dicomstore.http.auth import identity_of
from dicomstore.http.common import DICOM_JSON, HttpError, base_url, negotiate, url_of
from dicomstore.http.limits import limits, refuse
from dicomstore.http.multipart import (
    MultipartError,
    MultipartLimitError,
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
    parse_media_type,
    repeated_parameters,
)
from dicomstore.http.nativexml import DICOM_XML, native_xml
from dicomstore.policy import READ
from dicomstore.services import store_log
from dicomstore.services.readiness import cannot_store
from dicomstore.services.repeated import Repeated
from dicomstore.services.storage import Caller, StoreService, Storing

log = logging.getLogger("dicomstore.http.stow")

#: File Meta Information larger than this is refused (it is a few hundred bytes).
MAX_META = 64 * 1024
#: Seconds a client is asked to wait when no part could be stored for want of space.
RETRY_AFTER = 60
#: The File Meta Information's UIDs a part is stored by (PS3.10 7.1).
_META_UIDS = (
    (0x0002, "(0002,0002) Media Storage SOP Class UID"),
    (0x0003, "(0002,0003) Media Storage SOP Instance UID"),
    (0x0010, "(0002,0010) Transfer Syntax UID"),
)


@dataclass
class PartResult:
    """The outcome of one part."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    status: int
    comment: str | None = None
    instance: dict[str, Any] | None = None

    @property
    def stored(self) -> bool:
        return not status.is_failure(self.status)


class _Part:
    """One part being received: meta buffered, then the data set into the store service."""

    def __init__(self, app_state: Any, caller: Caller, headers: dict[str, str]) -> None:
        self.state = app_state
        self.service: StoreService = app_state.store
        self.caller = caller
        self.buffer = bytearray()
        self.storing: Storing | None = None
        self.result: PartResult | None = None
        self.sop_class: str | None = None
        self.sop_instance: str | None = None
        #: the part's bytes, and where its data set began in them (after the File Meta)
        self.nbytes = 0
        self.dataset_start: int | None = None
        media_type, _ = parse_media_type(headers.get("content-type", "application/dicom"))
        if media_type != "application/dicom":
            self._fail(status.CANNOT_UNDERSTAND, f"part is {media_type}")

    def _fail(self, status: int, comment: str) -> None:
        """A part refused by STOW-RS itself (logged and audited by the store service,
        with the bytes of its data set received, as C-STORE's: review118 F2)."""
        start = self.dataset_start
        nbytes = 0 if start is None else self.nbytes - start
        if self.storing is not None:
            nbytes = self.storing.nbytes
        self.service.refused(
            self.caller, self.sop_class, self.sop_instance, status, comment, nbytes=nbytes
        )
        self.result = PartResult(self.sop_class, self.sop_instance, status, comment)
        self.buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self.nbytes += len(data)
        if self.result is not None:
            return
        if self.storing is not None:
            self.storing.write(data)
            return
        self.buffer += data
        try:
            found = file_meta(self.buffer, complete=False)
        except FramingError as exc:
            self._fail(status.CANNOT_UNDERSTAND, str(exc))
            return
        if found is None:
            if len(self.buffer) > MAX_META:
                self._fail(status.CANNOT_UNDERSTAND, "File Meta Information too large")
            return
        self._begin(*found)

    def _begin(self, end: int, meta: dict[int, bytes]) -> None:
        self.dataset_start = self.nbytes - len(self.buffer) + end
        uids = []
        for element, name in _META_UIDS:  # (from its bytes: review76 F6, pydicom's own
            raw = meta.get(element)  # words reached the client, 'MultiValue' object ...)
            if raw is None:
                self._fail(status.CANNOT_UNDERSTAND, f"File Meta Information lacks {name}")
                return
            if b"\\" in raw:
                self._fail(status.CANNOT_UNDERSTAND, f"{name} holds more than one value")
                return
            uids.append(normalize_uid(raw))
        sop_class, sop_instance, syntax = uids
        self.sop_class, self.sop_instance = sop_class, sop_instance
        refused = self.service.refuses(sop_class, syntax)  # (as C-STORE's negotiation)
        if refused is not None:
            self._fail(*refused)
            return
        self.storing = self.service.begin(
            self.caller,
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance,
            transfer_syntax_uid=syntax,
        )
        self.storing.write(bytes(self.buffer[end:]))
        self.buffer = bytearray()

    @property
    def too_large(self) -> bool:
        """The data set outgrew the store service's limit (``--max-instance-size``)."""
        storing = self.storing
        return storing is not None and bool(storing.limit) and storing.nbytes > storing.limit

    def abort(self) -> None:
        if self.storing is not None:
            self.storing.abort()

    async def finish(self, study: str | None) -> PartResult:
        if self.result is not None:
            return self.result
        if self.storing is None:
            self._fail(status.CANNOT_UNDERSTAND, "not a DICOM PS3.10 file")
            assert self.result is not None
            return self.result
        storing = self.storing
        if study is not None and storing.sink is not None and storing.result is None:
            other = await anyio.to_thread.run_sync(self._study_of, storing.sink)
            if other is not None and other != study:
                storing.abort()
                of = f"instance of study {other}" if other else "instance of no study"
                self._fail(status.DATASET_DOES_NOT_MATCH_SOP_CLASS, f"{of}, not of {study}")
                assert self.result is not None
                return self.result
        result = await self.service.finish(storing)
        return PartResult(
            self.sop_class,
            self.sop_instance,
            result.status,
            result.comment,
            result.row,
        )

    def _study_of(self, sink: Any) -> str | None:
        """The Study Instance UID written so far (``None``: unreadable, commit will say)."""
        temp = getattr(sink, "temp", None)
        if temp is None:  # (a handler that is no archive: its commit decides)
            return None
        try:
            with open(temp, "rb") as fp:
                offset = dataset_offset(fp)
                size = fp.seek(0, io.SEEK_END)
                ds = read_header(fp, offset, size, sink.transfer_syntax_uid)
        except (OSError, HeaderError):
            return None
        return raw_uid(ds, STUDY_INSTANCE_UID) or ""


async def store(request: Request) -> Response:
    """POST /studies[/{study}] (10.5.1)."""
    state = request.app.state
    if state.store is None:
        raise HttpError(405, "this server is read-only: STOW-RS is disabled", {"Allow": "GET"})
    media_type, params = parse_media_type(request.headers.get("content-type", ""))
    part_type = params.get("type", "application/dicom").lower()
    if media_type != "multipart/related" or part_type != "application/dicom":
        raise HttpError(415, 'send multipart/related; type="application/dicom"')
    if "boundary" not in params:
        raise HttpError(400, "the Content-Type has no boundary")
    repeated = repeated_parameters(request.headers.get("content-type", ""))
    if repeated:
        raise HttpError(400, f"the Content-Type gives {', '.join(repeated)} more than once")
    coding = request.headers.get("content-encoding", "identity").strip().lower()
    if coding not in ("", "identity"):  # RFC 9110 8.4, 15.5.16: not decoded here
        raise HttpError(415, f"content coding {coding[:40]!r} is not accepted: send it uncoded")
    # the Store Instances Response in a media type the client accepts (PS3.18 10.5.3:
    # DICOM JSON or XML; dcm4che's stowrs asks for XML): else 406, before anything is
    # read or stored (interop97 I3: JSON was answered whatever was asked)
    offers = list(_ANSWER_TYPES)
    answer_type = _ANSWER_TYPES[offers[negotiate(request, offers)[0]]]
    bounds = limits(request)
    _check_length(request, bounds.max_body_bytes)
    try:
        parser = MultipartParser(
            params["boundary"],
            max_parts=bounds.max_parts,
            max_header_bytes=bounds.max_part_header_bytes,
        )
    except MultipartError as exc:
        raise refuse(request, 400, str(exc)) from None
    study = request.path_params.get("study")
    study = normalize_uid(study) if study is not None else None
    identity = identity_of(request.scope)
    if identity is not None:  # the HTTP user's rights (http/auth.py)
        caller = identity.caller(
            state.store, "STOW-RS", state.stow_ae, state.ae_title, client_address(request)
        )
    else:
        caller = await anyio.to_thread.run_sync(
            state.store.admit, "STOW-RS", state.stow_ae, state.ae_title, client_address(request)
        )
    caller = dataclasses.replace(caller, repeated=Repeated(store_log.log, "request"))
    try:
        return await _parts(request, state, caller, parser, bounds, study, answer_type)
    finally:  # (the parts' failures past the first few: one line, review87 F4)
        caller.repeated.summary(f"STOW-RS from {caller.who}")


async def _parts(
    request: Request,
    state: Any,
    caller: Caller,
    parser: MultipartParser,
    bounds: Any,
    study: str | None,
    answer_type: str,
) -> Response:
    """The parts of a STOW-RS body stored, each as it comes; the answer."""
    results: list[PartResult] = []
    part: _Part | None = None
    received = 0
    try:
        async for chunk in request.stream():
            over = received + len(chunk) > bounds.max_body_bytes
            if over:  # the bytes within the cap are handled as usual, then the answer
                chunk = chunk[: max(0, bounds.max_body_bytes - received)]
            received += len(chunk)
            for event in parser.feed(chunk):
                if isinstance(event, PartStart):
                    part = _Part(state, caller, event.headers)
                elif isinstance(event, PartData) and part is not None:
                    part.feed(event.data)
                    if part.too_large:  # A700 (logged, audited), the rest left unread
                        results.append(await part.finish(study))
                        part = None
                        log.warning("STOW-RS: answered before the end of the body (A700)")
                        return await _response(request, results, answer_type, unread=True)
                elif isinstance(event, PartEnd) and part is not None:
                    results.append(await part.finish(study))
                    part = None
            parser.check()
            if over:
                limit = bounds.max_body_bytes
                raise _Over(f"the request body is larger than the limit of {limit} bytes")
        parser.close()
    except (_Over, MultipartLimitError) as exc:
        if part is not None:
            part.abort()
        raise refuse(request, 413, _limit_reason(str(exc), results)) from None
    except (MultipartError, ClientDisconnect) as exc:
        if part is not None:
            part.abort()
        if isinstance(exc, ClientDisconnect):
            log.info("STOW-RS client went away after %d parts", len(results))
            return Response(status_code=400)
        if not any(r.stored for r in results):
            raise refuse(request, 400, str(exc)) from None
        comment = f"malformed body: {exc}"
        state.store.refused(caller, None, None, status.CANNOT_UNDERSTAND, comment)
        results.append(PartResult(None, None, status.CANNOT_UNDERSTAND, comment))
    if not results:
        raise HttpError(400, "the request holds no instances")
    return await _response(request, results, answer_type)


class _Over(Exception):
    """The body went beyond a limit (its reason)."""


def _check_length(request: Request, limit: int) -> None:
    """A declared Content-Length beyond ``limit``: 413 before a byte is read."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise refuse(
            request,
            413,
            f"the request body ({declared} bytes) is larger than the limit of {limit} bytes; "
            "nothing was stored",
        )


def _limit_reason(reason: str, results: list[PartResult]) -> str:
    """The 413 reason: the limit, what was not stored, what had been before it."""
    stored = [r.sop_instance_uid or "?" for r in results if r.stored]
    if not stored:
        return f"{reason}; nothing was stored"
    shown = ", ".join(stored[:10]) + (", ..." if len(stored) > 10 else "")
    return f"{reason}; not stored; stored before it: {shown}"


def _item(r: PartResult, base: str | None) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if r.sop_class_uid:
        item["00081150"] = {"vr": "UI", "Value": [r.sop_class_uid]}
    if r.sop_instance_uid:
        item["00081155"] = {"vr": "UI", "Value": [r.sop_instance_uid]}
    if r.stored:
        row = r.instance or {}
        if base is not None and row.get("study_uid") and row.get("series_uid"):
            url = url_of(base, row["study_uid"], row["series_uid"], row["sop_instance_uid"])
            item["00081190"] = {"vr": "UR", "Value": [url]}
        else:
            item["00081190"] = {"vr": "UR"}
        if r.status:
            item["00081196"] = {"vr": "US", "Value": [r.status]}
    else:
        item["00081197"] = {"vr": "US", "Value": [r.status]}
    return item


def client_address(request: Request) -> str:
    """The HTTP client's IP address (what the policy file's ``hosts`` match)."""
    client = request.client
    return client.host if client is not None else ""


async def _no_room(request: Request) -> bool:
    """Whether the archive cannot store now (a full disk, below ``--min-free``: what
    ``/readyz`` says, ``readiness.cannot_store``, blocking: in a thread): a transient
    A7xx, not a data set over ``--max-instance-size``."""
    return bool(await anyio.to_thread.run_sync(cannot_store, request.app.state.store))


#: The media ranges offered for the Store Instances Response (the default first), each
#: with the media type answered.
_ANSWER_TYPES = {
    (DICOM_JSON, None): DICOM_JSON,
    ("application/json", None): "application/json",
    (DICOM_XML, None): DICOM_XML,
    # (what older clients ask: XML; review99 V7, each was 406 where JSON had answered)
    ("application/xml", None): "application/xml",
    ("text/xml", None): "text/xml",
    ("multipart/related", DICOM_XML): DICOM_XML,  # (Supplement 163's answer, unsplit)
}


async def _response(
    request: Request, results: list[PartResult], answer_type: str, *, unread: bool = False
) -> Response:
    """The Store Instances Response Module (Annex I) in ``answer_type`` and its status
    (Table 10.5.3-1); ``unread``: answered at a data set over the limit, the rest of the
    body unread."""
    identity = identity_of(request.scope)
    # a caller who may not read gets no Retrieve URL: of an instance kept from
    # before (a duplicate), it would tell where that is filed (review38web #7)
    base = base_url(request) if identity is None or READ in identity.rights else None
    stored = [r for r in results if r.stored]
    failed = [r for r in results if not r.stored]
    body: dict[str, Any] = {}
    studies = {(r.instance or {}).get("study_uid") for r in stored}
    study = studies.pop() if len(studies) == 1 else None
    if study and base is not None:
        body["00081190"] = {"vr": "UR", "Value": [url_of(base, study)]}
    else:
        body["00081190"] = {"vr": "UR"}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [_item(r, base) for r in failed]}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [_item(r, base) for r in stored]}
    notes = []
    for r in failed + [r for r in stored if r.status]:
        text = f"{r.sop_instance_uid or 'part'}: {r.status:04X} {r.comment or ''}".strip()
        text = "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in text)
        notes.append(f'299 dicomstore "{text[:200]}"')
    notes = notes[:20]
    if unread:
        notes.append('299 dicomstore "the parts after the last one listed were not read"')
    headers = {"Warning": ", ".join(notes)} if notes else None
    out_of_room = failed and all(r.status >> 8 == 0xA7 for r in failed)
    if not stored and out_of_room and await _no_room(request):
        status = 503  # (out of space, every part: transient, review87 F2; too large stays 409)
        headers = {**(headers or {}), "Retry-After": str(RETRY_AFTER)}
    elif not stored:
        status = 409
    elif failed or any(r.status for r in stored):
        status = 202
    else:
        status = 200
    text = json.dumps(body) if answer_type.endswith("json") else native_xml(body)
    return Response(text, status_code=status, media_type=answer_type, headers=headers)
