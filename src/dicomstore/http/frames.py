"""WADO-RS frames and bulk data (PS3.18 10.4.1.1.3, 10.4.1.1.4; media types 8.7.3.3).

Each frame is one part of a ``multipart/related`` answer, as the client's
Accept asks (:func:`choose`):

- ``type="application/octet-stream"`` without a transfer syntax, or with
  1.2.840.10008.1.2.1 (the default, Table 8.7.3-4): uncompressed. Native
  frames are read by seeking; compressed ones are decoded one at a time
  (:mod:`dicomstore.http.pixels`; without the ``codecs`` extra: 406 naming it);
- ``transfer-syntax=*``, or the stored syntax, with ``application/octet-stream``
  or the syntax's own media type (``image/jpeg``, ``image/jls``, ``image/jp2``,
  ``image/dicom-rle``...; Table 8.7.3-5): the frame as stored, the fragments of
  one frame joined, the part's ``transfer-syntax`` parameter naming it;
- ``*/*``: uncompressed if it can be decoded here, else as stored.

Bulk data of the Pixel Data is all frames in the same way (decoded: one part,
as native Pixel Data would be; as stored: one part per frame). A deflated data
set (PS3.5 A.5) is served from its inflated copy (``stored.inflated``, within
the store's inflated limit: 413 beyond), its frames as Explicit VR Little
Endian's native frames.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

from pydicom.dataelem import RawDataElement
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomstore import uids
from dicomstore.archive.checked import DamagedCopy
from dicomstore.archive.stored import PixelValue, read_chunks, read_range
from dicomstore.http import pixels
from dicomstore.http.answer import AnswerBroken, went
from dicomstore.http.common import HttpError, accepted, negotiate, reader
from dicomstore.http.dicomjson import BULK_DATA_VRS
from dicomstore.http.header_text import vr_of
from dicomstore.http.limits import inflated_limit, limits
from dicomstore.http.multipart import closing, new_boundary, part_header
from dicomstore.http.wado import CHUNK, instance_row

log = logging.getLogger("dicomstore.http.frames")

OCTET = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class Choice:
    """How to send frames: decoded or as stored, and each part's media type."""

    decode: bool
    part_type: str
    syntax: str

    @property
    def content_type(self) -> str:
        return f"{self.part_type}; transfer-syntax={self.syntax}"


def choose(request: Request, frames: pixels.Frames) -> Choice:
    """The first acceptable way (Accept order) to send ``frames``; 406 naming why not."""
    stored = frames.stored_syntax
    media = pixels.media_type_of(stored)
    decodable = not frames.encapsulated or pixels.decoder_missing(frames.syntax) is None
    uncompressed = Choice(frames.encapsulated, OCTET, uids.EXPLICIT_VR_LE)
    reasons: list[str] = []
    for accept in accepted(request):
        if accept.media_type not in ("multipart/related", "multipart/*", "*/*"):
            continue
        kind = accept.params.get("type", OCTET).lower()
        kind = pixels.ALIASES.get(kind, kind)
        syntax = accept.params.get("transfer-syntax")
        if kind == "*/*" and syntax in (None, "*"):
            return uncompressed if decodable else Choice(False, media, stored)
        if kind in (OCTET, "*/*", "application/*") and syntax in (None, uids.EXPLICIT_VR_LE):
            if decodable:
                return uncompressed
            reasons.append(pixels.decoder_missing(frames.syntax) or "")
        elif kind in (OCTET, media, "*/*", media.partition("/")[0] + "/*") and syntax in (
            "*",
            stored,
            None,
        ):
            return Choice(False, OCTET if kind == OCTET else media, stored)
    why = "; ".join(dict.fromkeys(r for r in reasons if r)) or (
        f'stored as {stored}: ask for type="{media}" or transfer-syntax=* '
        f"(or {uids.EXPLICIT_VR_LE}, decoded)"
    )
    raise HttpError(406, f"frames cannot be sent as asked: {why}")


def frame_numbers(text: str) -> list[int]:
    """The frame list of the URL (1-based, comma separated, in any order, none twice:
    PS3.18 10.4.1.1.4; a list that repeats one frame would have a short URL send
    an instance's pixels many times over)."""
    values = [v.strip() for v in text.replace("%2C", ",").split(",")]  # ('1,,2': 400)
    digits = all(v.isascii() and v.isdigit() for v in values)  # (int() takes '١', '+1')
    numbers = [int(v) for v in values] if digits else []
    if not numbers or min(numbers) < 1:
        raise HttpError(400, f"frame list must be numbers from 1, separated by commas: {text!r}")
    seen: set[int] = set()
    for number in numbers:
        if number in seen:
            raise HttpError(400, f"frame list names frame {number} more than once: {text[:80]!r}")
        seen.add(number)
    return numbers


def open_frames(request: Request, row: dict[str, Any]) -> pixels.Frames:
    """The frames of the instance ``row`` (bounded by the app's limits; close them),
    as it is now (:func:`_present`)."""
    storage, bound = reader(request).storage, limits(request).max_frame_bytes
    return pixels.Frames.open(storage, _present(request, row), bound, inflated_limit(request))


def _first(found: pixels.Frames, choice: Choice, number: int) -> bytes | None:
    """Frame ``number`` made before answering when it is held whole anyway (decoded, or
    an encapsulated codestream): one that cannot be decoded or read from its fragments
    gets a 500 (``pixels.damaged``), not a broken stream; and it is sent as it is, not
    made a second time. Native frames as stored are streamed (None: ``Frames.open``
    found them within the file; one cut short since cuts the answer off)."""
    if choice.decode:
        return found.decoded_bytes(number)
    if found.encapsulated:
        return b"".join(found.stored(number))
    return None


def _frame_parts(
    frames: pixels.Frames,
    choice: Choice,
    numbers: Sequence[int],
    boundary: str,
    first: bytes | None = None,
) -> Iterator[bytes]:
    """The parts of the frames ``numbers``; ``first``: the first one, made already
    (:func:`_first`); a later one that cannot be made cuts the answer off."""
    with frames, _broken_off(frames.key):
        for n, number in enumerate(numbers):
            yield part_header(boundary, choice.content_type, first=n == 0)
            if n == 0 and first is not None:
                yield first
                first = None  # (its bytes are not held while the others are sent)
            elif choice.decode:
                yield frames.decoded_bytes(number)
            else:
                yield from frames.stored(number, CHUNK)
        yield closing(boundary)


@contextmanager
def _broken_off(key: str, data: str = "Pixel Data") -> Iterator[None]:
    """A frame (or bulk data) of ``key`` that cannot be read once the answer has begun
    (its status sent) cuts the answer off (:class:`AnswerBroken`), after a log line
    (the frame's own; a read that comes short, the file cut since: ``pixels.damaged``)."""
    try:
        yield
    except OSError as exc:
        if went(exc):  # (deleted or replaced meanwhile)
            said = f"the file went while it was sent (deleted or replaced): {exc.strerror}"
        else:  # (review64 L4: a file gone is no damaged data)
            said = pixels.damaged(key, f"the {data} cannot be read", exc, data).message
        log.warning("answer with %s of %s cut off: %s", data, key, said)
        raise AnswerBroken(said) from None
    except HttpError as exc:
        log.warning("answer with frames of %s cut off: %s", key, exc.message)
        raise AnswerBroken(exc.message) from None


def _multipart(body: Iterator[bytes], part_type: str, boundary: str) -> Response:
    media_type = f'multipart/related; type="{part_type}"; boundary={boundary}'
    return StreamingResponse(body, media_type=media_type)


def frames(request: Request) -> Response:
    """GET .../instances/{sop}/frames/{list} (10.4.1.1.4)."""
    row = instance_row(request)
    numbers = frame_numbers(request.path_params["frames"])
    found = open_frames(request, row)
    with _closed_on_error(found):
        found.check(numbers)
        choice = choose(request, found)
        first = _first(found, choice, numbers[0])
    boundary = new_boundary()
    parts = _frame_parts(found, choice, numbers, boundary, first)
    return _multipart(parts, choice.part_type, boundary)


@contextmanager
def _closed_on_error(found: pixels.Frames | ExitStack) -> Iterator[None]:
    """Close ``found`` if the block raises (else the answer's body closes it)."""
    try:
        yield
    except BaseException:
        found.close()
        raise


def bulkdata(request: Request) -> Response:
    """GET .../instances/{sop}/bulkdata/{tag}: a top-level binary value (10.4.1.1.3).
    Native Pixel Data is read by seeking: in the stored file, or for a deflated data
    set in its inflated copy (PS3.5 A.5), held until the answer is sent."""
    row = _present(request, instance_row(request))
    named = request.path_params["tag"]
    if len(named) != 8 or any(c not in "0123456789abcdefABCDEF" for c in named):
        raise HttpError(400, "bulk data is named by an 8-digit hex tag")  # (not '0x1', '١')
    tag = int(named, 16)
    storage = reader(request).storage
    held = ExitStack()
    syntax, limit = row["transfer_syntax_uid"], inflated_limit(request)
    with _closed_on_error(held):
        stored, source = pixels.enter_stored(held, storage, row["path"], syntax, limit)
        boundary = new_boundary()
        pixel = stored.pixels if stored.pixels is not None and stored.pixels.tag == tag else None
        if pixel is not None and pixel.length is None:
            held.close()
            return _encapsulated_bulkdata(request, row, boundary)
        data = "Pixel Data" if pixel is not None else f"bulk data ({tag:08X})"
        if pixel is not None:  # (native)
            chunks = _within_chunks(storage, row["path"], source, pixel, data)
        else:
            found = _value_chunks(stored, tag, storage, row["path"], source, data)
            if found is None:
                raise HttpError(404, f"no bulk data ({tag:08X}) in the instance")
            chunks = found
        _, accept = negotiate(request, [("multipart/related", OCTET)])
        wanted = accept.params.get("transfer-syntax", "*")
        if wanted not in ("*", uids.EXPLICIT_VR_LE, row["transfer_syntax_uid"]):
            raise HttpError(406, f"bulk data is sent as stored, uncompressed, not as {wanted}")

    def body() -> Iterator[bytes]:
        with held, _broken_off(row["path"], data):
            yield part_header(boundary, OCTET, first=True)
            yield from chunks
            yield closing(boundary)

    return _multipart(body(), OCTET, boundary)


def _present(request: Request, row: dict[str, Any]) -> dict[str, Any]:
    """``row``, or the instance's row now when its file went with a replace since the
    look-up (``ArchiveReader.follow``); 404 when it was deleted (a 500 before). Its copy
    read whole through its digest first, once while its file is unchanged
    (``ArchiveReader.check_once``): damaged since it was stored, 500 (logged ``archive
    damage``), not a frame, a rendered image or bulk data of it."""
    archive = reader(request)
    for _ in range(2):  # (a replace between the look and the read: the version now)
        if not archive.storage.exists(row["path"]):
            moved = archive.follow(row)
            if moved is None:
                raise HttpError(404, "deleted since it was looked up")
            row = moved
        try:
            archive.check_once(row)
        except DamagedCopy as exc:  # (its WARNING said: ``checked.py``)
            raise HttpError(500, f"not served: {exc}") from None
        except FileNotFoundError:
            continue
        return row
    raise HttpError(404, "deleted since it was looked up")


def _within_chunks(
    storage: Any, path: str, source: BinaryIO | None, value: PixelValue, data: str
) -> Iterator[bytes]:
    """The stored bytes of ``value`` (of length defined) in chunks, from the inflated copy
    ``source`` or the file; one running past their end is 500 (``pixels.within``) before
    answering (review63 M2, review64 L3)."""
    assert value.length is not None
    pixels.within(path, pixels.end_of(storage, path, source), value, data)
    if source is not None:
        return read_chunks(source, value.offset, value.length, CHUNK, path)
    return read_range(storage, path, value.offset, value.length, CHUNK)


def _value_chunks(
    stored: Any, tag: int, storage: Any, path: str, source: BinaryIO | None, data: str
) -> Iterator[bytes] | None:
    """The bytes of the top-level value ``tag`` as stored, if a BulkDataURI may stand
    for its VR: one left unread by the header's reader (over 1 KiB) streamed from the
    file, never held (review38mem D4: a 400 MiB OB was read whole, twice)."""
    if tag not in stored.dataset:
        return None
    raw = stored.dataset.get_item(tag, keep_deferred=True)
    vr = vr_of(raw) if isinstance(raw, RawDataElement) else str(raw.VR)
    if vr not in BULK_DATA_VRS:  # (Implicit VR: the dictionary's; review39 #11)
        return None
    if isinstance(raw, RawDataElement):
        if raw.value is None:  # (deferred: where it is in the file)
            value = PixelValue(tag, vr, raw.value_tell, raw.length)
            return _within_chunks(storage, path, source, value, data)
        return iter([bytes(raw.value)])
    return iter([raw.value]) if isinstance(raw.value, bytes) else None


def _encapsulated_bulkdata(request: Request, row: dict[str, Any], boundary: str) -> Response:
    """Compressed Pixel Data: every frame decoded in one part, or as stored one part each."""
    found = open_frames(request, row)
    with _closed_on_error(found):
        choice = choose(request, found)
        numbers = range(1, found.count + 1)
        first = _first(found, choice, 1)
        if not choice.decode:
            body = _frame_parts(found, choice, numbers, boundary, first)
            return _multipart(body, choice.part_type, boundary)

    def whole() -> Iterator[bytes]:
        nonlocal first
        with found, _broken_off(found.key):
            yield part_header(boundary, choice.content_type, first=True)
            yield first or b""
            first = None
            for number in numbers[1:]:
                yield found.decoded_bytes(number)
            yield closing(boundary)

    return _multipart(whole(), choice.part_type, boundary)
