"""Study-complete events: a study is *stable* once no instance of it has arrived
for ``stable_age`` seconds (issue 16).

DICOM has no end-of-study message; like Orthanc's ``StableAge`` and DCMTK's
``--eostudy-timeout``, a quiet time stands for one. :class:`StudyStability`
watches the one store service (an observer of every door: C-STORE, STOW-RS),
keeps the last arrival per study, and when a study has been quiet long enough:

1. appends a :class:`StableStudy` event to the durable event log
   (``<archive>/.events/study-stable.jsonl``, JSON lines, flushed), so that it
   can be replayed (``dicomstore events``);
2. calls the Python hooks (``on_study_stable``, sync or async);
3. runs ``--on-stable-exec`` (no shell; ``{study}``, ``{folder}``, ``{patient}``
   replaced, else the study UID and folder appended as arguments; the same in
   ``DICOMSTORE_STUDY_UID``, ``DICOMSTORE_STUDY_FOLDER``, ``DICOMSTORE_PATIENT_ID``;
   not run, a WARNING, when a sender's value it would pass as an argument is no
   UID of PS3.5 9.1, or a Patient ID that could be an option or a path);
4. POSTs the event as JSON to ``--stable-webhook``.

A restart loses nothing: studies whose newest instance in the index arrived
after their last logged event (or that have none) are waited for again, from
that instance's arrival time (:meth:`StudyStability.recover`; a server reads the
index for them while it already serves, :meth:`StudyStability.catch_up`). The
instances a rebuild of the index from the files made (``archive/rebuild.py``: a
restore, an index lost) are no arrivals (review58 H1: every study of a restored
archive was stable again, its command run again); those stored after it are,
whatever the clock of the node that stored them (review59 M2). A
failing hook, command or webhook is logged; the event stays in the log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shlex
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import closing, nullcontext
from dataclasses import dataclass
from typing import Any

from dicomstore.archive.engine import DatabaseOrOSError
from dicomstore.archive.index_health import is_damage
from dicomstore.archive.reader import ArchiveReader
from dicomstore.archive.rebuild import arrivals_only
from dicomstore.archive.schema import FROM_JOIN
from dicomstore.hooks import call_hook
from dicomstore.services.stable_log import (
    StableLog,
    StableStudy,
    epoch,
    iso,
)
from dicomstore.services.storage import Home, on_loop
from dicomstore.services.webhook import post_json

log = logging.getLogger("dicomstore.stable")

#: Seconds the study-complete webhook's POST may take, answer included.
WEBHOOK_TIMEOUT = 10.0
#: Seconds the study-stable command may run; study-stable commands run at once, at most.
EXEC_TIMEOUT = 600.0
COMMANDS_AT_ONCE = 4


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """Kill ``proc`` and what it started (its session's process group), and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:  # (even when cancelled again meanwhile: no zombie left)
        await asyncio.shield(asyncio.wait_for(proc.wait(), 5))
    except (TimeoutError, asyncio.CancelledError):
        pass


OnStable = Callable[[StableStudy], Awaitable[None] | None]


def _first_after(db: Any, study_uid: str, after: str, arrival: str) -> str | None:
    """The first arrival (``received_at``) of ``study_uid`` after ``after`` (ISO 8601):
    the start of the burst its last event did not cover (``arrival``: the SQL
    condition of an arrival, ``rebuild.arrivals_only``)."""
    sql = (
        f"SELECT MIN(i.received_at){FROM_JOIN}"
        f" WHERE st.study_uid = ? AND i.received_at > ? AND {arrival}"
    )
    row = db.execute(sql, (study_uid, after)).fetchone()
    return row[0] if row else None


@dataclass
class _Pending:
    patient_id: str | None
    first: float
    last: float
    folder: str


class StudyStability:
    """Turns arrivals into study-complete events (module notes)."""

    def __init__(
        self,
        reader: ArchiveReader,
        stable_age: float,
        *,
        on_stable: Sequence[OnStable] = (),
        exec_command: str | None = None,
        webhook: str | None = None,
        fsync: bool = True,
        clock: Callable[[], float] = time.time,
        on_damage: Callable[[BaseException], None] | None = None,
    ) -> None:
        #: told when the index read at start meets a damaged index (the archive's
        #: ``IndexHealth.failed``: readiness says so from the start, review77 F8)
        self.on_damage = on_damage
        if stable_age <= 0:
            raise ValueError("stable_age must be positive")
        self.reader = reader
        self.root = reader.root
        self.stable_age = stable_age
        self.on_stable = list(on_stable)
        self.exec_command = shlex.split(exec_command) if exec_command else None
        self.webhook = webhook
        self.log = StableLog(self.root, fsync=fsync)
        self.clock = clock
        self.pending: dict[str, _Pending] = {}
        self._wake = asyncio.Event()
        #: when the clock task wakes next by itself (None: only when woken)
        self._next_due: float | None = None
        self._home: Home | None = None
        self._task: asyncio.Task[None] | None = None
        self._actions: set[asyncio.Future[object]] = set()
        #: the study-stable commands running at once, at most COMMANDS_AT_ONCE
        self._commands = asyncio.Semaphore(COMMANDS_AT_ONCE)
        #: while :meth:`catch_up` reads the index: per study, the newest arrival an
        #: event being made or made meanwhile covers (what it read of the log is older)
        self._covered: dict[str, float] = {}
        #: per study whose event is being made, the newest arrival it covers
        self._reporting: dict[str, float] = {}
        self._catching_up: asyncio.Task[int] | None = None

    # -- arrivals --------------------------------------------------------------------

    def observe(self, storing: Any, result: Any) -> None:
        """A store-service observer: note the arrival of each stored instance (not of a
        duplicate kept as it was: nothing arrived, review45 M10)."""
        row = result.row
        if not result.changed or not row or not row.get("study_uid") or not row.get("path"):
            return
        arrival = (row["study_uid"], row.get("patient_id"), row["path"], self.clock())
        on_loop(self._home, self._arrived_once, *arrival)

    def arrived_elsewhere(self, rows: list[dict[str, Any]]) -> None:
        """(On the loop.) Instances the index received, other nodes' among them
        (``services/arrivals.py``): arrivals of their studies, at their
        ``received_at``, except those their study's last event covered already."""
        reported = self.log.last_reported()
        for row in rows:
            when = epoch(row["received_at"])
            # (1 ms: an event's times went through text and back)
            if when > reported.get(row["study_uid"], float("-inf")) + 0.001:
                self._arrived_once(
                    row["study_uid"], row.get("patient_id") or None, row["path"], when
                )

    def _arrived_once(self, study_uid: str, patient_id: str | None, path: str, when: float) -> None:
        """:meth:`arrived`, but not when the event of ``study_uid`` being made covers it
        (review107: after a stall, the other nodes' look gave rows of a study popped for
        its event, not yet logged; they made it pending again, due at once: two events)."""
        if when <= self._reporting.get(study_uid, float("-inf")) + 0.001:
            return
        self.arrived(study_uid, patient_id, path, when)

    def arrived(self, study_uid: str, patient_id: str | None, relpath: str, when: float) -> None:
        """One instance of ``study_uid`` (stored at ``relpath``) arrived at ``when``."""
        pending = self.pending.get(study_uid)
        if pending is None:
            folder = self.reader.study_folder(relpath)
            self.pending[study_uid] = _Pending(patient_id, when, when, folder)
        else:
            pending.last = max(pending.last, when)  # a later deadline: the timer may stay
            return
        due = when + self.stable_age
        if self._next_due is None or due < self._next_due:
            self._wake.set()  # (not per instance: a study's arrivals only defer it)

    def recover(self) -> int:
        """After a restart: wait again for the studies whose newest instance is not
        covered by their last event. Blocking (reads the log and the index): call
        it in a worker thread before :meth:`start`. The number of studies."""
        return self._recovered(self._unreported())

    def catch_up(self) -> None:
        """:meth:`recover` while the node serves (call after :meth:`start`, with
        :meth:`observe` already an observer): the index is read in a worker
        thread, its studies joined on the loop to those arriving meanwhile.

        Nothing is missed: an instance committed before the observer was added is
        in the index the read sees; one committed later is observed. A study both
        observed and read keeps its earliest and newest arrivals; one whose event
        this run already logged is left out unless the index has newer."""

        async def run() -> int:
            try:
                return self._recovered(await asyncio.to_thread(self._unreported))
            except Exception as exc:  # noqa: BLE001 - said, not lost: the server serves on
                if self.on_damage is not None and is_damage(exc):
                    self.on_damage(exc)  # (its ERROR names the remedy: no traceback)
                    log.error("study-complete events: the studies to wait for again not read")
                else:
                    log.exception("study-complete events: the studies to wait for again not read")
                return 0
            finally:
                self._covered.clear()  # (only needed while the index is read)

        self._catching_up = asyncio.create_task(run(), name="study-stability-recovery")

    def _unreported(self) -> list[tuple[str, str | None, float, float, str]]:
        """(Blocking.) Per study whose newest instance its last logged event does
        not cover: UID, Patient ID, first and newest arrival, a stored path."""
        reported = self.log.last_reported()
        sql = (
            "SELECT st.study_uid, p.patient_id, MIN(i.received_at), MAX(i.received_at),"
            " MIN(i.path) FROM instance i JOIN series se ON se.series_pk = i.series_pk"
            " JOIN study st ON st.study_pk = se.study_pk"
            " JOIN patient p ON p.patient_pk = st.patient_pk WHERE {}"
            " GROUP BY st.study_pk, p.patient_pk"
        )
        found = []
        with closing(self.reader.connect()) as db:
            arrival = arrivals_only(self.reader.engine, db)  # (module notes)
            rows = db.execute(sql.format(arrival)).fetchall()
            for study_uid, patient_id, first, last, relpath in rows:
                newest = epoch(last)
                before = reported.get(study_uid)
                if before is not None and newest > before:  # (review49 #14: this burst's)
                    after = iso(before + 0.001)
                    first = _first_after(db, study_uid, after, arrival) or first
                if newest > (before if before is not None else float("-inf")):
                    found.append((study_uid, patient_id or None, epoch(first), newest, relpath))
        return found

    def _recovered(self, found: list[tuple[str, str | None, float, float, str]]) -> int:
        """Wait for the studies :meth:`_unreported` found (joined to those pending)."""
        count = 0
        for study_uid, patient_id, first, newest, relpath in found:
            if newest <= self._covered.get(study_uid, float("-inf")):
                continue  # (its event came while the index was read)
            pending = self.pending.get(study_uid)
            if pending is None:
                self.arrived(study_uid, patient_id, relpath, first)
                pending = self.pending[study_uid]
            pending.first = min(pending.first, first)
            pending.last = max(pending.last, newest)
            count += 1
        if count:
            many = ("study", "it") if count == 1 else ("studies", "them")
            log.info("%d %s not yet reported stable: waiting for %s again", count, *many)
        return count

    # -- the clock -------------------------------------------------------------------

    async def start(self) -> None:
        """Start watching (in the running loop)."""
        self._home = Home.here()
        self._task = asyncio.create_task(self._run(), name="study-stability")

    async def close(self, grace: float = 10.0) -> None:
        """Stop; commands and webhooks under way get ``grace`` seconds, then are killed
        and dropped (each event stays in the log). Studies not yet stable stay so, and
        are found again by :meth:`recover`."""
        for task in (self._catching_up, self._task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._actions:
            await asyncio.wait(list(self._actions), timeout=grace)
        for action in list(self._actions):  # (past the grace: commands killed, POSTs dropped)
            action.cancel()
        await asyncio.gather(*self._actions, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            now = self.clock()
            for study_uid in [s for s, p in self.pending.items() if self._due(p, now)]:
                await self._stable(study_uid, self.pending.pop(study_uid))
            deadlines = [p.last + self.stable_age for p in self.pending.values()]
            self._next_due = min(deadlines) if deadlines else None
            timeout = None if self._next_due is None else max(0.0, self._next_due - self.clock())
            try:  # (not wait_for: in 3.11 it loses a cancellation racing a wake-up)
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _due(self, pending: _Pending, now: float) -> bool:
        return pending.last + self.stable_age <= now

    async def _stable(self, study_uid: str, pending: _Pending) -> None:
        self._reporting[study_uid] = pending.last
        try:
            await self._report(study_uid, pending)
        finally:
            del self._reporting[study_uid]

    async def _report(self, study_uid: str, pending: _Pending) -> None:
        if self._catching_up is not None and not self._catching_up.done():
            self._covered[study_uid] = pending.last  # (now: catch_up leaves it to this event)
        try:
            counts = await asyncio.to_thread(self._counts, study_uid)
            if counts[0] == 0:  # (deleted while it waited: as a replay skips it, review83 F1)
                log.info("study %s: deleted before it was stable, no event", study_uid)
                return
            event = StableStudy(
                study_uid,
                pending.patient_id,
                counts[0],
                counts[1],
                iso(pending.first),
                iso(pending.last),
                iso(self.clock()),
                pending.folder,
            )
            await asyncio.to_thread(self.log.append, event)
        except DatabaseOrOSError as exc:
            log.error("study %s: stable, but its event was not logged: %s", study_uid, exc)
            self.pending.setdefault(study_uid, pending)  # tried again after the quiet time
            pending.last = self.clock()
            return
        log.info(
            "study %s stable: %d instance(s) in %d series, %s",
            study_uid,
            event.instances,
            event.series,
            event.folder,
        )
        for hook in self.on_stable:
            await self._call(hook, event)
        if self.exec_command:
            self._spawn(run_command(self.exec_command, event, self._commands))
        if self.webhook:
            self._spawn(post_event(self.webhook, event))

    def _counts(self, study_uid: str) -> tuple[int, int]:
        rows = self.reader.search("study", {"StudyInstanceUID": study_uid}, limit=1)
        if not rows:
            return 0, 0
        return int(rows[0]["n_instances"]), int(rows[0]["n_series"])

    @staticmethod
    async def _call(hook: OnStable, event: StableStudy) -> None:
        try:
            await call_hook(hook, event)
        except Exception:  # noqa: BLE001 - a user hook must not stop the events
            log.exception("on_study_stable hook failed for %s", event.study_uid)

    def _spawn(self, action: Awaitable[object]) -> None:
        task = asyncio.ensure_future(action)
        self._actions.add(task)
        task.add_done_callback(self._actions.discard)


def command_line(template: Sequence[str], event: StableStudy) -> list[str]:
    """``--on-stable-exec`` for ``event``: ``{study}``, ``{folder}``, ``{patient}``
    replaced, else the study UID and folder appended. :class:`UnsafeValue` when a
    sender's value it would pass could be read as an option or a path (review52 M2)."""
    values = {"study": event.study_uid, "folder": event.folder, "patient": event.patient_id}
    used = {key for key in values if any(f"{{{key}}}" in arg for arg in template)}
    folder = event.folder if not event.folder.startswith("-") else "./" + event.folder
    if "study" in used or not used:
        _check_study(event.study_uid)
    if "patient" in used:
        _check_patient(event.patient_id or "")
    if not used:
        return [*template, event.study_uid, folder]
    values["folder"] = folder
    return [_PLACEHOLDER.sub(lambda m: values[m.group(1)] or "", arg) for arg in template]


_PLACEHOLDER = re.compile(r"\{(study|folder|patient)\}")  # (one pass: no value replaced again)


class UnsafeValue(ValueError):
    """A value of the sender's that the command does not get as an argument."""


#: A Study Instance UID safe as an argument: digits and dots, a digit first (the
#: UIDs real modalities send too: a component with a leading zero, over 64 long).
_SAFE_UID = re.compile(r"[0-9][0-9.]*")


def _check_study(uid: str) -> None:
    """Digits and dots, a digit first (PS3.5 9.1 loosely, as sent): never ``-...``
    nor ``..`` nor a path (review55 M1: a leading-zero component was refused)."""
    if _SAFE_UID.fullmatch(uid) is None:
        raise UnsafeValue(f"its Study Instance UID {uid!r} is not made of digits and dots")


def _check_patient(patient_id: str) -> None:
    """A Patient ID (LO: free text) neither an option (``-``) nor holding a ``.`` or
    ``..`` path segment (``/`` or ``\\`` around it) nor a control character; a
    ``856215/1234`` passes (review55 M1), and an empty one."""
    segments = re.split(r"[/\\]", patient_id)
    if (
        patient_id.startswith("-")
        or any(segment in (".", "..") for segment in segments)
        or not patient_id.isprintable()
    ):
        raise UnsafeValue(
            f"its Patient ID {patient_id!r} could be read as an option or a path"
            " (it starts with '-', has a '.' or '..' segment, or a control character)"
        )


async def run_command(
    template: Sequence[str], event: StableStudy, at_once: asyncio.Semaphore | None = None
) -> int | None:
    """Run the command for ``event`` (no shell; the event also in the environment),
    one of ``at_once`` at a time, killed (with what it started) past EXEC_TIMEOUT or
    when cancelled (review122 F2: a command that never ended was never timed out, and
    outlived the server); its exit code, None when it was not run: a value unsafe as
    an argument (:func:`command_line`, a WARNING), it could not be started or was
    killed (logged)."""
    try:
        argv = command_line(template, event)
    except UnsafeValue as exc:
        log.warning("study %r: the study-stable command is not run: %s", event.study_uid, exc)
        return None
    env = {
        **os.environ,
        "DICOMSTORE_STUDY_UID": event.study_uid,
        "DICOMSTORE_STUDY_FOLDER": event.folder,
        "DICOMSTORE_PATIENT_ID": event.patient_id or "",
    }
    async with at_once or nullcontext():
        try:  # (its own session: killed with what it started)
            proc = await asyncio.create_subprocess_exec(*argv, env=env, start_new_session=True)
        except (OSError, ValueError) as exc:  # (ValueError: a NUL in an argument or value)
            log.error("the study-stable command %s cannot run: %s", argv[0], exc)
            return None
        try:
            async with asyncio.timeout(EXEC_TIMEOUT):
                code = await proc.wait()
        except TimeoutError:
            await _kill(proc)
            log.warning("the study-stable command %s for study %s did not end within %g s:"
                        " killed", argv[0], event.study_uid, EXEC_TIMEOUT)  # fmt: skip
            return None
        except asyncio.CancelledError:  # (the server stops: not left running, orphaned)
            await _kill(proc)
            raise
    if code != 0:
        log.warning(
            "the study-stable command %s for study %s exited %d", argv[0], event.study_uid, code
        )
    return code


async def post_event(url: str, event: StableStudy) -> int | None:
    """POST ``event`` as JSON to ``url`` (within WEBHOOK_TIMEOUT in all: ``webhook.py``);
    the HTTP status, None on failure or a status not 2xx (logged)."""
    body = json.dumps(event.as_dict()).encode()
    try:
        status = await post_json(url, body, WEBHOOK_TIMEOUT)
    except (OSError, ValueError) as exc:
        log.warning("--stable-webhook for study %s failed: %s", event.study_uid, exc)
        return None
    if not 200 <= status < 300:  # (a redirect is not followed: review125)
        log.warning("--stable-webhook for study %s failed: HTTP %d", event.study_uid, status)
        return None
    log.debug("--stable-webhook for study %s: HTTP %d", event.study_uid, status)
    return status
