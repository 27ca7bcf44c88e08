"""Store one instance: the one home of every guarantee a door owes (PS3.4 B.2).

C-STORE (``storage_scp.py``) and STOW-RS (``http/stow.py``) — and every door
added later — store through :class:`StoreService`, so each gets the same:

authorization
    the caller's right to store: ``store_aets`` (``--store-aet``) and the
    policy file (a :class:`~dicomstore.services.admission.Gatekeeper`),
    else 0124 Refused: Not Authorized (PS3.7 C.5.3);
limits
    ``min_free_bytes`` below which nothing is begun, ``max_instance_bytes``
    beyond which the data set is discarded as it arrives: A700 (PS3.4 B.2.3);
    a deflated data set (PS3.5 A.5) is also inflated as it arrives, only to
    count: beyond ``max_instance_bytes`` (or, without one,
    ``max_inflated_bytes``) inflated bytes, A700 too (a deflate bomb);
validation and durability
    the handler's (``Archive``: identity, hierarchy, encoding, duplicate and
    relational policies, flushes before the answer);
the operator's log line, the audit record, the ``on_stored`` event
    one of each per instance, whatever door it came through.

A door knows its protocol (presentation contexts, multipart parts) and asks
:meth:`StoreService.begin` for a :class:`Storing` before the data set arrives,
writes each fragment into it, and awaits :meth:`StoreService.finish` for the
:class:`StoreResult` it turns into its own answer. Answers a door gives by
itself (0122 for a SOP class off its context, a STOW part that is no PS3.10
file) go through :meth:`StoreService.refused`, for the same log and audit.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from dicomstore import status as st
from dicomstore import uids
from dicomstore.archive import layout
from dicomstore.handler import StoreHandler, StoreSink
from dicomstore.hooks import call_hook
from dicomstore.inflation import DEFAULT_MAX_INFLATED, InflatedSize
from dicomstore.services.admission import AdmissionRequest, AuditSink, Gatekeeper
from dicomstore.services.store_log import log_store
from dicomstore.sizes import binary_size

if TYPE_CHECKING:
    from pydicom import Dataset

log = logging.getLogger("dicomstore.storage")


@dataclass(frozen=True)
class StoredEvent:
    """Passed to the ``on_stored`` callback after an instance was acknowledged."""

    calling_ae: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    status: int
    outcome: Any
    #: the door it came through: ``"C-STORE"`` or ``"STOW-RS"``
    service: str = "C-STORE"

    @property
    def path(self) -> Path | None:
        """The stored file, when the handler says where (the archive does)."""
        path = getattr(self.outcome, "path", None)
        return Path(path) if path is not None else None

    @functools.cached_property
    def dataset(self) -> Dataset:
        """The stored instance as a pydicom ``Dataset``, read on first use from
        :attr:`path` (values over 64 KiB, such as Pixel Data, are read only when
        touched). Raises ``LookupError`` when the handler names no file."""
        if self.path is None:
            raise LookupError(f"{self.sop_instance_uid}: the handler did not say where it stored")
        from pydicom import dcmread

        return dcmread(self.path, defer_size=64 * 1024)


#: Called with each instance stored: a coroutine function, or a plain one.
OnStored = Callable[[StoredEvent], Awaitable[None] | None]


class Home(NamedTuple):
    """The loop an observer lives on and the thread running it (:func:`on_loop`)."""

    loop: asyncio.AbstractEventLoop
    thread: int

    @classmethod
    def here(cls) -> Home:
        """The running loop and this thread (call it from the observer's loop)."""
        return cls(asyncio.get_running_loop(), threading.get_ident())


def on_loop(home: Home | None, callback: Callable[..., object], *args: Any) -> None:
    """For an observer with a loop of its own: ``callback(*args)`` now when called in
    its loop's thread (or it has none yet), else soon in that thread (the door that
    stored runs on another loop, as an HTTP server in a thread of its own may).

    Per instance stored: the thread is compared, not the running loop looked up
    (``asyncio.get_running_loop`` costs a getpid(2) per call before Python 3.12)."""
    if home is None or home.thread == threading.get_ident():
        callback(*args)
    else:
        home.loop.call_soon_threadsafe(callback, *args)


@dataclass(frozen=True)
class Caller:
    """Who asks to store, as a door knows it.

    ``name`` is the calling AE title (for STOW-RS the AE title STOW-RS stores
    as), ``address`` the peer's IP address, ``may_store`` the door's own
    verdict (the A-ASSOCIATE admission; see :meth:`StoreService.admit` for a
    door without one), ``user`` an authenticated user, if any.
    """

    service: str
    name: str
    address: str = ""
    called_ae: str = ""
    may_store: bool = True
    user: str | None = None
    #: the failures of one request's many parts, told but the first few (STOW-RS:
    #: ``services/repeated.py``; review87 F4: 10,000 junk parts, 10,000 lines)
    repeated: Any = field(default=None, compare=False)

    @property
    def who(self) -> str:
        """For the log: the AE title, and for a door other than C-STORE the address
        when it differs and the user it authenticated (HTTP)."""
        if self.service == "C-STORE":
            return self.name
        who = f"{self.name} at {self.address}" if self.address else self.name
        return f"{who} (user {self.user})" if self.user else who


@dataclass(frozen=True)
class StoreLimits:
    """``max_instance_bytes``: largest data set (0: none), as sent and, when
    deflated, inflated; ``min_free_bytes``: free space below which nothing is
    stored (0: none); ``max_inflated_bytes``: what a deflated data set may
    inflate to when there is no ``max_instance_bytes``."""

    max_instance_bytes: int = 0
    min_free_bytes: int = 0
    max_inflated_bytes: int = DEFAULT_MAX_INFLATED

    @property
    def inflated_limit(self) -> int:
        """What a deflated data set may inflate to."""
        return self.max_instance_bytes or self.max_inflated_bytes


@dataclass(slots=True)
class StoreResult:
    """How a store ended: the status (PS3.4 B.2.3), the whole Error Comment (a door
    cuts it for its wire), the Offending Elements, the handler's outcome."""

    status: int
    comment: str | None = None
    offending: tuple[int, ...] | None = None
    outcome: Any = None

    @property
    def stored(self) -> bool:
        """Success or Warning: the instance is in the archive."""
        return not st.is_failure(self.status)

    @property
    def changed(self) -> bool:
        """Stored, and the archive changed: not a duplicate kept as it was."""
        return self.stored and not getattr(self.outcome, "kept", False)

    @property
    def row(self) -> dict[str, Any] | None:
        """The index row of the instance, when the handler's outcome names one (the
        archive's does: for a duplicate it kept, the row of the earlier store)."""
        return getattr(self.outcome, "instance", None)


#: Bytes of one data set between two checks of the free space (``min_free_bytes``).
FREE_CHECK_EVERY = 64 << 20


def free_bytes(root: Any) -> int:
    """Free bytes where the archive is (0 if that cannot be told: ``layout.free_bytes``)."""
    return layout.free_bytes(root) or 0


@dataclass(slots=True)
class Storing:
    """One instance on its way in: fragments go to the sink, or are discarded once
    it failed (the failure is answered by :meth:`StoreService.finish`)."""

    caller: Caller
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    sink: StoreSink | None
    limit: int = 0
    nbytes: int = 0
    result: StoreResult | None = None  # known before the data set ends
    failed_write: OSError | None = field(default=None, repr=False)
    started: float = field(default_factory=time.monotonic, repr=False)
    #: for a deflated data set: what it inflates to, counted as it arrives
    inflated: InflatedSize | None = field(default=None, repr=False)
    #: (the archive's folder, ``min_free_bytes``): free space checked again every
    #: :data:`FREE_CHECK_EVERY` bytes received (review38mem N3), from the byte count
    #: ``next_free_check`` (never without a floor: one comparison per fragment)
    free_floor: tuple[Any, int] | None = field(default=None, repr=False)
    next_free_check: float = math.inf

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append one fragment; an I/O error or a size limit fails the store."""
        self.nbytes += len(data)
        sink = self.sink
        if sink is None:
            return
        if self.limit and self.nbytes > self.limit:
            self._too_large(f"data set {st.OVER_SIZE_LIMIT} of {self.limit} bytes")
            return
        if self.nbytes >= self.next_free_check:
            assert self.free_floor is not None
            self.next_free_check += FREE_CHECK_EVERY
            free = free_bytes(self.free_floor[0])
            if free < self.free_floor[1]:
                floor, got = binary_size(self.free_floor[1]), binary_size(self.nbytes)
                self._too_large(f"--min-free {floor}: only {binary_size(free)} free ({got} in)")
                return
        inflated = self.inflated
        if inflated is not None and not inflated.feed(data):
            self._too_large(
                f"inflated data set {st.OVER_SIZE_LIMIT} of {inflated.limit} bytes"
                f" ({self.nbytes} deflated bytes received)"  # (an LO: the first 64 say it)
            )
            return
        try:
            sink.write(data)
        except OSError as exc:
            self.failed_write = exc
            self.sink = None
            sink.abort()

    def _too_large(self, comment: str) -> None:
        """A700 (PS3.4 B.2.3: Refused, Out of Resources): kept from the archive,
        the rest discarded unread; logged once the door answers (``finish``)."""
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.abort()
        self.inflated = None
        self.result = StoreResult(st.OUT_OF_RESOURCES, comment)

    def abort(self) -> None:
        """The door gave up mid-data set (connection lost): leave nothing behind."""
        if self.sink is not None:
            sink, self.sink = self.sink, None
            sink.abort()


class StoreService:
    """Stores instances for every door, with the guarantees of the module docstring."""

    def __init__(
        self,
        handler: StoreHandler,
        *,
        limits: StoreLimits | None = None,
        store_aets: frozenset[str] | None = None,
        gatekeeper: Gatekeeper | None = None,
        audit: AuditSink | None = None,
        on_stored: OnStored | None = None,
        transfer_syntaxes: tuple[str, ...] | None = None,
        accept_unknown: bool = False,
    ) -> None:
        self.handler = handler
        #: what a door without a negotiation (STOW-RS) may store: the transfer syntaxes
        #: (None: any known) and SOP classes the server's C-STORE contexts accept
        self.transfer_syntaxes = transfer_syntaxes
        self.accept_unknown = accept_unknown
        self.limits = limits or StoreLimits()
        self.store_aets = store_aets
        self.gatekeeper = gatekeeper
        self.audit = audit
        self.on_stored = on_stored
        #: called with (storing, result) once per store, whatever the door and the
        #: outcome, after its log line (``services.metrics`` counts there); quick
        self.observers: list[Callable[[Storing, StoreResult], None]] = []
        self._callbacks: set[asyncio.Task[None]] = set()

    # -- authorization -------------------------------------------------------------

    def refuses(self, sop_class_uid: str, transfer_syntax_uid: str) -> tuple[int, str] | None:
        """For a door without a presentation context (STOW-RS): the status and comment
        refusing what an association's negotiation would not accept (review54 F4),
        else None. C122 (PS3.18 I.2-2) for a transfer syntax, 0122 for a SOP class."""
        syntaxes = self.transfer_syntaxes
        if transfer_syntax_uid not in (syntaxes or uids.transfer_syntaxes()):
            comment = f"transfer syntax {transfer_syntax_uid} not supported"
            return st.TRANSFER_SYNTAX_NOT_SUPPORTED, comment
        if not self.accept_unknown and sop_class_uid not in uids.storage_sop_classes():
            return st.SOP_CLASS_NOT_SUPPORTED, f"SOP class {sop_class_uid} is not a storage class"
        return None

    def may_store(self, calling_ae: str, admitted: bool) -> bool:
        """Whether a caller the door ``admitted`` to store (its policy verdict) may:
        ``store_aets``, when set, must name it too."""
        return admitted and (self.store_aets is None or calling_ae in self.store_aets)

    def admit(self, service: str, calling_ae: str, called_ae: str, address: str) -> Caller:
        """The caller of a door without an association of its own (STOW-RS): the
        policy file decides as it would for an A-ASSOCIATE-RQ from ``calling_ae`` at
        ``address`` (a refused one may not store), then ``store_aets``. Blocking
        (a gatekeeper may hash a passcode): call it in a worker thread."""
        admitted, user = True, None
        if self.gatekeeper is not None:
            admission = self.gatekeeper.admit(AdmissionRequest(calling_ae, called_ae, address))
            admitted = admission.reject is None and admission.may_store
            user = admission.user
        return Caller(
            service,
            calling_ae,
            address,
            called_ae,
            may_store=self.may_store(calling_ae, admitted),
            user=user,
        )

    # -- one instance --------------------------------------------------------------

    def begin(
        self,
        caller: Caller,
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
    ) -> Storing:
        """Check who and whether, then open the handler's sink before the data set
        arrives; a refusal is kept in :attr:`Storing.result` (the data set that
        follows is discarded) and answered by :meth:`finish`."""
        storing = Storing(
            caller,
            sop_class_uid,
            sop_instance_uid,
            transfer_syntax_uid,
            None,
            self.limits.max_instance_bytes,
        )
        if not caller.may_store:
            who = caller.name if caller.user is None else f"{caller.name} as user {caller.user!r}"
            storing.result = StoreResult(st.NOT_AUTHORIZED, f"{who} may not store here")
            return storing
        root = getattr(self.handler, "root", None)
        if self.limits.min_free_bytes and root is not None:
            short = self.short_of_space(root)
            if short is not None:
                storing.result = StoreResult(st.OUT_OF_RESOURCES, short)
                return storing
            storing.free_floor = (root, self.limits.min_free_bytes)
            storing.next_free_check = FREE_CHECK_EVERY
        try:
            storing.sink = self.handler.begin(
                sop_class_uid=sop_class_uid,
                sop_instance_uid=sop_instance_uid,
                transfer_syntax_uid=transfer_syntax_uid,
                calling_ae=caller.name,
                called_ae=caller.called_ae,
            )
        except (OSError, ValueError) as exc:  # (ValueError: an archive closed)
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            storing.result = StoreResult(st.OUT_OF_RESOURCES, f"cannot store: {why}")
            return storing
        # a deflated data set's inflated size is counted as it arrives: a bomb is cut short
        if uids.is_deflated(transfer_syntax_uid.strip()):
            storing.inflated = InflatedSize(self.limits.inflated_limit)
        return storing

    def short_of_space(self, root: Any) -> str | None:
        """The Error Comment refusing a store for want of space where the archive
        is (``root``): free bytes below ``min_free_bytes``; None when there is room
        (:meth:`begin`'s judgement, and readiness's: ``readiness.py``)."""
        free, floor = free_bytes(root), self.limits.min_free_bytes
        if free < floor:  # (the limit named first, within 64 characters: review100 W2)
            return f"--min-free {binary_size(floor)}: only {binary_size(free)} free"
        return None

    async def finish(self, storing: Storing, *, in_thread: bool = True) -> StoreResult:
        """The data set is complete: commit durably (``in_thread``: in a worker
        thread), then log, audit and announce it; the result to answer."""
        result = await self._commit(storing, in_thread)
        self._record(storing, result)
        return result

    def refused(
        self,
        caller: Caller,
        sop_class_uid: str | None,
        sop_instance_uid: str | None,
        status: int,
        comment: str,
        *,
        nbytes: int = 0,
    ) -> StoreResult:
        """A store the door answered by itself (its protocol's reasons): logged
        and audited like any other."""
        storing = Storing(caller, sop_class_uid or "", sop_instance_uid or "", "", None)
        storing.nbytes = nbytes
        result = StoreResult(status, comment)
        self._record(storing, result)
        return result

    async def _commit(self, storing: Storing, in_thread: bool) -> StoreResult:
        if storing.result is not None:
            return storing.result
        sink, storing.sink = storing.sink, None
        if sink is None:
            exc = storing.failed_write
            text = exc.strerror if exc is not None and exc.strerror else str(exc)
            return StoreResult(st.OUT_OF_RESOURCES, f"write failed: {text}")
        try:
            outcome = await asyncio.to_thread(sink.commit) if in_thread else sink.commit()
        except Exception as exc:  # noqa: BLE001 - a handler bug must not be Success
            log.exception("handler failed to commit %s", storing.sop_instance_uid)
            sink.abort()
            return StoreResult(st.PROCESSING_FAILURE, f"handler error: {exc}")
        result = StoreResult(
            outcome if isinstance(outcome, int) else getattr(outcome, "status", st.SUCCESS),
            getattr(outcome, "error_comment", None),
            getattr(outcome, "offending_element", None),
            outcome,
        )
        if self.on_stored is not None and result.stored:
            event = StoredEvent(
                storing.caller.name,
                storing.sop_class_uid,
                storing.sop_instance_uid,
                storing.transfer_syntax_uid,
                result.status,
                outcome,
                storing.caller.service,
            )
            task = asyncio.ensure_future(self._call_back(event))
            self._callbacks.add(task)
            task.add_done_callback(self._callbacks.discard)
        return result

    def _record(self, storing: Storing, result: StoreResult) -> None:
        """The operator's log line and the audit record of one store."""
        caller = storing.caller
        uid = storing.sop_instance_uid
        log_store(caller.service, caller.who, uid, result.status, result.comment, caller.repeated)
        for observe in self.observers:
            observe(storing, result)
        if self.audit is None:
            return
        row = result.row or {}
        self.audit.instance(
            {
                "event": "instance",
                "service": caller.service,
                "calling_ae": caller.name,
                "address": caller.address or None,
                "user": caller.user,
                "sop_class_uid": storing.sop_class_uid or None,
                "sop_instance_uid": storing.sop_instance_uid or None,
                "study_instance_uid": row.get("study_uid"),  # the index row's key
                "bytes": storing.nbytes,
                "digest": row.get("digest"),
                "status": f"{result.status:04X}",
                "error_comment": result.comment,
            }
        )

    async def _call_back(self, event: StoredEvent) -> None:
        assert self.on_stored is not None
        try:
            await call_hook(self.on_stored, event)  # (plain, or async: review120 F4)
        except Exception:  # noqa: BLE001 - a user callback must not kill the server
            log.exception("on_stored callback failed for %s", event.sop_instance_uid)
