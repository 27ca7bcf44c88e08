"""The asyncio client: open an association and use it (PS3.8 7.1, PS3.7 9.3).

    async with dicomstore.connect("127.0.0.1", 11112, called_ae="STORESCP") as assoc:
        rsp = await assoc.echo()

A reader task feeds the upper layer and hands responses to the
:class:`~dicomstore.aio.invoker.Invoker`, which matches them to requests by
Message ID Being Responded To, so several requests can be outstanding when
the peer grants an asynchronous operations window (PS3.7 D.3.3.3). A request
answered by several responses (C-FIND, C-MOVE, C-GET) gets a
:class:`~dicomstore.aio.invoker.Responses` stream (:meth:`ClientAssociation.invoke`);
requests the peer sends us (the C-STOREs of a C-GET, PS3.4 C.4.3, the
N-EVENT-REPORT of a Storage Commitment, J.3.3) go to its
:class:`~dicomstore.aio.performer.Performer` (:attr:`ClientAssociation.performer`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import ssl as ssl_module
from collections.abc import Generator, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

from dicomstore import uids
from dicomstore.aio.association import Timeouts, Transport
from dicomstore.aio.invoker import Invoker, Request, Responses
from dicomstore.aio.performer import Performer
from dicomstore.aio.stream import Stream
from dicomstore.dimse import CEchoRSP, CommandReceived, CStoreRSP, DatasetFragment
from dicomstore.errors import (
    AssociationAborted,
    AssociationError,
    AssociationRejected,
    DimseTimeout,
    RemoteProtocolError,
)
from dicomstore.tls import closed_in_handshake
from dicomstore.ul import items as I
from dicomstore.ul import pdu as P
from dicomstore.ul.connection import Connection, Role
from dicomstore.ul.events import (
    AbortIndication,
    AssociateAccepted,
    AssociateRejected,
    DataIndication,
    ReleaseConfirmation,
    ReleaseIndication,
)
from dicomstore.ul.negotiation import (
    DEFAULT_MAX_PDU,
    AcceptedContext,
    Negotiated,
    our_user_information,
    requested,
    too_short,
)

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger("dicomstore.client")

ContextSpec = tuple[str, Sequence[str]]  # (abstract syntax, transfer syntaxes)


def build_contexts(specs: Iterable[ContextSpec]) -> list[I.PresentationContextRQ]:
    """Presentation contexts with odd IDs 1, 3, 5 ... (at most 128, PS3.8 9.3.2.2)."""
    contexts = [
        I.PresentationContextRQ(2 * n + 1, abstract, list(transfers))
        for n, (abstract, transfers) in enumerate(specs)
    ]
    if len(contexts) > 128:
        raise ValueError(f"{len(contexts)} presentation contexts; at most 128 fit one association")
    return contexts


def _rejected(request: P.AssociateRQ, rj: P.AssociateRJ) -> AssociationRejected:
    """The A-ASSOCIATE-RJ as an error, with what of our request it may point at
    (review100 W7: the AE title we called, we are, or the identity we sent)."""
    error = AssociationRejected(rj.result, rj.source, rj.reason)
    hint = None
    if rj.source == P.REJECT_SOURCE_USER and rj.reason == 7:
        hint = f"we called {request.called_ae.strip()!r}: --aec sets it, called_ae= in Python"
    elif rj.source == P.REJECT_SOURCE_USER and rj.reason == 3:
        # (a server's policy refuses so a caller it knows from another address or
        # certificate too: review110 I1)
        hint = (
            f"we are {request.calling_ae.strip()!r}: --aet sets it, calling_ae= in Python;"
            " or a policy refuses it from this address or with this certificate"
        )
    elif rj.source == P.REJECT_SOURCE_USER and rj.reason == 1 and request.user_info.identity_rq:
        hint = "the user identity sent (--user, --password, --jwt-file; identity=) may be refused"
    if hint is not None:
        error.args = (f"{error} ({hint})",)
    return error


class ClientAssociation:
    """An association we requested, ready for DIMSE operations."""

    def __init__(self, transport: Transport, request: P.AssociateRQ) -> None:
        self.t = transport
        self.request = request
        self.negotiated: Negotiated | None = None
        #: Requests out, responses matched (one message at a time on the wire).
        self.invoker = Invoker(transport, self.abort)
        self._released: asyncio.Future | None = None
        self._reader: asyncio.Task | None = None
        #: Requests the peer sends us: ``performer.on_request`` makes the
        #: :class:`~dicomstore.aio.performer.Incoming` of each (without one: 0211).
        self.performer = Performer(transport, send_lock=self.invoker.send_lock)

    @property
    def _waiting(self) -> dict[int, asyncio.Future]:
        return self.invoker.waiting

    @property
    def _ended(self) -> BaseException | None:
        return self.invoker.ended

    # -- establishment ----------------------------------------------------

    async def _establish(self) -> None:
        t = self.t
        t.conn.transport_connected()  # Evt2: send the A-ASSOCIATE-RQ
        await t.flush()
        try:
            async with asyncio.timeout(t.timeouts.acse):
                while True:
                    events = await t.receive(None)
                    for event in events:
                        if isinstance(event, AssociateAccepted):
                            problem = too_short(event.accept)
                            if problem is not None:  # (nothing could be sent on it)
                                t.abort_now()
                                raise AssociationError(f"the SCP's A-ASSOCIATE-AC: {problem}")
                            self.negotiated = requested(self.request, event.accept)
                            for why in self.negotiated.ignored:
                                log.warning("%s: %s: left out", t.peer, why)
                            t.negotiated = self.negotiated
                            self.invoker.open(self.negotiated.max_ops_invoked)
                            self._reader = asyncio.create_task(self._read_loop())
                            return
                        if isinstance(event, AssociateRejected):
                            raise _rejected(self.request, event.reject)
                        if isinstance(event, AbortIndication):
                            raise AssociationAborted(event.message, event.source, event.reason)
                    if t.conn.is_closed:
                        raise AssociationAborted("the peer closed the connection")
        except TimeoutError:
            t.abort_now()
            raise AssociationError(
                f"no answer to the association request within {t.timeouts.acse}s"
            ) from None

    # -- the reader task --------------------------------------------------

    async def _read_loop(self) -> None:
        t = self.t
        try:
            while not t.conn.is_closed:
                events = await t.receive(t.timeouts.network)
                for event in events:
                    await self._on_event(event)
                await t.flush()
                await self.invoker.room()  # a stream's reader is behind: stop reading
            self._end(AssociationAborted("the association ended"))
        except RemoteProtocolError as exc:
            log.warning("%s: protocol error from the peer: %s; aborting", t.peer, exc)
            t.conn.protocol_error(exc)
            await t.flush()
            self._end(AssociationAborted(f"protocol error from the peer: {exc}"))
        except TimeoutError as exc:
            t.abort_now()
            # (a timeout, exit 6 in the SCUs: review38scu #12; it was an abort, 5)
            silent = t.timeouts.network
            if exc.errno or silent is None:  # (the kernel's: ETIMEDOUT; review39 #8)
                self._end(DimseTimeout(f"the connection timed out: {exc.strerror or exc}"))
            else:
                self._end(DimseTimeout(f"the peer sent nothing for {silent:g} s (idle timeout)"))
        except asyncio.CancelledError:
            self._end(AssociationAborted("the association was closed"))
            raise
        except Exception as exc:  # noqa: BLE001
            log.exception("reader failed")
            t.abort_now()
            self._end(AssociationAborted(f"internal error: {exc}"))

    async def _on_event(self, event: Any) -> None:
        if isinstance(event, DataIndication):
            for pdv in event.pdvs:  # (decoded as read: a turn every PDVS_PER_TURN)
                await self.t.pace()
                for dimse_event in self.t.assembler.receive(pdv):
                    self._on_dimse(dimse_event)
        elif isinstance(event, ReleaseConfirmation):
            if self._released is not None and not self._released.done():
                self._released.set_result(None)
        elif isinstance(event, ReleaseIndication):
            self.t.conn.release_response()
        elif isinstance(event, AbortIndication):
            self._end(AssociationAborted(event.message, event.source, event.reason))

    def _on_dimse(self, event: Any) -> None:
        if self.performer.handles(event):  # (a request on a context not accepted: 0122)
            self.performer.receive(event)
            return
        if self.negotiated is not None and event.context_id not in self.negotiated.contexts:
            raise RemoteProtocolError(  # a response there (review38scu #10)
                f"a response on presentation context {event.context_id}, which was not accepted",
                P.ABORT_INVALID_PDU_PARAMETER_VALUE,
            )
        if isinstance(event, DatasetFragment):
            self.invoker.deliver_fragment(event)
            return
        assert isinstance(event, CommandReceived)
        message = event.message
        dataset_follows = self.t.assembler.dataset_in_progress
        if not self.invoker.deliver(message, dataset_follows=dataset_follows):
            # no request of ours awaits it (PS3.7 9.3.1.2: a response answers the
            # request's Message ID): a peer that lost track; waiting on would be a hang
            # until the timeouts (review38scu #4); DCMTK aborts too
            answered = getattr(message, "message_id_being_responded_to", None)
            if answered is None:
                answered = getattr(message, "message_id", "?")
            why = (
                f"the peer sent a {type(message).__name__} for message {answered},"
                " which no request of ours awaits"
            )
            log.warning("%s: %s; aborting", self.t.peer, why)
            self.t.abort_now()
            self._end(AssociationAborted(why))

    async def answered(self) -> None:
        """Wait until every request of the peer received so far is answered."""
        await self.performer.settle()

    def _end(self, exc: BaseException) -> None:
        self.performer.end()  # the association ended inside a request's data set
        self.invoker.end(exc)
        if self._released is not None and not self._released.done():
            if (
                self.t.conn.is_closed
                and isinstance(exc, AssociationAborted)
                and (exc.source is None)
            ):
                self._released.set_result(None)
            else:
                self._released.set_exception(exc)

    # -- operations -------------------------------------------------------

    def context_for(
        self, abstract_syntax: str, transfer_syntax: str | None = None
    ) -> AcceptedContext | None:
        """An accepted context for this abstract (and transfer) syntax, or None."""
        assert self.negotiated is not None
        return self.negotiated.context_for(abstract_syntax, transfer_syntax)

    async def echo(self) -> CEchoRSP:
        """C-ECHO (PS3.7 9.3.5); returns the C-ECHO-RSP."""
        self.invoker.check_usable()
        ctx = self.context_for(uids.VERIFICATION)
        if ctx is None:
            raise AssociationError("the peer did not accept the Verification SOP Class")
        return await self.invoker.echo(ctx.id)

    def next_message_id(self) -> int:
        """A Message ID for a new request (1 .. 65535, PS3.7 9.1)."""
        return self.invoker.next_id()

    async def invoke(self, context_id: int, rq: Request, dataset: bytes | None = None) -> Responses:
        """Send a request answered by several responses (C-FIND, C-MOVE, C-GET) on
        ``context_id``, with its (small) data set; the stream of its responses
        (:meth:`Invoker.invoke <dicomstore.aio.invoker.Invoker.invoke>`).
        ``rq.message_id`` comes from :meth:`next_message_id`."""
        return await self.invoker.invoke(context_id, rq, dataset)

    async def cancel(self, responses: Responses) -> None:
        """C-CANCEL-RQ for the request of ``responses`` (PS3.7 9.3.2.3)."""
        await self.invoker.cancel(responses)

    async def store_stream(
        self,
        context: AcceptedContext,
        sop_class_uid: str,
        sop_instance_uid: str,
        chunks: Iterable[bytes],
        *,
        priority: int = 0,
        move_originator: tuple[str, int] | None = None,
        size: int | None = None,
    ) -> CStoreRSP:
        """C-STORE (PS3.7 9.3.1) of a data set given as chunks in ``context``'s syntax
        (of ``size`` bytes, when known: each chunk is sent as soon as it is read).

        Waits for a slot of the operations window, sends the request and the
        data set, and returns the C-STORE-RSP when it arrives.
        """
        return await self.invoker.store_stream(
            context,
            sop_class_uid,
            sop_instance_uid,
            chunks,
            priority=priority,
            move_originator=move_originator,
            size=size,
        )

    async def store(
        self,
        dataset_or_path: Dataset | str | os.PathLike[str],
        *,
        convert: bool = True,
        priority: int = 0,
        move_originator: tuple[str, int] | None = None,
    ) -> CStoreRSP:
        """C-STORE (PS3.4 B.2.1) a pydicom Dataset or a PS3.10 file; the C-STORE-RSP.

        The context is the accepted one for the instance's SOP Class in its own
        transfer syntax (a file is streamed unchanged); else, with ``convert``,
        an accepted uncompressed one, the instance re-encoded.  Raises
        :class:`~dicomstore.NotDicom` (:class:`~dicomstore.CorruptFile` for a
        file cut short) and :class:`~dicomstore.NotSendable` (no accepted
        context fits: propose the SOP Class in ``connect(contexts=...)``).
        """
        from dicomstore.services.storage_scu import as_instance, store_instance

        instance = await asyncio.to_thread(as_instance, dataset_or_path)  # reads the file
        rsp, _ctx, _converted, _nbytes = await store_instance(
            self, instance, convert=convert, priority=priority, move_originator=move_originator
        )
        return rsp

    # -- ending -----------------------------------------------------------

    async def release(self) -> None:
        """A-RELEASE (PS3.8 7.2): ask the peer to release, wait, close."""
        t = self.t
        if t.conn.is_closed or self._ended is not None:
            await self._stop()
            return
        self._released = asyncio.get_running_loop().create_future()
        t.conn.release()
        await t.flush()
        try:
            async with asyncio.timeout(t.timeouts.artim):
                await self._released
        except TimeoutError:
            t.abort_now()
        except AssociationError:
            pass
        await self._stop()

    async def abort(self) -> None:
        """A-ABORT (PS3.8 7.3) and close."""
        self.t.abort_now()
        self._end(AssociationAborted("aborted by us"))
        await self._stop()

    async def _stop(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        await self.performer.settle()  # (answers to an ended association go nowhere)
        await self.t.close()

    async def __aenter__(self) -> ClientAssociation:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.release()
        else:
            await self.abort()


async def associate(
    host: str,
    port: int,
    *,
    called_ae: str = "ANY-SCP",
    calling_ae: str = "DICOMSTORE",
    contexts: Iterable[ContextSpec] = ((uids.VERIFICATION, (uids.IMPLICIT_VR_LE,)),),
    max_pdu: int = DEFAULT_MAX_PDU,
    max_ops: int | None = None,
    roles: Iterable[I.RoleSelection] = (),
    extended: Iterable[I.SOPClassExtended] = (),
    identity: I.UserIdentityRQ | None = None,
    timeouts: Timeouts | None = None,
    ssl: ssl_module.SSLContext | None = None,
) -> ClientAssociation:
    """Open a TCP (or TLS, PS3.15 B.9) connection and request an association (PS3.8 7.1.2)."""
    timeouts = timeouts or Timeouts()
    user = our_user_information(max_pdu)
    if max_ops is not None:
        user.async_ops = (max_ops, 1)
    user.roles = list(roles)
    user.extended = list(extended)
    user.identity_rq = identity
    rq = P.AssociateRQ(called_ae, calling_ae, build_contexts(contexts), user)
    conn = Connection(Role.REQUESTOR, max_pdata=max_pdu)
    conn.request(rq)  # Evt1 -> Sta4
    try:
        async with asyncio.timeout(timeouts.connect):
            _, stream = await asyncio.get_running_loop().create_connection(
                Stream, host, port, ssl=ssl
            )
    except TimeoutError:
        raise AssociationError(f"connecting to {host}:{port} timed out") from None
    except (ConnectionResetError, ConnectionAbortedError) as exc:
        if ssl is None:
            raise
        # (a port without TLS resets a ClientHello; a server with too many connections
        # pending closes new ones before their handshake: review107 L1, review109 M1)
        raise type(exc)(exc.errno or errno.ECONNRESET, closed_in_handshake()) from None
    assoc = ClientAssociation(Transport(stream, conn, timeouts), rq)
    try:
        await assoc._establish()
    except BaseException:  # (cancelled while waiting for the answer: A-ABORT, PS3.8 AA-1)
        assoc.t.abort_now()
        await assoc.t.close()
        raise
    return assoc


class AssociateOptions(TypedDict, total=False):
    """The keyword arguments of :func:`associate`, for :class:`connect`."""

    called_ae: str
    calling_ae: str
    contexts: Iterable[ContextSpec]
    max_pdu: int
    max_ops: int | None
    roles: Iterable[I.RoleSelection]
    extended: Iterable[I.SOPClassExtended]
    identity: I.UserIdentityRQ | None
    timeouts: Timeouts | None
    ssl: ssl_module.SSLContext | None


class connect:  # noqa: N801 - used as `async with dicomstore.connect(...)`
    """``async with connect(host, port, ...) as assoc``: associate, then release."""

    def __init__(self, host: str, port: int, **kwargs: Unpack[AssociateOptions]) -> None:
        self._args = (host, port)
        self._kwargs = kwargs
        self._assoc: ClientAssociation | None = None

    def __await__(self) -> Generator[Any, None, ClientAssociation]:
        return associate(*self._args, **self._kwargs).__await__()

    async def __aenter__(self) -> ClientAssociation:
        self._assoc = await associate(*self._args, **self._kwargs)
        return self._assoc

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._assoc is not None
        await self._assoc.__aexit__(exc_type, exc, tb)
