"""Send many instances: scan, negotiate per group, associations in parallel, retries.

The high-level Storage SCU (PS3.4 B.2.1) behind `dicomstore send`. Input files are
scanned first (element headers only: a file cut short is ``corrupt``, never sent, and
opens no association), grouped into associations of at most 128 presentation
contexts, and sent by ``parallel`` workers, each running as many C-STOREs at once as
the granted asynchronous operations window allows (PS3.7 D.3.3.3). Transient failures
(refused connection, transient rejection, A-ABORT, DIMSE timeout, A7xx/0213 statuses)
are retried with exponential backoff, a bounded number of times; a worker gives up
after ``retries`` broken associations in a row that stored nothing.

With ``commit`` each association also proposes Storage Commitment, and once a worker
has sent all it could, it asks on that association for commitment of what was stored
so far and not yet asked for (PS3.4 J.3.2, ``commitment_scu.py``), waiting for the
report there (or at the ``commit_listener``); instances stored on associations that
broke are asked for on an association of their own at the end. Each stored Result
then says ``commitment`` (committed, failed with its ``failure_reason``, or unknown).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections import deque
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dicomstore.aio.association import Timeouts
from dicomstore.aio.client import ClientAssociation, ContextSpec, associate
from dicomstore.dimse import status as st
from dicomstore.errors import AssociationAborted
from dicomstore.services import sources
from dicomstore.services.sources import CorruptFile, Instance, NotDicom, SourceReadError
from dicomstore.services.storage_scu import (
    MAX_CONTEXTS,
    ErrorKind,
    NotSendable,
    Outcome,
    Result,
    as_instance,
    classify,
    propose_contexts,
    store_instance,
)
from dicomstore.tls import failed_words
from dicomstore.ul.negotiation import DEFAULT_MAX_PDU

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from dicomstore.archive.commitment import Reference
    from dicomstore.services.commitment_scu import Commitment

log = logging.getLogger("dicomstore.send")


#: Files up to this size are checked whole (``sources.check_file``) in the event loop
#: while the previous response is awaited; a larger one, whose walk could hold the
#: loop up (many elements), in a worker thread when its turn comes.
CHECK_IN_LOOP_MAX = 1 << 20


@dataclass
class _Job:
    instance: Instance
    index: int
    attempts: int = 0
    #: the result of a file found corrupt or unreadable when checked: never sent
    problem: Result | None = None
    #: a small file's data set, read whole by its check: sent from it, once
    data: bytes | None = None

    @property
    def unchecked(self) -> bool:
        """Its file is still to be walked whole (``sources.check_file``)."""
        return not self.instance.checked and self.problem is None


@dataclass
class SendOptions:
    """Everything :func:`send` can be told besides where and what."""

    called_ae: str = "ANY-SCP"
    calling_ae: str = "DICOMSTORE"
    parallel: int = 1
    max_ops: int = 16
    max_pdu: int = DEFAULT_MAX_PDU
    convert: bool = True
    retries: int = 3
    retry_delay: float = 1.0
    priority: int = 0
    timeouts: Timeouts | None = None
    #: TLS (PS3.15 B.9): a client context from :func:`dicomstore.tls.client_context`.
    ssl: Any = None
    #: User Identity Negotiation (PS3.7 D.3.3.7): a ``UserIdentityRQ``, or None.
    identity: Any = None
    #: Ask for Storage Commitment of what was stored (PS3.4 J.3) and wait this
    #: long for each report; reports at this listener (a ``ReportListener``)
    #: instead of on the association of the request.
    commit: bool = False
    commit_timeout: float = 60.0
    commit_listener: Any = None


class _Run:
    """One :func:`send`: the queue of one association group and its results."""

    def __init__(self, host: str, port: int, opts: SendOptions, on_result) -> None:
        self.host, self.port, self.opts = host, port, opts
        self.on_result = on_result
        self.results: list[Result] = []
        self.last_error: tuple[ErrorKind, str] | None = None
        #: stored, commitment not yet asked for (``opts.commit``)
        self.to_commit: list[Result] = []
        self.commitments: list[Commitment] = []

    def finish(self, result: Result) -> None:
        self.results.append(result)
        if self.opts.commit and result.outcome in ("stored", "warning"):
            self.to_commit.append(result)
        if self.on_result is not None:
            self.on_result(result)

    def _batch(self) -> list[Result]:
        from dicomstore.services.commitment_info import MAX_REFERENCES

        batch, self.to_commit = self.to_commit[:MAX_REFERENCES], self.to_commit[MAX_REFERENCES:]
        return batch

    def _apply(self, batch: list[Result], commitment: Commitment) -> None:
        self.commitments.append(commitment)
        for result in batch:
            result.commitment, result.failure_reason = commitment.outcome(
                result.sop_instance_uid or ""
            )
            if result.commitment == "unknown":
                result.commitment_reason = commitment.reason
        if commitment.reason is not None:
            log.warning("storage commitment %s: %s", commitment.transaction_uid, commitment.reason)

    async def commit_on(self, assoc: ClientAssociation) -> None:
        """Ask on ``assoc`` for what was stored and not yet asked for."""
        from dicomstore.services import commitment_scu  # (with --commit only: pydicom)

        while self.to_commit and assoc.t.conn.is_established:
            batch = self._batch()
            commitment = await commitment_scu.request_commitment(
                assoc,
                [_reference(r) for r in batch],
                timeout=self.opts.commit_timeout,
                listener=self.opts.commit_listener,
            )
            self._apply(batch, commitment)

    async def commit_rest(self) -> None:
        """What broken associations stored: asked for on an association of its own."""
        from dicomstore.services import commitment_scu

        while self.to_commit:
            batch = self._batch()
            opts = self.opts
            try:
                commitment = await commitment_scu.commit(
                    self.host,
                    self.port,
                    [_reference(r) for r in batch],
                    called_ae=opts.called_ae,
                    calling_ae=opts.calling_ae,
                    timeout=opts.commit_timeout,
                    timeouts=opts.timeouts,
                    ssl=opts.ssl,
                    listener=opts.commit_listener,
                    identity=opts.identity,
                )
            except Exception as exc:
                if classify(exc) is None:
                    raise
                refs = [_reference(r) for r in batch]
                commitment = commitment_scu.Commitment("", refs, reason=f"cannot ask: {_text(exc)}")
            self._apply(batch, commitment)

    def backoff(self, failures: int) -> float:
        delay = self.opts.retry_delay
        return min(delay * 2 ** min(max(0, failures - 1), 62), max(delay, 30.0))

    async def ready(self, job: _Job) -> bool:
        """Whether ``job`` (taken from the queue) is sent: its file was checked whole
        (now, if the scan left that for later: ``sources.check_file``; a large file in
        a worker thread); one corrupt or unreadable gets its result here."""
        if job.unchecked:
            if job.instance.size > CHECK_IN_LOOP_MAX:
                await asyncio.to_thread(_check, job)
            else:
                _check(job)
        if job.problem is not None:
            self.finish(job.problem)
            return False
        return True

    def _check_ahead(self, queue: deque[_Job]) -> None:
        """Check the next file while the peer answers the one just sent (in the event
        loop, between the send and the response: a file small enough that its walk
        cannot hold the loop up for long; a larger one is checked when taken)."""
        job = queue[0] if queue else None
        if job is not None and job.unchecked and job.instance.size <= CHECK_IN_LOOP_MAX:
            _check(job)

    async def group(self, specs: list[ContextSpec], jobs: list[_Job]) -> None:
        queue = deque(jobs)
        while queue and not await self.ready(queue[0]):  # (no association for nothing to send)
            queue.popleft()
        workers = max(1, min(self.opts.parallel, len(jobs)))
        await asyncio.gather(*(self.worker(specs, queue) for _ in range(workers)))
        kind, text = self.last_error or ("aborted", "not sent")
        while queue:  # every worker gave up (a file found corrupt keeps its result)
            job = queue.popleft()
            self.finish(job.problem or self.result(job, "failed", reason=text, error_kind=kind))

    async def worker(self, specs: list[ContextSpec], queue: deque[_Job]) -> None:
        opts, failures = self.opts, 0
        while queue:
            try:
                assoc = await associate(
                    self.host,
                    self.port,
                    called_ae=opts.called_ae,
                    calling_ae=opts.calling_ae,
                    contexts=specs,
                    max_pdu=opts.max_pdu,
                    max_ops=opts.max_ops if opts.max_ops != 1 else None,
                    timeouts=opts.timeouts,
                    ssl=opts.ssl,
                    identity=opts.identity,
                )
            except Exception as exc:
                known = classify(exc)
                if known is None:
                    raise
                self.last_error = (known[0], _text(exc))
                log.warning("association with %s:%s failed: %s", self.host, self.port, _text(exc))
                if not known[1] or failures >= opts.retries:
                    return
                failures += 1
                await asyncio.sleep(self.backoff(failures))
                continue
            try:
                stored, broken = await self.use(assoc, queue)
            except BaseException:
                await assoc.abort()
                raise
            if broken is None:
                if self.opts.commit:
                    await self.commit_on(assoc)
                await assoc.release()
                continue
            await assoc.abort()
            self.last_error = (classify(broken) or ("aborted", True))[0], _text(broken)
            log.warning("association ended: %s", _text(broken))
            # Give up after `retries` broken associations in a row that stored nothing.
            failures = 1 if stored else failures + 1
            if failures > opts.retries:
                return
            await asyncio.sleep(self.backoff(failures))

    async def use(
        self, assoc: ClientAssociation, queue: deque[_Job]
    ) -> tuple[int, BaseException | None]:
        """Send from the queue with the granted window of lanes, until empty or broken."""
        assert assoc.negotiated is not None
        granted = assoc.negotiated.max_ops_invoked
        window = self.opts.max_ops if granted == 0 else min(granted, self.opts.max_ops)
        stored = 0
        broken: BaseException | None = None

        loop = asyncio.get_running_loop()

        async def lane() -> None:
            nonlocal stored, broken
            while queue and broken is None:
                job = queue.popleft()
                if not await self.ready(job):
                    continue
                if queue:
                    loop.call_soon(self._check_ahead, queue)
                job.attempts += 1
                start = time.perf_counter()
                data, job.data = job.data, None  # (once: a retry reads the file)
                try:
                    rsp, ctx, conv, nbytes = await store_instance(
                        assoc,
                        job.instance,
                        convert=self.opts.convert,
                        priority=self.opts.priority,
                        data=data,
                    )
                except NotSendable as exc:
                    self.finish(self.result(job, "not-sent", reason=str(exc)))
                    continue
                except SourceReadError as exc:
                    # Half a message is out: nothing else may follow it (PS3.8 E.1).
                    broken = broken or exc
                    await assoc.abort()
                    self.finish(self.result(job, "failed", reason=str(exc)))
                    return
                except Exception as raised:
                    if classify(raised) is None:
                        raise
                    lost = _once_established(assoc, raised)
                    broken = broken or lost
                    if job.attempts > self.opts.retries:
                        kind = (classify(lost) or ("aborted", True))[0]
                        self.finish(self.result(job, "failed", reason=_text(lost), error_kind=kind))
                    else:
                        queue.append(job)  # at the end: one poisonous instance must not block
                    return
                seconds = time.perf_counter() - start
                other = _answered_for_another(rsp, job.instance)
                if other is not None:  # (its status is not this instance's: review38scu #11)
                    log.warning("%s: %s", job.instance.label, other)
                    res = self.result(job, "failed", status=rsp.status, seconds=seconds)
                    res.reason = other
                    self.finish(res)
                    continue
                status = rsp.status
                if st.is_transient(status, rsp.error_comment) and job.attempts <= self.opts.retries:
                    said = ": " + rsp.error_comment if rsp.error_comment else ""
                    text = f"{status:04X} {st.describe(status)}{said}"  # (-v: each try)
                    log.info("%s: %s, retrying", job.instance.label, text)
                    await asyncio.sleep(self.backoff(job.attempts))
                    queue.append(job)
                    continue
                category = st.category(status)
                outcome: Outcome = {"success": "stored", "warning": "warning"}.get(
                    category, "failed"
                )  # type: ignore[assignment]
                stored += outcome != "failed"
                res = self.result(job, outcome, status=status, seconds=seconds)
                res.error_comment = rsp.error_comment
                res.offending_element = list(rsp.offending_element or ()) or None
                res.transfer_syntax, res.converted, res.bytes = ctx.transfer_syntax, conv, nbytes
                if outcome == "failed":
                    res.reason = st.describe(status)
                self.finish(res)

        lanes = [asyncio.create_task(lane()) for _ in range(max(1, window))]
        try:
            await asyncio.gather(*lanes)
        except BaseException:
            for task in lanes:
                task.cancel()
            raise
        return stored, broken

    def result(self, job: _Job, outcome: Outcome, **kwargs: Any) -> Result:
        inst = job.instance
        return Result(
            str(inst.path) if inst.path is not None else None,
            inst.sop_class_uid,
            inst.sop_instance_uid,
            outcome,
            attempts=job.attempts,
            file_warning=inst.warning,
            index=job.index,
            **kwargs,
        )


def _check(job: _Job) -> None:
    """Walk a job's file whole (:func:`sources.check_file`): its bytes kept when it
    read them all, or its :attr:`_Job.problem` when it is not to be sent."""
    try:
        job.data = sources.check_file(job.instance)
    except NotDicom as exc:
        job.problem = _unsendable(job.instance.label, exc, job.index)


def _unsendable(label: str | None, exc: NotDicom, index: int) -> Result:
    """The result of a file not sent: ``corrupt`` (cut short, never sent nor
    retried), ``not-sent`` (unreadable: a failure) or ``skipped`` (not DICOM)."""
    if isinstance(exc, CorruptFile):
        cls, uid = exc.sop_class_uid, exc.sop_instance_uid
        return Result(label, cls, uid, "corrupt", reason=str(exc), index=index)
    outcome: Outcome = "not-sent" if isinstance(exc, sources.Unreadable) else "skipped"
    return Result(label, outcome=outcome, reason=str(exc), index=index)


def _reference(result: Result) -> Reference:
    from dicomstore.archive.commitment import Reference  # (--commit only: lazily)

    return Reference(result.sop_class_uid or "", result.sop_instance_uid or "")


def _text(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return failed_words(exc)
    return str(exc) or type(exc).__name__


def scan(
    items: Iterable[Dataset | str | os.PathLike],
) -> tuple[list[tuple[int, Instance]], list[Result]]:
    """Instances to send, and results for the files not sent (:func:`_unsendable`),
    with input positions. A file's data set is walked whole only when it is about to
    be sent (:meth:`_Run.ready`: the association opens after identifying every file,
    and each check overlaps the wait for the previous response), a deflated one now."""
    found: list[tuple[int, Instance]] = []
    skipped: list[Result] = []
    if isinstance(items, str | bytes | os.PathLike) or sources.is_dataset(items):
        items = [items]  # (one path, not its characters: review120 F1 scanned "/")
    expanded = (one for item in items for one in _expand(item))
    for index, item in enumerate(expanded):
        try:
            found.append((index, as_instance(item, check=False)))
        except NotDicom as exc:
            label = None if sources.is_dataset(item) else str(item)
            skipped.append(_unsendable(label, exc, index))
    return found, skipped


def _expand(item: Any) -> Iterable[Any]:
    return (item,) if sources.is_dataset(item) else sources.expand_paths([item])


async def send(
    host: str,
    port: int,
    items: Iterable[Dataset | str | os.PathLike],
    *,
    options: SendOptions | None = None,
    skip_uids: Container[str] = frozenset(),
    on_plan: Callable[[int, int], None] | None = None,
    on_result: Callable[[Result], None] | None = None,
    **kwargs: Any,
) -> list[Result]:
    """Send files, folders (recursively) and Datasets to ``host:port``; one Result each.

    ``options`` or keyword arguments set :class:`SendOptions` (``called_ae``,
    ``parallel``, ``max_ops``, ``convert``, ``retries``, ``retry_delay`` ...).
    One path or Dataset may be given alone. Instances whose SOP Instance UID is in
    ``skip_uids`` are ``already-stored``. ``on_plan(instances, bytes)`` is called
    once before sending and ``on_result`` for every result as it is known (with
    ``commit``, before its commitment is). Results come back in input order, with
    their ``commitment``. Network failures do not raise: they are in the results.
    """
    if options is not None and kwargs:  # (review120 F3: the keywords were dropped)
        raise TypeError(f"send() takes options or {', '.join(kwargs)}=, not both")
    opts = options or SendOptions(**kwargs)
    found, skipped = await asyncio.to_thread(scan, items)
    run = _Run(host, port, opts, on_result)
    for result in skipped:
        run.finish(result)
    todo: list[_Job] = []
    for index, inst in found:
        if inst.sop_instance_uid in skip_uids:
            run.finish(run.result(_Job(inst, index), "already-stored"))
        else:
            todo.append(_Job(inst, index))
    if on_plan is not None:
        on_plan(len(todo), sum(job.instance.size for job in todo))
    limit = MAX_CONTEXTS - 1 if opts.commit else MAX_CONTEXTS  # room for Storage Commitment
    groups = propose_contexts((job.instance for job in todo), convert=opts.convert, limit=limit)
    for specs in groups:
        classes = {abstract for abstract, _ts in specs}
        if opts.commit:
            from dicomstore.services.commitment_scu import CONTEXT

            specs = [*specs, CONTEXT]
        await run.group(specs, [job for job in todo if job.instance.sop_class_uid in classes])
    if opts.commit:
        await run.commit_rest()
    return sorted(run.results, key=lambda r: r.index)


def _once_established(assoc: ClientAssociation, exc: BaseException) -> BaseException:
    """A connection lost on an established association is its abort (PS3.8 7.4: an
    A-P-ABORT), not an unreachable peer (review38scu #3: exit 3, not 5): the abort the
    peer sent when it came first, else the connection's loss as one."""
    if not isinstance(exc, OSError):
        return exc
    ended = assoc.invoker.ended
    if isinstance(ended, AssociationAborted):
        return ended
    return AssociationAborted(f"the connection was lost: {exc.strerror or exc}")


def _answered_for_another(rsp: Any, instance: Instance) -> str | None:
    """Why a C-STORE-RSP is not the answer for ``instance``: its Affected SOP Class or
    Instance UID, when given, is another (PS3.7 9.3.1.2: equal to the request's)."""
    for name, sent in (
        ("Instance", instance.sop_instance_uid),
        ("Class", instance.sop_class_uid),
    ):
        said = getattr(rsp, f"affected_sop_{name.lower()}_uid", None)
        if said and said.rstrip("\0 ") != sent.rstrip("\0 "):
            return f"the SCP answered for SOP {name} UID {said!r}, not {sent!r}"
    return None
