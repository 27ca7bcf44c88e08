"""Which studies are stable, for searches (issue 16): the state shown by
``dicomstore ls studies`` and QIDO-RS, and QIDO-RS's ``stable`` filter.

A study is stable since its last study-complete event (:mod:`.stability`) when
that event covers its newest instance; a study receiving an instance after its
event is not, until the next event. The events come from the log as
:meth:`~dicomstore.services.stable_log.StableLog.latest` caches it (only the
bytes appended since are read), and the newest instances of the studies of a
page of results from the index, in one statement for the page. The filter is
a condition of the search's own SQL, so ``limit`` and ``offset`` count the
studies that pass it: on SQLite, Python functions over the cached log; on
PostgreSQL (issue 17), the log's studies as one JSON parameter.

Several nodes of one archive (issue 17) give one answer: the log is in the
shared storage root, appended by the one node that runs the events
(``.events.lock``), and read by every node (opened each time: NFS's
close-to-open consistency), the arrivals are in the shared index. The record
stays in the log rather than the index: it is what ``dicomstore events``
replays, and a ``reindex`` (which rebuilds the index from the files) keeps it.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from contextlib import closing
from typing import Any

from dicomstore.archive import query as q
from dicomstore.archive.engine import dialect_of
from dicomstore.archive.reader import ArchiveReader
from dicomstore.archive.rebuild import newest_received
from dicomstore.services.stable_log import StableStudy, covered, reader_log

_REPORTED = "dicomstore_reported"
_STABLE_AT = "dicomstore_stable_at"


def stable_states(reader: ArchiveReader, study_uids: Collection[str]) -> dict[str, str | None]:
    """Per study, when it was last reported stable (``stable_at``), or None while
    its newest instance is not covered by an event (still receiving, or not yet
    quiet for long enough, or never reported)."""
    latest = reader_log(reader).latest()
    states: dict[str, str | None] = dict.fromkeys(study_uids)
    reported = [uid for uid in states if uid in latest]
    if reported:
        with closing(reader.connect()) as db:
            received = newest_received(reader.engine, db, "c")
            newest = q.newest_arrivals(db, reported, received)
        for uid in reported:
            states[uid] = covered(latest[uid], newest.get(uid))
    return states


def search(
    reader: ArchiveReader,
    level: str,
    filters: q.Filters,
    *,
    stable: bool | None = None,
    limit: int | None = None,
    offset: int = 0,
    sample: bool = False,
) -> list[dict[str, Any]]:
    """:meth:`ArchiveReader.search`, of the studies that are stable (``stable``
    True) or not (False) only, when ``stable`` is given."""
    if stable is None:
        return reader.search(level, filters, limit=limit, offset=offset, sample=sample)
    latest = reader_log(reader).latest()
    with closing(reader.connect()) as db:
        received = newest_received(reader.engine, db, "c")
        if dialect_of(db) == "sqlite":
            also, params = _covered_sqlite(db, latest, stable, received)
        else:
            also, params = _covered_pg(latest, stable, received)
        return q.search(
            db,
            level,
            filters,
            limit=limit,
            offset=offset,
            also=[also],
            also_params=params,
            sample=sample,
        )


def _covered_sqlite(
    db: Any, latest: Mapping[str, StableStudy], stable: bool, received: str
) -> tuple[str, list[Any]]:
    """The filter on SQLite: two SQL functions of ours on the connection, is a study
    in the log (cheap: the newest instance is looked up only for those), and its
    ``stable_at`` or NULL (``received``: an instance row's arrival, the rows a rebuild
    made none, ``rebuild.newest_received``)."""

    def stable_at(uid: str, newest: str | None) -> str | None:
        return covered(latest.get(uid), newest)

    db.create_function(_REPORTED, 1, lambda uid: uid in latest, deterministic=True)
    db.create_function(_STABLE_AT, 2, stable_at, deterministic=True)
    newest = q.newest_arrival("st.study_uid", received)
    state = f"CASE WHEN {_REPORTED}(st.study_uid) THEN {_STABLE_AT}(st.study_uid, ({newest})) END"
    return f"({state}) IS {'NOT NULL' if stable else 'NULL'}", []


def _covered_pg(
    latest: Mapping[str, StableStudy], stable: bool, received: str
) -> tuple[str, list[Any]]:
    """The filter on PostgreSQL, which runs no functions of ours: the log's studies
    go as one JSON object (Study Instance UID: the latest arrival its event covers),
    and a study in it is stable
    when its newest instance arrived no later (as
    :func:`~dicomstore.services.stable_log.covered`: compared as times).
    A condition per row, as SQLite's, so a search with a ``limit`` walks the study
    order and stops (the newest instance is looked up for reported studies only)."""
    newest = q.newest_arrival("st.study_uid", received)
    state = (
        "CASE WHEN CAST(? AS jsonb) ->> st.study_uid IS NOT NULL"
        f" THEN CAST(({newest}) AS timestamptz)"
        " <= CAST(CAST(? AS jsonb) ->> st.study_uid AS timestamptz) END"
    )
    reported = json.dumps({uid: event.last_received for uid, event in latest.items()})
    return f"({state}) IS {'TRUE' if stable else 'NOT TRUE'}", [reported, reported]
