"""WADO-RS instances in the transfer syntax asked for (PS3.18 8.7.3, 8.7.8.2).

The Selected Transfer Syntax of an ``application/dicom`` part is the media range's
``transfer-syntax`` parameter, else the default of ``application/dicom``: Explicit VR
Little Endian (PS3.18 Table 8.7.3-2; as Orthanc and dcm4chee answer); ``*`` lets the
origin server choose: each instance as it is stored, byte for byte. An instance
stored in another syntax is transcoded to Explicit VR Little Endian as the Storage
SCU converts for a peer (``services.conversion``: re-encoded element by element,
compressed Pixel Data decoded a frame at a time) into a temporary file in the
archive's ``.tmp``, then sent as a PS3.10 file with its File Meta Information made
anew. Other syntaxes are not made (no compression): 406. At most
:data:`AT_ONCE` transcodings run at once (each holds decoded frames; CPU-bound), for at
most :data:`MAX_RESPONSES` answers, :data:`MAX_PER_ADDRESS` per client (beyond: 503),
each holding its place until it has ended (:class:`HeldResponse`).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from dicomstore import uids
from dicomstore.archive.checked import DamagedCopy
from dicomstore.archive.dicomfile import file_header
from dicomstore.archive.reader import ArchiveReader
from dicomstore.http import pixels
from dicomstore.http.answer import went
from dicomstore.http.common import HttpError
from dicomstore.http.places import Places, Slot
from dicomstore.inflation import NoRoom
from dicomstore.services import conversion, sources

log = logging.getLogger("dicomstore.http")
#: The one syntax instances are transcoded to (PS3.18 Table 8.7.3-2's default).
TARGET = uids.EXPLICIT_VR_LE
#: Transcodings at once in this process (the others wait their turn).
AT_ONCE = 2
_TURNS = threading.BoundedSemaphore(AT_ONCE)
#: Responses that transcode at once, running or waiting for a turn (each holds a worker
#: thread of the HTTP server meanwhile: ``places.py``), of those :data:`MAX_PER_ADDRESS`
#: to one client address (a host holding its answers unread holds no more); beyond,
#: 503 with ``Retry-After`` (``*`` is always served).
MAX_RESPONSES = 8
MAX_PER_ADDRESS = 2
TRANSCODING = Places(
    MAX_RESPONSES,
    MAX_PER_ADDRESS,
    "being transcoded",
    ", or for transfer-syntax=* (the files as stored)",
)


class HeldResponse(StreamingResponse):
    """A streamed answer that holds a :class:`Slot` until it has ended: sent whole,
    cut, or its client gone (review43 #1, #2: the body's own ``finally`` may never run,
    and a dropped body waits for the cycle collector)."""

    def __init__(
        self,
        content: Iterator[bytes],
        slot: Slot,
        ready: Transcoded | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(slot.held_while(content), **kwargs)
        self.slot, self.ready = slot, ready

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slot.release()
            if self.ready is not None:  # (its temporary file, even if never read)
                self.ready.close()


def selected_syntax(params: Mapping[str, str]) -> str:
    """The Selected Transfer Syntax a media range asks for (PS3.18 8.7.8.2): ``*`` or a
    UID (400 for a value that is neither)."""
    syntax = params.get("transfer-syntax", TARGET)
    if syntax != "*" and not uids.is_valid_uid(syntax):
        raise HttpError(400, f"transfer-syntax={syntax!r} is neither * nor a UID (PS3.5 9.1)")
    return syntax


#: Not used with web services (PS3.18 8.7.3): asking for one is 406 (interop97 I2).
#: An instance stored in one is still sent as stored for ``transfer-syntax=*`` (byte
#: for byte, streamed; transcoded, each would take a place of the transcoding limits
#: and a temporary file, and a viewer's parallel fetches got 503: review99 V1).
NOT_ON_THE_WEB = frozenset({uids.IMPLICIT_VR_LE, uids.EXPLICIT_VR_BE})


def unproducible(syntax: str, stored: set[str]) -> str | None:
    """Why instances stored in ``stored`` syntaxes cannot all be sent in ``syntax``
    (only :data:`TARGET` is made), or None."""
    if syntax in NOT_ON_THE_WEB:
        name = uids.uid_name(syntax)
        return f"{syntax} ({name}) is not used with web services (PS3.18 8.7.3)"
    if syntax in ("*", TARGET) or not stored - {syntax}:
        return None
    return (
        f"stored as {', '.join(sorted(stored - {syntax}))}; transcoded to"
        f" {TARGET} ({uids.uid_name(TARGET)}) only, not to {syntax}"
    )


def as_sent(row: Mapping[str, Any], syntax: str) -> str:
    """The transfer syntax ``row``'s instance is sent in for the selected ``syntax``."""
    stored = str(row["transfer_syntax_uid"])
    return stored if syntax in ("*", stored) else TARGET


class Transcoded:
    """An instance transcoded to :data:`TARGET`: its PS3.10 header (File Meta
    Information made anew), then its data set from a temporary file; :meth:`close`."""

    def __init__(self, header: bytes, data_set: BinaryIO, size: int) -> None:
        self.header, self.data_set, self.size = header, data_set, size

    @property
    def length(self) -> int:
        return len(self.header) + self.size

    def chunks(self, chunk: int) -> Iterator[bytes]:
        """The whole file, the temporary closed at the end."""
        with self.data_set:
            yield self.header
            while block := self.data_set.read(chunk):
                yield block

    def close(self) -> None:
        self.data_set.close()


def transcode(
    archive: ArchiveReader, row: Mapping[str, Any], inflated_limit: int, frame_limit: int
) -> Transcoded:
    """``row``'s instance in :data:`TARGET` (blocking: in a worker thread), a frame
    decoded at most ``frame_limit`` bytes, a deflated data set inflated at most
    ``inflated_limit``. Raises
    :class:`sources.NotDicom` when it cannot be (undecodable; over a limit:
    ``conversion.TooLargeToConvert``), ``OSError`` when its file is gone or damaged
    since it was stored (``checked.DamagedCopy``: read whole through its digest first)."""
    key = str(row["path"])
    path = archive.storage.local_path(key)
    with _TURNS:
        with archive.open_checked(row) as stored:  # (a damaged copy: DamagedCopy)
            stored.verify()  # type: ignore[attr-defined]  # (checked.CheckedStream)
        if path is not None:
            instance = sources.scan_file(path, check=False)
        else:
            instance = sources.scan_stream(functools.partial(archive.storage.open, key))
        scratch = archive.storage.scratch()
        where = str(scratch) if scratch is not None else None
        data_set, size = conversion.converted(
            instance, TARGET, inflated_limit, where, frame_limit=frame_limit
        )
    header = file_header(
        sop_class_uid=str(row["sop_class_uid"]),
        sop_instance_uid=str(row["sop_instance_uid"]),
        transfer_syntax_uid=TARGET,
        calling_ae=str(row.get("calling_ae") or ""),
        called_ae=str(row.get("called_ae") or ""),
    )
    return Transcoded(header, data_set, size)


def transcode_or_refuse(
    archive: ArchiveReader, row: Mapping[str, Any], inflated_limit: int, frame_limit: int
) -> Transcoded:
    """:func:`transcode`, its failures answered: 413 over a limit, 404 when its file is
    gone; 406 when no decoder is here for its syntax (the ``codecs`` extra named, or none
    exists: MPEG-2, H.264 ...); 500 when the stored data cannot be decoded (damaged, or a
    compressed form the decoders do not read: ``pixels.undecodable``; logged naming it)
    or its copy is damaged since it was stored (``checked.DamagedCopy``). Replaced since
    the search (its file gone with it), the version now is transcoded, as one sent as
    stored is (sweep106 F2: 404)."""
    try:
        return transcode(archive, row, inflated_limit, frame_limit)
    except conversion.TooLargeToConvert as exc:
        raise HttpError(413, f"not transcoded to {TARGET}: {exc}") from None
    except DamagedCopy as exc:  # (its WARNING said: ``checked.py``)
        raise HttpError(500, f"not transcoded to {TARGET}: {exc}") from None
    except NoRoom as exc:  # (the archive's --min-free: as a store would be refused)
        log.warning("WADO-RS: %s not transcoded: %s", row["sop_instance_uid"], exc.strerror)
        why = f"not transcoded to {TARGET}: {exc.strerror}"
        raise HttpError(503, why, {"Retry-After": "30"}) from None
    except (sources.Unreadable, OSError) as exc:  # (its file cannot be read: no damage known)
        if gone(archive, row, exc):  # (deleted or replaced since: then the version now)
            moved = archive.follow(row)
            if moved is None:
                raise HttpError(404, "deleted since the search") from None
            return transcode_or_refuse(archive, moved, inflated_limit, frame_limit)
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise _unread(row, why) from None
    except sources.NotDicom as exc:  # (stored as sound, made for sound data: damaged)
        refused = no_decoder(row)
        if refused is not None:  # (the extra, or no decoder at all: MPEG-2, H.264 ...)
            raise refused from None
        what, syntax = f"cannot be transcoded to {TARGET}", str(row["transfer_syntax_uid"])
        raise pixels.undecodable(str(row["path"]), what, exc, syntax, "data") from None


def no_decoder(row: Mapping[str, Any]) -> HttpError | None:
    """406 naming why the instance of ``row`` cannot be decoded here to be transcoded
    (the ``codecs`` extra, or no decoder exists: MPEG-2, H.264 ...), or None; a native
    syntax needs no decoder (review64 M1: without numpy it was said for them too)."""
    syntax = str(row["transfer_syntax_uid"])
    if syntax in pixels.NOT_DECODED:
        return None
    missing = pixels.decoder_missing(syntax)
    if missing is None:
        return None
    return HttpError(406, f"cannot be transcoded to {TARGET}: {missing}")


def gone(archive: ArchiveReader, row: Mapping[str, Any], exc: BaseException) -> bool:
    """Whether the file of ``row`` went since the search, ``exc`` its read's failure: an
    ``OSError``'s errno says so (``sources.Unreadable`` keeps the one it met as its
    context), else the storage is asked; a storage that cannot tell counts as not gone
    (review64 L6)."""
    if went(exc):
        return True
    try:
        return not archive.storage.exists(str(row["path"]))
    except Exception:  # noqa: BLE001 - any storage's failure: the read's 500 stands
        return False


def _unread(row: Mapping[str, Any], why: str) -> HttpError:
    """500 for an instance whose file cannot be read to transcode it, logged."""
    log.error("WADO-RS: %s not transcoded: %s", row["sop_instance_uid"], why)
    return HttpError(500, f"cannot be transcoded: {why}")
