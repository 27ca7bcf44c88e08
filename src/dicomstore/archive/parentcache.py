"""The writer's cache of parent rows, and the count of rewrites it rests on.

The writer (``index.Index``) remembers the patient, study and series rows it
filed instances under (natural key -> surrogate key and values as stored, after
``COALESCE``) and the hierarchy checks passed (``Index.conflict``), so that one
more instance of a known series costs one ``INSERT``. Several writers share one
index (``dicomstore serve --workers``, nodes on one PostgreSQL server): each
keeps its cache while the others only *add* — instance rows, parent rows of a
UID no other row of their level has, values equal to those stored — and
forgets it when another has *rewritten*: deleted an instance, series, study or
patient row (a delete, a replace's prune, a withdrawal, a recovery, a
``reindex``), changed a parent row's values (a patient's name sent anew),
filed a Study or Series Instance UID under a second parent (a relational
mismatch accepted, a replace that moves an instance).

The count is the one row of ``rewrites`` (``schema.REWRITES``). A rewriting
transaction increments it, once, with its rewrite (:meth:`ParentCache.rewrite`,
the only place that writes it); each writer transaction reads it under the
write lock (``Index.begin``: one row; on PostgreSQL in the same round trip as
the lock) and forgets the cache when it is not the count the cache was built at.

Why a writer never files an instance under a stale row (the ordering argument):

1. Every write to patient, study, series and instance is made by a writer
   transaction holding the index's write lock from its begin to its COMMIT or
   ROLLBACK (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: the row lock of
   ``dicomstore_index``), so writer transactions are one after the other.
2. The count is read after the lock is taken: SQLite's write transaction reads
   the newest commit; on PostgreSQL (READ COMMITTED) the ``SELECT`` after the
   locking ``UPDATE`` takes its snapshot once the previous holder committed. It
   is the count of every transaction before this one.
3. A rewrite and its increment are in one transaction: committed together or
   rolled back together.
4. So when a begin reads the count the cache was built at, every transaction
   committed since only added: no cached row was deleted (its surrogate key
   still names it: SQLite gives a deleted row's key to the next new row, which
   a stale key would file instances under), none was changed (its values are
   as stored), and no UID of a cached row or of a check passed has a second
   parent (the check still holds). When it differs, everything is forgotten.
5. Whether a write only adds is decided by its writer: a parent row it does not
   know is read first with the other rows of its UID (:meth:`ParentCache.file`);
   changing its values, or meeting another row of its Study / Series Instance
   UID, counts a rewrite. A row it knows was met since the count it holds, and
   a writer filing that UID elsewhere since would have met it and counted.
6. A check passed outlives its transaction only when that transaction
   committed an instance as checked: its study and series rows then exist, so
   that a writer filing the UID under another parent meets them (5).
7. A writer that rewrites empties its own cache and holds no count: it forgets
   again at its next begin (what it learnt after the rewrite too).

Instance counts are not cached (the readers count), so what others add makes
no cached value wrong.
"""

from __future__ import annotations

from typing import Any

from dicomstore.archive.schema import (
    ATTRS,
    NATURAL_KEY,
    PARENTS,
    PK,
    SELECT_PARENT,
    UPSERTS,
    UPSERTS_RETURNING,
)

#: Cached parent rows per table before the cache is emptied (memory bound).
CACHE_LIMIT = 50_000
#: The count of rewrites (read under the write lock: ``Index.begin``).
READ_REWRITES = ("SELECT n FROM rewrites WHERE one = 1", ())
_COUNT_REWRITE = "UPDATE rewrites SET n = n + 1 WHERE one = 1"
#: How many of a parent table's natural key columns name the entity: a study row
#: is (Study Instance UID, patient), a series row (Series Instance UID, study).
_UID_COLUMNS = {"patient": 3, "study": 1, "series": 1}
#: The rows of a parent table that share a natural key's UID: the row itself and
#: those filing the UID under another parent.
_SAME_UID = {
    t: f"SELECT {PK[t]}, {', '.join(NATURAL_KEY[t] + ATTRS[t])} FROM {t} WHERE "
    + " AND ".join(f"{c} = ?" for c in NATURAL_KEY[t][: _UID_COLUMNS[t]])
    for t in PARENTS
}

#: A cached row: its surrogate key and its values as stored.
Entry = tuple[Any, tuple[Any, ...]]
#: A patient: (Patient ID, Issuer of Patient ID, scope).
Patient = tuple[str, str, str]


class ParentCache:
    """The parent rows a writer knows, and its hierarchy checks passed, valid at
    :attr:`rewrites` (the module docstring says when they hold)."""

    def __init__(self, *, returning: bool) -> None:
        self._returning = returning
        #: natural key -> entry, by table: rows known to be stored
        self.known: dict[str, dict[Any, Entry]] = {t: {} for t in PARENTS}
        #: the same, written or met by the open transaction (known once it commits)
        self.added: dict[str, dict[Any, Entry]] = {t: {} for t in PARENTS}
        #: checks passed: series UID -> (study UID, patient), study UID -> patient
        self.related: dict[str, tuple[str, Patient]] = {}
        self.related_studies: dict[str, Patient] = {}
        self._checked: set[str] = set()  # series checked by the open transaction
        self._backed: set[str] = set()  # those of them it filed an instance of
        #: the count of rewrites the cache holds at (None: none, forget at begin)
        self.rewrites: int | None = None
        self._counted = False  # the open transaction counted its rewrite

    def begin(self, rewrites: int) -> None:
        """A transaction starts, the count read under its lock: forget all unless
        it is the count the cache holds at."""
        self.rollback()  # (what a transaction never ended learnt goes)
        self._counted = False
        if rewrites != self.rewrites:
            self.forget()
            self.rewrites = rewrites

    def commit(self) -> None:
        """The transaction committed: what it wrote or met is known, and the checks
        it passed and filed an instance of (6)."""
        for table, added in self.added.items():
            known = self.known[table]
            if len(known) + len(added) > CACHE_LIMIT:
                known.clear()
            known.update(added)
            added.clear()
        for series in self._checked - self._backed:
            self.related.pop(series, None)
        self._checked.clear()
        self._backed.clear()

    def rollback(self) -> None:
        """The transaction is abandoned: nothing it learnt is kept."""
        for added in self.added.values():
            added.clear()
        for series in self._checked:
            self.related.pop(series, None)
        self._checked.clear()
        self._backed.clear()

    def forget(self) -> None:
        """Empty the cache (rows are looked up again when needed)."""
        for table in PARENTS:
            self.known[table].clear()
            self.added[table].clear()
        self.forget_checks()

    def forget_checks(self) -> None:
        """Forget the hierarchy checks passed."""
        self.related.clear()
        self.related_studies.clear()
        self._checked.clear()
        self._backed.clear()

    def rewrite(self, db: Any) -> None:
        """The open transaction rewrites (a delete, a change, a UID under a second
        parent): count it, once, and forget (7). Every rewriter calls this."""
        if not self._counted:
            db.execute(_COUNT_REWRITE)
            self._counted = True
        self.forget()
        self.rewrites = None

    def checked(self, series: str, study: str, patient: Patient) -> None:
        """A hierarchy check passed in the open transaction (kept only if it files
        an instance as checked)."""
        if len(self.related) >= CACHE_LIMIT:
            self.forget_checks()
        self.related[series] = (study, patient)
        self.related_studies[study] = patient
        self._checked.add(series)

    def filing(self, series: str, study: str, patient: Patient) -> None:
        """An instance is filed under these UIDs: a check passed as such is backed;
        one it contradicts (this writer files without checks: a reindex, "accept")
        forgets the checks."""
        known = self.related.get(series)
        if (known is not None and known != (study, patient)) or (
            self.related_studies.get(study, patient) != patient
        ):
            self.forget_checks()
        elif known is not None:
            self._backed.add(series)

    def file(self, db: Any, table: str, natural: tuple[Any, ...], new: tuple[Any, ...]) -> Entry:
        """The row of ``table`` with key ``natural`` given the values ``new`` (None:
        unknown), written unless the cache or the index says it is stored with
        them already: its surrogate key and values as stored (``COALESCE``)."""
        known = self.added[table].get(natural)
        if known is None:
            known = self.known[table].get(natural)
        if known is not None and known[1] == new:
            return known  # (the usual case: one more instance of a known series)
        if known is None:
            entry = self._meet(db, table, natural, new)
        elif any(n is not None and n != k for n, k in zip(new, known[1], strict=True)):
            self.rewrite(db)  # (changed values: others' caches hold the old ones)
            db.execute(UPSERTS[table], natural + new)
            entry = (known[0], _merged(new, known[1]))
        else:
            entry = known
        self.added[table][natural] = entry
        return entry

    def _meet(self, db: Any, table: str, natural: tuple[Any, ...], new: tuple[Any, ...]) -> Entry:
        """:meth:`file` for a row the cache does not know: read with the other rows
        of its UID; written if absent or changed (5)."""
        width = len(natural)
        found = db.execute(_SAME_UID[table], natural[: _UID_COLUMNS[table]]).fetchall()
        own = [row for row in found if tuple(row[1 : 1 + width]) == natural]
        if len(found) > len(own):  # the UID under another parent too
            self.rewrite(db)
        if own:
            pk, stored = own[0][0], tuple(own[0][1 + width :])
            merged = _merged(new, stored)
            if merged != stored:
                self.rewrite(db)
                db.execute(UPSERTS[table], natural + new)
            return pk, merged
        if self._returning:
            pk, *stored = db.execute(UPSERTS_RETURNING[table], natural + new).fetchall()[0]
        else:
            db.execute(UPSERTS[table], natural + new)
            pk, *stored = db.execute(SELECT_PARENT[table], natural).fetchall()[0]
        return pk, tuple(stored)


def _merged(new: tuple[Any, ...], stored: tuple[Any, ...]) -> tuple[Any, ...]:
    """The values a row holds after an upsert of ``new`` (``COALESCE``)."""
    return tuple(k if n is None else n for n, k in zip(new, stored, strict=True))
