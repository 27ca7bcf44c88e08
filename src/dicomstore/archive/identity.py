"""Which storage an index is of (review50 #3): a PostgreSQL index is shared by the
nodes of one storage, and nothing else tied the two. A node on the wrong
``--storage`` (another archive's folder, a share not mounted) answered 0000 for
instances it does not hold; ``reindex`` from it emptied the shared index.

The storage root holds its id in :data:`MARK` (a random UUID, written once,
durably, before the index records it); the index records the id of its storage
(its table ``dicomstore_storage``). A node or a ``reindex``
(:func:`check_storage`, before anything else) is refused when they differ, or
when the storage has no id and cannot be the index's: it holds no instance
while the index holds some, or it holds files while the index records another
storage's id. The first start after this was added gives an archive its id (its
storage's folder holding files, or both empty). The SQLite index is a file in
its storage root: of that root.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from dicomstore.archive import layout
from dicomstore.archive.engine import IntegrityError
from dicomstore.archive.index import Index

#: The file in the storage root that holds its id.
MARK = ".storage-id"


class StorageMismatchError(ValueError):
    """The storage root is not the one of the index (PostgreSQL): the wrong
    ``--storage``, a share not mounted, or a second archive in one schema."""


def check_storage(root: Path, index: Index, *, give: bool = True) -> None:
    """Raise :class:`StorageMismatchError` unless ``root`` is the storage of
    ``index`` (module notes); give both their id when neither has one (``give``;
    else look only: ``dicomstore check`` writes no id)."""
    if index.engine.dialect == "sqlite":  # (the index in the root: of that root)
        return
    where = index.engine.where
    ours = _read(root / MARK)
    if ours is None:
        holds_files = _holds_files(root)
        if not holds_files and index.holds_instances():
            raise StorageMismatchError(
                f"{root} holds no instance, but the index {where} does: the wrong"
                " --storage, or a share not mounted? (every node of an index uses its storage)"
            )
        recorded = _recorded(index, None)
        if recorded is not None and holds_files:
            raise StorageMismatchError(
                f"{root} has no storage id ({MARK}), and the index {where} is of the storage"
                f" {recorded}: the wrong --storage? (if it is that storage, its {MARK} was"
                f" lost: write {recorded} into {root / MARK})"
            )
        if not give:
            return
        ours = _write(root, recorded or str(uuid.uuid4()), durable=index.durable)
    theirs = _recorded(index, ours if give else None)
    if theirs != ours and (give or theirs is not None):
        raise StorageMismatchError(
            f"{root} is the storage {ours}, but the index {where} is of the storage"
            f" {theirs}: the wrong --storage or --index? (a second archive needs a"
            " database or schema of its own: ?options=-csearch_path%3D<schema>)"
        )


#: The id of the storage the index is of, one row (PostgreSQL).
_TABLE = (
    "CREATE TABLE IF NOT EXISTS dicomstore_storage ("
    " one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one), storage_id TEXT NOT NULL)"
)


def _recorded(index: Index, proposed: str | None) -> str | None:
    """The id of the storage the index records, ``proposed`` recorded first when it
    records none (None: look only)."""
    db = index.engine.writer(durable=index.durable, timeout=index.timeout)
    try:
        try:
            db.execute(_TABLE)
        except IntegrityError:  # (two first nodes making it at once: one fails)
            db.execute(_TABLE)
        if proposed is not None:
            insert = "INSERT INTO dicomstore_storage (storage_id) VALUES (?) ON CONFLICT DO NOTHING"
            db.execute(insert, (proposed,))
        row = db.execute("SELECT storage_id FROM dicomstore_storage").fetchone()
        return None if row is None else str(row[0])
    finally:
        db.close()


def _holds_files(root: Path) -> bool:
    """Whether ``root`` has a study folder (not a hidden one: ``.tmp``)."""
    with os.scandir(root) as entries:
        return any(e.is_dir() and not e.name.startswith(".") for e in entries)


def _read(mark: Path) -> str | None:
    try:
        text = mark.read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        return None
    if not text:  # (review51: said "has no storage id")
        raise StorageMismatchError(f"{mark} is empty: write the storage's id in it")
    return text


def _write(root: Path, storage_id: str, *, durable: bool) -> str:
    """Write ``storage_id`` to the root's mark (``durable``: flushed, as the index's
    writes are), unless another start wrote one first (a hard link of the written
    temporary, which fails if it is there); the id in the mark."""
    temp = root / layout.TMP_DIR / f"{MARK}.{uuid.uuid4().hex}"
    with open(temp, "w", encoding="ascii") as fp:
        fp.write(storage_id + "\n")
        fp.flush()
        if durable:
            os.fsync(fp.fileno())
    try:
        os.link(temp, root / MARK)
    except FileExistsError:
        pass
    except OSError:  # (no hard links here: a rename, which a race could repeat)
        if not (root / MARK).exists():
            os.replace(temp, root / MARK)
    finally:
        layout.remove_quietly(temp)
    if durable:
        layout.fsync_dir(root)
    found = _read(root / MARK)
    assert found is not None  # (linked, or there before)
    return found
