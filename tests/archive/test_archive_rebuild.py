"""A rebuild of the index from the files (archive/rebuild.py, review58 H1 and H2):
``reindex`` in place keeps each instance's arrival and each patient's, study's and
series' attributes (to the files it did not hold received no later than those it
held: review59 M3); files the index did not hold go in by their times, flagged
(no arrivals), and what is stored after is no rebuilt row whatever the clock of its
node (review59 M2); an index of an older schema is rebuilt in the order its rows
say the instances were received."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from archive_testlib import Behind, dataset, store

from dicomstore.archive import SUCCESS, Archive, fields
from dicomstore.archive.reader import ArchiveReader
from dicomstore.archive.schema import SCHEMA_VERSION

A_STUDY, B_STUDY = "1.2.9.1", "1.2.1.1"  # (the study first received sorts last)
#: (SOP Instance UID, study, series, Patient's Name, Sex, Study Description,
#: Accession Number), in the order received: patient P1 renamed by study B's
#: instance, study A's description and accession corrected by its second one (whose
#: series sorts first)
RECEIVED = [
    ("1.2.9.1.1.1", A_STUDY, "1.2.9.1.1", "OLD^NAME", "F", "OLD DESC", "ACC-OLD"),
    ("1.2.9.1.0.1", A_STUDY, "1.2.9.1.0", "OLD^NAME", "F", "NEW DESC", "ACC-NEW"),
    ("1.2.1.1.1.1", B_STUDY, "1.2.1.1.1", "NEW^NAME", "M", "B DESC", "ACC-B"),
]
#: what the index shows once all are in: the latest received gives each value
SHOWN = {
    (A_STUDY, "NEW^NAME", "M", "NEW DESC", "ACC-NEW"),
    (B_STUDY, "NEW^NAME", "M", "B DESC", "ACC-B"),
}


def _store_renamed(archive: Archive) -> None:
    for sop, study, series, name, sex, description, accession in RECEIVED:
        extra = {0x00100040: ("CS", sex), 0x00081030: ("LO", description)}
        extra[0x00080050] = ("SH", accession)
        data = dataset(
            sop, study=study, series=series, patient_id="P1", patient_name=name, extra=extra
        )
        assert store(archive, data, sop_uid=sop).status == SUCCESS


def _shown(archive: Archive) -> set[tuple[str, ...]]:
    keys = ("study_uid", "patient_name", "sex", "study_description", "accession_number")
    return {tuple(row[k] for k in keys) for row in archive.instances()}


def _arrivals(archive: Archive) -> dict[str, str]:
    return {row["sop_instance_uid"]: row["received_at"] for row in archive.instances()}


def _set_times(archive: Archive, seconds: dict[str, float]) -> None:
    """Each instance's file's modification time set to ``seconds`` (epoch) by UID."""
    for uid, when in seconds.items():
        path = archive.path_of(uid)
        assert path is not None
        os.utime(path, (when, when))


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="microseconds")


def _lose_index(archive: Archive) -> None:
    """Every row gone, as when the index is lost (on either engine)."""
    with archive.index.lock:
        archive.index.begin()
        archive.index.clear()
        archive.index.commit()


def test_an_in_place_reindex_keeps_arrivals_and_a_renamed_patient(tmp_path: Path) -> None:
    """review58 H2: each patient's name (and each study's description, accession) came
    from the file whose study sorted last, undoing a rename; H1: each instance's
    arrival became its file's time. The files' times here say the opposite of the
    receive order: the index's record is what counts."""
    with Archive(tmp_path / "root", fsync=False) as archive:
        _store_renamed(archive)
        assert _shown(archive) == SHOWN
        arrived = _arrivals(archive)
        now = time.time()
        _set_times(archive, {sop: now - n for n, (sop, *_) in enumerate(RECEIVED)})
        assert archive.reindex() == 3
        assert _shown(archive) == SHOWN
        assert _arrivals(archive) == arrived
        assert ArchiveReader(archive.root).rebuilt() == set()  # (nothing made up)


def test_files_the_index_lost_go_in_by_their_times_which_mark_the_rebuild(
    tmp_path: Path,
) -> None:
    """With the index lost, each file's time is its arrival: the latest gives its
    patient's values (a restore that kept the times: the receive order); the rows are
    flagged made by the rebuild, a time in the future is the rebuild's; an in-place
    reindex after it keeps them all, and the flags."""
    with Archive(tmp_path / "root", fsync=False) as archive:
        _store_renamed(archive)
        start = time.time() - 100
        times = {sop: start + n for n, (sop, *_) in enumerate(RECEIVED)}
        _set_times(archive, times)
        _lose_index(archive)
        assert archive.reindex() == 3
        assert _shown(archive) == SHOWN
        assert _arrivals(archive) == {uid: _iso(when) for uid, when in times.items()}
        reader = ArchiveReader(archive.root)
        assert reader.rebuilt() == set(times)

        data = dataset("1.2.1.1.1.2", study=B_STUDY, series="1.2.1.1.1", patient_id="P1")
        assert store(archive, data, sop_uid="1.2.1.1.1.2").status == SUCCESS
        assert reader.rebuilt() == set(times)
        arrived = _arrivals(archive)
        assert archive.reindex() == 4
        assert _arrivals(archive) == arrived and reader.rebuilt() == set(times)

        _set_times(archive, {"1.2.1.1.1.2": time.time() + 86400})  # (a clock ahead)
        _lose_index(archive)
        assert archive.reindex() == 4
        after = _iso(time.time())
        arrival = _arrivals(archive)["1.2.1.1.1.2"]
        assert arrival <= after and reader.rebuilt() == {*times, "1.2.1.1.1.2"}


def test_a_store_after_a_rebuild_by_a_node_whose_clock_is_behind_is_no_rebuilt_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review59 M2: the rebuild's mark was a time (the latest file's); a node whose
    clock was behind stored instances at or before it, taken for rebuilt ones for
    good. The flag tells the rows: a store after is none, a rebuild's rows stay."""
    with Archive(tmp_path / "root", fsync=False) as archive:
        _store_renamed(archive)
        _lose_index(archive)
        assert archive.reindex() == 3
        reader = ArchiveReader(archive.root)
        made = reader.rebuilt()
        assert made == {sop for sop, *_ in RECEIVED}
        latest = max(_arrivals(archive).values())
        monkeypatch.setattr(fields, "datetime", Behind)
        data = dataset("1.2.1.1.2.1", study="1.2.1.2", series="1.2.1.1.2", patient_id="P2")
        assert store(archive, data, sop_uid="1.2.1.1.2.1").status == SUCCESS
        new = archive.get_instance("1.2.1.1.2.1")
        assert new is not None and new["received_at"] <= latest  # (behind the files)
        assert reader.rebuilt() == made


def test_with_the_index_lost_and_the_times_reset_the_latest_file_wins(tmp_path: Path) -> None:
    """The limit (README, reindex): no receive order is left, the files' times (then
    their names) make one; the old name comes back when its file is the latest."""
    with Archive(tmp_path / "root", fsync=False) as archive:
        _store_renamed(archive)
        now = time.time()
        _set_times(archive, {sop: now - n for n, (sop, *_) in enumerate(RECEIVED)})
        _lose_index(archive)
        assert archive.reindex() == 3
        assert {row[1] for row in _shown(archive)} == {"OLD^NAME"}


V1_SCHEMA = """
CREATE TABLE patient (patient_id TEXT PRIMARY KEY, patient_name TEXT, birth_date TEXT, sex TEXT);
CREATE TABLE study (study_uid TEXT PRIMARY KEY, patient_id TEXT NOT NULL);
CREATE TABLE series (series_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL);
CREATE TABLE instance (sop_instance_uid TEXT PRIMARY KEY, series_uid TEXT NOT NULL,
    received_at TEXT NOT NULL, path TEXT NOT NULL UNIQUE);
PRAGMA user_version=1;
"""


@pytest.mark.sqlite_index
def test_an_index_of_schema_1_is_rebuilt_in_the_order_it_received(tmp_path: Path) -> None:
    """review58 H2: `serve`'s rebuild of a schema-1 index (as dicomstore 0.1 made it,
    with each instance's arrival) gave a renamed patient the old name back."""
    root = tmp_path / "root"
    with Archive(root, fsync=False) as archive:
        _store_renamed(archive)
        rows = [
            (r["sop_instance_uid"], r["series_uid"], r["received_at"], r["path"])
            for r in archive.instances()
        ]
        now = time.time()
        _set_times(archive, {sop: now - n for n, (sop, *_) in enumerate(RECEIVED)})
    for suffix in ("", "-wal", "-shm"):
        Path(f"{root}/index.sqlite{suffix}").unlink(missing_ok=True)
    db = sqlite3.connect(root / "index.sqlite")
    db.executescript(V1_SCHEMA)
    db.executemany("INSERT INTO instance VALUES (?, ?, ?, ?)", rows)
    db.commit()
    db.close()
    with Archive(root, fsync=False) as archive:
        assert archive.reindexed == 3
        db = archive.index._db  # (made anew: schema 7, the rebuild counted once)
        assert archive.index.engine.version(db) == SCHEMA_VERSION == 7
        assert db.execute("SELECT one, n FROM rewrites").fetchall() == [(1, 1)]
        assert _shown(archive) == SHOWN
        assert _arrivals(archive) == {uid: at for uid, _series, at, _path in rows}
        assert ArchiveReader(root).rebuilt() == set()


def test_a_file_received_after_the_index_copy_gives_its_patient_name(tmp_path: Path) -> None:
    """review59 M3: a live copy restored (the index copied before a file received
    later, whose patient's name was corrected) and reindexed gave the index's older
    name to the newer file too: the correction undone. The index's values go to the
    files it held and to those received no earlier than the latest it held; a file
    it did not hold received before them does not change them."""
    root, other = tmp_path / "root", tmp_path / "other"
    later = {"1.2.5.2": ("P1", "NEW^NAME", +60.0), "1.2.5.4": ("P2", "STALE^NAME", -60.0)}
    with Archive(other, fsync=False) as elsewhere:  # (the files the index copy lacks)
        for sop, (patient, name, _) in later.items():
            data = dataset(
                sop, study=f"{sop}.0", series=f"{sop}.0.1", patient_id=patient, patient_name=name
            )
            assert store(elsewhere, data, sop_uid=sop).status == SUCCESS
        files = {sop: elsewhere.path_of(sop) for sop in later}
    with Archive(root, fsync=False) as archive:
        for sop, patient, name in (("1.2.5.1", "P1", "OLD^NAME"), ("1.2.5.3", "P2", "KEPT^NAME")):
            data = dataset(
                sop, study=f"{sop}.0", series=f"{sop}.0.1", patient_id=patient, patient_name=name
            )
            assert store(archive, data, sop_uid=sop).status == SUCCESS
        held = max(_arrivals(archive).values())
        for sop, (_, _, shift) in later.items():
            source = files[sop]
            assert source is not None
            target = archive.root / source.relative_to(other)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            when = datetime.fromisoformat(held).timestamp() + shift
            os.utime(target, (when, when))
        assert archive.reindex() == 4
        names = {row["patient_id"]: row["patient_name"] for row in archive.instances()}
        assert names == {"P1": "NEW^NAME", "P2": "KEPT^NAME"}
