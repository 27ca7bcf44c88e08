"""What a batch's publishing does once its COMMIT is done or failed (``publish.py``):
the replaced versions' files go, guarded against other nodes; a failed COMMIT is
read back, since its answer may be what was lost.
"""

from __future__ import annotations

import logging

from dicomstore.archive.commit import Staged
from dicomstore.archive.deferred import rollback_quietly
from dicomstore.archive.engine import DatabaseError
from dicomstore.archive.index import Index
from dicomstore.archive.storage import WritableStorage

log = logging.getLogger("dicomstore.archive")


def committed_after_all(index: Index, placed: list[Staged]) -> bool | None:
    """A COMMIT failed: whether it was done all the same, its answer lost with the
    session (review36b #2: the files were taken back under committed rows), read
    under the write lock, in a new session if need be; None when that cannot be
    read either (the files then stay, as a crash would leave them)."""
    rollback_quietly(index)
    try:
        found = index.begin([m.row["sop_instance_uid"] for m in placed])
    except DatabaseError as exc:
        log.warning(
            "index: a COMMIT's outcome cannot be read back (%s): its %d files stay as a"
            " crash there leaves them, settled by the index's rows once it answers",
            exc,
            len(placed),
        )
        return None
    rollback_quietly(index)
    rows = [found.get(m.row["sop_instance_uid"]) for m in placed]
    done = all(
        row is not None and (row["path"], row["digest"]) == (m.rel, m.row["digest"])
        for row, m in zip(rows, placed, strict=True)
    )
    if done:
        log.warning("index: the answer to a COMMIT was lost; its %d rows are there", len(rows))
    return done


def finish(index: Index, storage: WritableStorage, placed: list[Staged]) -> None:
    """``storage.finish``; a batch that moved instances to other keys does it under
    the index's write lock, the old keys indexed again since (another node stored an
    instance back there after our COMMIT) kept (review36b #3)."""
    moved = [m for m in placed if m.existing and m.existing["path"] != m.rel]
    if not moved:
        storage.finish(placed)
        return
    with index.lock:
        try:
            index.begin()
            try:
                old = [m.existing["path"] for m in moved if m.existing]
                kept = frozenset(key for key in old if index.query({"path": key}))
                storage.finish(placed, kept)
            finally:
                rollback_quietly(index)
        except DatabaseError as exc:  # (committed all the same: their answer stands,
            # review36c M2): the old files go if still their intents' (inode) files
            log.warning("index unavailable (%s): old files removed unchecked", exc)
            storage.finish(placed)
