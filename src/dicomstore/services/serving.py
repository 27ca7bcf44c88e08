"""A server's life: started, serving, closed gracefully (PS3.8 7.3).

:func:`running` is the one lifecycle, used by ``dicomstore serve`` (which adds
the HTTP door and signals) and by :func:`serve`, the common case of
:class:`~dicomstore.services.server.Server` in one call::

    await dicomstore.serve("dicomstore-data", port=11112, ae_title="DICOMSTORE")

Leaving :func:`running` is the graceful ``Server.close``: stop accepting, let
in-flight C-STOREs finish within ``shutdown_grace``, abort the rest.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from dicomstore.archive.nodes import Held, ServiceLock
from dicomstore.handler import StoreHandler
from dicomstore.hooks import call_hook
from dicomstore.services.admission import AuditSink, Gatekeeper
from dicomstore.services.arrivals import OtherArrivals
from dicomstore.services.server import Server, ServerConfig, archive_commit_mode
from dicomstore.services.stability import OnStable, StudyStability
from dicomstore.services.storage_scp import OnStored

if TYPE_CHECKING:  # (forwarding, and pydicom with it, loads with --forward)
    from dicomstore.services.commitment_reports import CommitmentService
    from dicomstore.services.forwarding import Forwarding

log = logging.getLogger("dicomstore.server")


@asynccontextmanager
async def running(
    handler: StoreHandler,
    config: ServerConfig,
    *,
    on_stored: OnStored | None = None,
    commit_in_thread: bool | str = True,
    gatekeeper: Gatekeeper | None = None,
    audit: AuditSink | None = None,
    on_study_stable: OnStable | None = None,
) -> AsyncIterator[Server]:
    """A :class:`Server` on ``handler``, listening inside the block and closed
    gracefully when it is left (however it is left). On an archive, studies
    become stable after ``config.stable_age`` quiet seconds: logged, then
    ``on_study_stable`` and the configured command and webhook
    (``services/stability.py``); ``server.stability`` is that watcher. With
    ``config.forward`` rules, what is stored is forwarded
    (``services/forwarding.py``); ``server.forwarding`` does it.

    Several nodes on one storage root: forwarding and the events run in the
    node holding their lock (``archive/nodes.py``). Forwarding where another
    live node forwards raises :class:`~dicomstore.archive.nodes.Held`; without
    the events lock this node logs it, watches no study and takes the events
    over (tried every stable age) once their node ends, or, forwarding
    when=stable, once their node hands them over: it asks by holding the
    :data:`WANTED` lock, and a node running them for no when=stable rule hands
    them over when it sees it (review88 F5).

    Raises :class:`OSError` when the port cannot be bound.
    """
    server = Server(
        config,
        handler,
        on_stored=on_stored,
        commit_in_thread=commit_in_thread,
        gatekeeper=gatekeeper,
        audit=audit,
    )
    locks: list[ServiceLock] = []
    forwarding: Forwarding | None = None
    takeover: asyncio.Task[None] | None = None
    elsewhere: OtherArrivals | None = None
    helpers: list[asyncio.Task[None]] = []

    def arrived_elsewhere(rows: list[dict[str, Any]]) -> None:
        if forwarding is not None:
            forwarding.arrived_elsewhere(rows)
        if server.stability is not None:
            server.stability.arrived_elsewhere(rows)

    async def watch_elsewhere() -> None:
        """What other nodes store, for the services this node runs (``arrivals.py``)."""
        nonlocal elsewhere
        if elsewhere is None and server.reader is not None:
            elsewhere = OtherArrivals(server.reader, arrived_elsewhere)
            await elsewhere.start()

    async def start_stability() -> None:
        assert server.reader is not None
        hooks = [on_study_stable] if on_study_stable else []
        if forwarding is not None and forwarding.stable_rules:
            hooks.append(forwarding.study_stable)
        stability = StudyStability(
            server.reader,
            config.stable_age,
            on_stable=hooks,
            exec_command=config.on_stable_exec,
            webhook=config.stable_webhook,
            fsync=bool(getattr(handler, "fsync", True)),
            on_damage=getattr(getattr(handler, "health", None), "failed", None),
        )
        server.store.observers.append(stability.observe)
        server.stability = stability
        await stability.start()
        stability.catch_up()  # (a scan of the index: not before the port opens)
        await watch_elsewhere()

    def wants_events() -> bool:
        return forwarding is not None and bool(forwarding.stable_rules)

    async def take_over(lock: ServiceLock, wanted: ServiceLock | None = None) -> None:
        """The events, once the node running them ends or hands them over (tried every
        stable age; ``wanted``: this node forwards when=stable and asks for them by
        holding it; without it, a node leaves them to a node that asks)."""
        while (wanted is None and _asked(lock)) or not lock.take():
            await asyncio.sleep(config.stable_age)
        locks.append(lock)
        log.info("study-complete events of %s run in this node now", lock.path.parent)
        await start_stability()
        if wanted is not None:
            locks.remove(wanted)
            wanted.close()
            assert forwarding is not None
            try:
                await forwarding.events_taken()
            except Exception as exc:  # noqa: BLE001 - (review90 N3: it went unsaid)
                log.error("forwarding: the studies stable meanwhile not queued: %s", exc)
        else:
            helpers.append(asyncio.create_task(hand_over(lock), name="events-hand-over"))

    async def hand_over(lock: ServiceLock) -> None:
        """review88 F5: the events, run here for no when=stable rule, handed to the
        node forwarding when=stable once it asks (it could not start while another
        node held them, and none hands them back); taken over again after it ends."""
        nonlocal takeover
        while not _asked(lock):
            await asyncio.sleep(config.stable_age)
        stability, server.stability = server.stability, None
        if stability is not None:
            server.store.observers.remove(stability.observe)
            await stability.close()
        locks.remove(lock)
        lock.close()
        log.info(
            "study-complete events of %s handed to the node forwarding when=stable",
            lock.path.parent,
        )
        takeover = asyncio.create_task(take_over(lock), name="events-takeover")

    async def stop_helpers() -> None:
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        if elsewhere is not None:
            await elsewhere.close()
        if takeover is not None:
            takeover.cancel()
            await asyncio.gather(takeover, return_exceptions=True)
        if server.stability is not None:
            await server.stability.close()
        if forwarding is not None:
            await forwarding.close(config.shutdown_grace)
        for lock in locks:
            lock.close()

    try:
        forwarding = await _forwarding(server, config, locks)
        server.forwarding = forwarding
        if forwarding is not None and any(r.when == "instance" for r in forwarding.rules):
            await watch_elsewhere()
        if server.reader is not None and config.stable_age > 0:
            events = ServiceLock(server.reader.root, "events")
            if not wants_events() and _asked(events):  # (review90 I1: taken, then handed)
                log.info(
                    "study-complete events of %s asked for by the node forwarding"
                    " when=stable; not here",
                    server.reader.root,
                )
                takeover = asyncio.create_task(take_over(events), name="events-takeover")
            elif events.take():
                locks.append(events)
                await start_stability()
                if not wants_events():
                    helpers.append(asyncio.create_task(hand_over(events), name="events-hand-over"))
            elif wants_events():  # (asked for: the node running them hands them over)
                wanted = ServiceLock(server.reader.root, WANTED)
                for _ in range(50):  # (a node's probe holds it for a moment: review90 N5)
                    if wanted.take():
                        break
                    await asyncio.sleep(0.1)
                else:
                    raise Held(f"the study-complete events are asked for by {wanted.holder}")
                locks.append(wanted)
                log.warning(
                    "study-complete events of %s run in another node (%s): asked for, the"
                    " when=stable forward rules wait for them (within --stable-age %gs)",
                    server.reader.root,
                    events.holder,
                    config.stable_age,
                )
                takeover = asyncio.create_task(take_over(events, wanted), name="events-takeover")
            else:  # (expected in the workers of `serve --workers`: the first runs them)
                log.log(
                    logging.INFO if config.share is not None else logging.WARNING,
                    "study-complete events of %s run in another node (%s); not here",
                    server.reader.root,
                    events.holder,
                )
                takeover = asyncio.create_task(take_over(events), name="events-takeover")
        keeper = getattr(handler, "keep_held", None)
        if keeper is not None:
            helpers.append(asyncio.create_task(_keep_held(keeper), name="keep-held"))
        if server.commitments is not None:  # (looks once the server has started, below)
            orphans = _report_orphans(server.commitments)
            helpers.append(asyncio.create_task(orphans, name="commitment-orphans"))
        await server.start()
    except BaseException:
        await stop_helpers()
        raise
    try:
        yield server
    finally:
        log.info(
            "shutting down: finishing in-flight operations (%gs at most)",
            server.config.shutdown_grace,
        )
        await server.close()
        await stop_helpers()


#: The lock a node forwarding when=stable holds to ask for the study-complete events.
WANTED = "events-wanted"


def _asked(events: ServiceLock) -> bool:
    """Whether a node forwarding when=stable asks for the events (``running``)."""
    return ServiceLock(events.path.parent, WANTED).held_elsewhere()


#: Seconds between two looks for Storage Commitment requests no live node holds.
ORPHANS_LOOK_EVERY = 30.0


async def _report_orphans(commitments: CommitmentService) -> None:
    """Every :data:`ORPHANS_LOOK_EVERY` seconds, the Storage Commitment requests no live
    node holds (their node died) taken over and reported (review88 F3: only a node's
    start did; review90 N4: a node seen neither alive nor dead between two looks)."""
    while True:
        await asyncio.sleep(ORPHANS_LOOK_EVERY)
        try:
            if await asyncio.to_thread(commitments.journal.unheld):
                await commitments.start(stranded=False)  # (module notes)
        except Exception as exc:  # noqa: BLE001 - tried again at the next look
            log.warning("storage commitment requests of nodes that ended not taken: %s", exc)


#: Seconds between two looks at an archive's index session (``Archive.keep_held``).
KEEP_HELD_EVERY = 15.0


async def _keep_held(keep_held: Callable[[], None]) -> None:
    """``keep_held`` in a worker thread every :data:`KEEP_HELD_EVERY` seconds: a
    PostgreSQL restart ends an idle node's session, and with it the archive's lock
    in the database (review50 #13); a failure is the stores' to say."""
    while True:
        await asyncio.sleep(KEEP_HELD_EVERY)
        try:
            await asyncio.to_thread(keep_held)
        except Exception as exc:  # noqa: BLE001 - the index unreachable: tried again
            log.debug("the index's session not checked: %s", exc)


async def _forwarding(
    server: Server, config: ServerConfig, locks: list[ServiceLock]
) -> Forwarding | None:
    """The forwarding of ``config.forward`` (None without rules), its queue opened
    and recovered, started, its lock appended to ``locks``. ValueError when it
    cannot be: no archive, a ``when=stable`` rule without study-complete events;
    :class:`Held` when another node of this storage root forwards."""
    if not config.forward:
        return None
    if server.reader is None:
        raise ValueError("forwarding needs an archive (the handler has no index)")
    if config.stable_age <= 0 and any(rule.when == "stable" for rule in config.forward):
        raise ValueError("a when=stable forward rule needs study-complete events (stable age > 0)")
    lock = ServiceLock(server.reader.root, "forward")
    if not lock.take():
        raise Held(
            f"forwarding from {server.reader.root} already runs in another node "
            f"({lock.holder}): enable --forward on one node only"
        )
    locks.append(lock)
    from dicomstore.services.forward_recovery import damaged
    from dicomstore.services.forwarding import Forwarding

    forwarding = Forwarding(
        server.reader,
        config.forward,
        calling_ae=config.ae_title,
        timeouts=config.timeouts,
        max_pdu=config.max_pdu,
        retry_delay=config.forward_retry_delay,
        retry_max=config.forward_retry_max,
        max_attempts=config.forward_max_attempts,
        inflated_limit=server.store.limits.inflated_limit,
    )
    try:
        await asyncio.to_thread(forwarding.open)
    except sqlite3.DatabaseError as exc:  # (its queue's file: named)
        raise damaged(server.reader.root, exc) from exc
    if any(rule.when == "instance" for rule in forwarding.rules):  # (stable rules: the hook)
        server.store.observers.append(forwarding.observe)
    await forwarding.start()
    return forwarding


async def serve(
    storage: str | os.PathLike[str] | StoreHandler = "dicomstore-data",
    *,
    port: int | None = None,
    host: str | None = None,
    ae_title: str | None = None,
    config: ServerConfig | None = None,
    on_stored: OnStored | None = None,
    on_ready: Callable[[Server], object] | None = None,
    on_study_stable: OnStable | None = None,
    **archive_options: Any,
) -> None:
    """Run a Verification and Storage SCP (PS3.4 A, B.2) until the task is cancelled.

    ``storage`` is an archive root (opened, created if missing, and closed at
    the end; refused when it holds stored instances and its index none, the index
    lost: ``require_index``; ``archive_options`` such as ``fsync`` or ``on_duplicate``
    go to :class:`~dicomstore.archive.Archive`) or a :class:`~dicomstore.StoreHandler`
    (left open).  ``port``, ``host`` and ``ae_title`` override ``config``
    (default :class:`ServerConfig`: 127.0.0.1:11112, ``DICOMSTORE``).
    ``on_stored`` is called after each acknowledged instance (e.g.
    ``StoredEvents().publish``); ``on_ready(server)`` once listening
    (``server.port`` is the port bound, useful with port 0);
    ``on_study_stable(event)`` when a study of the archive has had no new
    instance for ``config.stable_age`` seconds (a :class:`StableStudy`).

    Cancelling the task closes gracefully, then the cancellation propagates.
    Raises :class:`OSError` when the port cannot be bound, and what the archive
    raises when it cannot be opened.
    """
    config = config or ServerConfig()
    if port is not None:
        config = dataclasses.replace(config, port=port)
    if host is not None:
        config = dataclasses.replace(config, host=host)
    if ae_title is not None:
        config = dataclasses.replace(config, ae_title=ae_title)
    archive = None
    if isinstance(storage, str | os.PathLike):
        from dicomstore.archive import Archive

        try:
            archive_options.setdefault("require_index", True)
            archive = Archive(os.fspath(storage), **archive_options)
        except Exception as exc:
            log.error("cannot open the archive %s: %s", storage, exc)
            raise
        handler: StoreHandler = archive
        remote = archive.index_remote  # (as `dicomstore serve`)
        in_thread: bool | str = archive_commit_mode(archive.commits_wait, remote)
    elif archive_options:
        raise TypeError(f"archive options {sorted(archive_options)} need an archive path")
    elif isinstance(storage, StoreHandler):
        handler, in_thread = storage, True
    else:
        raise TypeError(f"serve() takes an archive path or a StoreHandler, not {storage!r}")
    listening = False
    try:
        async with running(
            handler,
            config,
            on_stored=on_stored,
            commit_in_thread=in_thread,
            on_study_stable=on_study_stable,
        ) as server:
            listening = True
            if on_ready is not None:
                await call_hook(on_ready, server)  # (plain, or async: review120 F5)
            await asyncio.get_running_loop().create_future()  # until cancelled
    except OSError as exc:
        if not listening and exc.filename is None:  # (else a file's: its message says)
            log.error("cannot listen on %s:%s: %s", config.host, config.port, exc)
        raise
    finally:
        if archive is not None:
            archive.close()
