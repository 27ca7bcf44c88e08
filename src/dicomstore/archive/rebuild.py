"""What a rebuild of the index from the files keeps of the index it replaces, and the
mark it leaves (``reindex``, and ``serve``'s rebuild of an index of an older schema;
review58 H1, H2).

A file says what its instance is, not when it arrived nor what its patient's
record has become since. So a rebuild keeps, of the index it replaces (:class:`Kept`):

arrivals
    each instance's ``received_at``, where the index held it at that path (an index
    of an older schema: as its rows had it, ``schema.create_or_migrate``). The
    others (the index lost, a file put in by hand) take their file's modification
    time, never later than the rebuild.
parents
    each patient's, study's and series' attributes, where the index held that row
    (by its natural keys: ``schema.NATURAL_KEY``): those of the latest instance
    received that gave them, as the index kept them (``index.py``). The rows are put
    in the order of their arrival (then of their path), so that among the others the
    latest received gives them: a renamed patient keeps the new name. With the index
    lost and the files' times reset (a restore that does not keep them), that order
    is the restore's, not the receive order: nothing is left to tell it.

The mark (:func:`rebuilt_through`, the table ``rebuilt``)
    the latest arrival the rebuild took from a file's modification time (raised by
    each rebuild, never lowered; in the index, so that every node of a shared one
    sees it). An instance received at or before it was in the archive when its index
    was rebuilt: no arrival then. Forwarding's recovery, the study-complete events
    (the studies waited for again, a study's stable state, what a ``when=stable``
    rule queues) and the arrivals of other nodes (``services/arrivals.py``) leave
    such instances out, so a restore of the files and a ``reindex`` neither send
    the archive's past again (to a rule added since neither) nor make its studies
    stable again. A rebuild cannot run beside a node (``maintenance.run_reindex``),
    so the mark does not move while one serves.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

from dicomstore.archive.fields import clean_text
from dicomstore.archive.index import Index
from dicomstore.archive.schema import ALIAS, ATTRS, KEYS, Arrivals, patient_key

#: Each parent table's rows: its natural keys up to the patient's, then its attributes.
_PATIENT = "p.patient_id, p.issuer, p.scope"
_PARENT_ROWS = {
    "patient": (3, f"SELECT {_PATIENT}, {{}} FROM patient p"),
    "study": (
        4,
        f"SELECT {_PATIENT}, st.study_uid, {{}} FROM study st"
        " JOIN patient p ON p.patient_pk = st.patient_pk",
    ),
    "series": (
        5,
        f"SELECT {_PATIENT}, st.study_uid, se.series_uid, {{}} FROM series se"
        " JOIN study st ON st.study_pk = se.study_pk"
        " JOIN patient p ON p.patient_pk = st.patient_pk",
    ),
}


def rebuilt_through(engine: Any, db: Any) -> str:
    """The mark in the index ``db`` of ``engine`` (module notes): '' when no rebuild
    left one (it compares below every ``received_at``, ISO 8601 text)."""
    if "rebuilt" not in engine.table_names(db):  # (schema 5 or older, no writer opened yet)
        return ""
    row = db.execute("SELECT MAX(received_at) FROM rebuilt").fetchone()
    return str(row[0]) if row and row[0] else ""


@dataclass
class Kept:
    """What a rebuild keeps of the index it replaces (module notes)."""

    #: SOP Instance UID -> (path, received_at)
    received: Arrivals = field(default_factory=dict)
    #: parent table -> natural keys (from the patient's down) -> attributes
    parents: dict[str, dict[tuple[str, ...], tuple[Any, ...]]] = field(default_factory=dict)
    #: the mark the index had
    through: str = ""

    def apply(self, rows: Iterable[dict[str, Any]], now: str) -> str:
        """Give the ``rows`` read from the files (``received_at``: their modification
        time) the arrival and the parents' attributes the index kept; the mark to leave
        (``now``: the rebuild's time, the latest an arrival may be)."""
        through = self.through
        for row in rows:
            was = self.received.get(row["sop_instance_uid"])
            if was is not None and was[0] == row["path"]:
                row["received_at"] = was[1]
            else:
                row["received_at"] = min(row["received_at"], now)
                through = max(through, row["received_at"])
            for table, key in _natural_keys(row).items():
                values = self.parents.get(table, {}).get(key)
                if values is not None:
                    row.update(zip(ATTRS[table], values, strict=True))
        return through


def kept(index: Index) -> Kept:
    """What the rows of ``index`` (of this schema) give a rebuild to keep."""
    with closing(index.reader()) as db:
        sql = "SELECT sop_instance_uid, path, received_at FROM instance"
        received = {uid: (path, at) for uid, path, at in db.execute(sql)}
        parents = {}
        for table, (n, select) in _PARENT_ROWS.items():
            attrs = ", ".join(f"{ALIAS[table]}.{column}" for column in ATTRS[table])
            found = db.execute(select.format(attrs))
            parents[table] = {tuple(row[:n]): tuple(row[n:]) for row in found}
        return Kept(received, parents, rebuilt_through(index.engine, db))


def mark(index: Index, through: str) -> None:
    """(In the rebuild's transaction.) Leave ``through`` as the mark ('' : none)."""
    if through:
        index.execute("DELETE FROM rebuilt")
        index.execute("INSERT INTO rebuilt (received_at) VALUES (?)", (through,))


def _natural_keys(row: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """Per parent table, the natural keys of ``row``'s parent (from the patient's
    down), as the index stores them (``Index.put_many``)."""
    values = {key: clean_text(row.get(key) or "") for key in KEYS}
    patient = patient_key(values)
    study = (*patient, values["study_uid"])
    return {"patient": patient, "study": study, "series": (*study, values["series_uid"])}
