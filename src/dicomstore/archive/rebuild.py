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
    received that gave them, as the index kept them (``index.py``), given to the
    rows of the instances it held and to the others received no later than the
    latest it held of that parent (review59 M3: a file received after the index's
    copy was made, a restore of a live copy, gave back the name it had corrected).
    The rows are put in the order of their arrival (then of their path), so that
    among the others the latest received gives them: a renamed patient keeps the
    new name. With the index lost and the files' times reset (a restore that does
    not keep them), that order is the restore's, not the receive order: nothing is
    left to tell it.

The rows a rebuild made (:func:`arrivals_only`, the column ``instance.rebuilt``)
    flagged: those whose arrival it took from their file's time, those the index
    held received by the latest such time (at the rebuild, as its time order puts
    them), and those the index held flagged (by a rebuild before). An instance so
    flagged was in the archive when its index was rebuilt: no arrival. Every store
    of a SOP Instance UID after (a replace too) clears its flag, whatever the clock
    of the node that stores it: the flag tells the rows, not a time (review59 M2: a
    mark that was a time hid the stores of a node whose clock was behind, or of
    one stepped back, for good). Forwarding's recovery, the study-complete events
    (the studies waited for again, a study's stable state, what a ``when=stable``
    rule queues) and the arrivals of other nodes (``services/arrivals.py``) leave
    flagged instances out, so that a restore of the files and a ``reindex``
    neither send the archive's past again (to a rule added since neither) nor make
    its studies stable again.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

from dicomstore.archive.fields import clean_text
from dicomstore.archive.index import Index
from dicomstore.archive.schema import (
    ALIAS,
    ATTRS,
    KEYS,
    Arrivals,
    instance_columns,
    patient_key,
)

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


#: The arrival a flagged row counts as where a study's newest one is asked
#: (:func:`newest_received`): before every arrival, so that an event covers it.
BEFORE_ALL = "0001-01-01T00:00:00.000000+00:00"


def arrivals_only(engine: Any, db: Any, alias: str = "i") -> str:
    """SQL condition: the instance row ``alias`` of the index ``db`` of ``engine`` is
    an arrival, not one a rebuild made (module notes). An index of schema 6 or older
    that no writer opened since (readers only): its time mark, if any."""
    if "rebuilt" in instance_columns(db):
        return f"{alias}.rebuilt IS NULL"
    if "rebuilt" in engine.table_names(db):  # (schema 6: a time, ISO 8601 text)
        row = db.execute("SELECT MAX(received_at) FROM rebuilt").fetchone()
        if row and row[0]:
            return f"{alias}.received_at > '{str(row[0]).replace(chr(39), '')}'"
    return "1 = 1"


def newest_received(engine: Any, db: Any, alias: str) -> str:
    """SQL of the instance row ``alias``'s arrival, :data:`BEFORE_ALL` for a row a
    rebuild made: its MAX is a study's newest arrival (``stable_search``)."""
    arrival = arrivals_only(engine, db, alias)
    return f"CASE WHEN {arrival} THEN {alias}.received_at ELSE '{BEFORE_ALL}' END"


def rebuilt_uids(engine: Any, db: Any) -> set[str]:
    """The SOP Instance UIDs of the instances a rebuild made (module notes)."""
    sql = f"SELECT i.sop_instance_uid FROM instance i WHERE NOT ({arrivals_only(engine, db)})"
    return {uid for (uid,) in db.execute(sql)}


@dataclass
class Kept:
    """What a rebuild keeps of the index it replaces (module notes)."""

    #: SOP Instance UID -> (path, received_at)
    received: Arrivals = field(default_factory=dict)
    #: parent table -> natural keys (from the patient's down) -> attributes
    parents: dict[str, dict[tuple[str, ...], tuple[Any, ...]]] = field(default_factory=dict)
    #: parent table -> natural keys -> the latest arrival of its instances the index held
    latest: dict[str, dict[tuple[str, ...], str]] = field(default_factory=dict)
    #: the SOP Instance UIDs the index held flagged (a rebuild before made them)
    rebuilt: set[str] = field(default_factory=set)

    def apply(self, rows: Iterable[dict[str, Any]], now: str) -> None:
        """Give the ``rows`` read from the files (``received_at``: their modification
        time) the arrival, the flag and the parents' attributes the index kept
        (module notes; ``now``: the rebuild's time, the latest an arrival may be)."""
        held: list[dict[str, Any]] = []
        made: list[dict[str, Any]] = []
        for row in rows:
            was = self.received.get(row["sop_instance_uid"])
            if was is not None and was[0] == row["path"]:
                row["received_at"] = was[1]
                held.append(row)
            else:
                row["received_at"] = min(row["received_at"], now)
                made.append(row)
        through = max((row["received_at"] for row in made), default="")
        for row in made:
            row["rebuilt"] = 1
            self._give_parents(row, held=False)
        for row in held:
            if row["sop_instance_uid"] in self.rebuilt or row["received_at"] <= through:
                row["rebuilt"] = 1
            self._give_parents(row, held=True)

    def _give_parents(self, row: dict[str, Any], *, held: bool) -> None:
        """The parents' attributes the index kept, to ``row`` if the index held it or
        it was received no later than the latest instance of that parent it held."""
        for table, key in _natural_keys(row).items():
            values = self.parents.get(table, {}).get(key)
            if values is None:
                continue
            if held or row["received_at"] <= self.latest.get(table, {}).get(key, ""):
                row.update(zip(ATTRS[table], values, strict=True))


#: Each instance row of the index: its arrival, its flag, its parents' natural keys.
_INSTANCE_ROWS = (
    "SELECT i.sop_instance_uid, i.path, i.received_at, i.rebuilt, p.patient_id, p.issuer,"
    " p.scope, st.study_uid, se.series_uid FROM instance i"
    " JOIN series se ON se.series_pk = i.series_pk"
    " JOIN study st ON st.study_pk = se.study_pk"
    " JOIN patient p ON p.patient_pk = st.patient_pk"
)


def kept(index: Index) -> Kept:
    """What the rows of ``index`` (of this schema) give a rebuild to keep."""
    with closing(index.reader()) as db:
        found = Kept()
        for uid, path, at, flag, *keys in db.execute(_INSTANCE_ROWS):
            found.received[uid] = (path, at)
            if flag is not None:
                found.rebuilt.add(uid)
            for table, (n, _) in _PARENT_ROWS.items():
                latest = found.latest.setdefault(table, {})
                key = tuple(keys[:n])
                latest[key] = max(latest.get(key, ""), at)
        for table, (n, select) in _PARENT_ROWS.items():
            attrs = ", ".join(f"{ALIAS[table]}.{column}" for column in ATTRS[table])
            rows = db.execute(select.format(attrs))
            found.parents[table] = {tuple(row[:n]): tuple(row[n:]) for row in rows}
        return found


def _natural_keys(row: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """Per parent table, the natural keys of ``row``'s parent (from the patient's
    down), as the index stores them (``Index.put_many``)."""
    values = {key: clean_text(row.get(key) or "") for key in KEYS}
    patient = patient_key(values)
    study = (*patient, values["study_uid"])
    return {"patient": patient, "study": study, "series": (*study, values["series_uid"])}
