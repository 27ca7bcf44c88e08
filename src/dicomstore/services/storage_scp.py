"""Storage Service Class, SCP role (PS3.4 B.2): one C-STORE at a time.

For each C-STORE-RQ the SCP checks the presentation context and the caller's
right to store, asks the handler for a sink *before* the data set arrives
(so the archive can write the file meta first), streams every fragment into
it, and turns the handler's outcome into the C-STORE-RSP of PS3.4 B.2.3.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from dicomstore import uids
from dicomstore.dimse import CStoreRQ, CStoreRSP
from dicomstore.dimse import status as st
from dicomstore.error_comment import error_comment
from dicomstore.handler import StoreHandler, StoreSink
from dicomstore.services.store_log import log_store
from dicomstore.ul.negotiation import AcceptedContext, Negotiated

#: Our Service-class-application-information for a Storage SOP Class (PS3.4
#: Table B.3-2): Level of Support 2 (Full: every element kept, private ones
#: too), Level of Digital Signature Support 3 (data sets stored bit-preserving:
#: every signature stays verifiable; Data Set Trailing Padding, the one thing a
#: policy may cut, is outside all signatures), Element Coercion 0 (no policy
#: changes a value); the reserved bytes 0.
STORAGE_EXTENDED_ANSWER = bytes((2, 0, 3, 0, 0, 0))


def storage_extended_negotiation(sop_class_uid: str, info: bytes) -> bytes | None:
    """The answer to a SOP Class Extended Negotiation sub-item (PS3.4 B.3.1, PS3.7
    D.3.3.5) for an accepted SOP Class: ours for storage, none for Verification."""
    if sop_class_uid == uids.VERIFICATION:
        return None
    return STORAGE_EXTENDED_ANSWER


log = logging.getLogger("dicomstore.storage")


#: The handler protocol has one home, beside the archive that satisfies it.
Sink = StoreSink


@dataclass(frozen=True)
class StoredEvent:
    """Passed to the ``on_stored`` callback after an instance was acknowledged."""

    calling_ae: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    status: int
    outcome: Any


OnStored = Callable[[StoredEvent], Awaitable[None]]


class Receiving:
    """One C-STORE in progress: fragments go to the sink (or are discarded)."""

    __slots__ = ("rq", "context", "sink", "response", "comment", "failed_write", "nbytes", "limit")

    def __init__(
        self,
        rq: CStoreRQ,
        context: AcceptedContext | None,
        sink: Sink | None,
        response: CStoreRSP | None,
        limit: int = 0,
    ) -> None:
        self.rq = rq
        self.context = context
        self.sink = sink
        self.response = response  # set when the answer is known before the data set
        self.comment: str | None = None  # the Error Comment of ``response`` before the cut
        self.failed_write: OSError | None = None
        self.nbytes = 0
        self.limit = limit  # largest data set accepted, 0: no limit

    def write(self, data: bytes | memoryview) -> None:
        """Append one fragment; an I/O error is remembered and answered with A700."""
        self.nbytes += len(data)
        sink = self.sink
        if sink is None:
            return
        if self.limit and self.nbytes > self.limit:
            self.sink = None
            sink.abort()
            self.refuse(
                st.OUT_OF_RESOURCES, f"data set larger than the limit of {self.limit} bytes"
            )
            return
        try:
            sink.write(data)
        except OSError as exc:
            self.failed_write = exc
            self.sink = None
            sink.abort()

    def refuse(self, status: int, text: str, tags: tuple[int, ...] | None = None) -> CStoreRSP:
        """Answer ``status`` once the data set is in; ``text`` is cut to an LO for the wire."""
        self.response = self.rq.response(status, error_comment(text), tags)
        self.comment = text
        return self.response

    def abort(self) -> None:
        """The association ended mid-data set: leave nothing behind."""
        if self.sink is not None:
            sink, self.sink = self.sink, None
            sink.abort()


class StorageSCP:
    """Answers C-STORE requests on one association (PS3.4 B.2.2, B.2.3)."""

    def __init__(
        self,
        handler: StoreHandler,
        negotiated: Negotiated,
        *,
        may_store: bool = True,
        on_stored: OnStored | None = None,
        commit_in_thread: bool | Callable[[], bool] = True,
        max_instance_bytes: int = 0,
        min_free_bytes: int = 0,
        audit: Any = None,
    ) -> None:
        self.handler = handler
        self.negotiated = negotiated
        self.may_store = may_store
        self.on_stored = on_stored
        self.commit_in_thread = commit_in_thread
        self.max_instance_bytes = max_instance_bytes
        self.min_free_bytes = min_free_bytes
        self.audit = audit
        self._callbacks: set[asyncio.Task] = set()

    def begin(self, context_id: int, rq: CStoreRQ) -> Receiving:
        """Start receiving: validate, then open a sink before the data set arrives."""
        context = self.negotiated.contexts.get(context_id)
        if context is None:
            return _refused(
                rq,
                None,
                st.SOP_CLASS_NOT_SUPPORTED,
                f"presentation context {context_id} was not accepted",
            )
        if context.abstract_syntax != rq.affected_sop_class_uid:
            return _refused(
                rq,
                context,
                st.SOP_CLASS_NOT_SUPPORTED,
                f"SOP class {rq.affected_sop_class_uid} sent on the context of "
                f"{context.abstract_syntax}",
                (0x00000002,),
            )
        if not self.may_store:
            return _refused(
                rq, context, st.NOT_AUTHORIZED, f"{self.negotiated.calling_ae} may not store here"
            )
        root = getattr(self.handler, "root", None)
        if self.min_free_bytes and root is not None:
            try:
                free = shutil.disk_usage(root).free
            except OSError:
                free = 0
            if free < self.min_free_bytes:
                return _refused(
                    rq, context, st.OUT_OF_RESOURCES, f"out of resources: only {free} bytes free"
                )
        try:
            sink = self.handler.begin(
                sop_class_uid=rq.affected_sop_class_uid,
                sop_instance_uid=rq.affected_sop_instance_uid,
                transfer_syntax_uid=context.transfer_syntax,
                calling_ae=self.negotiated.calling_ae,
                called_ae=self.negotiated.called_ae,
            )
        except OSError as exc:
            return _refused(
                rq, context, st.OUT_OF_RESOURCES, f"cannot store: {exc.strerror or exc}"
            )
        return Receiving(rq, context, sink, None, self.max_instance_bytes)

    async def finish(self, receiving: Receiving) -> CStoreRSP:
        """The last fragment arrived: commit durably, then answer (PS3.4 B.2.3).

        The outcome is logged (:func:`~dicomstore.services.store_log.log_store`) and,
        with an audit log, recorded; a request that could not be decoded
        (``rq`` is ``None``) was logged by the server when it answered it.
        """
        rsp, outcome, comment = await self._finish(receiving)
        if receiving.rq is None:
            return rsp
        rq = receiving.rq
        log_store(
            "C-STORE",
            self.negotiated.calling_ae,
            rq.affected_sop_instance_uid,
            rsp.status,
            comment or rsp.error_comment,
        )
        if self.audit is not None:
            row = getattr(outcome, "instance", None) or {}
            self.audit.instance(
                {
                    "event": "instance",
                    "calling_ae": self.negotiated.calling_ae,
                    "sop_class_uid": rq.affected_sop_class_uid,
                    "sop_instance_uid": rq.affected_sop_instance_uid,
                    "study_instance_uid": row.get("study_uid"),  # the index row's key
                    "bytes": receiving.nbytes,
                    "digest": row.get("digest"),
                    "status": f"{rsp.status:04X}",
                    "error_comment": rsp.error_comment,
                }
            )
        return rsp

    async def _finish(self, receiving: Receiving) -> tuple[CStoreRSP, Any, str | None]:
        """The response, the handler's outcome (if it committed) and the uncut comment."""
        rq = receiving.rq
        if receiving.response is not None:
            return receiving.response, None, receiving.comment
        if receiving.failed_write is not None or receiving.sink is None:
            exc = receiving.failed_write
            text = exc.strerror if exc is not None and exc.strerror else str(exc)
            rsp = receiving.refuse(st.OUT_OF_RESOURCES, f"write failed: {text}")
            return rsp, None, receiving.comment
        sink, receiving.sink = receiving.sink, None
        try:
            in_thread = self.commit_in_thread
            if callable(in_thread):
                in_thread = in_thread()
            if in_thread:
                outcome = await asyncio.to_thread(sink.commit)
            else:
                outcome = sink.commit()
        except Exception as exc:  # noqa: BLE001 - a handler bug must not be Success
            log.exception("handler failed to commit %s", rq.affected_sop_instance_uid)
            sink.abort()
            text = f"handler error: {exc}"
            return rq.response(st.PROCESSING_FAILURE, error_comment(text)), None, text
        status = getattr(outcome, "status", st.SUCCESS)
        comment = getattr(outcome, "error_comment", None)
        rsp = rq.response(
            status,
            error_comment(comment),
            getattr(outcome, "offending_element", None),
        )
        if self.on_stored is not None and not st.is_failure(status):
            event = StoredEvent(
                self.negotiated.calling_ae,
                rq.affected_sop_class_uid,
                rq.affected_sop_instance_uid,
                receiving.context.transfer_syntax if receiving.context else "",
                status,
                outcome,
            )
            task = asyncio.ensure_future(self._call_back(event))
            self._callbacks.add(task)
            task.add_done_callback(self._callbacks.discard)
        return rsp, outcome, comment

    async def _call_back(self, event: StoredEvent) -> None:
        try:
            await self.on_stored(event)  # type: ignore[misc]
        except Exception:  # noqa: BLE001 - a user callback must not kill the SCP
            log.exception("on_stored callback failed for %s", event.sop_instance_uid)


def _refused(
    rq: CStoreRQ,
    context: AcceptedContext | None,
    status: int,
    text: str,
    tags: tuple[int, ...] | None = None,
) -> Receiving:
    """A C-STORE answered before its data set arrives (which is then discarded)."""
    receiving = Receiving(rq, context, None, None)
    receiving.refuse(status, text, tags)
    return receiving
