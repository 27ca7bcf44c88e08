"""The journal steps of :class:`~dicomstore.archive.filestorage.FileStorage`
(``storage.WritableStorage``: ``use_journal`` to ``journaled``): a batch committed
before its flush made durable by one write of its files to the node's journal
(``journal.py``), and the checkpoint that flushes them where they belong
(``publish.py`` has the order).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from dicomstore.archive.commit import CommitStats, Staged
from dicomstore.archive.filepublish import UNFLUSHED, close_member
from dicomstore.archive.journal import Journal, record_size

#: The largest file made durable through the journal (``journal.py``); a batch
#: with a larger one is flushed with a syncfs.
JOURNAL_MAX = 1 << 20


class FileJournaling:
    """The journal steps of ``FileStorage`` (which sets the attributes below)."""

    stats: CommitStats
    _journal: Journal | None

    if TYPE_CHECKING:

        def _syncfs(self) -> None: ...  # (FilePublishing's)

    def use_journal(self, path: Path) -> None:
        """Make batches committed before their flush durable through a journal at
        ``path`` (made on first use) when they fit (:meth:`journal`)."""
        self._journal = Journal(path)

    def journal(self, placed: list[Staged], batch: str) -> bool:
        """After a COMMIT not yet durable (``publish.py``): make the placed members
        durable by one write of their files to the journal; True when done (each
        closed). False, nothing done, when the batch cannot go there: no journal, a
        member without its ``.new`` trace or over :data:`JOURNAL_MAX`, a full
        journal (:meth:`checkpoint` first: the caller flushes instead), or a write
        that failed."""
        journal = self._journal
        if journal is None:
            return False
        metas: list[bytes] = []
        for member in placed:
            trace = member.trace
            if trace is None or not trace.endswith(UNFLUSHED) or member.fd < 0:
                return False
            if member.row["file_size"] > JOURNAL_MAX:
                return False
            fields = {
                "key": member.rel,
                "uid": member.row["sop_instance_uid"],
                "digest": member.row["digest"],
                "batch": batch,
                "trace": trace.rpartition("/")[2],
            }
            metas.append(json.dumps(fields).encode())
        sizes = [
            record_size(m.row["file_size"], meta) for m, meta in zip(placed, metas, strict=True)
        ]
        try:
            if not journal.fits(sizes) or not journal.room(sum(sizes)):
                return False
            self.stats.flushes += 1
            journal.append(
                [
                    (meta, member.fd, member.row["file_size"])
                    for member, meta in zip(placed, metas, strict=True)
                ]
            )
        except OSError:
            return False
        for member in placed:
            close_member(member)
        return True

    def checkpoint(self) -> bool:
        """Make what the journal holds durable where it belongs: one syncfs (the
        files, their names, the COMMITs: all written before it began), then the
        journal's records obsolete (``Journal.checkpoint``); False, nothing
        changed, when either failed or failed before (``Journal.broken``)."""
        journal = self._journal
        if journal is None or journal.broken:
            return False
        if not journal.pending:
            return True
        try:
            self._syncfs()
            self.covered()
        except OSError:
            return False
        return True

    def covered(self) -> None:
        """A syncfs that began after every record was written has succeeded (the
        fallback flush of ``publish.py``): the journal's records are obsolete
        (``OSError`` when that cannot be said)."""
        if self._journal is not None and self._journal.pending:
            self.stats.flushes += 1
            self._journal.checkpoint()

    @property
    def journaled(self) -> int:
        """Records in the journal since its last checkpoint."""
        return 0 if self._journal is None else self._journal.pending

    @property
    def journal_sound(self) -> bool:
        """Whether the journal is not ``broken`` (a write or a flush failed: its
        records are left for the next start)."""
        return self._journal is None or not self._journal.broken
