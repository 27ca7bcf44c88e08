"""Storage Commitment's journal (PS3.4 J.3.3): each accepted request, kept on disk
until its report is acknowledged.

:class:`CommitmentJournal` keeps each accepted request on disk
(``<root>/.commitments/<transaction>.json``, written atomically and flushed
before the N-ACTION is answered) until its N-EVENT-REPORT has been
acknowledged, so that a restart reports what it had promised to (J.3.3: the
SCP "shall" send the report, on a later association if need be).

Several nodes on one storage root (issue 17): a node's journal (``node=True``)
holds an exclusive flock(2) on the file of each request it accepted, taken
before the file has its name, until the report is acknowledged or the node
ends. At start a node takes (:meth:`~CommitmentJournal.take`) the requests whose
lock it can get: those of an earlier run or of a node that died (the kernel
lets go of a dead process's locks), never those a live node is reporting.

A request that cannot be reported (no address for its requester, refused for
good) is *stranded* (:meth:`~CommitmentJournal.strand`): renamed
``<transaction>.stranded`` and its lock let go, so that its requester asking again
replaces it on any node (review90 N1: the node that held it refused it 0115 on
every other node for its life), while no node's look for a dead node's requests
(``unheld``) takes it; a node's start takes it back (``take(stranded=True)``). Only
the requester's own calling AE title replaces a request (review52 L2). The
journal's changes (add, strand, take, done, drop: a few renames each) take turns
across nodes (``turns.Turns``, a file ``.commitments/.lock-writer``), so that none
runs within another.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from dicomstore.archive import layout, nodes
from dicomstore.archive.commitment import Reference
from dicomstore.archive.turns import Turns

JOURNAL_DIR = ".commitments"


@dataclass
class CommitmentRequest:
    """One accepted N-ACTION (Request Storage Commitment), kept until reported."""

    transaction_uid: str
    references: list[Reference]
    #: who asked: calling AE title, address (for a report on a new association)
    calling_ae: str
    address: str = ""
    received_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def to_json(self) -> str:
        """The journal's text: the same as of ``dataclasses.asdict``, a third of its
        time (0.23 s for 65,535 references: it copies deeply)."""
        names = [f.name for f in fields(Reference)]
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["references"] = [{n: getattr(r, n) for n in names} for r in self.references]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CommitmentRequest:
        data: dict[str, Any] = json.loads(text)
        data["references"] = [Reference(**r) for r in data["references"]]
        return cls(**data)


_TRANSACTION = re.compile(r"[0-9.]{1,64}", re.ASCII)
#: The suffix of a stranded request's file (module notes).
STRANDED = ".stranded"


def _unlink_if(path: Path, fd: int) -> bool:
    """Remove ``path`` if it is still the file ``fd`` has open (not replaced since)."""
    if not nodes.same_inode(fd, path):
        return False
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _locked(path: Path) -> int | None:
    """A descriptor of the request at ``path`` holding its lock (a node reports what
    it holds), or None when a live node holds it; ``FileNotFoundError`` when it went."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return fd


#: Seconds a change of the journal waits for another node's change at most.
TURN_WAIT = 5.0
_P = ParamSpec("_P")
_R = TypeVar("_R")


def _in_turn(
    change: Callable[Concatenate[CommitmentJournal, _P], _R],
) -> Callable[Concatenate[CommitmentJournal, _P], _R]:
    """``change`` of the journal, one at a time across nodes (:meth:`CommitmentJournal._turn`)."""

    def in_turn(journal: CommitmentJournal, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with journal._turn():
            return change(journal, *args, **kwargs)

    in_turn.__name__, in_turn.__doc__ = change.__name__, change.__doc__
    return in_turn


class DuplicateTransaction(Exception):
    """A request with this Transaction UID is already pending (J.3.3.1.1: 0131)."""


class CommitmentJournal:
    """Pending commitment requests of one archive (module notes)."""

    def __init__(self, root: Path | str, *, fsync: bool = True, node: bool = False) -> None:
        self.folder = Path(root) / JOURNAL_DIR
        self.fsync = fsync
        #: a node's journal holds the lock of each request it reports (module notes)
        self.node = node
        self._held: dict[str, int] = {}

    @contextmanager
    def _turn(self) -> Iterator[None]:
        """The journal's turn (``turns.Turns``: an flock of ``.commitments/.lock-writer``),
        so that its changes, each a few renames under the requests' locks, never
        interleave across nodes (review92 C4: a re-ask, the stranding of the old request
        and a start's take-back at once: two nodes reported it). A node holding it for
        over :data:`TURN_WAIT` s (stopped): OSError, the N-ACTION answered 0110."""
        if not self.folder.is_dir():  # (no request: nothing to change; ``add`` makes it)
            yield
            return
        turn = Turns(str(self.folder / ".lock"))  # (one per change: threads take turns too)
        try:
            if not turn.take(TURN_WAIT):
                raise OSError(errno.EWOULDBLOCK, "the journal is busy (another node)")
            yield
        finally:
            turn.close()

    def _path(self, transaction_uid: str) -> Path:
        if not _TRANSACTION.fullmatch(transaction_uid):
            raise ValueError(f"not a Transaction UID: {transaction_uid[:70]!r}")
        return self.folder / f"{transaction_uid}.json"

    def add(self, request: CommitmentRequest) -> bool:
        """Record ``request`` durably; :class:`DuplicateTransaction` if pending: held
        by a node, or, outside a node, at all, or another calling AE title's. One no
        live node holds (its node died, or it is stranded: module notes) is replaced
        (review88 F3: the requester asking again on another node got 0115 for good),
        its lock taken meanwhile (review90 N2: a node taking it over at that moment
        reported it too). True when it replaced a stranded request."""
        self._path(request.transaction_uid)  # (ValueError before any folder is made)
        self.folder.mkdir(parents=True, exist_ok=True)
        return self._add(request)

    @_in_turn
    def _add(self, request: CommitmentRequest) -> bool:
        final = self._path(request.transaction_uid)
        stranded = final.with_suffix(STRANDED)
        # (the stranded name first: a start taking it back moves it to the other name
        # under its lock, which the second claim then finds; review91 C1: claimed the
        # other way round, a take-back between the two was replaced, both reported)
        gone = self._claim(stranded, request.calling_ae)
        old = None
        try:
            old = self._claim(final, request.calling_ae)
            tmp = final.with_name(f"{final.stem}.{os.getpid()}.tmp")  # (two nodes at once)
            fd = self._written(tmp, request)
            try:
                os.replace(tmp, final)
            except BaseException:
                os.close(fd)
                layout.remove_quietly(tmp)
                raise
            try:  # (recorded: the old copy left is removed by its report, ``done``)
                replaced = gone is not None and _unlink_if(stranded, gone)
            except OSError:  # (review91 C6: answered 0110, the request recorded)
                replaced = True
        finally:
            for held in (old, gone):
                if held is not None:
                    os.close(held)
        if self.node:
            self._held[request.transaction_uid] = fd
        else:
            os.close(fd)
        if self.fsync:
            layout.fsync_dir(self.folder)
        return replaced

    def _written(self, tmp: Path, request: CommitmentRequest) -> int:
        """``request`` written (and flushed) to ``tmp``: its open descriptor, holding
        its lock in a node before anyone can see it."""
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            if self.node:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            data = memoryview(request.to_json().encode("utf-8"))
            while data:
                data = data[os.write(fd, data) :]
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            layout.remove_quietly(tmp)
            raise
        return fd

    def _claim(self, path: Path, calling_ae: str) -> int | None:
        """The lock of the request at ``path`` (its descriptor, to close once it is
        replaced), None when there is none; :class:`DuplicateTransaction` when a live
        node holds it, another AE title asked for it, or, outside a node, when there
        is one."""
        if not self.node:
            if path.exists():
                raise DuplicateTransaction(path.stem)
            return None
        try:
            fd = _locked(path)
        except FileNotFoundError:
            return None
        if fd is None:
            raise DuplicateTransaction(path.stem)
        try:
            with open(fd, encoding="utf-8", closefd=False) as held:
                asked_by = CommitmentRequest.from_json(held.read()).calling_ae
        except (OSError, ValueError, TypeError, KeyError):
            asked_by = calling_ae  # (unreadable: nothing to keep)
        if asked_by != calling_ae:
            os.close(fd)
            raise DuplicateTransaction(path.stem)
        return fd

    @_in_turn
    def strand(self, transaction_uid: str) -> int | None:
        """Let go of a request this node holds and cannot report (module notes): its
        file renamed ``.stranded``, its lock released; the file's inode (for
        :meth:`drop`), None when it is not held here."""
        fd = self._held.pop(transaction_uid, None)
        if fd is None:
            return None
        try:
            path = self._path(transaction_uid)
            if not nodes.same_inode(fd, path):
                return None  # (replaced since: not ours)
            os.replace(path, path.with_suffix(STRANDED))  # (before the lock goes)
            if self.fsync:
                layout.fsync_dir(self.folder)
            return os.fstat(fd).st_ino
        except FileNotFoundError:
            return None
        finally:
            os.close(fd)

    @_in_turn
    def drop(self, transaction_uid: str, inode: int) -> None:
        """Forget a stranded request (the oldest beyond the bound), unless it was
        asked again or stranded again since (another inode)."""
        path = self._path(transaction_uid).with_suffix(STRANDED)
        try:
            fd = _locked(path)
        except FileNotFoundError:
            return
        if fd is None:
            return  # (being asked again, or taken back at a start)
        try:
            if os.fstat(fd).st_ino == inode:
                _unlink_if(path, fd)
        finally:
            os.close(fd)
        if self.fsync:
            layout.fsync_dir(self.folder)

    @_in_turn
    def done(self, transaction_uid: str) -> None:
        """Forget a request once its report was acknowledged (its file, unless another
        node replaced it since: review90 N2; and a stranded copy a node left, killed
        while it took it back or replaced it: review91 C2, C3, it was reported again)."""
        path = self._path(transaction_uid)
        fd = self._held.pop(transaction_uid, None)
        try:
            if fd is None or nodes.same_inode(fd, path):
                if fd is not None:  # (none is stranded while this one is held: older)
                    path.with_suffix(STRANDED).unlink(missing_ok=True)
                path.unlink(missing_ok=True)
        finally:
            if fd is not None:
                os.close(fd)
        if self.fsync and self.folder.is_dir():
            layout.fsync_dir(self.folder)

    def unheld(self) -> bool:
        """Whether a request waits that no live node holds (its node died: this one's
        own are held), without reading any (``serving.py`` looks every 30 s)."""
        if not self.folder.is_dir():
            return False
        return any(not nodes.locked_by_another(p) for p in self.folder.glob("*.json"))

    def take(self, *, stranded: bool = False) -> list[CommitmentRequest]:
        """The pending requests no live node holds, oldest first, held from now on
        by this (node's) journal; the stranded ones too at a start (module notes).
        Read before the journal's turn (a large journal: others' changes wait less)."""
        return self._take(self._read("*.json", "*" + STRANDED if stranded else ""))

    @_in_turn
    def _take(self, read: list[tuple[Path, CommitmentRequest]]) -> list[CommitmentRequest]:
        taken = []
        for path, request in read:
            tx = request.transaction_uid
            if path.suffix == STRANDED:
                fd = self._take_back(path)  # (a leftover beside the request it goes)
                if fd is not None:
                    self._held[tx] = fd
                    taken.append(request)
                continue
            if tx in self._held:
                continue
            try:
                fd = _locked(path)
            except FileNotFoundError:
                continue  # reported meanwhile
            if fd is None:
                continue  # a live node reports it
            if not nodes.same_inode(fd, path):  # (reported meanwhile)
                os.close(fd)
                continue
            self._held[tx] = fd
            taken.append(request)
        return taken

    def _take_back(self, path: Path) -> int | None:
        """The lock of the stranded request at ``path``, renamed ``.json`` again (no
        request asked again since: that one stays, this one goes), or None."""
        try:
            fd = _locked(path)
        except FileNotFoundError:
            return None
        if fd is None:
            return None
        try:
            if nodes.same_inode(fd, path):
                os.link(path, path.with_suffix(".json"))  # (EEXIST: asked again since)
                path.unlink()
                if self.fsync:
                    layout.fsync_dir(self.folder)
                return fd
        except FileExistsError:
            _unlink_if(path, fd)
        except FileNotFoundError:
            pass
        os.close(fd)
        return None

    def close(self) -> None:
        """Let go of the requests held (they stay pending, for the next start)."""
        held, self._held = self._held, {}
        for fd in held.values():
            os.close(fd)

    def pending(self) -> Iterator[CommitmentRequest]:
        """Requests not yet reported, stranded or not, oldest first (unreadable files
        skipped)."""
        for _path, request in self._read("*.json", "*" + STRANDED):
            yield request

    def _read(self, *patterns: str) -> list[tuple[Path, CommitmentRequest]]:
        if not self.folder.is_dir():
            return []
        read: list[tuple[int, Path, CommitmentRequest]] = []
        for path in (p for pattern in patterns if pattern for p in self.folder.glob(pattern)):
            try:
                when = path.stat().st_mtime_ns
                read.append((when, path, CommitmentRequest.from_json(path.read_text("utf-8"))))
            except (OSError, ValueError, TypeError, KeyError):
                continue  # reported and removed meanwhile, or not ours
        read.sort(key=lambda entry: entry[0])
        return [(path, request) for _when, path, request in read]
