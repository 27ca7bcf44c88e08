"""Watching an HTTP answer go out: its status, its body bytes, when it ends.

The access log, the read audit and the request metrics each act once per
request on how it was answered; :func:`watch` runs the app and calls them
back once: just before the last body chunk is sent (``complete``: so the
record is queued before the client has the whole answer and may act on it),
or when the app returns or raises without sending it (not ``complete``; a
request that raised before any status counts as 500).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomstore.archive.checked import DamagedCopy

log = logging.getLogger("dicomstore.http.answer")

#: Set in a request's task when its answer was cut off on purpose (:class:`EndsBroken`):
#: uvicorn's ERROR "returned without completing response" that follows is not said
#: (``http/guard.py``; the WARNING before it said why).
CUT_OFF: ContextVar[bool] = ContextVar("cut_off", default=False)


#: The scope key of a status the connection's guard sent on the wire in the app's
#: stead (``http/guard.py``: 408 for a body too slow): the app's own answer, if any,
#: went nowhere, and the watchers log, audit and count this one (review87 F6).
SENT_BY_GUARD = "dicomstore.sent_by_guard"


def went(exc: BaseException) -> bool:
    """``exc`` (an ``OSError``, or one keeping the ``OSError`` it met as its context:
    ``sources.Unreadable``) says the file is not there: deleted or replaced since."""
    cause = exc if isinstance(exc, OSError) else exc.__context__
    return isinstance(cause, OSError) and cause.errno in (errno.ENOENT, errno.ENOTDIR)


class AnswerBroken(Exception):
    """A body cannot go on once its status is sent (a frame that cannot be read, say):
    raised by the body, after its log line, it ends the answer without its last
    chunk (:class:`EndsBroken`): the client sees it cut, the watchers see it not
    complete, and nothing logs a traceback."""


def unless_gone(
    indexed: Callable[[str, str], bool], row: Mapping[str, Any], exc: BaseException
) -> None:
    """An instance's file could not be read for an answer: if it is still indexed at
    that path (a damaged archive, not a delete or a replace since the search), a
    WARNING naming it and :class:`AnswerBroken` (the answer cut off, not given whole
    without it: review35b F10); else nothing (the caller leaves it out)."""
    uid = row["sop_instance_uid"]
    if indexed(uid, row["path"]):
        log.warning("instance %s is indexed but its file cannot be read: %s", uid, exc)
        raise AnswerBroken(f"cannot read instance {uid}")


class EndsBroken:
    """The outermost middleware: an :class:`AnswerBroken` ends the request quietly
    (uvicorn then closes the connection, the answer being incomplete), as does a
    stored copy found damaged as it was read (``checked.DamagedCopy``: raised instead
    of its last bytes). A HEAD
    request's answer ends with its status and headers: the body the app begins
    (a study's files, read for nothing) is stopped at its first chunk."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "HEAD":
            send = _headers_only(send)
        try:
            await self.app(scope, receive, send)
        except (AnswerBroken, DamagedCopy):  # (each logged where it was found)
            CUT_OFF.set(True)


def _headers_only(send: Send) -> Send:
    """``send`` for a HEAD request: the first body message ends the answer, and the
    app is stopped there (:class:`AnswerBroken`) if it has more."""

    async def sending(message: Message) -> None:
        if message["type"] != "http.response.body":
            await send(message)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        if message.get("more_body", False):
            raise AnswerBroken("HEAD: no body")

    return sending


@dataclass
class Answer:
    """What was sent of a response: its status (0: none yet) and body bytes."""

    status: int = 0
    nbytes: int = 0


async def watch(
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    done: Callable[[Answer, bool], None],
) -> None:
    """Run ``app`` for an HTTP request, calling ``done(answer, complete)`` once."""
    answer = Answer()
    called = False
    head = scope.get("method") == "HEAD"

    def finish(complete: bool) -> None:
        nonlocal called
        if not called:
            called = True
            sent = scope.get(SENT_BY_GUARD)
            if sent is not None:
                answer.status, answer.nbytes, complete = sent, 0, False
            done(answer, complete)

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
        elif message["type"] == "http.response.body":
            if not head:  # (a HEAD answer's body is never sent: EndsBroken)
                answer.nbytes += len(message.get("body", b""))
            if not message.get("more_body", False):
                finish(True)
        await send(message)

    try:
        await app(scope, receive, sending)
    except Exception:
        answer.status = answer.status or 500
        raise
    finally:
        finish(False)
