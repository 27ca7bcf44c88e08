"""``dicomstore check`` of an archive it cannot, or must not, write (review58 L6):
a read-only copy (a ZFS or LVM snapshot, backup media), or ``check --read-only``.

The ``check`` that may write (``maintenance.run_check``) takes the archive's
locks and settles what a crash left (``recovery.recover``) before it looks.
This one writes nothing: no lock file, no recovery, no index writer. It reads
the index through an :class:`~dicomstore.archive.reader.ArchiveReader` (a SQLite
index by ``frozen.FrozenSqliteEngine``, which makes no ``-shm``), runs SQLite's
``quick_check`` and the same problem finding (``maintenance._problems``: every
indexed file present with its size and digest, every file indexed, the
hierarchy), and tells what a start would settle (:func:`would_settle`) as lines
of their own, none of it done.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dicomstore.archive import journal, layout, nodes
from dicomstore.archive.frozen import frozen_engine
from dicomstore.archive.index_health import quick_check, reindex_command
from dicomstore.archive.maintenance import _problems, damaged_lines
from dicomstore.archive.reader import ArchiveReader
from dicomstore.archive.recovery import TRACES

#: The start of each line of :func:`would_settle`.
SETTLE = "a start would settle:"


def run_read_only(
    root: Path,
    *,
    index: str | None = None,
    counted: list[int] | None = None,
    pending: list[str] | None = None,
) -> list[str]:
    """The problems ``check`` finds in the archive at ``root``, found without
    writing anything (module notes); ``pending`` gets what a start would settle."""
    engine = frozen_engine(root, index)
    try:
        reader = ArchiveReader(root, index=engine)
        damage = quick_check(reader, most=5)
        if damage:
            mend = reindex_command(root, index)
            return damaged_lines(root, reader, engine.where, damage, mend, counted)
        if pending is not None:
            pending.extend(would_settle(root, reader))
        return [line for _, line in _problems(root, reader, True, counted)]
    finally:
        engine.close()


def would_settle(root: Path, reader: ArchiveReader) -> list[str]:
    """What the next start on ``root`` would settle (``recovery.recover``), one line
    each, read only: the journals, traces, removal intents and temporaries in
    ``.tmp`` and in the folders of nodes not running (on a snapshot: every node's),
    and the batches committed before their flush (``Index.unflushed``) that a
    start verifies. Live nodes (their lock held) are named: their folders are
    theirs, and what they are doing now may show as problems."""
    tmp = root / layout.TMP_DIR
    if not tmp.is_dir():
        return []
    living = set(nodes.alive(root))
    lines = _folder(root, tmp, reader)
    with os.scandir(tmp) as entries:
        folders = sorted(e.name for e in entries if e.name.startswith(nodes.PREFIX) and e.is_dir())
    for name in folders:
        if name not in living:
            lines += _folder(root, tmp / name, reader) or [
                f"{SETTLE} {layout.TMP_DIR}/{name}: the empty folder of a node not running: removed"
            ]
    lines += _unflushed(reader, living)
    if living:
        lines.append(
            f"{len(living)} node(s) running ({', '.join(sorted(living))}): what they are"
            " storing now may show as problems (`dicomstore check` without --read-only"
            " looks again at those under the index lock)"
        )
    return lines


def _folder(root: Path, folder: Path, reader: ArchiveReader) -> list[str]:
    """:func:`would_settle`'s lines of ``.tmp`` itself or of a dead node's folder."""
    where = folder.relative_to(root).as_posix()
    lines = []

    def stored(meta: dict[str, Any]) -> bool:  # (the index holds that instance there)
        rows = reader.search("instance", {"SOPInstanceUID": meta["uid"]}, limit=1)
        return journal.is_version(rows[0] if rows else None, meta)

    try:
        records = sum(1 for _ in journal.records(folder / journal.NAME, stored))
    except OSError as exc:  # (review115 F2: a damaged journal went unsaid)
        lines.append(f"{where}/{journal.NAME}: {exc.strerror}: a start stops there")
        records = 0
    if records:
        lines.append(
            f"{SETTLE} {where}/{journal.NAME}: {records} record(s) of instances answered"
            " Success, whose files a start writes again from it where they still count"
        )
    traces = intents = others = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False) or entry.name == journal.NAME:
                continue
            if folder.name == layout.TMP_DIR and entry.name.lstrip(".").startswith(nodes.PREFIX):
                continue  # a node's lock file
            stat = entry.stat(follow_symlinks=False)
            if entry.name.endswith(TRACES) and stat.st_nlink > 1:
                traces += 1
            elif layout.intent_target(entry.name) or entry.name.endswith(layout.INTENT):
                intents += 1
            else:
                others += 1
    if traces:
        lines.append(
            f"{SETTLE} {where}: {traces} trace(s) of instances placed, their COMMIT not"
            " known to be done: adopted into the index, or undone"
        )
    if intents:
        lines.append(
            f"{SETTLE} {where}: {intents} removal intent(s) of a replace or delete not"
            " finished: the files the index no longer names are removed"
        )
    if others:
        lines.append(f"{SETTLE} {where}: {others} temporary file(s): removed")
    return lines


def _unflushed(reader: ArchiveReader, living: set[str]) -> list[str]:
    """The instances listed ``unflushed`` (committed before their flush) of nodes
    not running, which a start verifies (``recovery.verify_unflushed``)."""
    db = reader.connect()
    try:
        if "unflushed" not in reader.engine.table_names(db):
            return []  # (an index of an older dicomstore)
        listed = list(db.execute("SELECT batch, sop_instance_uid FROM unflushed"))
    finally:
        db.close()
    listed = [(b, uid) for b, uid in listed if nodes.batch_node(b) not in living]
    if not listed:
        return []
    batches = len({b for b, _ in listed})
    return [
        f"{SETTLE} {len(listed)} instance(s) of {batches} batch(es) committed before their"
        " files were flushed: verified, and any whose file is missing or differs from its"
        " digest dropped (never acknowledged: a problem until then)"
    ]
