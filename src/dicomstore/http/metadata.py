"""WADO-RS metadata (PS3.18 10.4.1.1.2) of many instances, through the metadata cache.

Each instance's DICOM JSON is made once by
:func:`~dicomstore.http.instancejson.read_metadata_text` and kept in the archive's
:class:`~dicomstore.archive.metacache.MetadataCache` as the JSON text itself, with
every BulkDataURI (F.2.6) written as a random token standing for the instance's URL
(which depends on the request's host or the configured base URL). A request then
costs a ``stat`` (``Storage.version``) and a row per instance: the token is replaced
by the URL (JSON-escaped) and the text sent as is, so a cached answer is byte for
byte the one the encoder gives. The key of an entry is the encoder version, the
sequence depth limit, the instance's digest (index) and its stored bytes' version
(``Storage.version``: a file's size, mtime, inode): a replaced or altered instance
is made anew. The body is streamed one instance at a time. The values made for the
cache are held until the answer is sent and written then, within a bound for the
process (:mod:`~dicomstore.http.heldvalues`); past it, and without a holder, a batch
of :data:`BATCH` is written as the answer goes.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Iterator
from typing import Any

from dicomstore.archive.metacache import MetadataCache
from dicomstore.archive.storage import Storage
from dicomstore.http.answer import unless_gone
from dicomstore.http.common import url_of
from dicomstore.http.dicomjson import log_cut
from dicomstore.http.heldvalues import Held, Indexed, store
from dicomstore.http.instancejson import read_metadata_text
from dicomstore.http.multipart import closing, part_header
from dicomstore.http.nativexml import DICOM_XML, native_xml_of_json
from dicomstore.inflation import DEFAULT_MAX_INFLATED, TooLarge

log = logging.getLogger("dicomstore.http.metadata")

#: Bump when the DICOM JSON that read_metadata_text makes changes: older entries are remade.
#: (2: a deflated data set's Pixel Data is given as a BulkDataURI too; 3: a number that
#: is NaN or infinite is null, review76 F2; 4: an IS or DS that is no plain number is
#: each value as the number it reads as, null when none, review116 M1.)
ENCODER = "4"
#: Instances looked up (and written to the cache) together.
BATCH = 100
#: Bytes of JSON sent as one chunk: each chunk of a sync body is a hop to a thread
#: (Starlette), which cost a 400-instance series 100 ms when each instance was one.
CHUNK = 256 * 1024


def _key(row: dict[str, Any], storage: Storage, max_depth: int) -> str:
    return f"{ENCODER}:{max_depth}:{row['digest']}:{storage.version(row['path'])}"


def encode(
    storage: Storage,
    key: str,
    transfer_syntax_uid: str,
    max_depth: int,
    inflated_limit: int = DEFAULT_MAX_INFLATED,
) -> bytes:
    """The cache value of an instance: ``token cut\\n`` then its JSON text, where
    ``token`` + tag stands for each BulkDataURI and ``cut`` is 1 if sequences were
    cut at ``max_depth``. Raises as read_metadata does."""
    token = "bulk" + secrets.token_hex(16)
    cut: list[int] = []
    text = read_metadata_text(
        storage,
        key,
        transfer_syntax_uid,
        lambda tag: f"{token}{tag:08X}",
        max_depth=max_depth,
        cut=cut,
        inflated_limit=inflated_limit,
    )
    head = f"{token} {1 if cut else 0}\n".encode("ascii")
    return head + text.encode()


def _with_urls(value: bytes, instance_url: str) -> tuple[bytes, bool]:
    """The JSON text of a cache value with its BulkDataURIs, and whether it was cut."""
    head, _, text = value.partition(b"\n")
    token, _, cut = head.partition(b" ")
    if token in text:
        prefix = json.dumps(f"{instance_url}/bulkdata/", ensure_ascii=False)[1:-1]
        text = text.replace(token, prefix.encode())
    return text, cut == b"1"


def _replaced(
    row: dict[str, Any],
    storage: Storage,
    max_depth: int,
    inflated_limit: int,
    follow: Callable[[dict[str, Any]], dict[str, Any] | None] | None,
) -> tuple[dict[str, Any], str, bytes] | None:
    """The row, key and value of the new version of an instance whose file went
    between the stat and the read, replaced meanwhile (review66 L5: left out, as
    deleted); None when it was deleted (or its new version cannot be read now)."""
    moved = follow(row) if follow is not None else None
    if moved is None:
        return None
    try:
        key = _key(moved, storage, max_depth)
        value = encode(storage, moved["path"], moved["transfer_syntax_uid"], max_depth,
                       inflated_limit)  # fmt: skip
    except (OSError, ValueError, RecursionError):
        return None
    return moved, key, value


def _keyed(
    row: dict[str, Any],
    storage: Storage,
    max_depth: int,
    follow: Callable[[dict[str, Any]], dict[str, Any] | None] | None,
) -> tuple[dict[str, Any], str] | Exception:
    """``row`` and its cache key; or the row now of an instance replaced since the
    query, whose file went (``follow``: ``ArchiveReader.follow``, review51 #1: the
    study's metadata left it out); or what failed."""
    try:
        return row, _key(row, storage, max_depth)
    except (OSError, ValueError) as exc:
        moved = follow(row) if follow is not None and isinstance(exc, OSError) else None
        if moved is None:
            return exc
    try:
        return moved, _key(moved, storage, max_depth)
    except (OSError, ValueError) as exc:
        return exc


def stream_metadata(
    rows: list[dict[str, Any]],
    storage: Storage,
    base: str,
    max_depth: int,
    cache: MetadataCache,
    inflated_limit: int = DEFAULT_MAX_INFLATED,
    *,
    strict: bool = False,
    indexed: Callable[[str, str], bool] | None = None,
    follow: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
    held: Held | None = None,
    still: Indexed | None = None,
    xml: bool = False,
    boundary: str | None = None,
) -> Iterator[bytes]:
    """The JSON array of the instances of ``rows`` (``xml``: their Native DICOM Model
    documents, :func:`xml_parts`), in chunks of about ``CHUNK``
    bytes (whole instances); the values made for the cache are added to ``held`` for
    the caller to write when the answer is sent (``Held.write``), else (no holder, or
    past its bound) written as they are made, each instance looked up again after
    (``still``: ``heldvalues.store``); an answer that ends early lets go of what it
    held, unwritten. Those deleted since the query are left out, one still
    ``indexed`` whose file cannot be read cuts the answer off (:class:`AnswerBroken`,
    after a WARNING: review35c), one that cannot be encoded is left out (as the
    encoder does), and a deflated one that inflates to over ``inflated_limit``
    bytes too, unless ``strict`` (then ``inflation.TooLarge`` is raised)."""

    def missing(row: dict[str, Any], exc: BaseException) -> bool:
        """Whether ``row``'s instance is deleted since the query (its file unread);
        still indexed: :class:`AnswerBroken`."""
        if indexed is None:
            return False
        unless_gone(indexed, row, exc)
        return True

    sent = False  # (the answer ended: what is held is for the caller to write)
    texts = _chunks(rows, storage, base, max_depth, cache, inflated_limit, strict, missing,
                    follow, held, still)  # fmt: skip
    try:
        yield from xml_parts(texts, boundary) if xml else json_array(texts)
        sent = True
    finally:
        if held is not None and not sent:
            held.drop()  # (a HEAD, a client gone, an error: unwritten)


def _chunks(
    rows: list[dict[str, Any]],
    storage: Storage,
    base: str,
    max_depth: int,
    cache: MetadataCache,
    inflated_limit: int,
    strict: bool,
    missing: Callable[[dict[str, Any], BaseException], bool],
    follow: Callable[[dict[str, Any]], dict[str, Any] | None] | None,
    held: Held | None,
    still: Indexed | None,
) -> Iterator[bytes]:
    """Each instance's DICOM JSON object (its text), in the order of ``rows``."""
    for start in range(0, len(rows), BATCH):
        batch: list[tuple[dict[str, Any], str]] = []
        for row in rows[start : start + BATCH]:
            keyed = _keyed(row, storage, max_depth, follow)
            if isinstance(keyed, Exception):
                missing(row, keyed)
                continue  # deleted since the query
            batch.append(keyed)
        cached = cache.get_many({row["sop_instance_uid"]: key for row, key in batch})
        made: list[tuple[str, str, bytes]] = []
        for row, key in batch:
            uid = row["sop_instance_uid"]
            value = cached.get(uid)
            if value is None:
                syntax = row["transfer_syntax_uid"]
                try:
                    value = encode(storage, row["path"], syntax, max_depth, inflated_limit)
                except (OSError, ValueError, RecursionError) as exc:
                    if strict and isinstance(exc, TooLarge):
                        raise
                    if not (isinstance(exc, OSError) and missing(row, exc)):
                        log.warning("metadata of %s left out: %s", uid, exc)
                        continue
                    again = _replaced(row, storage, max_depth, inflated_limit, follow)
                    if again is None:  # (as one whose file was gone at the stat: expected)
                        log.info("metadata of %s left out: deleted since the query", uid)
                        continue
                    row, key, value = again
                except Exception:  # noqa: BLE001 - an encoder's bug: the others still go
                    if strict:  # (one instance's, before the answer: a 500)
                        raise
                    log.exception("metadata of %s left out: it cannot be encoded", uid)
                    continue  # (review124 F1: the study's answer was cut off after its 200)
                made.append((uid, key, value))
            url = url_of(base, row["study_uid"], row["series_uid"], uid)
            text, was_cut = _with_urls(value, url)
            if was_cut and uid in cached:
                log_cut(row["path"], max_depth)  # as the encoder logs it when it cuts
            yield text
        if made and (held is None or not held.add(made)):
            store(cache, made, still)


def json_array(texts: Iterator[bytes]) -> Iterator[bytes]:
    """The JSON objects ``texts`` as one array (F.2.1), in chunks of about ``CHUNK``."""
    pieces = ([b",", text] if n else [text] for n, text in enumerate(texts))
    return _chunked(b"[", pieces, lambda: b"]")


def xml_parts(texts: Iterator[bytes], boundary: str | None) -> Iterator[bytes]:
    """The JSON objects ``texts`` as Native DICOM Model documents, one part each of a
    ``multipart/related; type="application/dicom+xml"`` body (PS3.18 8.7.3.2), in
    chunks of about ``CHUNK``; without a ``boundary``, the document alone (of one
    instance: the single part type, 10.4.4)."""
    parts = 0

    def pieces() -> Iterator[list[bytes]]:
        nonlocal parts
        for text in texts:
            document = native_xml_of_json(text)
            if boundary is None:
                yield [document]
            else:
                yield [part_header(boundary, DICOM_XML, first=not parts), document]
            parts += 1

    end = (lambda: b"") if boundary is None else (lambda: closing(boundary, empty=not parts))
    return _chunked(b"", pieces(), end)


def _chunked(
    head: bytes, pieces: Iterator[list[bytes]], tail: Callable[[], bytes]
) -> Iterator[bytes]:
    """``head``, ``pieces`` (each an instance's, kept whole in a chunk) and ``tail()``
    (made once the pieces ended), in chunks of about ``CHUNK`` bytes: each chunk of a
    sync body is a hop to a thread (see CHUNK)."""
    pending, size = [head], len(head)
    for piece in pieces:
        pending += piece
        size += sum(map(len, piece))
        if size >= CHUNK:
            yield b"".join(pending)
            pending, size = [], 0
    pending.append(tail())
    yield b"".join(pending)
