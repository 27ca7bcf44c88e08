"""Storage Service Class, SCU role (PS3.4 B.2.1): one C-STORE on an open association.

"It is required that the SCU distinguish between successful and failed
C-STORE responses" (PS3.4 B.2.1): every instance gets a :class:`Result` whose
``outcome`` is ``stored`` (Success), ``warning`` (Warning statuses B000,
B006, B007 ...: stored too, PS3.4 B.2.3), ``failed`` (a Failure status, or the
association failed for good), ``not-sent`` (no accepted presentation context
fits and conversion is off or impossible), ``corrupt`` (a DICOM file cut
short: its data set ends inside an element, found by walking its element
headers before anything is sent; never sent, nor retried), ``skipped`` (not a
DICOM instance) or ``already-stored`` (a previous report says so).  What the
scan noticed about a file it sends anyway (a deflated data set padded to an
even length ...) is in ``file_warning``.

Negotiation follows the files (PS3.7 9.1.1, PS3.8 9.3.2.2): per SOP Class one
context per transfer syntax present, alone, so that an SCP accepting it gets
the file's own bytes; plus, when converting, one uncompressed fallback
context.  At most 128 contexts per association.  Many instances over several
associations, with retries: :mod:`dicomstore.services.scu_send`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol

from dicomstore import uids
from dicomstore.aio.association import Transport
from dicomstore.aio.client import ContextSpec
from dicomstore.aio.invoker import Invoker
from dicomstore.dimse.fragments import max_pdv_data
from dicomstore.dimse.messages import PRIORITY_HIGH, PRIORITY_LOW, PRIORITY_MEDIUM
from dicomstore.errors import (
    CERTIFICATE_REFUSED,
    NOT_A_DICOM_PEER,
    AssociationAborted,
    AssociationError,
    AssociationRejected,
    DicomstoreError,
    DimseTimeout,
)
from dicomstore.inflation import DEFAULT_MAX_INFLATED
from dicomstore.services import conversion, sources
from dicomstore.services.sources import Instance, NotDicom
from dicomstore.ul import items as I
from dicomstore.ul.negotiation import REFUSAL, AcceptedContext, Negotiated

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger("dicomstore.send")

Outcome = Literal["stored", "warning", "failed", "not-sent", "corrupt", "skipped", "already-stored"]
#: Association-level failure kinds (they map to the CLI's exit codes 3-6).
ErrorKind = Literal["unreachable", "rejected", "aborted", "timeout"]
#: Storage Commitment of a stored instance (``send --commit``, PS3.4 J.3).
CommitOutcome = Literal["committed", "failed", "unknown"]

#: Most presentation contexts one association can carry (odd IDs 1..255, PS3.8 9.3.2.2).
MAX_CONTEXTS = 128
#: Uncompressed syntaxes we fall back to, in order of preference (PS3.5 A.1-A.3).
FALLBACK = (uids.EXPLICIT_VR_LE, uids.IMPLICIT_VR_LE)
#: Target size of one read from a file (a multiple of the PDV size).
READ_SIZE = 1 << 20
#: The first read of each file, doubled at each read up to READ_SIZE: the peer receives
#: the first PDVs while we read the next. Read whole first, a CT instance (~0.5 MB) kept
#: the peer idle for the time of its read (ct into storescp, benchmarks/bench_send.py:
#: 0.78x storescu with 1 MiB reads, 0.92x with 64 KiB ones, which made `big` cost 40%
#: more CPU than 1 MiB reads).
FIRST_READ = 64 << 10
#: Priority (0000,0700) by name (PS3.7 9.3.1.1), for ``send --priority``.
PRIORITIES = {"medium": PRIORITY_MEDIUM, "high": PRIORITY_HIGH, "low": PRIORITY_LOW}


class StoreChannel(Protocol):
    """What :func:`store_instance` sends on: an association we requested
    (:class:`~dicomstore.aio.client.ClientAssociation`) or one we accepted whose
    requestor is Storage SCP by role selection, for the sub-operations of a C-GET
    (:mod:`dicomstore.services.same_association`, PS3.4 C.4.3)."""

    @property
    def t(self) -> Transport: ...

    @property
    def negotiated(self) -> Negotiated | None: ...

    @property
    def invoker(self) -> Invoker:
        """Sends the C-STORE-RQs and matches their responses."""

    def context_for(
        self, abstract_syntax: str, transfer_syntax: str | None = None
    ) -> AcceptedContext | None:
        """An accepted context we may send C-STORE-RQs on, or None."""


class NotSendable(DicomstoreError):
    """No accepted presentation context fits the instance (the reason is the message)."""


@dataclass
class Result:
    """What happened to one instance (one line of the JSON report)."""

    path: str | None
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    outcome: Outcome = "failed"
    status: int | None = None
    error_comment: str | None = None
    reason: str | None = None
    error_kind: ErrorKind | None = None
    transfer_syntax: str | None = None  # as sent
    converted: bool = False
    bytes: int = 0
    seconds: float = 0.0
    attempts: int = 0
    offending_element: list[int] | None = None
    file_warning: str | None = None  # what the scan noticed about the file (sent anyway)
    #: with ``send --commit`` (PS3.4 J.3): committed, failed (then the Failure
    #: Reason) or unknown (no report); None: commitment not asked
    commitment: CommitOutcome | None = None
    failure_reason: int | None = None
    #: why the commitment is unknown (no report in time, the association ended ...)
    commitment_reason: str | None = None
    index: int = field(default=0, repr=False)  # position in the input

    @property
    def stored(self) -> bool:
        """True when the SCP answered Success or a Warning (PS3.4 B.2.3)."""
        return self.outcome in ("stored", "warning", "already-stored")

    def to_json(self) -> dict[str, Any]:
        """The report line: every field, the status also as ``"0xB000"``."""
        data = asdict(self)
        del data["index"]
        data["status_hex"] = None if self.status is None else f"0x{self.status:04X}"
        data["seconds"] = round(self.seconds, 6)
        return data


# -- negotiation ----------------------------------------------------------------


def propose_contexts(
    instances: Iterable[Instance], *, convert: bool, limit: int = MAX_CONTEXTS
) -> list[list[ContextSpec]]:
    """Presentation contexts for these instances, packed into associations of ≤ ``limit``.

    Per SOP Class: one context per transfer syntax its instances use, each
    alone; with ``convert`` also Explicit then Implicit VR Little Endian as
    the fallback (PS3.5 A.1, A.2), for syntaxes the SCP refuses.
    """
    by_class: dict[str, list[str]] = {}
    for inst in instances:
        seen = by_class.setdefault(inst.sop_class_uid, [])
        if inst.transfer_syntax not in seen:
            seen.append(inst.transfer_syntax)
    groups: list[list[ContextSpec]] = [[]]
    for sop_class, syntaxes in by_class.items():
        specs: list[ContextSpec] = [(sop_class, [ts]) for ts in syntaxes]
        if convert:
            specs.append((sop_class, list(FALLBACK)))
        if len(groups[-1]) + len(specs) > limit:
            groups.append([])
        groups[-1].extend(specs[:limit])
    return [g for g in groups if g]


def choose_context(
    assoc: StoreChannel, instance: Instance, *, convert: bool
) -> tuple[AcceptedContext, bool]:
    """The context to send ``instance`` on, and whether it must be converted.

    The file's own transfer syntax first (bit-preserving); else, with
    ``convert``, an accepted uncompressed one.  Raises :class:`NotSendable`.
    """
    ctx = assoc.context_for(instance.sop_class_uid, instance.transfer_syntax)
    if ctx is not None:
        return ctx, False
    if convert:
        for ts in (*FALLBACK, uids.EXPLICIT_VR_BE):
            ctx = assoc.context_for(instance.sop_class_uid, ts)
            if ctx is not None:
                return ctx, True
    assert assoc.negotiated is not None
    accepted = sorted(
        {
            uids.uid_name(c.transfer_syntax)
            for c in assoc.negotiated.contexts.values()
            if c.abstract_syntax == instance.sop_class_uid
        }
    )
    name = uids.uid_name(instance.sop_class_uid)
    ts_name = uids.uid_name(instance.transfer_syntax)
    hint = "" if convert else " (--no-convert)"
    refusal = assoc.negotiated.refused.get(instance.sop_class_uid)
    if not accepted and refusal in (I.ABSTRACT_SYNTAX_NOT_SUPPORTED, I.USER_REJECTION):
        why = REFUSAL[refusal]
        raise NotSendable(f"the SCP refused {name} ({why}): it does not store this SOP class")
    if not accepted and refusal is None:  # (a C-GET SCU's own proposal: interop97 I6)
        raise NotSendable(f"no presentation context of {name} was proposed")
    if not accepted:
        also = " or uncompressed" if convert else ""
        raise NotSendable(
            f"the SCP accepted {name} in no transfer syntax: not as {ts_name}{also}{hint}"
        )
    raise NotSendable(
        f"the SCP accepts {name} only as {', '.join(accepted)}, not as {ts_name}{hint}"
    )


def read_size(peer_max_pdu: int, target: int = READ_SIZE) -> int:
    """File read size: a whole number of full PDVs for the peer's max PDU (≈ ``target``)."""
    pdv = max_pdv_data(peer_max_pdu)
    return pdv * max(1, target // pdv)


#: one conversion at a time per event loop (:func:`converting`)
_CONVERTING: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def converting() -> asyncio.Semaphore:
    """This loop's turn for a conversion that decodes pixels (``conversion.decodes``:
    a frame at a time, or through pydicom the data set whole, up to the limit): a
    process decodes one at a time, whatever the C-MOVEs, C-GETs and forwards asking
    (review38mem D1). Re-encoding an uncompressed file needs no turn."""
    loop = asyncio.get_running_loop()
    turn = _CONVERTING.get(loop)
    if turn is None:
        turn = _CONVERTING[loop] = asyncio.Semaphore(1)
    return turn


def file_chunks(f: IO[bytes], peer_max_pdu: int, alive: Callable[[], None]) -> Iterator[bytes]:
    """The rest of ``f`` in reads of whole PDVs, growing from FIRST_READ to READ_SIZE."""
    first = read_size(peer_max_pdu, FIRST_READ)
    return sources.file_chunks(f, read_size(peer_max_pdu), alive, first)


# -- one C-STORE ------------------------------------------------------------------


def as_instance(item: Instance | Dataset | str | os.PathLike, *, check: bool = True) -> Instance:
    """An :class:`Instance` from a path (header scanned; ``check``: its data set
    walked whole, see ``sources.scan_file``) or a pydicom Dataset."""
    if isinstance(item, Instance):
        return item
    if sources.is_dataset(item):
        return sources.instance_from_dataset(item)
    return sources.scan_file(item, check=check)


async def store_instance(
    assoc: StoreChannel,
    instance: Instance,
    *,
    convert: bool = True,
    priority: int = 0,
    move_originator: tuple[str, int] | None = None,
    inflated_limit: int = DEFAULT_MAX_INFLATED,
    data: bytes | None = None,
    scratch: Any = None,
    stored: Callable[[], IO[bytes]] | None = None,
) -> tuple[Any, AcceptedContext, bool, int]:
    """C-STORE one instance: (C-STORE-RSP, context used, converted?, bytes sent). A
    deflated data set converted is inflated to at most ``inflated_limit`` bytes. A
    conversion's temporary files go into the folder ``scratch`` (an archive's
    ``.tmp``: not a tmpfs /tmp, RAM again; review39 #12), else the system's.
    ``data``: the data set's bytes already read (``sources.check_file``), sent as they
    are when no conversion is needed, instead of reading the file again.

    ``stored``: an archive's copy, opened through its indexed size and digest
    (``ArchiveReader.open_checked``): sent as stored, read through it, its last
    fragment held until the copy is judged intact (a damaged one: SourceReadError
    before it, the association to be aborted, PS3.8 7.3.1); to be converted, read
    whole through it first (a damaged one: NotSendable, nothing of it sent)."""
    ctx, convert_it = choose_context(assoc, instance, convert=convert)
    if convert_it and stored is not None:
        try:
            await asyncio.to_thread(_judged, stored)
        except OSError as exc:
            raise NotSendable(str(exc)) from None
    assert assoc.negotiated is not None
    where = str(scratch) if scratch is not None else None
    chunks: Iterable[bytes]
    f: IO[bytes] | None = None
    conn = assoc.t.conn

    def alive() -> None:  # stop reading the file once the association is gone
        if not conn.is_established:
            raise AssociationAborted("the association ended while sending")

    if convert_it and conversion.streams_inflated(instance, ctx.transfer_syntax):
        try:  # PS3.5 A.5: the inflated data set is Explicit VR LE, sent from its file
            spool, nbytes = await asyncio.to_thread(
                conversion.inflated, instance, inflated_limit, where
            )
        except NotDicom as exc:
            raise NotSendable(str(exc)) from None
        except OSError as exc:
            raise NotSendable(f"cannot read: {exc.strerror or exc}") from None
        f = spool
        if nbytes % 2:
            spool.close()
            raise NotSendable(f"the inflated data set has an odd length ({nbytes} bytes)")
        chunks = file_chunks(spool, assoc.negotiated.peer_max_pdu, alive)
    elif convert_it:
        decodes = conversion.decodes(instance, ctx.transfer_syntax)
        try:  # (one decoding at a time: each holds a frame, or its data set, whole)
            async with converting() if decodes else contextlib.nullcontext():
                out, nbytes = await asyncio.to_thread(
                    conversion.converted, instance, ctx.transfer_syntax, inflated_limit, where
                )
        except NotDicom as exc:
            raise NotSendable(str(exc)) from None
        except OSError as exc:
            raise NotSendable(f"cannot convert: {exc.strerror or exc}") from None
        f = out
        chunks = file_chunks(out, assoc.negotiated.peer_max_pdu, alive)
    elif instance.dataset is not None:
        data = conversion.encode_dataset(instance.dataset, ctx.transfer_syntax)
        chunks, nbytes = (data,), len(data)
    elif instance.size % 2:
        raise NotSendable(
            f"the data set has an odd length ({instance.size} bytes): an element of odd"
            " length, or stray bytes; no PDV can carry it (PS3.8 E.1)"
        )  # (a file cut short is found by the scan: corrupt)
    elif data is not None:
        chunks, nbytes = (data,), len(data)
    else:
        try:
            f = sources.open_dataset(instance, stored)  # (a stored copy: read through it)
        except OSError as exc:
            raise NotSendable(f"cannot read: {exc.strerror or exc}") from None
        if getattr(f, "replaced", False):  # (its scan's sizes are another version's)
            f.close()
            raise ScanStale("replaced at its key since it was scanned")
        chunks = sources.exactly(file_chunks(f, assoc.negotiated.peer_max_pdu, alive), instance)
        nbytes = instance.size
        if stored is not None:
            chunks = _judged_before_last(chunks, nbytes, f)
    try:
        rsp = await assoc.invoker.store_stream(
            ctx,
            instance.sop_class_uid,
            instance.sop_instance_uid,
            chunks,
            priority=priority,
            move_originator=move_originator,
            size=nbytes,
        )
    finally:
        if f is not None:
            f.close()  # also when the stream never started
    return rsp, ctx, convert_it, nbytes


class ScanStale(NotSendable):
    """An archive's copy replaced at its key (another size or meta) between its scan
    and its send: sent from the scan's sizes, another version's data set would be cut
    or padded wrong (review105 I1); scan it again."""


def _judged(stored: Callable[[], IO[bytes]]) -> None:
    """Read an archive's copy whole through its digest (``DamagedCopy`` if damaged)."""
    with stored() as f:
        f.verify()  # type: ignore[attr-defined]  # (a CheckedStream)


def _judged_before_last(chunks: Iterable[bytes], nbytes: int, f: IO[bytes]) -> Iterator[bytes]:
    """``chunks`` (``nbytes`` in all) read from the checked copy ``f``; the last given
    only once ``f`` judged it intact: read to its end (bytes after a deflate stream,
    not sent, hashed all the same). SourceReadError for a damaged copy."""
    sent = 0
    for chunk in chunks:
        sent += len(chunk)
        if sent >= nbytes:
            try:
                f.verify()  # type: ignore[attr-defined]  # (a CheckedStream)
            except OSError as exc:
                raise sources.SourceReadError(str(exc)) from None
        yield chunk


async def send_c_store(
    assoc: StoreChannel,
    dataset_or_path: Dataset | str | os.PathLike,
    *,
    convert: bool = True,
    priority: int = 0,
    move_originator: tuple[str, int] | None = None,
) -> Any:
    """C-STORE a file or a pydicom Dataset on an open association (PS3.4 B.2.1).

    Returns the C-STORE-RSP (``.status``, ``.error_comment``,
    ``.offending_element``).  Raises :class:`~sources.NotDicom` for a file
    that is no instance, :class:`NotSendable` when no accepted context fits.
    """
    instance = as_instance(dataset_or_path)
    rsp, _ctx, _converted, _n = await store_instance(
        assoc, instance, convert=convert, priority=priority, move_originator=move_originator
    )
    return rsp


# -- many instances, several associations, retries --------------------------------


def classify(exc: BaseException) -> tuple[ErrorKind, bool] | None:
    """(kind, transient?) of an association-level failure; None if it is none."""
    if isinstance(exc, AssociationRejected):
        return "rejected", exc.transient
    if isinstance(exc, DimseTimeout):
        return "timeout", True
    if isinstance(exc, AssociationAborted):
        said = str(exc)  # (no retry helps: not a DICOM peer, our certificate refused)
        return "aborted", not any(words in said for words in NOT_A_DICOM_PEER + CERTIFICATE_REFUSED)
    if isinstance(exc, AssociationError):
        text = str(exc)
        return ("timeout", True) if "timed out" in text or "within" in text else ("aborted", True)
    if isinstance(exc, ConnectionRefusedError):
        return "unreachable", True
    if isinstance(exc, ssl.SSLCertVerificationError):  # (the server's: no retry helps)
        return "unreachable", False
    if isinstance(exc, ssl.SSLError) and "CERTIFICATE" in str(exc.reason):  # (ours refused)
        return "unreachable", False
    if isinstance(exc, OSError):
        return "unreachable", not isinstance(exc, socket.gaierror)  # unknown host: permanent
    return None
