"""Room for a delete on a full disk: a reserve file in the archive's folder.

A ``delete`` needs a little space itself before it frees any (SQLite appends the
pages it changes to its write-ahead log before a row goes; the removal intents
are links in ``.tmp``): on a file system filled to the last byte it failed with
"database or disk is full", and the documented way out of a full archive was
shut (review87 F1). So an archive opened writable keeps :data:`NAME` in its
folder, :data:`SIZE` bytes allocated (``posix_fallocate``: blocks the file
system counts as used), made only while there is room for it and as much again
besides (:func:`keep`: never the last free space). A delete lets it go
(:func:`release`) when less than :data:`SIZE` is free, before it opens the index
(``services/deletion.reader_for_delete``: the CLI's and the API's, and ``removal.remove``,
where every delete goes: after a clean stop SQLite must create the index's -wal
and -shm files first, review89 N1), and ``removal.remove`` makes it again
(:func:`keep`) once the files it deleted are gone.

The stores of a server cannot take it: it is freed only for a delete, and a
sender still storing may fill what the delete frees before it runs (stop the
senders, or keep headroom with ``--min-free``). Best effort throughout: a file
system that cannot allocate, or refuses the file, leaves the archive as before.
A backup may leave the file out (a start makes it again).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from dicomstore.archive import layout

log = logging.getLogger("dicomstore.archive")

#: The reserve file's name in the archive's folder.
NAME = ".reserve"
#: Its size: room for the index's log of a delete of a few thousand instances.
SIZE = 8 << 20


def keep(root: Path) -> bool:
    """Make the reserve file when it is missing and :data:`SIZE` twice over is free;
    whether it is there now. Never raises."""
    path = root / NAME
    try:
        if path.exists():
            return True
    except OSError:  # (a folder we may not look into: nothing made)
        return False
    room = layout.free_bytes(root)
    if room is None or room < 2 * SIZE:
        return False
    # (made in .tmp, which a start empties: a crash meanwhile leaves no 8 MiB behind)
    tmp = root / layout.TMP_DIR
    temp = (tmp if tmp.is_dir() else root) / f"{NAME.lstrip('.')}.{os.getpid()}"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.posix_fallocate(fd, 0, SIZE)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except OSError as exc:
        log.info("%s: no reserve file for a delete on a full disk: %s", root, exc)
        _unlink(temp)
        return False
    return True


def release(root: Path) -> bool:
    """Remove the reserve file when less than :data:`SIZE` is free (a delete is about
    to run); whether it was removed."""
    room = layout.free_bytes(root)
    if room is None or room >= SIZE or not _unlink(root / NAME):
        return False
    log.warning("%s: the disk is nearly full: the reserve file is freed for the delete", root)
    return True


def _unlink(path: Path) -> bool:
    try:
        os.unlink(path)
    except OSError:
        return False
    return True
