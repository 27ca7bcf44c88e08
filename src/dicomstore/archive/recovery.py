"""Start-up recovery and who owns ``.tmp``: what a crash left is settled.

:func:`hold` takes ``<root>/.tmp`` (flock: shared by each open ``Archive``,
exclusive for ``reindex`` and the recovering ``check``); :func:`recover` runs
at start-up, before anything is published: a file published but not indexed
is adopted, an uncommitted replace undone, and the removal intents of a
replace or a delete (``removal.py``) settled, so that ``check`` is clean and
the index serves the last acknowledged version (see ``publish.py`` for the
order of the steps and the crash points).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import Any

from dicomstore.archive import layout
from dicomstore.archive.index import Index
from dicomstore.archive.removal import INTENT, settle_intents


class ArchiveBusyError(OSError):
    """``.tmp`` is held by another process in a way that excludes this one."""


def hold(root: Path, *, exclusive: bool) -> int:
    """Take ``root/.tmp`` (a descriptor to close to let go): shared by each
    :class:`~dicomstore.archive.Archive` (a server) for its life, exclusive for
    ``reindex`` and for the recovery ``check`` runs (flock(2), so a process that
    dies lets go). Raises :class:`ArchiveBusyError` when the other kind holds it,
    without waiting."""
    tmp = root / layout.TMP_DIR
    fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        who = "a server or another archive" if exclusive else "a reindex or a check"
        raise ArchiveBusyError(errno.EBUSY, f"in use by {who}", str(tmp)) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def recover(root: Path, index: Index, *, fsync: bool) -> int:
    """Start-up: settle what a crash left in ``.tmp``, then empty it; the number of
    instances adopted into the index. The caller owns ``.tmp`` (no other archive
    publishes to it: see :func:`hold`).

    A trace (``<temp>.pub``, a second name of a file renamed to its final name,
    see :meth:`Publisher._place`) outlives its batch only when the COMMIT, or
    the clean-up after it, did not happen. If the final name still holds that
    file:

    - the index does not know the instance: it is adopted, indexed as
      ``reindex`` would (its data was durable before it was renamed);
    - the index holds it with other bytes at the same name (a replace that did
      not commit): the old file, kept as ``<temp>.bak``, is put back;
    - the index holds it at another name (a replace moving it): the new file goes.

    Then the removal intents (``<temp>=<path>.rm``: the old file of a replace that
    moved the instance; ``del-…``: the files of a delete) are settled: a file
    the index no longer names goes (``removal.settle_intents``).

    Everything else in ``.tmp`` is an incomplete instance or a backup no longer
    needed, and goes, except the removal intents made since (a ``delete`` running
    now owns them). Best effort: what cannot be settled stays where it is, for
    ``check`` to report.
    """
    from dicomstore.archive.maintenance import read_row  # (it imports the index too)

    adopted = 0
    tmp = root / layout.TMP_DIR
    for entry in os.scandir(tmp):
        if entry.name.endswith(".pub") and entry.is_file(follow_symlinks=False):
            try:
                if entry.stat(follow_symlinks=False).st_nlink > 1:
                    adopted += _settle(root, index, Path(entry.path), read_row, fsync=fsync)
            except Exception:  # noqa: BLE001, S110 - an unreadable leftover: check() reports it
                pass
    settle_intents(root, index, fsync=fsync)
    for entry in os.scandir(tmp):
        if not entry.name.endswith(INTENT) and not entry.is_dir(follow_symlinks=False):
            layout.remove_quietly(Path(entry.path))
    return adopted


def _settle(root: Path, index: Index, trace: Path, read_row: Any, *, fsync: bool) -> int:
    row = read_row(root, trace)  # reads the header, for the final name
    rel = layout.instance_relstr(row["study_uid"], row["series_uid"], row["sop_instance_uid"])
    final = root / rel
    if not final.exists() or not os.path.samefile(final, trace):
        return 0  # renamed over since, or never renamed
    backup = trace.with_suffix(".bak")
    with index.lock:
        index.begin()
        try:
            existing = index.find(row["sop_instance_uid"])
            if existing is None:
                if fsync:
                    layout.fsync_dir(final.parent)  # its name may not be durable yet
                index.put({**row, "path": rel})
                index.commit()
                return 1
            index.rollback()
        except BaseException:
            index.rollback()
            raise
    if existing["path"] != rel:
        os.unlink(final)  # an uncommitted replace that moved the instance
    elif (existing["digest"], existing["file_size"]) != (row["digest"], row["file_size"]) and (
        backup.exists()
    ):
        os.replace(backup, final)  # an uncommitted replace: the old file comes back
    else:
        return 0
    if fsync:
        layout.fsync_dir(final.parent)
    return 0
