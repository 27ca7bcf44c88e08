"""The writer's cache of parent rows beside other writers (``parentcache.py``): kept
while another connection only adds instances (no lookup again), forgotten when one
rewrote — a delete, a replace, a patient's values changed, a UID filed under a
second parent, a rebuild — so that the next instance is filed under the rows it
names, never a stale one. Two connections on one index, on both engines."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from archive_testlib import dataset, store

from dicomstore.archive import DATASET_MISMATCH, SUCCESS, Archive
from dicomstore.archive.engine import engine_for
from dicomstore.archive.index import Index
from dicomstore.archive.removal import remove

STUDY, SERIES = "1.2.3.4", "1.2.3.4.5"
#: A statement that looks a patient, study or series row up (or writes one).
_PARENT_LOOKUP = re.compile(
    r"^\s*(SELECT .*? FROM (patient|study|series)\b|INSERT INTO (patient|study|series)\b)"
)


class _Counting:
    """The writer's connection, with the statements it runs recorded; and the times
    the writer fell back on looking again after a constraint failed (a parent row
    its cache believed in was gone: ``publish._put``), which the count makes needless."""

    def __init__(self, db: Any) -> None:
        self._wrapped = db
        self.statements: list[str] = []
        self.fallbacks: list[int] = []

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        self.statements.append(sql)
        return self._wrapped.execute(sql, parameters)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)


def _lookups(counting: _Counting) -> list[str]:
    """The parent-row lookups recorded since the last call (and forget them); none
    after a constraint failed."""
    found = [sql for sql in counting.statements if _PARENT_LOOKUP.match(sql)]
    counting.statements.clear()
    assert counting.fallbacks == []
    return found


@pytest.fixture
def a(root: Path) -> Iterator[Archive]:
    with Archive(root, fsync=False) as archive:
        yield archive


def _counted(archive: Archive) -> _Counting:
    index = archive.index
    counting = _Counting(index._db)
    index._db = counting
    forget = index.forget
    index.forget = lambda: (counting.fallbacks.append(1), forget())[1]  # type: ignore[method-assign]
    return counting


def _stored(archive: Archive, n: int, **values: str) -> None:
    uid = f"1.2.3.9.{n}"
    outcome = store(archive, dataset(uid, **values), sop_uid=uid)
    assert outcome.status == SUCCESS, outcome


def _filed(archive: Archive, n: int) -> tuple[str, str, str, str]:
    """(patient ID, patient name, study UID, series UID) the index files instance
    ``n`` under, as a reader sees it."""
    row = archive.get_instance(f"1.2.3.9.{n}")
    assert row is not None
    return row["patient_id"], row["patient_name"], row["study_uid"], row["series_uid"]


def _filed_anew(a: Archive, counting: _Counting, n: int) -> None:
    """``a`` stores instance ``n`` of its series: it looks its rows up again and
    files it under the patient, study and series it names."""
    _stored(a, n)
    assert _lookups(counting) != []
    assert _filed(a, n) == ("PID1", "Doe^Jane", STUDY, SERIES)


def _a_knows_the_series(a: Archive) -> _Counting:
    """``a`` has stored two instances of the series: its rows and its check are
    cached (the second needed no lookup)."""
    _stored(a, 1)
    counting = _counted(a)
    _stored(a, 2)
    assert _lookups(counting) == []
    return counting


def test_what_another_connection_only_adds_is_not_looked_up_again(a: Archive) -> None:
    """The speed of several workers: instances of a known series, a new series of a
    known study, values equal to those stored, filed by another connection, leave
    the cache as it is: the next instance costs no lookup."""
    counting = _a_knows_the_series(a)
    with Archive(a.root, fsync=False) as b:
        _stored(b, 3)  # the same series (rows b did not know: looked up, not written)
        _stored(a, 4)
        assert _lookups(counting) == []
        _stored(b, 5, series=SERIES + ".2")  # a new series of the study
        _stored(b, 6, patient_name="")  # (a value not given is not a change)
        _stored(a, 7)
        assert _lookups(counting) == []
        with b.index.lock:  # a rollback of another writer changes nothing either
            b.index.begin()
            b.index.remove("1.2.3.9.3")
            b.index.rollback()
        _stored(a, 8)
        assert _lookups(counting) == []
    assert a.check() == []


def test_a_delete_by_another_connection_is_seen(a: Archive) -> None:
    """A deleted study's rows are gone; SQLite gives their keys to the next new rows
    (another patient's here): a cached key would file the instance under those."""
    counting = _a_knows_the_series(a)
    remove(a.root, STUDY, fsync=False)  # (`dicomstore delete`: a connection of its own)
    with Archive(a.root, fsync=False) as b:
        _stored(b, 3, patient_id="OTHER", study="1.2.3.7", series="1.2.3.7.1")
    _filed_anew(a, counting, 4)
    assert _filed(a, 3) == ("OTHER", "Doe^Jane", "1.2.3.7", "1.2.3.7.1")
    assert a.check() == []


def test_an_instance_deleted_by_another_connection_is_seen(a: Archive) -> None:
    counting = _a_knows_the_series(a)
    remove(a.root, "1.2.3.9.1", fsync=False)  # (the series keeps an instance)
    _filed_anew(a, counting, 3)


def test_a_replace_that_moves_an_instance_is_seen(a: Archive) -> None:
    """Another connection replaces both instances with copies in another study and
    patient (the old rows are pruned): the next instance of the old series makes
    them anew, under its own study and patient."""
    counting = _a_knows_the_series(a)
    with Archive(a.root, fsync=False, on_duplicate="replace") as b:
        for n in (1, 2):
            _stored(b, n, patient_id="P2", study="1.2.3.8", series="1.2.3.8.1")
    _filed_anew(a, counting, 3)
    assert _filed(a, 1) == ("P2", "Doe^Jane", "1.2.3.8", "1.2.3.8.1")
    assert a.check() == []


def test_a_patient_s_values_changed_by_another_connection_are_seen(a: Archive) -> None:
    """Another connection stores the patient's name anew: the next instance with the
    first name writes it back (the last one stored wins, as with one writer), and
    its row says what is stored."""
    counting = _a_knows_the_series(a)
    with Archive(a.root, fsync=False) as b:
        _stored(b, 3, patient_name="Doe^John")
    assert _filed(a, 1)[1] == "Doe^John"
    _stored(a, 4)
    assert _lookups(counting) != []
    assert _filed(a, 4)[1] == _filed(a, 1)[1] == "Doe^Jane"


@pytest.mark.parametrize(
    "elsewhere",
    [
        {"study": "1.2.3.6", "series": SERIES},  # the series under another study
        {"patient_id": "P2", "series": "1.2.3.4.6"},  # the study under another patient
    ],
)
def test_a_uid_filed_under_a_second_parent_by_another_connection_is_seen(
    a: Archive, elsewhere: dict[str, str]
) -> None:
    """An "accept" server files the series under another study (or the study under
    another patient): the check this writer remembered no longer holds, and the next
    instance is refused (A900), not filed as if it still did."""
    _a_knows_the_series(a)
    with Archive(a.root, fsync=False, on_relational_mismatch="accept") as b:
        _stored(b, 3, **elsewhere)
    outcome = store(a, dataset("1.2.3.9.4"), sop_uid="1.2.3.9.4")
    assert outcome.status == DATASET_MISMATCH


@pytest.mark.parametrize("end", ["rollback", "commit"])
def test_a_check_passed_without_its_instance_stored_is_not_kept(a: Archive, end: str) -> None:
    """A check passed whose instance was not committed (its batch failed, or the
    member was answered otherwise) leaves no row that another writer would meet:
    it must not outlive its transaction."""
    row = {"sop_instance_uid": "1.2.3.9.1", "patient_id": "PID1", "issuer": ""}
    row |= {"study_uid": STUDY, "series_uid": SERIES}
    with a.index.lock:
        a.index.begin()
        assert a.index.conflict(row) is None
        getattr(a.index, end)()
    with Archive(a.root, fsync=False, on_relational_mismatch="accept") as b:
        _stored(b, 2, study="1.2.3.6")  # (its series rows: none of a's to meet)
    with a.index.lock:
        a.index.begin()
        assert a.index.conflict(row) == ("series", "1.2.3.6")
        a.index.rollback()


def test_a_rebuild_by_another_connection_is_seen(a: Archive) -> None:
    """A rebuild (``reindex``: every row deleted and put again) gives the rows new
    keys."""
    counting = _a_knows_the_series(a)
    rows = a.instances()
    other = Index(engine_for(a.root))  # (another process's connection)
    try:
        with other.lock:
            other.begin()
            other.clear()
            other.put({**rows[0], "sop_instance_uid": "1.2.3.9.9", "path": "x/y/9.dcm"})
            for row in rows:
                other.put(row)
            other.commit()
    finally:
        other.close()
    _filed_anew(a, counting, 3)


def test_a_writer_s_own_rewrite_counts_once_and_empties_its_cache(a: Archive) -> None:
    """The count is written once per rewriting transaction (in it: a rollback takes it
    back), and the writer forgets what it knew (it may not know what it changed)."""
    _a_knows_the_series(a)
    count = "SELECT n FROM rewrites"
    with a.index.lock:
        a.index.begin()
        (before,) = a.index._db.execute(count).fetchone()
        a.index.remove("1.2.3.9.1")
        a.index.remove("1.2.3.9.2")
        a.index.prune(SERIES, STUDY, "PID1")
        assert a.index._db.execute(count).fetchone() == (before + 1,)
        assert a.index._cache.known["series"] == {}
        a.index.rollback()
    with a.index.lock:
        a.index.begin()
        assert a.index._db.execute(count).fetchone() == (before,)
        a.index.rollback()
