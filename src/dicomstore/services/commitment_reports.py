"""Storage Commitment reports (PS3.4 J.3.3): the server's journal of accepted
requests, their verification, and the N-EVENT-REPORT that answers each.

:class:`CommitmentService` (one per server) records each request the SCP
(``commitment_scp.py``) accepts durably in the archive's journal
(``archive/commitment_journal.py``) *before* the N-ACTION-RSP 0000 goes out, so that
no accepted request is forgotten.

Then, from a task of the server (not of the association): the referenced
instances are verified in a worker thread (``archive.commitment.verify``:
held in the index under that SOP class, file present with the indexed size and
data set digest) and the result is reported by an N-EVENT-REPORT-RQ (Event
Type ID 1 when all are committed, 2 when some failed): the Transaction UID,
the Referenced SOP Sequence of those committed (with our Retrieve AE Title)
and the Failed SOP Sequence with each Failure Reason (0110 processing failure,
0112 no such object instance, 0119 class/instance conflict;
``commitment_info.py``). It goes on the requesting association while that is
still open, else on a new association to the address configured for the
requester's AE title (``--commitment-scu AET=HOST:PORT``, the policy file's
``[commitment_scus]``), on which we propose the SOP class with role selection
SCU 0 / SCP 1 (we are the SCP invoking N-EVENT-REPORT as association
requestor, PS3.4 J.3.3, PS3.7 D.3.3.4). Only the N-EVENT-REPORT-RSP removes
the request from the journal (0211 or 0213 on the requesting association: a new
association is tried; on a new association: again later); until then it is retried
with backoff (the same report), and at the next start. One refused for good
(A-ASSOCIATE-RJ permanent) is stranded: kept for the next start or its requester
asking again, holding no pending slot. One not taken in :data:`STRAND_AFTER` tries
(a modality off for the night) is *overdue*: retried on every ``max_retry_delay``,
never dropped, its pending slot freed while the overdue stay within the pending
bounds (review68 #2, review69 M1); those a start finds beyond them are overdue at
once, on the same backoff. One AE title holds half the pending bounds at most.

Several nodes on one storage root (issue 17) share the journal: each reports only the
requests it holds (``commitment_journal.py``: each request file's flock), those it
accepted and, at its start and every 30 s, those no live node holds (an earlier run's,
a dead node's: ``serving._report_orphans``): none is reported twice at once, none of a
dead node's left. (A node-wide lock would leave a dead node's waiting for its restart.)
A retry sends the report made before unless what it found committed changed since
(a row, a file's size, mtime or inode: ``commitment.still_held``), or an hour passed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicomstore import uids
from dicomstore.aio.association import Timeouts, Transport
from dicomstore.aio.client import associate
from dicomstore.aio.invoker import Invoker
from dicomstore.archive.commitment import Held, Verdict, held, log_failures, still_held, verify
from dicomstore.archive.commitment_journal import (
    CommitmentJournal,
    CommitmentRequest,
    DuplicateTransaction,
)
from dicomstore.archive.reader import ArchiveReader
from dicomstore.dimse import NEventReportRQ, NEventReportRSP
from dicomstore.dimse import status as st
from dicomstore.errors import AssociationError, AssociationRejected, DicomstoreError
from dicomstore.services.commitment_audit import dropped_record, report_record
from dicomstore.services.commitment_info import (
    MAX_PENDING,
    MAX_REFERENCES,
    SOP_CLASS,
    SOP_INSTANCE,
    Refused,
    event_information,
)
from dicomstore.services.destinations import Destination
from dicomstore.ul.fsm import State
from dicomstore.ul.items import RoleSelection

log = logging.getLogger("dicomstore.server")

#: N-EVENT-REPORT-RSP statuses after which the report is sent again (elsewhere,
#: or later): the requester did not take it (0211) or could not now (0213).
NOT_TAKEN = frozenset({st.UNRECOGNIZED_OPERATION, st.RESOURCE_LIMITATION})
#: Reports answered 0110 (not processed) are sent this many times, then given up.
PROCESSING_FAILURE_TRIES = 3
#: Failed tries of a report (backoff 5 s ... 600 s: ~40 minutes) making it overdue.
STRAND_AFTER = 10
#: What a report's association proposes, as DCMTK does (review72 F5: Big Endian was not).
REPORT_SYNTAXES = (uids.EXPLICIT_VR_LE, uids.IMPLICIT_VR_LE, uids.EXPLICIT_VR_BE)
#: Seconds a verification is sent again for (retries within it send the same report).
REVERIFY_AFTER = 3600.0


@dataclass
class Channel:
    """The requesting association, for a report on it while it is open."""

    t: Transport
    invoker: Invoker
    context_id: int

    @property
    def is_open(self) -> bool:
        return self.t.conn.state is State.STA6 and self.invoker.ended is None

    @property
    def transfer_syntax(self) -> str:
        assert self.t.negotiated is not None
        return self.t.negotiated.contexts[self.context_id].transfer_syntax


@dataclass
class _Report:
    """One request verified: the verdicts and the Event Information telling them,
    encoded once per transfer syntax it is sent in (a retry sends the same bytes)."""

    transaction_uid: str
    verdicts: list[Verdict]
    event_type: int
    #: what it found committed, as it was (verified again before a try when it changed)
    held: Held = field(default_factory=dict)
    encoded: dict[str, bytes] = field(default_factory=dict)
    #: when it was verified (loop time): an older one is verified again before a try
    made_at: float = field(default_factory=time.monotonic)


class CommitmentService:
    """Accepted requests, durably kept until their report is acknowledged (module notes).

    Verifying a request (a file read and hashed per reference), building and encoding
    its report run in a thread of their own, one request at a time: not on the event
    loop (a report of 65,535 references took it for 5 s), nor in the threads that
    commit C-STOREs (six requests of 65,535 held a C-STORE for 133 s: review49 #1).
    """

    def __init__(
        self,
        reader: ArchiveReader,
        root: Path | str,
        *,
        ae_title: str,
        scus: Mapping[str, Destination],
        timeouts: Timeouts | None = None,
        fsync: bool = True,
        max_references: int = MAX_REFERENCES,
        max_pending: int = MAX_PENDING,
        report_timeout: float = 60.0,
        retry_delay: float = 5.0,
        max_retry_delay: float = 600.0,
        audit: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.reader, self.ae_title, self.scus, self.audit = reader, ae_title, scus, audit
        self.journal = CommitmentJournal(root, fsync=fsync, node=True)
        self.timeouts, self.report_timeout = timeouts, report_timeout
        self.max_references, self.max_pending = max_references, max_pending
        self.retry_delay, self.max_retry_delay = retry_delay, max_retry_delay
        #: the requests accepted and not yet reported: transaction UID -> references (at
        #: most 4 x ``max_references`` in all: :meth:`accept`), calling AE title
        self.pending: dict[str, tuple[int, str]] = {}
        #: those this node could not report (their association gone, their AE title
        #: with no address), oldest first: kept in the journal (stranded, held by no
        #: node) for a start with the address configured or their requester asking
        #: again, at most ``max_pending`` of them, not counted as pending; the inode
        #: of each one's file (``CommitmentJournal.drop``)
        self.stranded: dict[str, int] = {}
        #: requests not reported in STRAND_AFTER tries, retried on with their slot
        #: freed (module notes): transaction UID -> references, within the pending bounds
        self.overdue: dict[str, int] = {}
        #: those found at a start beyond the pending bounds, not counted in the overdue's
        #: (the journal's bound them; review74 F1: counted, none could go overdue after)
        self.backlog: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._checks = ThreadPoolExecutor(1, thread_name_prefix="commitment")

    async def in_checks(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the commitment thread (class notes)."""
        return await asyncio.get_running_loop().run_in_executor(self._checks, fn, *args)

    async def start(self, *, stranded: bool = True) -> None:
        """Report what an earlier run or a dead node accepted and did not report
        (PS3.4 J.3.3), never what a live node reports (module notes), and the
        ``stranded`` requests; those beyond the pending bounds as overdue (review72 F2:
        one requester's backlog took every slot again at each start)."""
        requests = await asyncio.to_thread(self.journal.take, stranded=stranded)
        for request in requests:
            if request.transaction_uid in self.pending or request.transaction_uid in self.overdue:
                continue
            log.info(
                "storage commitment %s of %s (%d references) pending since %s: reporting",
                request.transaction_uid,
                request.calling_ae,
                len(request.references),
                request.received_at,
            )
            size, caller = len(request.references), request.calling_ae
            if self._full(size, caller) is None:
                self.pending[request.transaction_uid] = (size, caller)
            else:  # (as overdue: the journal is bounded; new requesters keep their room)
                self.overdue[request.transaction_uid] = size
                self.backlog.add(request.transaction_uid)
            self._spawn(self._deliver(request, None))

    async def close(self) -> None:
        """Stop reporting; what is not reported stays in the journal for the next start."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        self._checks.shutdown(wait=False, cancel_futures=True)
        self.journal.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def accept(self, request: CommitmentRequest) -> None:
        """Record ``request`` durably (:class:`Refused`: 0115 its Transaction UID
        pending, 0213 too many pending, of all or of its calling AE title, which holds
        half the bounds at most; 0110 the journal cannot be written). A request
        of a Transaction UID stranded on any node (its report waits for an address)
        replaces it: the requester (its calling AE title, not another: review52 L2)
        asks again, on an association we can report on (review49 #3, review90 N1)."""
        tx = request.transaction_uid
        if tx in self.pending or tx in self.overdue:
            raise Refused(st.INVALID_ARGUMENT_VALUE, "Transaction UID already pending")
        size, caller = len(request.references), request.calling_ae
        full = self._full(size, caller)
        if full is not None:
            raise Refused(st.RESOURCE_LIMITATION, full)
        self.pending[tx] = (size, caller)
        try:
            if await asyncio.to_thread(self.journal.add, request):
                self.stranded.pop(tx, None)
                log.info("storage commitment %s: asked again, replaces the one stranded", tx)
        except DuplicateTransaction:  # (pending on another node, another AE title's)
            del self.pending[tx]  # (review36c H1: held for ever)
            raise Refused(st.INVALID_ARGUMENT_VALUE, "Transaction UID already pending") from None
        except (OSError, ValueError) as exc:
            del self.pending[tx]
            log.error("storage commitment journal: %s", exc)
            raise Refused(st.PROCESSING_FAILURE, f"cannot record the request: {exc}") from None

    def _full(self, size: int, caller: str) -> str | None:
        """Why one more pending request of ``size`` references from ``caller`` is over
        the bounds (None: it is not): ``max_pending`` requests, 4 x ``max_references``
        references (their memory, ~200 bytes each, whatever max_pending says), and half
        of each for one calling AE title (the others' room)."""
        if len(self.pending) >= self.max_pending:
            return f"{self.max_pending} requests pending already"
        held = sum(n for n, _ in self.pending.values())
        if self.pending and held + size > 4 * self.max_references:
            return f"{held} references pending already: try again later"
        mine = [n for n, ae in self.pending.values() if ae == caller]
        if len(mine) >= max(1, self.max_pending // 2) or (
            mine and sum(mine) + size > 2 * self.max_references
        ):
            return f"{len(mine)} requests of {caller} ({sum(mine)} references) pending already"
        return None

    def report(self, request: CommitmentRequest, channel: Channel | None) -> None:
        """Verify and report ``request`` (accepted) from a task of the server."""
        self._spawn(self._deliver(request, channel))

    async def _deliver(self, request: CommitmentRequest, channel: Channel | None) -> None:
        failures = not_processed = 0  # (tries failed; of them, answered 0110: review117 F4)
        made: list[_Report] = []  # (verified once: every try sends that report)
        while not self._closed:
            try:
                how = await self._attempt(request, channel, not_processed + 1, made)
            except _NoAddress as exc:
                await self._strand(request, f"{exc} (--commitment-scu)")
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - network, disk or index: retried
                if not isinstance(exc, DicomstoreError | OSError):
                    log.exception("storage commitment %s", request.transaction_uid)
                failures += 1
                not_processed += isinstance(exc, _NotProcessed)
                if isinstance(exc, AssociationRejected) and not exc.transient:
                    await self._strand(request, f"its report is refused for good: {exc}")
                    return
                if failures >= STRAND_AFTER and request.transaction_uid in self.pending:
                    self._overdue(request, failures)  # (once the overdue have room)
                delay = min(self.retry_delay * 2 ** min(failures - 1, 62), self.max_retry_delay)
                delay *= 0.5 + random.random() / 2  # jitter: requesters back at once spread
                log.warning(
                    "storage commitment %s: report to %s failed (%s); retrying in %.0f s",
                    request.transaction_uid,
                    request.calling_ae,
                    exc,
                    delay,
                )
                if channel is not None and not channel.is_open:
                    channel = None  # (else the retry goes on it again: review49 #4)
                await asyncio.sleep(delay)
                continue
            await asyncio.to_thread(self.journal.done, request.transaction_uid)
            self._let_go(request.transaction_uid)
            log.info("storage commitment %s reported %s", request.transaction_uid, how)
            return

    def _let_go(self, tx: str) -> None:
        """The request is reported or stranded: neither pending nor overdue any more."""
        self.pending.pop(tx, None)
        self.overdue.pop(tx, None)
        self.backlog.discard(tx)

    def _overdue(self, request: CommitmentRequest, failures: int) -> None:
        """Not reported in ``failures`` tries: retried on (never dropped), its pending
        slot freed while the overdue ones stay within the pending bounds (else it keeps
        its slot, and new requests are refused 0213 as before)."""
        tx, size = request.transaction_uid, len(request.references)
        moved = [n for t, n in self.overdue.items() if t not in self.backlog]
        if len(moved) >= self.max_pending or sum(moved) + size > 4 * self.max_references:
            return
        self.pending.pop(tx, None)
        self.overdue[tx] = size
        every = f"tried again every {self.max_retry_delay:.0f} s, its pending slot freed"
        log.warning("storage commitment %s: not reported in %d tries; %s", tx, failures, every)

    async def _strand(self, request: CommitmentRequest, why: str) -> None:
        """A request that cannot be reported no longer holds a pending slot (review36a
        #1: requests whose association ended took every slot, for everyone, across
        restarts); kept in the journal for a start with the address configured, the
        oldest dropped beyond ``max_pending`` of them; its lock let go (review90 N1)."""
        transaction_uid = request.transaction_uid
        try:
            inode = await asyncio.to_thread(self.journal.strand, transaction_uid)
        except OSError as exc:  # (left unheld: a node's look takes it, strands it again)
            log.error("storage commitment journal: %s", exc)
            inode = None
        self._let_go(transaction_uid)  # (once it is stranded: what it holds is let go)
        if inode is not None:
            self.stranded[transaction_uid] = inode
        log.warning(
            "storage commitment %s: %s; it waits in the journal for the next start, or"
            " for its requester to ask again",
            transaction_uid,
            why,
        )
        while len(self.stranded) > self.max_pending:
            oldest = next(iter(self.stranded))
            inode = self.stranded.pop(oldest)
            await asyncio.to_thread(self.journal.drop, oldest, inode)
            why = f"over {self.max_pending} requests wait for an address"
            log.warning("storage commitment %s: dropped, never reported: %s", oldest, why)
            self._audit(dropped_record(oldest, why))

    async def _attempt(
        self,
        request: CommitmentRequest,
        channel: Channel | None,
        attempt: int = 1,
        made: list[_Report] | None = None,
    ) -> str:
        """One report (the ``attempt``-th): verify now (unless ``made`` holds the report
        of an earlier try), send on ``channel`` if open, else on a new association;
        returns how it went. Raises when it must be retried."""
        if (channel is None or not channel.is_open) and request.calling_ae not in self.scus:
            raise _NoAddress(f"no address configured for {request.calling_ae!r}")
        ts = channel.transfer_syntax if channel is not None and channel.is_open else None
        fresh = made and time.monotonic() - made[0].made_at < REVERIFY_AFTER
        if made and fresh and await self.in_checks(self._unchanged, made[0]):
            report = made[0]
        else:  # (first, an hour old, or what it found committed changed: review69 I3, 117 F1)
            report = await self.in_checks(self._prepare, request, ts or uids.EXPLICIT_VR_LE)
            if made is not None:
                made[:] = [report]
        verdicts = report.verdicts
        how = "on the same association"
        rsp = None
        if channel is not None and channel.is_open:
            try:
                rsp = await self._send(channel, report)
            except (AssociationError, ConnectionError, OSError) as exc:
                log.info(
                    "storage commitment %s: the requesting association ended (%s)",
                    request.transaction_uid,
                    exc,
                )
            if rsp is not None and rsp.status in NOT_TAKEN:
                log.info(
                    "storage commitment %s: the requester answered %04X on its association",
                    request.transaction_uid,
                    rsp.status,
                )
                later = rsp.status == st.RESOURCE_LIMITATION and channel.is_open
                if later and request.calling_ae not in self.scus:  # (it may, later: there)
                    raise AssociationError(f"N-EVENT-REPORT-RSP {rsp.status:04X}: try again later")
                rsp = None
        if rsp is None and request.calling_ae not in self.scus:  # (the channel closed since)
            raise _NoAddress(f"no address configured for {request.calling_ae!r}")
        if rsp is None:
            how = "on a new association"
            rsp = await self._send_new(self.scus[request.calling_ae], report)
            if rsp.status in NOT_TAKEN:
                raise AssociationError(f"N-EVENT-REPORT-RSP {rsp.status:04X}: try again later")
        if rsp.status == st.PROCESSING_FAILURE and attempt < PROCESSING_FAILURE_TRIES:
            raise _NotProcessed("N-EVENT-REPORT-RSP 0110: not processed; try again later")
        if rsp.status != st.SUCCESS:
            log.warning(
                "storage commitment %s: N-EVENT-REPORT-RSP %04X %s",
                request.transaction_uid,
                rsp.status,
                rsp.error_comment or st.describe(rsp.status),
            )
        self._audit(report_record(request, verdicts, how, rsp.status))
        committed = sum(v.committed for v in verdicts)
        took = "" if rsp.status == st.SUCCESS else f", answered {rsp.status:04X}: given up"
        return f"{how} ({committed} of {len(verdicts)} committed{took})"  # (review75 F5)

    def _prepare(self, request: CommitmentRequest, transfer_syntax: str) -> _Report:
        """(In the commitment thread.) Verify now, say what failed, make the report and
        encode it in the transfer syntax it most likely goes in."""
        verdicts = verify(self.reader, request.references)
        log_failures(log, request.transaction_uid, verdicts)
        tx = request.transaction_uid
        event_type, data = event_information(tx, verdicts, self.ae_title, transfer_syntax)
        report = _Report(tx, verdicts, event_type, held=held(self.reader, verdicts))
        report.encoded[transfer_syntax] = data
        return report

    def _unchanged(self, report: _Report) -> bool:
        return still_held(self.reader, report.held, report.verdicts)

    async def _send(self, channel: Channel, report: _Report) -> NEventReportRSP:
        ts = channel.transfer_syntax
        data = report.encoded.get(ts)
        if data is None:
            _, data = await self.in_checks(
                event_information, report.transaction_uid, report.verdicts, self.ae_title, ts
            )
            report.encoded[ts] = data
        return await channel.invoker.call(
            channel.context_id,
            lambda msg_id: NEventReportRQ(msg_id, SOP_CLASS, SOP_INSTANCE, report.event_type),
            NEventReportRSP,
            data,
            timeout=self.report_timeout,
        )

    async def _send_new(self, scu: Destination, report: _Report) -> NEventReportRSP:
        """On an association we request, as SCP of the SOP class by role selection."""
        assoc = await associate(
            scu.host,
            scu.port,
            called_ae=scu.ae_title,
            calling_ae=self.ae_title,
            contexts=[(SOP_CLASS, REPORT_SYNTAXES)],
            roles=[RoleSelection(SOP_CLASS, scu_role=False, scp_role=True)],
            timeouts=self.timeouts,
        )
        try:
            ctx = assoc.context_for(SOP_CLASS)
            if ctx is None:
                raise AssociationError(f"{scu} did not accept the Storage Commitment SOP Class")
            if not ctx.scp_role:  # PS3.7 D.3.3.4; many SCUs take the report all the same
                log.info("%s did not grant us the SCP role by role selection: sending", scu)
            rsp = await self._send(Channel(assoc.t, assoc.invoker, ctx.id), report)
        except BaseException:
            await assoc.abort()
            raise
        await assoc.release()
        return rsp

    def _audit(self, record: dict[str, Any]) -> None:
        if self.audit is not None:
            self.audit(record)


class _NoAddress(Exception):
    """The requesting association is gone and its AE title has no configured address."""


class _NotProcessed(AssociationError):
    """The report was answered 0110: sent again, PROCESSING_FAILURE_TRIES in all."""
