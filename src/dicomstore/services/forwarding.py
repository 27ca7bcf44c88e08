"""Forwarding: send what was stored on to other Storage SCPs, and keep trying (issue 16).

:class:`Forwarding` runs on the server's loop (``serving.running`` starts and
stops it) beside the one store service:

queueing
    an observer of the store service (every door) takes each instance once it is
    durably stored and indexed (observers run after the commit); a writer task
    adds an entry per matching ``when=instance`` rule (``forward_rules.py``) to
    the durable queue (``forward_queue.py``), a batch of arrivals per
    transaction in a worker thread. ``when=stable`` rules queue the instances of
    a study when it becomes stable (the ``on_study_stable`` hook of
    ``stability.py``, awaited before the next event).
recovery
    :meth:`Forwarding.open`, before the server listens, queues again what a
    crash or a stop may have left out (``forward_recovery.py``).
sending
    one task per destination takes the due entries a batch at a time (at most
    :data:`BATCH` instances), checks each against the index and the disk (an
    instance deleted since is ``skipped``, one whose file is gone or not what was
    stored, by its indexed size and digest, ``failed``: archive damage; logged), and
    sends them with our
    Storage SCU on one association (``move_sender.DestinationSender``: each
    instance's stored transfer syntax proposed first, converted when only an
    uncompressed one is accepted, streamed from its file), then records the
    outcomes and logs one line per batch.
retrying
    a refused connection, a rejected or aborted association, a timeout and an
    A7xx/0213 status (out of resources, PS3.4 B.2.3; resource limitation, PS3.7
    C.5) are tried again after an exponential backoff (``retry_delay`` doubled
    per attempt up to ``retry_max``, times a random factor in [0.5, 1): the
    jitter), without limit unless ``max_attempts`` (``--forward-max-attempts``: the
    entry is then ``failed``); any other failure status (0124 not authorized, A9xx, Cxxx ...)
    and an instance the destination accepts no context for are permanent: the
    entry is ``failed``, logged and counted, never tried again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from dicomstore.aio.association import Timeouts
from dicomstore.archive.engine import DatabaseOrOSError
from dicomstore.archive.reader import ArchiveReader
from dicomstore.dimse import status as st
from dicomstore.errors import DicomstoreError
from dicomstore.inflation import DEFAULT_MAX_INFLATED
from dicomstore.services.arrivals import newest_of
from dicomstore.services.destinations import Destination
from dicomstore.services.forward_queue import Entry, ForwardQueue, Pending, Queued, Settled
from dicomstore.services.forward_recovery import COLUMNS, SLACK, add_study, recover, recover_stable
from dicomstore.services.forward_rules import ForwardRule, destinations_of, entries_for
from dicomstore.services.forward_sendable import sendable
from dicomstore.services.forward_settling import BatchReport, Settling
from dicomstore.services.move_sender import DestinationSender, contexts_for
from dicomstore.services.retrieve import NotSent, Selected
from dicomstore.services.server_config import DIMSE_TIMEOUT
from dicomstore.services.stable_log import StableStudy, iso, reader_log
from dicomstore.services.storage import Home, on_loop
from dicomstore.services.storage_scu import classify
from dicomstore.ul.negotiation import DEFAULT_MAX_PDU

log = logging.getLogger("dicomstore.forward")

#: Most instances sent on one association (and held as entries in memory).
BATCH = 100
#: How long sent and skipped entries are kept (a store queued again by recovery or
#: by a stable rule within this time is still recognised).
KEEP_DONE = 3600.0
#: The longest a destination's sender waits before looking for due entries again
#: (entries another process made pending: ``dicomstore requeue``).
IDLE_LOOK = 30.0


@dataclass
class _Peer:
    """One destination's sender task and what the metrics read."""

    destination: Destination
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    pending: Pending = field(default_factory=lambda: Pending(0, None))
    task: asyncio.Task[None] | None = None
    failures: int = 0


class Forwarding:
    """The forwarding of one server (see the module notes)."""

    def __init__(
        self,
        reader: ArchiveReader,
        rules: Sequence[ForwardRule],
        *,
        calling_ae: str,
        timeouts: Timeouts | None = None,
        max_pdu: int = DEFAULT_MAX_PDU,
        retry_delay: float = 5.0,
        retry_max: float = 600.0,
        batch: int = BATCH,
        keep_done: float = KEEP_DONE,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
        inflated_limit: int = DEFAULT_MAX_INFLATED,
        max_attempts: int = 0,
    ) -> None:
        if retry_delay <= 0 or retry_max < retry_delay:
            raise ValueError("forwarding needs 0 < retry_delay <= retry_max")
        self.reader = reader
        self.rules = list(rules)
        self.destinations = destinations_of(self.rules)
        self.calling_ae = calling_ae
        #: what a deflated data set converted may inflate to (the server's limit)
        self.inflated_limit = inflated_limit
        base = timeouts or Timeouts()
        self.timeouts = base if base.dimse is not None else replace(base, dimse=DIMSE_TIMEOUT)
        self.max_pdu = max_pdu
        self.retry_delay = retry_delay
        self.retry_max = retry_max
        #: attempts after which a transient failure fails the entry for good (0: never)
        self.max_attempts = max_attempts
        self.batch = batch
        self.keep_done = keep_done
        self.clock = clock
        self.jitter = jitter
        self.idle_look = IDLE_LOOK
        self.queue: ForwardQueue | None = None
        #: (destination, trigger) -> since when the rule has been configured (ISO)
        self.since: dict[tuple[str, str], str] = {}
        #: called with each batch's report (``services.metrics`` counts there)
        self.observers: list[Callable[[BatchReport], None]] = []
        self.peers = {ae: _Peer(dest) for ae, dest in self.destinations.items()}
        self._arrivals: list[dict[str, Any]] = []
        self._arrived = asyncio.Event()
        self._home: Home | None = None
        self._writer: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    @property
    def stable_rules(self) -> list[ForwardRule]:
        return [rule for rule in self.rules if rule.when == "stable"]

    # -- before listening --------------------------------------------------------------

    def open(self) -> int:
        """Open the queue and queue again what a crash or a stop may have left out
        (module notes). Blocking: call it in a worker thread before :meth:`start`.
        The number of entries added."""
        root = self.reader.root
        self.queue = queue = ForwardQueue(root, clock=self.clock)
        now = iso(self.clock())
        pairs = {(r.destination.ae_title, r.when) for r in self.rules}
        self.since = queue.configure(pairs, now)
        queue.peers({ae: dest.address for ae, dest in self.destinations.items()})
        added = recover(self.reader, queue, self.rules, self.since, now, BATCH)
        for ae, peer in self.peers.items():
            peer.pending = queue.pending(ae)
        if added:
            log.info("forwarding: %d instance(s) queued again after a restart", added)
        for ae, n in queue.unconfigured().items():
            log.warning(
                "forwarding: %d instance(s) pending for %s, which no --forward rule names"
                " now: kept, sent if it is configured again",
                n,
                ae,
            )
        return added

    async def events_taken(self) -> None:
        """The events run here from now (``serving.py``): what their node logged, queued."""
        assert self.queue is not None
        args = (self.reader, self.queue, self.rules, self.since)
        if await asyncio.to_thread(recover_stable, *args):
            await self._refresh(self.peers)

    # -- arrivals ----------------------------------------------------------------------

    def observe(self, storing: Any, result: Any) -> None:
        """A store-service observer: each instance stored, for the instance rules; not
        a duplicate the archive kept (its row is the earlier store's: nothing arrived).
        Told by the store's result, never by the row's age (review101 H1: a store whose
        commit took over a minute was taken for a kept duplicate and never forwarded)."""
        row = result.row
        if not result.changed or not row or not row.get("received_at"):
            return
        on_loop(self._home, self._arrive, row)

    def arrived_elsewhere(self, rows: list[dict[str, Any]]) -> None:
        """(On the loop.) Instances the index received, other nodes' among them
        (``services/arrivals.py``): queued for the instance rules like our own (an
        entry already in the queue is kept)."""
        if any(rule.when == "instance" for rule in self.rules):
            for row in rows:
                self._arrive(row)

    def _arrive(self, row: dict[str, Any]) -> None:
        self._arrivals.append({key: row.get(key) for key in (*COLUMNS, "study_uid")})
        self._arrived.set()

    def _arrival_entries(self, rows: list[dict[str, Any]]) -> list[Queued]:
        """The queue entries of arrived rows, for the ``when=instance`` rules."""
        return [
            item for row in rows for item in entries_for(self.rules, self.since, row, "instance")
        ]

    async def study_stable(self, event: StableStudy) -> None:
        """The ``on_study_stable`` hook: queue the study for the ``when=stable`` rules."""
        queue = self.queue
        assert queue is not None

        def queued() -> int:
            before = reader_log(self.reader).before(event)
            return add_study(self.reader, queue, self.rules, self.since, event, before)

        try:
            await asyncio.to_thread(queued)
        except DatabaseOrOSError as exc:
            log.error("forwarding: study %s not queued: %s", event.study_uid, exc)
            return  # queued again at the next start (the event is in the log)
        await self._refresh(self.peers)

    async def _write(self) -> None:
        """Move arrivals into the queue, a transaction per batch of arrivals."""
        queue = self.queue
        assert queue is not None
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            rows, self._arrivals = self._arrivals, []
            if not rows:
                continue
            items = self._arrival_entries(rows)
            observed = newest_of(rows, self.clock(), SLACK)  # (never ahead: review88 F10)
            try:
                added = await asyncio.to_thread(queue.add, items, observed=observed)
            except DatabaseOrOSError as exc:
                log.error("forwarding: %d arrival(s) not queued yet: %s", len(rows), exc)
                self._arrivals[:0] = rows  # tried again (and found by recovery otherwise)
                await asyncio.sleep(self.retry_delay)
                self._arrived.set()
                continue
            await self._refresh({ae: self.peers[ae] for ae in added})

    async def _refresh(self, peers: dict[str, _Peer]) -> None:
        queue = self.queue
        assert queue is not None
        for ae, peer in peers.items():
            peer.pending = await asyncio.to_thread(queue.pending, ae)
            peer.wake.set()

    # -- life ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start queueing and sending (in the running loop), after :meth:`open`."""
        assert self.queue is not None, "open() first"
        self._home = Home.here()
        self._writer = asyncio.create_task(self._write(), name="forward-queue")
        for ae, peer in self.peers.items():
            peer.task = asyncio.create_task(self._send_loop(peer), name=f"forward-{ae}")

    async def close(self, grace: float = 10.0) -> None:
        """Queue what arrived, let batches under way finish within ``grace``
        seconds (then abort them: their entries are sent again later), and close
        the queue."""
        self._stop.set()
        tasks = [peer.task for peer in self.peers.values() if peer.task is not None]
        for peer in self.peers.values():
            peer.wake.set()
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        queue, self.queue = self.queue, None
        if queue is None:
            return
        if self._arrivals:
            rows, self._arrivals = self._arrivals, []
            items = self._arrival_entries(rows)
            observed = newest_of(rows, self.clock(), SLACK)  # (never ahead: review88 F10)
            try:
                await asyncio.to_thread(queue.add, items, observed=observed)
            except DatabaseOrOSError as exc:
                log.error("forwarding: %d arrival(s) left to recovery: %s", len(rows), exc)
        await asyncio.to_thread(queue.close)

    # -- sending -----------------------------------------------------------------------

    def backoff(self, attempts: int) -> float:
        """Seconds before attempt ``attempts + 1``: doubled per attempt up to the cap,
        times a random factor in [0.5, 1)."""
        delay = min(self.retry_max, self.retry_delay * 2 ** min(max(attempts - 1, 0), 62))
        return delay * (0.5 + self.jitter() / 2)

    async def _send_loop(self, peer: _Peer) -> None:
        queue = self.queue
        assert queue is not None
        ae = peer.destination.ae_title
        while not self._stop.is_set():
            peer.wake.clear()
            try:
                entries = await asyncio.to_thread(queue.due, ae, self.clock(), self.batch)
                if not entries:
                    when = await asyncio.to_thread(queue.next_due, ae)
                    timeout = self.idle_look  # (at the latest: entries requeued elsewhere)
                    if when is not None:
                        timeout = min(timeout, max(0.0, when - self.clock()))
                    try:
                        await asyncio.wait_for(peer.wake.wait(), timeout)
                    except TimeoutError:
                        pass
                    continue
                report = await self._send_batch(peer, entries)
            except DatabaseOrOSError as exc:
                log.error("forward to %s: the queue failed: %s", peer.destination, exc)
            except Exception:  # noqa: BLE001 - a bug must not end forwarding for good
                log.exception("forward to %s: batch failed", peer.destination)
            else:
                if report.error is None:
                    peer.failures = 0
                    continue
            peer.failures += 1
            try:  # the destination is in trouble: wait before its next batch
                await asyncio.wait_for(self._stop.wait(), self.backoff(peer.failures))
            except TimeoutError:
                pass

    async def _send_batch(self, peer: _Peer, entries: list[Entry]) -> BatchReport:
        queue = self.queue
        assert queue is not None
        dest = peer.destination
        report = BatchReport(dest)

        async def record(outcomes: list[Settled]) -> None:
            peer.pending = await asyncio.to_thread(
                queue.settle, dest.ae_title, outcomes, keep_done=self.keep_done
            )

        settling = Settling(record)
        found, gone, damaged = await asyncio.to_thread(sendable, self.reader, entries)
        for entry, why in gone:
            log.warning("forward to %s: %s skipped: %s", dest, entry.sop_instance_uid, why)
            settling.outcomes.append(Settled(entry.id, "skipped", entry.attempts, reason=why))
            report.skipped += 1
        for entry, why in damaged:  # (failed: `requeue` sends it once restored, review101 M2)
            log.warning("forward to %s: %s failed: %s", dest, entry.sop_instance_uid, why)
            settling.outcomes.append(Settled(entry.id, "failed", entry.attempts, reason=why))
            report.failed += 1
        todo = self._one_association(found)
        sender = DestinationSender(
            dest,
            calling_ae=self.calling_ae,
            service="forward",
            timeouts=self.timeouts,
            max_pdu=self.max_pdu,
            inflated_limit=self.inflated_limit,
        )
        if todo:
            try:
                await sender.open([item for _entry, item in todo])
            except (DicomstoreError, OSError) as exc:
                report.error = self._retry_all(todo, _failed(exc), settling.outcomes, report)
                todo = []
        try:
            for n, (entry, item) in enumerate(todo):
                if self._stop.is_set():
                    break
                await settling.when_due()  # (recorded as it goes: forward_settling)
                attempts = entry.attempts + 1
                try:
                    rsp = await settling.awaiting(sender.store(item))
                except (DicomstoreError, ConnectionError, OSError) as exc:  # (SourceReadError too)
                    # the rest of the batch waits with it, as for a transient status: an
                    # attempt more for this one alone; each counts `to retry`, as when the
                    # association failed (review101 L1: 1 here, the whole batch there)
                    why = _failed(exc)
                    report.error = self._retry_all(
                        todo[n:], why, settling.outcomes, report, tried=1
                    )
                    break
                if isinstance(rsp, NotSent):  # (review49 #10: its reason, not a guess)
                    why = f"not sent: {rsp.reason}"
                    settling.outcomes.append(Settled(entry.id, "failed", attempts, reason=why))
                    report.failed += 1
                elif st.is_stored(rsp.status):  # (review49 #7: FF00, FE00 were "sent")
                    settling.outcomes.append(Settled(entry.id, "sent", attempts, status=rsp.status))
                    report.sent += 1
                elif st.is_transient(rsp.status, rsp.error_comment):
                    # the destination is in trouble (full, busy): the rest of the batch
                    # waits with this one, and the destination backs off (review36a #8:
                    # each instance came back on its own association, ~30 per second)
                    why = f"{rsp.status:04X} {rsp.error_comment or st.describe(rsp.status)}"
                    report.error = self._retry_all(
                        todo[n:], why, settling.outcomes, report, rsp.status, tried=1
                    )
                    break
                else:
                    why = f"{st.describe(rsp.status)}: {rsp.error_comment or ''}".rstrip(": ")
                    log.warning(
                        "forward to %s: %s failed for good: %04X %s",
                        dest,
                        entry.sop_instance_uid,
                        rsp.status,
                        why,
                    )
                    failed = Settled(entry.id, "failed", attempts, status=rsp.status, reason=why)
                    settling.outcomes.append(failed)
                    report.failed += 1
        finally:  # what is known is recorded first, even when cancelled
            peer.pending = await asyncio.shield(
                asyncio.to_thread(
                    queue.settle,
                    dest.ae_title,
                    settling.outcomes,
                    error=report.error,
                    keep_done=self.keep_done,
                )
            )
            await sender.close()
        log.log(logging.WARNING if report.error else logging.INFO, "%s", report)
        for observe in self.observers:
            observe(report)
        return report

    def _retry_all(
        self,
        todo: Sequence[tuple[Entry, Selected]],
        why: str,
        outcomes: list[Settled],
        report: BatchReport,
        status: int | None = None,
        tried: int | None = None,
    ) -> str:
        """Every entry of ``todo`` pending again, due at one time (one association, not
        one each as jittered delays came due); ``why``. Only the first ``tried`` were tried:
        an attempt more each (of entries due at once, those of fewer attempts go first)."""
        when = self.clock() + self.backoff(todo[0][0].attempts + 1) if todo else 0.0
        for n, (entry, _item) in enumerate(todo):
            more = tried is None or n < tried
            attempts = entry.attempts + more
            if more and self.max_attempts and attempts >= self.max_attempts:  # (review88 F4)
                gave_up = f"{why} (tried {attempts} times: --forward-max-attempts)"
                log.warning("forward to %s: %s failed: %s", report.destination,
                            entry.sop_instance_uid, gave_up)  # fmt: skip
                outcomes.append(Settled(entry.id, "failed", attempts, 0.0, status, gave_up))
                report.failed += 1
                continue
            outcomes.append(Settled(entry.id, "pending", attempts, when, status, why))
            report.retry += 1
        return why

    def _one_association(self, found: list[tuple[Entry, Selected]]) -> list[tuple[Entry, Selected]]:
        """The entries whose contexts fit one association (128 contexts); the others
        stay pending, first in line for the next batch."""
        first = contexts_for([item for _e, item in found])[0]
        classes = {abstract for abstract, _ts in first}
        return [(e, item) for e, item in found if item.sop_class_uid in classes]


def _failed(exc: BaseException) -> str:
    """Why a batch's association failed, in the queue's words (:func:`classify`)."""
    kind = classify(exc)
    return f"{kind[0] if kind else 'failed'}: {exc or type(exc).__name__}"
