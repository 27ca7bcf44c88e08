"""The retrieve engine C-MOVE and C-GET share (PS3.4 C.4.2, C.4.3).

1. :func:`parse_retrieve_identifier`: the Identifier of a C-MOVE or C-GET
   (PS3.4 C.4.2.2.1, C.4.3.2.1) holds the Query/Retrieve Level (0008,0052) and
   the unique keys of that level and the levels above: above it, one single
   value each (Patient ID, Study/Series Instance UID: hierarchical only, C.4.2.2.1);
   at it, one Patient ID at PATIENT level, one UID or a list of UIDs at
   STUDY, SERIES and IMAGE levels. A missing or wildcard key, a list where one
   value is due, or a unique key of a level below with a value is A900 with
   an Error Comment and the Offending Element. Issuer of Patient ID (0010,0021)
   qualifies a Patient ID (PS3.3 C.7.1.1): the archive's patient is the pair, so
   a retrieval naming a patient keeps to its issuer, and one that names none is
   C000 where the Patient ID is held under several (review81 F1: another
   hospital's patient of the same ID was sent with it); other attributes are
   ignored.
2. :func:`select_instances`: the instances below what the Identifier names,
   from the archive index (SOP Class and Instance UIDs, the transfer syntax
   each is stored in, its file), at most :data:`MAX_SUBOPERATIONS` (the counts
   are US, PS3.7 Table 9.3-10: more is A701).
3. :class:`Retrieval` runs one C-STORE sub-operation per instance through a
   :class:`SubOperationSender` (C-MOVE: an association to the destination,
   ``move_sender.py``; C-GET: the requesting association), counting
   Remaining, Completed, Failed and Warning sub-operations, reporting them
   after each one (the pending responses, FF00), stopping at a C-CANCEL-RQ
   (FE00) or when no further sub-operation can run, and gives the final
   status of PS3.4 C.4.2.3.1 / C.4.3.3.1: 0000 all completed; B000 one or more
   failed or warned; A702 all failed; the Failed SOP Instance UID List
   (0008,0058) in the final Identifier whenever one failed (C.4.2.1.5).
4. :func:`store_selected`: one sub-operation, the instance streamed from its
   file by ``storage_scu.store_instance`` on any ``StoreChannel`` (the
   destination's association for C-MOVE, the requesting one for C-GET).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from dicomstore import uids
from dicomstore.archive import attributes
from dicomstore.archive import query as q
from dicomstore.archive.reader import ArchiveReader, NotStoredError
from dicomstore.archive.storage import Storage
from dicomstore.dimse import CStoreRSP, SubOperations
from dicomstore.dimse import status as st
from dicomstore.dimse.commands import tag_str
from dicomstore.inflation import DEFAULT_MAX_INFLATED
from dicomstore.services import sources
from dicomstore.services.conversion import encode_dataset
from dicomstore.services.qr_operations import Tally
from dicomstore.services.query_identifier import (
    QUERY_RETRIEVE_LEVEL,
    UNIQUE_KEY,
    FindFailure,
    check_uid_key,
    text_value,
)
from dicomstore.services.sources import NotDicom
from dicomstore.services.storage_scu import NotSendable, ScanStale, StoreChannel, store_instance

log = logging.getLogger("dicomstore.server")

#: The counts are US (PS3.7 9.3.4.2): a retrieval of more instances is refused (A701).
MAX_SUBOPERATIONS = 0xFFFF
FAILED_SOP_INSTANCE_UID_LIST = 0x00080058
#: The longest value an explicit VR element with a 16-bit length holds (even)
MAX_EXPLICIT_LENGTH = 0xFFFE
#: Depth of each wire level (PATIENT 0 ... IMAGE 3).
_DEPTH = {level: n for n, level in enumerate(("PATIENT", "STUDY", "SERIES", "IMAGE"))}
_KEY_LEVEL = {tag: level for level, tag in UNIQUE_KEY.items()}
PATIENT_ID, ISSUER = UNIQUE_KEY["PATIENT"], attributes.ATTRIBUTES["IssuerOfPatientID"].tag


@dataclass
class RetrieveQuery:
    """A parsed retrieve Identifier: its level and the index filters it names."""

    level: str
    filters: dict[int, str] = field(default_factory=dict)

    def described(self) -> dict[str, str]:
        """The keys as ``keyword: value`` (logs and audit)."""
        return {attributes.BY_TAG[tag].keyword: value for tag, value in self.filters.items()}


def _refuse(comment: str, tag: int) -> FindFailure:
    return FindFailure(st.DATASET_DOES_NOT_MATCH_SOP_CLASS, comment, tag)


def parse_retrieve_identifier(identifier: Dataset, levels: Sequence[str]) -> RetrieveQuery:
    """What a C-MOVE/C-GET Identifier names (see the module notes), or
    :class:`FindFailure` (A900) saying why not."""
    if QUERY_RETRIEVE_LEVEL not in identifier:
        raise _refuse("no Query/Retrieve Level (0008,0052)", QUERY_RETRIEVE_LEVEL)
    level = text_value(identifier[QUERY_RETRIEVE_LEVEL].value).upper()
    if level not in levels:
        comment = f"Query/Retrieve Level {level[:12]!r} not in {'/'.join(levels)}"
        raise _refuse(comment, QUERY_RETRIEVE_LEVEL)
    found = RetrieveQuery(level)
    for tag, key_level in _KEY_LEVEL.items():
        value = text_value(identifier[tag].value) if tag in identifier else ""
        if _DEPTH[key_level] > _DEPTH[level]:
            if value:
                raise _refuse(f"{tag_str(tag)} is a key below the {level} level", tag)
            continue
        if key_level not in levels:
            continue  # Patient ID in a Study Root Identifier: not a key there
        values = [v.strip() for v in value.split("\\")] if value else []
        if not values or not all(values):
            raise _refuse(f"no {tag_str(tag)} (unique key of the {key_level} level)", tag)
        if any(c in value for c in "*?"):
            raise _refuse(f"{tag_str(tag)}: no wildcards in a retrieval", tag)
        if key_level != "PATIENT":
            check_uid_key(tag, value)
        if len(values) > 1 and (key_level != level or level == "PATIENT"):
            raise _refuse(f"{tag_str(tag)}: one value only (hierarchical retrieval)", tag)
        found.filters[tag] = "\\".join(values)
    issuer = text_value(identifier[ISSUER].value).strip() if ISSUER in identifier else ""
    if issuer and PATIENT_ID in found.filters:
        if any(c in issuer for c in "*?\\"):
            raise _refuse(f"{tag_str(ISSUER)}: one value, no wildcards in a retrieval", ISSUER)
        found.filters[ISSUER] = issuer
    return found


@dataclass(frozen=True, slots=True)
class Selected:
    """One instance to send: its UIDs, the transfer syntax it is stored in, its key
    in the storage of the archive it was selected from (``reader``: read through it,
    never by a path of our own; a key whose file is gone, a replace since, is looked
    up again there: ``ArchiveReader.follow``)."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    key: str
    study_instance_uid: str = ""
    reader: ArchiveReader | None = None
    #: its indexed digest and file size: what is sent is read through them (``checked.py``)
    digest: str = ""
    file_size: int = -1

    @property
    def storage(self) -> Storage | None:
        return None if self.reader is None else self.reader.storage

    def opener(self, scanned: sources.Instance | None = None) -> Callable[[], BinaryIO] | None:
        """What opens its file read through its indexed size and digest
        (``ArchiveReader.open_checked``): None when it has none to check. ``scanned``:
        its scan, whose local file is opened (its meta is read again there: the scan
        guesses a transfer syntax its meta does not name, review105 M1, and keeps not
        the SOP Instance it names, M3)."""
        if self.reader is None or not self.digest:
            return None
        row = {
            "sop_instance_uid": self.sop_instance_uid,
            "transfer_syntax_uid": self.transfer_syntax,
            "path": self.key,
            "digest": self.digest,
            "file_size": self.file_size,
        }
        local = None if scanned is None else scanned.path
        return functools.partial(self.reader.open_checked, row, local)


def select_instances(reader: ArchiveReader, query: RetrieveQuery) -> list[Selected]:
    """The instances the query names, in the index's order (blocking: run it in a thread).

    :class:`FindFailure` A701 beyond :data:`MAX_SUBOPERATIONS`, C000 for a
    filter the index cannot match.
    """
    filters = dict(query.filters)
    try:
        q.where("instance", filters)
    except q.QueryError as exc:
        raise FindFailure(st.CANNOT_UNDERSTAND, str(exc)) from None
    with closing(reader.connect()) as db:
        patient = filters.get(PATIENT_ID, "*")  # (a pattern: the archive's own callers)
        if query.level == "PATIENT" and ISSUER not in filters and "*" not in patient:
            held = q.count(db, "patient", {PATIENT_ID: patient})
            if held > 1:
                raise FindFailure(
                    st.CANNOT_UNDERSTAND,
                    f"Patient ID held under {held} issuers: name one in {tag_str(ISSUER)}",
                    ISSUER,
                )
        total = q.count(db, "instance", filters)
        if total > MAX_SUBOPERATIONS:
            raise FindFailure(
                st.UNABLE_TO_CALCULATE_MATCHES,
                f"{total} instances; at most {MAX_SUBOPERATIONS} per retrieval",
            )
        intern = sys.intern  # the few SOP classes and transfer syntaxes, held once
        return [
            Selected(
                row["sop_instance_uid"],
                intern(row["sop_class_uid"]),
                intern(row["transfer_syntax_uid"]),
                row["path"],
                intern(row["study_uid"]),
                reader,
                row["digest"],
                row["file_size"],
            )
            for row in q.iter_search(db, "instance", filters)
        ]


class SubOperationsEnded(Exception):
    """No further sub-operation can run (the destination refused or left); the message
    says why (an Error Comment of the final response)."""


class SubOperationSender(Protocol):
    """Runs the C-STORE sub-operations of one retrieval. One whose ``lost`` attribute
    is true (a C-MOVE's association aborted mid-message: ``move_sender.py``) is started
    again, with the instances left, before its next sub-operation."""

    async def start(self, selected: Sequence[Selected]) -> None:
        """Get ready to send these instances (C-MOVE: associate with the destination,
        proposing their SOP classes and transfer syntaxes); :class:`SubOperationsEnded`
        if none can be sent."""

    async def send(self, item: Selected) -> int:
        """One C-STORE sub-operation: the C-STORE status (a failure status if the
        instance cannot be sent); :class:`SubOperationsEnded` if the association
        is gone (this sub-operation and every remaining one failed)."""

    async def stop(self) -> None:
        """The retrieval is over (release what :meth:`start` opened); never raises."""


async def _started(
    sender: SubOperationSender, selected: Sequence[Selected], cancel: asyncio.Event | None
) -> bool:
    """``sender.start``; False if ``cancel`` was set first (the start is cancelled:
    a C-MOVE's association attempt is aborted, ``aio.client.associate``)."""
    if cancel is None:
        await sender.start(selected)
        return True
    starting = asyncio.ensure_future(sender.start(selected))
    waiting = asyncio.ensure_future(cancel.wait())
    try:
        await asyncio.wait((starting, waiting), return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()
        if not starting.done():
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
    if starting.cancelled():
        return False
    starting.result()  # (SubOperationsEnded: none can be sent)
    return True


@dataclass
class Retrieval(Tally):
    """The sub-operations of one C-MOVE or C-GET and their counts (see the module notes)."""

    selected: Sequence[Selected]
    cancelled: bool = False
    #: why the sub-operations stopped early (SubOperationsEnded), for the Error Comment
    ended: str | None = None

    @property
    def remaining(self) -> int:
        return len(self.selected) - self.completed - self.failed - self.warning

    async def run(
        self,
        sender: SubOperationSender,
        *,
        is_cancelled: Callable[[], bool],
        pending: Callable[[SubOperations], Awaitable[None]],
        is_gone: Callable[[], bool] = lambda: False,
        cancel: asyncio.Event | None = None,
    ) -> int:
        """Send every instance; ``pending`` after each sub-operation but the last; the
        final status. ``is_cancelled`` (a C-CANCEL) and ``is_gone`` (the requester's
        association ended: no cancel, review81 F6) are asked before each one;
        ``cancel``, set by the C-CANCEL, also ends the sender's start (review87 F7:
        a destination slow to answer the A-ASSOCIATE-RQ held a cancel until
        ``--acse-timeout``)."""
        if not self.selected:
            return st.SUCCESS
        sending = False  # (a sub-operation in flight: see SubOperationsEnded below)
        try:
            if not await _started(sender, self.selected, cancel):
                self.cancelled = True
                return self.status
            for n, item in enumerate(self.selected):
                if is_cancelled():
                    self.cancelled = True
                    break
                if is_gone():
                    break
                lost = getattr(sender, "lost", False)  # (its association aborted: anew)
                if lost and not await _started(sender, self.selected[n:], cancel):
                    self.cancelled = True
                    break
                sending = True
                self.count(await sender.send(item), item.sop_instance_uid)
                sending = False
                if n + 1 < len(self.selected):
                    await pending(self.counts(pending=True))
        except SubOperationsEnded as exc:
            self.ended = str(exc)
            done = self.completed + self.failed + self.warning
            # cancelled meanwhile (a C-CANCEL read while the destination held a
            # C-STORE): the one in flight failed, the rest is Remaining, FE00
            # (PS3.4 C.4.2.1.6; review36a #3: all counted failed, B000)
            self.cancelled = is_cancelled()
            in_flight = self.selected[done : done + 1] if sending else []
            rest = in_flight if self.cancelled else self.selected[done:]
            for item in rest:
                self.count(st.SUBOPERATIONS_FAILED, item.sop_instance_uid)
        finally:
            await sender.stop()
        return self.status

    @property
    def status(self) -> int:
        """The final status (PS3.4 C.4.2.3.1)."""
        if self.cancelled:
            return st.CANCEL
        if not self.failed and not self.warning:
            return st.SUCCESS
        if self.failed == len(self.selected):
            return st.SUBOPERATIONS_FAILED
        return st.SUBOPERATIONS_WARNING

    def counts(self, *, pending: bool = False) -> SubOperations:
        """The counts of a pending response (with Remaining) or of the final one
        (Remaining only when cancelled: PS3.4 C.4.2.1.6)."""
        remaining = self.remaining if pending or self.cancelled else None
        return SubOperations(remaining, self.completed, self.failed, self.warning)

    def failed_identifier(self, transfer_syntax: str) -> tuple[bytes | None, int]:
        """The final Identifier: the Failed SOP Instance UID List (None if none failed),
        and how many UIDs it lists. In an explicit VR syntax, as many as a UI value
        holds (its length is 16 bits: PS3.5 7.1.2; review36a #12: a longer one went as
        UN, which DCMTK and pynetdicom show as bytes); the audit record has them all."""
        if not self.failed_uids:
            return None, 0
        listed = self.failed_uids
        if transfer_syntax != uids.IMPLICIT_VR_LE:
            n, size = 0, -1  # (size: the UIDs and the backslashes between them)
            while n < len(listed) and size + len(listed[n]) + 1 <= MAX_EXPLICIT_LENGTH:
                size += len(listed[n]) + 1
                n += 1
            listed = listed[:n]
        ds = Dataset()
        ds.add(DataElement(FAILED_SOP_INSTANCE_UID_LIST, "UI", list(listed)))
        return encode_dataset(ds, transfer_syntax), len(listed)


def scan_selected(item: Selected) -> sources.Instance:
    """The stored instance ``item`` scanned for sending (blocking): from its local
    file where the storage has one (``os.pread``, as the SCU reads files), else from
    a stream the storage opens (and opens again to send it)."""
    return _scan(item)[0]


def _scan(item: Selected) -> tuple[sources.Instance, Selected]:
    """:func:`scan_selected`, and ``item`` at the key it was scanned at."""
    assert item.storage is not None, "an instance selected from the archive"
    for _ in range(2):  # (once more at its key now, if replaced since it was selected)
        try:
            path = item.storage.local_path(item.key)
            if path is not None:
                return sources.scan_file(path), item
            opener = functools.partial(item.storage.open, item.key)
            return sources.scan_stream(opener), item
        except (OSError, sources.Unreadable):  # (gone: replaced since? else raised)
            moved = _moved(item)
            if moved is None:
                raise
            item = moved
    raise FileNotFoundError(f"{item.key}: replaced again and again")


def _moved(item: Selected, here_too: bool = False) -> Selected | None:
    """``item`` at its key now, when a replace filed it at another since it was
    selected (``ArchiveReader.follow``); None: deleted, or still at that key (unless
    ``here_too``: a version filed at the same key since, as the index has it now)."""
    if item.reader is None:
        return None
    uid = item.sop_instance_uid
    if here_too:
        try:
            row: dict[str, Any] | None = item.reader.instance(uid)
        except NotStoredError:
            row = None
    else:
        row = item.reader.follow({"sop_instance_uid": uid, "path": item.key})
    if row is None:
        return None
    return dataclasses.replace(
        item,
        key=row["path"],
        transfer_syntax=row["transfer_syntax_uid"],
        digest=row["digest"],
        file_size=row["file_size"],
    )


@dataclass(frozen=True)
class NotSent:
    """A sub-operation not sent (unreadable, no accepted context fits), and why."""

    reason: str


async def store_selected(
    channel: StoreChannel,
    item: Selected,
    *,
    service: str,
    peer: str,
    priority: int = 0,
    move_originator: tuple[str, int] | None = None,
    inflated_limit: int = DEFAULT_MAX_INFLATED,
) -> CStoreRSP | NotSent:
    """One C-STORE sub-operation on ``channel``: the instance scanned from its file and
    sent by :func:`~dicomstore.services.storage_scu.store_instance` (its stored
    transfer syntax, else converted; a deflated one inflated to at most
    ``inflated_limit`` bytes: the server's own limit, as for what it stores);
    the C-STORE-RSP, or :class:`NotSent` (logged) when it
    cannot be sent: unreadable, or no accepted context fits. A failure of the
    association, or of the file while its data set was going out
    (:class:`~dicomstore.services.sources.SourceReadError`), is raised."""
    for attempt in range(2):  # (again if its file went between the scan and the send)
        try:
            instance, item = await asyncio.to_thread(_scan, item)
        except (NotDicom, OSError, ValueError) as exc:
            why = f"cannot read {item.key}: {sources.one_line(exc)}"
            log.error("%s: %s", service, why)
            return NotSent(why)
        try:
            rsp, _ctx, converted, nbytes = await store_instance(
                channel,
                instance,
                convert=True,
                priority=priority,
                move_originator=move_originator,
                inflated_limit=inflated_limit,
                scratch=item.storage.scratch() if item.storage is not None else None,
                stored=item.opener(instance),
            )
            break
        except (NotSendable, NotDicom) as exc:  # (nothing of it sent yet)
            stale = isinstance(exc, ScanStale)  # (another version at its key since its scan)
            gone = stale or instance.path is None or not instance.path.exists()
            moved = await asyncio.to_thread(_moved, item, stale) if attempt == 0 and gone else None
            if moved is None:
                log.warning("%s: %s not sent: %s", service, item.sop_instance_uid, exc)
                return NotSent(sources.one_line(exc))
            item = moved  # replaced between its scan and its open: its new version
    if not st.is_stored(rsp.status):
        log.warning(
            "%s: %s answered %04X for %s: %s",
            service,
            peer,
            rsp.status,
            item.sop_instance_uid,
            rsp.error_comment or st.describe(rsp.status),  # (review49 #11: 'None')
        )
    log.debug(
        "%s: %s sent (%d bytes%s)",
        service,
        item.sop_instance_uid,
        nbytes,
        ", converted" if converted else "",
    )
    return rsp
