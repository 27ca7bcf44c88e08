"""Each node's own temporaries: several ``dicomstore serve`` processes on one
storage root (issue 17).

Every open :class:`~dicomstore.archive.Archive` (a *node*) receives into a
folder of its own, ``<root>/.tmp/node-<host>-<pid>-<token>/``, beside its lock
file ``<root>/.tmp/node-<host>-<pid>-<token>.lock``, which it holds with an
exclusive flock(2) for its life. The lock file is made under a hidden name,
locked, then renamed into place, and the folder made after it: so whoever sees
``node-….lock`` unlocked (or a ``node-…`` folder without its lock file) knows
its owner is dead — the kernel (or the NFSv4 server) lets go of the lock of a
process that dies, SIGKILL included.

A starting node (:func:`dead`) settles what the dead left, under their lock
taken from them, and never touches a live node's files: its in-flight
temporaries, the traces of a batch it is publishing, the ``.bak`` of a replace
it has not committed. Temporaries directly in ``.tmp`` (an older dicomstore,
or ``delete``'s removal intents) are settled as before (``recovery.py``).

What must run in one node only of a storage root (forwarding, study-complete
events) runs in the node holding ``<root>/.<service>.lock``
(:class:`ServiceLock`): an exclusive flock(2) taken without waiting and held
for the node's life, the holder's host and pid written inside for the message
of a node that cannot take it. The holder removes the file as it lets go; a
node that locked the removed file meanwhile finds another inode at the path and
tries again, so two nodes never hold two inodes of one name.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dicomstore.archive import layout

PREFIX = "node-"
LOCK = ".lock"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "_", os.uname().nodename)[:64] or "host"


class Node:
    """This process's folder in ``<root>/.tmp`` and the lock that says it lives."""

    def __init__(self, root: Path) -> None:
        tmp = root / layout.TMP_DIR
        self.name = f"{PREFIX}{_host()}-{os.getpid()}-{secrets.token_hex(4)}"
        self.folder = tmp / self.name
        self._lock = tmp / f"{self.name}{LOCK}"
        hidden = tmp / f".{self.name}{LOCK}"
        self._fd = os.open(hidden, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(hidden, self._lock)  # (the lock is taken before anyone can see it)
            os.mkdir(self.folder)
        except BaseException:
            os.close(self._fd)
            layout.remove_quietly(hidden)
            layout.remove_quietly(self._lock)
            raise

    def close(self) -> None:
        """Let go: the folder and its lock file go if it is empty (else the lock file
        stays, unlocked: the next start settles the folder as a dead node's)."""
        if self._fd < 0:
            return
        try:
            os.rmdir(self.folder)
        except OSError:
            pass
        else:
            layout.remove_quietly(self._lock)
        os.close(self._fd)
        self._fd = -1


class Held(Exception):
    """A service of this storage root runs in another live node (:class:`ServiceLock`)."""


class ServiceLock:
    """The one node of a storage root that runs ``service`` (module notes)."""

    def __init__(self, root: Path | str, service: str) -> None:
        self.path = Path(root) / f".{service}.lock"
        #: who holds it ("host H, pid P"), after :meth:`take` found it held
        self.holder = ""
        self._fd = -1

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def take(self) -> bool:
        """Hold the lock now if no live node does (True also when held already)."""
        if self._fd >= 0:
            return True
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise
                text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
                os.close(fd)
                self.holder = text or "host ?, pid ?"  # (it has not written it yet)
                return False
            if same_inode(fd, self.path):
                break
            os.close(fd)  # locked a file its holder removed on closing: the path's again
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"host {_host()}, pid {os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def held_elsewhere(self) -> bool:
        """Whether a live node holds it now: a probe (a shared lock of our own, let go
        at once), never taking it from a node about to (``requeue --drop``)."""
        return locked_by_another(self.path)  # (its holder removes it as it lets go: then False)

    def close(self) -> None:
        """Let go: the file goes, then the lock (a node that locked the removed file
        meanwhile sees another inode at the path and tries again, :meth:`take`)."""
        if self._fd < 0:
            return
        layout.remove_quietly(self.path)
        os.close(self._fd)
        self._fd = -1


def same_inode(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path`` (False: gone, or replaced)."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


@contextmanager
def dead(root: Path) -> Iterator[list[Path]]:
    """The folders of dead nodes, locked for the caller (who settles and empties
    them); afterwards each folder and its lock file go."""
    tmp = root / layout.TMP_DIR
    held: list[tuple[Path, int]] = []
    try:
        # the folders first: a node renames its lock into place before it makes its
        # folder, so a folder seen here whose lock is not there after has no live node
        found = [
            entry.name
            for entry in os.scandir(tmp)
            if entry.name.startswith(PREFIX) and entry.is_dir(follow_symlinks=False)
        ]
        names = set(_lock_names(tmp))
        for name in found:
            if f"{name}{LOCK}" not in names:
                held.append((tmp / name, -1))  # (never made by a live node)
        for name in names:
            try:
                fd = os.open(tmp / name, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    continue  # alive
                raise
            held.append((tmp / name.removesuffix(LOCK), fd))
        yield [folder for folder, _ in held]
    finally:
        for folder, fd in held:
            try:
                os.rmdir(folder)
            except FileNotFoundError:
                pass
            except OSError:
                pass  # what could not be settled stays, for check to report
            if fd >= 0:
                if not folder.exists():
                    layout.remove_quietly(f"{folder}{LOCK}")
                os.close(fd)


def alive(root: Path | str) -> Iterator[str]:
    """The names of the live nodes of ``root`` (this process's own among them):
    those whose lock file is locked (a probe with a shared lock of our own, let go
    at once, tells: it fails while the owner holds its exclusive one)."""
    tmp = Path(root) / layout.TMP_DIR
    for name in _lock_names(tmp):
        if locked_by_another(tmp / name):  # (not held, or gone: a node that ended)
            yield name.removesuffix(LOCK)


def locked_by_another(path: Path) -> bool:
    """Whether another open file holds an exclusive flock of ``path`` (False: none,
    or no file): a probe with a shared lock of our own, let go at once."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)  # (and our probe's lock with it)
    return False


def dead_files(root: Path) -> set[tuple[int, int]]:
    """The files (device, inode) in the folders of the nodes dead now, left as they
    are (``check`` beside live nodes: a file at its final name that is one of them
    is no store in progress, review50 #10). The folders are listed before the live
    nodes are probed: a folder's node that starts meanwhile is found alive."""
    tmp = root / layout.TMP_DIR
    with os.scandir(tmp) as entries:
        folders = [e.path for e in entries if e.name.startswith(PREFIX) and e.is_dir()]
    living = set(alive(root))
    found: set[tuple[int, int]] = set()
    for folder in folders:
        if os.path.basename(folder) in living:
            continue
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    stat = entry.stat(follow_symlinks=False)
                    found.add((stat.st_dev, stat.st_ino))
        except FileNotFoundError:
            continue  # (settled meanwhile by a start)
    return found


def live(root: Path) -> set[str]:
    """The names of the nodes with a lock file in ``.tmp``: live ones (after
    :func:`dead` settled the dead, a node that died since, until the next start)."""
    return {name.removesuffix(LOCK) for name in _lock_names(root / layout.TMP_DIR)}


def batch_name(node: str, number: int) -> str:
    """The name of a node's ``number``-th batch committed before its flush
    (``publish.py``): it says whose it is (:func:`batch_node`)."""
    return f"{node}.{number}"


def batch_node(batch: str) -> str:
    """The node that named ``batch`` (:func:`batch_name`)."""
    return batch.rpartition(".")[0]


def _lock_names(tmp: Path) -> list[str]:
    with os.scandir(tmp) as entries:
        return [
            e.name
            for e in entries
            if e.name.startswith(PREFIX) and e.name.endswith(LOCK) and e.is_file()
        ]
