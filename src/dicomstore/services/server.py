"""The DICOM server: Verification, Storage and Q/R FIND, MOVE, GET SCP on asyncio (PS3.4 A, B, C).

:class:`Server` is the application the asyncio shell serves: an
:class:`~dicomstore.aio.listener.Listener` accepts connections and hands each
to an :class:`~dicomstore.services.acceptor.AcceptorAssociation`; the server
holds what they share — the negotiation policy, the gatekeeper and its
throttle, the one store service (``storage.py``, also given to STOW-RS), the
audit sink, a read-only view of the archive index for C-FIND, C-MOVE, C-GET (when
the handler is an archive: anything with a ``root`` holding an index), the
C-MOVE destinations (``ServerConfig.move_destinations`` and the gatekeeper's,
e.g. the policy file's ``[destinations]``), and the Storage Commitment service
(journal, reports, retries: ``commitment_reports.py``) with the addresses of the
commitment SCUs (``ServerConfig.commitment_scus``, ``[commitment_scus]``).
``close()`` stops accepting, lets in-flight operations finish within
``shutdown_grace``, then aborts what is left.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
from typing import TYPE_CHECKING

from dicomstore.aio.association import Transport
from dicomstore.aio.listener import Listener
from dicomstore.aio.stream import Stream
from dicomstore.archive.reader import UNREADABLE, ArchiveReader
from dicomstore.handler import StoreHandler
from dicomstore.inflation import keep_free
from dicomstore.services.acceptance import association_record, stop_now
from dicomstore.services.acceptor import WHEN_BUSY, AcceptorAssociation
from dicomstore.services.admission import Admission, AuditSink, FailedAdmissions, Gatekeeper
from dicomstore.services.commitment_reports import CommitmentService
from dicomstore.services.destinations import Destination
from dicomstore.services.server_config import DIMSE_TIMEOUT, ServerConfig
from dicomstore.services.storage import OnStored, StoreLimits, StoreService
from dicomstore.ul.connection import Connection, Role

if TYPE_CHECKING:  # (the Q/R SCPs, and pydicom with them, load when first needed)
    from dicomstore.aio.invoker import Invoker
    from dicomstore.services.commitment_scp import CommitmentSCP
    from dicomstore.services.forwarding import Forwarding
    from dicomstore.services.get_scp import GetSCP
    from dicomstore.services.query_scp import QuerySCP
    from dicomstore.services.retrieve_scp import RetrieveSCP
    from dicomstore.services.same_association import SameAssociationStore
    from dicomstore.services.stability import StudyStability
    from dicomstore.ul import pdu as P

__all__ = ["WHEN_BUSY", "Server", "ServerConfig", "archive_commit_mode"]

log = logging.getLogger("dicomstore.server")

#: The modules of the Q/R and commitment SCPs (:meth:`Server.load_qr`).
QR_MODULES = tuple(
    f"dicomstore.services.{name}"
    for name in ("query_scp", "retrieve_scp", "get_scp", "commitment_scp")
)


def archive_commit_mode(commits_wait: bool, remote: bool = False) -> bool | str:
    """How to commit into an ``Archive`` (``Server(commit_in_thread=...)``, given
    ``Archive.commits_wait`` and ``Archive.index_remote``): without fsync and with
    SQLite a commit is a few page-cache writes, cheaper inline than a thread hop; one
    that waits on this machine (fsyncs) in a thread while others could be served
    meanwhile (:data:`WHEN_BUSY`); one that waits on a PostgreSQL server, always in a
    thread: a server that stops answering holds a commit up to its answer timeout, then
    its reconnection up to its connect timeout, and the loop must serve the other
    associations and HTTP meanwhile (review107 M1: a lone association's commit on the
    loop held every door until the server answered again)."""
    if remote:
        return True
    return WHEN_BUSY if commits_wait else False


class Server:
    """A DICOM server on asyncio: Verification and Storage SCP (PS3.4 A, B).

    ``commit_in_thread``: ``True`` runs each handler commit in a worker thread
    (a handler may block there as long as it likes), ``False`` on the event
    loop (for commits that never wait), :data:`WHEN_BUSY` in a worker thread
    except for a lone association awaiting each answer, whose commit runs on
    the loop and answers sooner (for handlers that never wait on the loop,
    like the archive: ``dicomstore serve`` with ``--fsync on``).
    """

    def __init__(
        self,
        config: ServerConfig,
        handler: StoreHandler,
        *,
        on_stored: OnStored | None = None,
        commit_in_thread: bool | str = True,
        gatekeeper: Gatekeeper | None = None,
        audit: AuditSink | None = None,
    ) -> None:
        self.config = config
        self.handler = handler
        self.gatekeeper = gatekeeper
        self.audit = audit
        #: the one store service: C-STORE here, and any other door given it (STOW-RS)
        self.store = StoreService(
            handler,
            limits=StoreLimits(config.max_instance_bytes, config.min_free_bytes),
            store_aets=config.store_aets,
            gatekeeper=gatekeeper,
            audit=audit,
            on_stored=on_stored,
            transfer_syntaxes=config.transfer_syntaxes,
            accept_unknown=config.accept_unknown,
        )
        if hasattr(handler, "store_service"):  # (an Archive: doors over it store here)
            handler.store_service = self.store
        self._scratch = _scratch_of(handler)
        if self._scratch is not None:  # (its conversions' copies keep --min-free too)
            keep_free(self._scratch, config.min_free_bytes)
        if commit_in_thread not in (True, False, WHEN_BUSY):
            raise ValueError(f"commit_in_thread must be True, False or {WHEN_BUSY!r}")
        self.commit_in_thread = commit_in_thread
        #: the index C-FIND answers from (None: the handler is no archive)
        self.reader = _reader_of(handler)
        self.policy = config.policy(find=self.reader is not None)
        self.destinations = _addresses(config.move_destinations, gatekeeper, "destinations")
        #: Storage Commitment: the journal of requests and their reports (an archive only)
        self.commitments: CommitmentService | None = None
        if self.reader is not None:
            self.commitments = CommitmentService(
                self.reader,
                self.reader.root,
                ae_title=config.ae_title,
                scus=_addresses(config.commitment_scus, gatekeeper, "commitment_scus"),
                timeouts=config.timeouts,
                # (--dimse-timeout: review117 F5, the report's answer waited 60 s)
                report_timeout=config.timeouts.dimse or DIMSE_TIMEOUT,
                fsync=bool(getattr(handler, "fsync", True)),
                max_references=config.max_commitment_references,
                max_pending=config.max_pending_commitments,
                audit=getattr(audit, "commitment", None),
            )
        self.failed_admissions = FailedAdmissions(
            config.max_failed_admissions,
            config.failed_admission_window,
            user_limit=config.max_failed_logins_per_user,
        )
        self.associations: set[AcceptorAssociation] = set()
        #: study-complete events (set by ``serving.running`` on an archive)
        self.stability: StudyStability | None = None
        #: forwarding (set by ``serving.running`` when there are rules)
        self.forwarding: Forwarding | None = None
        self._qr_loading = asyncio.Lock()
        self.listener = Listener(
            config.host,
            config.port,
            self._on_connect,
            ssl_context=config.ssl,
            handshake_timeout=config.timeouts.artim,
            share=config.share,
            admit=self._pending_crowded,
            refused=self._tls_refused,
        )

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        return self.listener.port

    async def start(self) -> None:
        """Bind and start accepting connections."""
        await self.listener.start()
        if self.commitments is not None:
            await self.commitments.start()
        log.info(
            "listening on %s:%d as %s%s",
            self.config.host,
            self.port,
            self.config.ae_title,
            " (TLS)" if self.config.ssl is not None else "",
        )

    async def serve_forever(self) -> None:
        """Start (if needed) and serve until cancelled or closed."""
        if not self.listener.started:
            await self.start()
        await self.listener.serve_forever()

    def _tls_refused(self, address: str, why: str) -> None:
        """A TLS handshake refused (no client certificate, one not trusted, not TLS):
        an association record of the audit log, as a caller refused later is
        (PS3.15 A.5.3.11 *Security Alert*: a node authentication failure)."""
        if self.audit is not None:
            self.audit.association(association_record(address, f"rejected: TLS handshake: {why}"))

    async def _on_connect(self, stream: Stream) -> None:
        conn = Connection(Role.ACCEPTOR, max_pdata=self.config.max_pdu)
        transport = Transport(stream, conn, self.config.timeouts)
        # every connection, for shutdown; the association limits count only those
        # whose request was complete and within them (AcceptorAssociation.holds_slot)
        assoc = AcceptorAssociation(self, transport)
        crowded = self._pending_crowded(assoc.address)
        if crowded is not None:
            log.warning("%s: connection closed at once: %s", transport.peer, crowded)
            stream.close()
            return
        self.associations.add(assoc)
        try:
            await assoc.run()
        finally:
            self.associations.discard(assoc)

    def _pending_crowded(self, address: str) -> str | None:
        """Why a new connection from ``address`` is not served: too many connections
        have not sent their association request yet (they could hold every socket
        and buffer until their ARTIM timeouts), TLS ones in their handshake among them
        (asked by the listener before it: review107 M2), those being closed not; None
        to serve it."""
        limit = self.config.max_pending_connections
        if not limit:
            return None
        pending = [
            a.address
            for a in self.associations
            if a.request is None and not a.t.writer.is_closing()
        ]
        pending += self.listener.handshaking.elements()
        if len(pending) >= limit:
            return (
                f"{len(pending)} connection(s) have sent no association request yet"
                " (--max-pending-connections)"
            )
        share = max(1, limit // 4)
        if pending.count(address) >= share:
            return (
                f"{share} connection(s) from {address} have sent no association request yet"
                " (a quarter of --max-pending-connections)"
            )
        return None

    async def load_qr(self) -> None:
        """Import the Q/R and commitment SCPs (pydicom with them: a quarter of a
        second or more) in a worker thread, before the first request that needs
        them, so that the loop serves the other associations meanwhile."""
        async with self._qr_loading:
            if not all(name in sys.modules for name in QR_MODULES):
                await asyncio.to_thread(lambda: [importlib.import_module(m) for m in QR_MODULES])

    def query_scp(
        self, t: Transport, rq: P.AssociateRQ, address: str, admission: Admission
    ) -> QuerySCP:
        """The C-FIND SCP of one association (answers 0122 without an archive)."""
        from dicomstore.services.query_scp import QuerySCP

        return QuerySCP(
            self.reader,
            t,
            ae_title=self.config.ae_title,
            may_find=admission.may_find,
            audit=getattr(self.audit, "query", None),
            who=_who(rq, address, admission),
            inflated_limit=self.store.limits.inflated_limit,
        )

    def retrieve_scp(
        self, t: Transport, rq: P.AssociateRQ, address: str, admission: Admission
    ) -> RetrieveSCP:
        """The C-MOVE SCP of one association (answers 0122 without an archive)."""
        from dicomstore.services.retrieve_scp import RetrieveSCP

        return RetrieveSCP(
            self.reader,
            t,
            ae_title=self.config.ae_title,
            destinations=self.destinations,
            may_move=admission.may_move,
            move_to=admission.move_to,
            timeouts=self.config.timeouts,
            audit=getattr(self.audit, "retrieve", None),
            who=_who(rq, address, admission),
            inflated_limit=self.store.limits.inflated_limit,
        )

    def get_scp(
        self,
        t: Transport,
        rq: P.AssociateRQ,
        address: str,
        admission: Admission,
        store: SameAssociationStore | None,
    ) -> GetSCP:
        """The C-GET SCP of one association, sending on ``store`` (answers 0122
        without an archive)."""
        from dicomstore.services.get_scp import GetSCP

        return GetSCP(
            self.reader,
            t,
            store,
            ae_title=self.config.ae_title,
            may_get=admission.may_get,
            audit=getattr(self.audit, "retrieve", None),
            who=_who(rq, address, admission),
            inflated_limit=self.store.limits.inflated_limit,
        )

    def commitment_scp(
        self,
        t: Transport,
        rq: P.AssociateRQ,
        address: str,
        admission: Admission,
        invoker: Invoker,
    ) -> CommitmentSCP:
        """The Storage Commitment SCP of one association, reporting on ``invoker``
        while it is open (answers 0122 without an archive)."""
        from dicomstore.services.commitment_scp import CommitmentSCP

        return CommitmentSCP(
            self.commitments,
            t,
            invoker,
            may_commit=admission.may_commit,
            audit=getattr(self.audit, "commitment", None),
            who=_who(rq, address, admission),
        )

    async def close(self, grace: float | None = None) -> None:
        """Stop accepting; wait up to ``grace`` s for in-flight work; abort the rest."""
        grace = self.config.shutdown_grace if grace is None else grace
        await self.listener.close(grace, self._abort_idle)
        if self.commitments is not None:  # what is not reported waits in the journal
            await self.commitments.close()
        if self._scratch is not None:
            keep_free(self._scratch, self.config.min_free_bytes, keep=False)
            self._scratch = None  # (let go once)

    def _abort_idle(self) -> None:
        """Associations idle between operations go right away (A-ABORT)."""
        for assoc in list(self.associations):
            if not assoc.busy:
                stop_now(assoc)


def _scratch_of(handler: StoreHandler) -> object | None:
    """The folder of an archive's temporary files (conversions'), if it has one."""
    storage = getattr(handler, "storage", None)
    scratch = getattr(storage, "scratch", None)
    return scratch() if callable(scratch) else None


def _reader_of(handler: StoreHandler) -> ArchiveReader | None:
    """A read-only view of the handler's index, if it is an archive."""
    root = getattr(handler, "root", None)
    if root is None:
        return None
    try:
        return ArchiveReader(root, index=getattr(handler, "index_url", None))
    except UNREADABLE as exc:  # (an archive's: said; a handler of its own with a
        # ``root`` folder, as the README's example, is no archive: review56 F6)
        archive = hasattr(handler, "index_url")
        log.log(logging.WARNING if archive else logging.DEBUG, "C-FIND not offered: %s", exc)
        return None


def _who(rq: P.AssociateRQ, address: str, admission: Admission) -> dict[str, str | None]:
    """Who asks, for the Q/R SCPs' logs and audit records."""
    return {
        "address": address,
        "calling_ae": rq.calling_ae,
        "called_ae": rq.called_ae,
        "user": admission.user,
    }


def _addresses(
    configured: tuple[Destination, ...], gatekeeper: Gatekeeper | None, section: str
) -> dict[str, Destination]:
    """Addresses by AE title (C-MOVE destinations, Storage Commitment SCUs): the
    gatekeeper's (the policy file's ``[section]``), then the configuration's, which
    win for a title in both."""
    found: dict[str, Destination] = dict(getattr(gatekeeper, section, None) or {})
    for dest in configured:
        other = found.get(dest.ae_title)
        if other is not None and other != dest:
            log.warning("%s %s replaces the policy file's %s", section, dest, other)
        found[dest.ae_title] = dest
    return found
