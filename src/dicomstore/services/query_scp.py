"""C-FIND SCP: Patient Root and Study Root Query/Retrieve - FIND (PS3.4 C.4.1, PS3.7 9.1.2).

One :class:`QuerySCP` per association (the request, Identifier and C-CANCEL
handling it shares with the retrieve SCPs: ``qr_operations.py``). Once the
Identifier is complete the query (``query_identifier.py``) runs in a task
against the archive index, through the engine QIDO-RS uses
(:mod:`dicomstore.archive.query`, PS3.4 C.2.2.2), so that the association keeps
reading meanwhile: one pending response (FF00, or FF01 when a key could not be
matched) per match, streamed as rows come from the cursor, then 0000; a
C-CANCEL-RQ for it stops the matches and the final status is FE00 (PS3.4
C.4.1.3.1). A cursor open that long holds a read of the index (SQLite's
write-ahead log cannot be checkpointed past it, PostgreSQL keeps its snapshot):
once a query has read for :data:`HOLD_READ` seconds with matches left (a
client reading its answers slowly), the rest is read at once into a temporary
file and answered from there (review81 F2: the WAL grew by 270 MB under a
client at 2 KB/s). Refusals: 0124 (the policy does not grant ``find``), A900 and C000
(the Identifier, see ``query_identifier.py``), A700 (an Identifier over
``MAX_IDENTIFIER`` bytes, not kept: ``qr_operations.py``), 0210 (its Message ID is still in
progress), 0122 (a C-FIND on a context that is not a FIND model). Each C-FIND
ends with an audit record in the spirit of PS3.15 A.5.3.10 *Query*.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import pickle
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from dicomstore.aio.association import Transport
from dicomstore.archive import query as q
from dicomstore.archive.engine import DatabaseOrOSError, unavailable
from dicomstore.archive.reader import ArchiveReader
from dicomstore.archive.stored import opened_header
from dicomstore.dimse import CFindRQ, CFindRSP
from dicomstore.dimse import status as st
from dicomstore.inflation import DEFAULT_MAX_INFLATED
from dicomstore.services import qr_classes
from dicomstore.services.qr_operations import Operation, QROperations, keys_line
from dicomstore.services.query_identifier import (
    SPECIFIC_CHARACTER_SET,
    FindFailure,
    FindQuery,
    encode_elements,
    parse_identifier,
    response_elements,
)

log = logging.getLogger("dicomstore.server")

#: Rows fetched from the index per trip to the worker thread.
BATCH = 256
#: Seconds a query may keep its cursor open before the rest is read into a file.
HOLD_READ = 5.0
#: The longest value of a stored header a pending response returns (a longer one is
#: returned zero-length, as a key the SCP does not support: PS3.4 C.4.1.1.3.2)
MAX_RETURNED_VALUE = 64 * 1024

QUERY_EVENT = ("Query", "110112")  # PS3.15 A.5.3.10


@dataclass
class _Find(Operation):
    matches: int = 0


def _header(
    reader: ArchiveReader,
    row: dict[str, Any],
    tags: set[int],
    inflated_limit: int = DEFAULT_MAX_INFLATED,
) -> Dataset | None:
    """``tags`` read from the stored file of one instance of the matched entity
    (``sample_path``), without its pixel data or any element not asked for; None
    when none are asked for or the file cannot be read (logged: the keys are then
    returned zero-length). The file is opened once, its transfer syntax taken from
    the file meta read there (``stored.opened_header``). A deflated data set (PS3.5
    A.5) is read from its inflated copy (up to ``inflated_limit`` bytes), not inflated
    in memory by pydicom (review53 #3)."""
    relpath = row.get("sample_path")
    if not tags or not relpath:
        return None
    wanted = [SPECIFIC_CHARACTER_SET, *tags]
    try:
        with opened_header(
            reader.storage,
            relpath,
            inflated_limit=inflated_limit,
            defer_size=MAX_RETURNED_VALUE,
            specific_tags=wanted,
        ) as (stored, _preamble, _meta):
            return _short_values(stored.dataset, relpath)
    except Exception as exc:  # noqa: BLE001 - pydicom raises anything on a bad file
        log.warning("C-FIND: return keys not read from %s: %s", relpath, exc)
        return None


def _spilled(rows: Iterator[dict[str, Any]], held: ExitStack) -> Iterator[dict[str, Any]]:
    """The rest of ``rows``, read now into a temporary file (closed with ``held``) and
    given back from it: the cursor is done, its read of the index over."""
    spill = held.enter_context(tempfile.TemporaryFile())  # noqa: SIM115 - (held closes it)
    count = 0
    for row in rows:
        pickle.dump(row, spill, pickle.HIGHEST_PROTOCOL)
        count += 1
    spill.seek(0)
    return (pickle.load(spill) for _ in range(count))


def _short_values(ds: Dataset, relpath: str) -> Dataset:
    """``ds`` without the values its reader left unread: a value too long for a query's
    answer is returned zero-length (review38mem D3: a 400 MiB UT key was read whole,
    1.3 GiB, and sent back)."""
    for tag in list(ds.keys()):
        raw = ds.get_item(tag, keep_deferred=True)
        if getattr(raw, "value", b"") is None:  # (deferred: pydicom did not read it)
            log.warning(
                "C-FIND: %s of %s (%d bytes) is returned zero-length: over %d bytes",
                raw.tag,
                relpath,
                getattr(raw, "length", 0),
                MAX_RETURNED_VALUE,
            )
            del ds[tag]
    return ds


class QuerySCP(QROperations):
    """The C-FIND SCP of one association (see the module notes)."""

    request_types = (CFindRQ,)
    service = "C-FIND"
    too_large = st.OUT_OF_RESOURCES  # PS3.4 C.4.1.1.4: Refused: Out of Resources

    def __init__(
        self,
        reader: ArchiveReader | None,
        transport: Transport,
        *,
        ae_title: str,
        may_find: bool = True,
        audit: Callable[[dict[str, Any]], None] | None = None,
        who: dict[str, Any] | None = None,
        inflated_limit: int = DEFAULT_MAX_INFLATED,
    ) -> None:
        classes = frozenset(qr_classes.FIND_SOP_CLASSES) if reader is not None else frozenset()
        super().__init__(transport, sop_classes=classes, allowed=may_find)
        self.reader = reader
        self.ae_title = ae_title
        self.audit = audit
        #: calling/called AE, address, user: for the log and the audit record
        self.who = who or {}
        #: what a deflated data set read for return keys may inflate to (PS3.5 A.5)
        self.inflated_limit = inflated_limit

    def new_operation(self, context_id: int, rq: Any) -> _Find:
        return _Find(context_id, rq)

    def refused(self, op: Operation) -> None:
        assert isinstance(op, _Find)
        self._final(op, op.refusal, None)

    async def answer(self, op: Operation) -> None:
        assert isinstance(op, _Find)
        find = op
        rq: CFindRQ = find.rq
        query: FindQuery | None = None
        try:
            ts = self.transfer_syntax(find)
            try:
                identifier = await self.decoded(find)
            except Exception as exc:  # noqa: BLE001 - pydicom raises anything on bad bytes
                raise FindFailure(st.CANNOT_UNDERSTAND, f"unreadable Identifier: {exc}") from None
            query = await asyncio.to_thread(parse_identifier, identifier, rq.affected_sop_class_uid)
            log.info(
                "%s: C-FIND %s %s",
                self.t.peer,
                query.level,
                keys_line(query.described()) or "(all)",
            )
            try:
                status = await self._matches(find, query, ts)
            except asyncio.CancelledError:  # (the association ended while we waited to
                # send: no one to answer, but matches went out; review81 F3)
                self._aborted(find, query)
                raise
            if status == st.CANCEL and not find.cancelled:  # (it ended, not a C-CANCEL)
                self._aborted(find, query)
                return
            self._final(find, rq.response(status), query)
        except FindFailure as failure:
            log.warning("%s: C-FIND answered %04X: %s", self.t.peer, failure.status, failure)
            rsp = rq.response(failure.status, failure.comment, failure.offending)
            self._final(find, rsp, query)
        except DatabaseOrOSError as exc:
            log.error("%s: C-FIND failed: %s", self.t.peer, exc)
            # Refused: Out of resources (PS3.4 C.4.1.1.4): the index is unavailable, a
            # transient state; the cause in a few words, not where the index is
            self._final(find, rq.response(st.OUT_OF_RESOURCES, unavailable(exc)), query)

    async def _matches(self, find: _Find, query: FindQuery, ts: str) -> int:
        """Send one pending response per match; the final status."""
        rsp = find.rq.response(query.pending_status, has_dataset=True).encode()
        assert self.reader is not None  # else refused (0122)
        reader = self.reader
        with ExitStack() as held:
            db = held.enter_context(closing(reader.connect()))
            sample = bool(query.from_header)
            rows = q.iter_search(
                db, query.index_level, query.filters, computed=query.row_keys, sample=sample
            )
            reading = time.monotonic()  # (0.0: the cursor is done)

            def spill() -> None:  # (the rest into a file: the index's read ends here)
                nonlocal rows, reading
                rows, reading = _spilled(rows, held), 0.0

            def overdue() -> bool:
                return bool(reading) and time.monotonic() - reading >= HOLD_READ

            def fetch() -> list[tuple[dict[str, Any], Dataset | None]]:
                nonlocal reading
                batch = list(itertools.islice(rows, BATCH))
                if len(batch) < BATCH:
                    reading = 0.0  # (its last rows read: the cursor is done)
                elif overdue():
                    spill()
                limit = self.inflated_limit
                return [(row, _header(reader, row, query.from_header, limit)) for row in batch]

            while True:
                batch = await asyncio.to_thread(fetch)
                for row, header in batch:
                    if find.cancelled or not self.is_open:
                        return st.CANCEL
                    answer = response_elements(query, row, self.ae_title, header)
                    data = encode_elements(answer, ts)
                    self.t.queue_message(find.context_id, rsp, data)
                    find.matches += 1
                    await self.drain()
                    if overdue():  # (a batch sent slowly: review82 F1)
                        await asyncio.to_thread(spill)
                    await asyncio.sleep(0)  # let the association read a C-CANCEL-RQ
                if len(batch) < BATCH:
                    return st.CANCEL if find.cancelled else st.SUCCESS

    def _final(self, find: _Find, rsp: CFindRSP, query: FindQuery | None) -> None:
        self.send(find, rsp)
        if rsp.status == st.CANCEL:
            log.info("%s: C-FIND cancelled after %d matches", self.t.peer, find.matches)
        self._audit(find, rsp, query)

    def _aborted(self, find: _Find, query: FindQuery) -> None:
        """The end of a C-FIND whose association ended under it: logged and audited
        ``aborted`` (with the matches sent), not FE00 as if cancelled."""
        log.info(
            "%s: C-FIND aborted after %d matches: the association ended", self.t.peer, find.matches
        )
        self._audit(find, None, query, "aborted")

    def _audit(
        self, find: _Find, rsp: CFindRSP | None, query: FindQuery | None, status: str = ""
    ) -> None:
        if self.audit is None:
            return
        self.audit(
            {
                "event": "query",
                "audit_event": QUERY_EVENT[0],
                "event_id": QUERY_EVENT[1],
                "service": "C-FIND",
                **self.who,
                "sop_class_uid": find.rq.affected_sop_class_uid,
                "level": query.level if query else None,
                "query": query.described() if query else None,
                "status": status or f"{rsp.status if rsp else 0:04X}",
                "matches": find.matches,
            }
        )
