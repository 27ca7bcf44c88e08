"""The SQLite index: schema, queries, readers beside the writer, check() and reindex()."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from archive_testlib import dataset, in_meta, store

from dicomstore.archive import SUCCESS, Archive
from dicomstore.archive.schema import ROW_COLUMNS, SCHEMA


@pytest.fixture
def archive(tmp_path: Path) -> Archive:
    with Archive(tmp_path / "root") as archive:
        for i, (patient, study, series, modality) in enumerate(
            [
                ("PID1", "1.2.3.4", "1.2.3.4.1", "CT"),
                ("PID1", "1.2.3.4", "1.2.3.4.1", "CT"),
                ("P2", "1.2.3.5", "1.2.3.5.1", "MR"),
            ]
        ):
            uid = f"1.2.3.4.5.{i}"
            data = dataset(uid, patient_id=patient, study=study, series=series, modality=modality)
            assert store(archive, data, sop_uid=uid).status == SUCCESS
        yield archive


@pytest.mark.sqlite_index
def test_index_is_wal_with_the_four_tables(archive: Archive) -> None:
    db = sqlite3.connect(archive.root / "index.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"patient", "study", "series", "instance", "unflushed", "conflict", "rewrites"}
    indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"patient_name_idx", "study_date_idx", "study_accession_idx"} <= indexes
    assert {"series_modality_idx"} <= indexes
    db.close()


def test_schema_has_no_sqlite_only_syntax() -> None:
    for word in ("AUTOINCREMENT", "WITHOUT ROWID", "INSERT OR", "REPLACE INTO", "PRAGMA"):
        assert word not in SCHEMA.upper()


def test_queries(archive: Archive) -> None:
    assert len(archive.instances()) == 3
    assert [r["sop_instance_uid"] for r in archive.instances(patient_id="PID1")] == [
        "1.2.3.4.5.0",
        "1.2.3.4.5.1",
    ]
    assert len(archive.instances(modality="MR", patient_id="P2")) == 1
    assert archive.instances(modality="US") == []
    assert len(archive.instances(body_part=None)) == 3
    assert len(archive.instances(study_date="20240102", accession_number="ACC1")) == 3
    row = archive.get_instance("1.2.3.4.5.2")
    assert set(row) == set(ROW_COLUMNS)
    assert row["patient_id"] == "P2" and row["series_uid"] == "1.2.3.5.1"
    assert archive.get_instance("9.9") is None
    assert archive.path_of("9.9") is None
    assert archive.path_of("1.2.3.4.5.2") == archive.root / row["path"]
    with pytest.raises(TypeError):
        archive.instances(no_such_column="x")


@pytest.mark.sqlite_index
def test_readers_do_not_block_the_writer(archive: Archive) -> None:
    reader = sqlite3.connect(archive.root / "index.sqlite", isolation_level=None)
    reader.execute("BEGIN")
    before = reader.execute("SELECT COUNT(*) FROM instance").fetchone()
    outcome = store(archive, dataset("1.2.3.4.5.9"), sop_uid="1.2.3.4.5.9")
    assert outcome.status == SUCCESS
    assert reader.execute("SELECT COUNT(*) FROM instance").fetchone() == before  # snapshot
    reader.execute("COMMIT")
    assert reader.execute("SELECT COUNT(*) FROM instance").fetchone() == (4,)
    reader.close()


def test_reading_while_the_writer_holds_the_lock(archive: Archive) -> None:
    with archive.index.lock:
        archive.index.begin()
        archive.index.remove("1.2.3.4.5.0")
        assert len(archive.instances()) == 3  # readers see the last commit
        archive.index.rollback()


def test_check_is_clean_after_stores(archive: Archive) -> None:
    assert archive.check() == []


def test_check_finds_missing_altered_resized_and_unindexed(archive: Archive) -> None:
    paths = [archive.path_of(f"1.2.3.4.5.{i}") for i in range(3)]
    paths[0].unlink()
    raw = bytearray(paths[1].read_bytes())
    raw[-5] ^= 0xFF  # same size, different content
    paths[1].write_bytes(bytes(raw))
    with open(paths[2], "ab") as fp:
        fp.write(b"\0\0")
    stray = archive.root / "1.2.3.4" / "1.2.3.4.1" / "9.9.dcm"
    stray.write_bytes(paths[1].read_bytes())
    problems = archive.check()
    assert len(problems) == 4
    text = "\n".join(problems)
    assert "missing" in text and "1.2.3.4.5.0" in text
    assert "content differs" in text
    assert "size" in text
    assert "9.9.dcm: not indexed" in text


def test_check_finds_a_file_meta_naming_another_syntax(archive: Archive) -> None:
    """review104 F2: the digest does not cover the File Meta Information; retrieval
    refuses a meta naming another transfer syntax than the index (archive/checked.py),
    and `check` says it too (it said nothing: the operator saw 'archive damage' in the
    log and a clean check)."""
    path = archive.path_of("1.2.3.4.5.1")
    data = path.read_bytes()
    path.write_bytes(in_meta(data, b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.2.2\0"))
    relpath = path.relative_to(archive.root).as_posix()
    assert archive.check() == [
        f"{relpath}: its File Meta Information names transfer syntax 1.2.840.10008.1.2.2;"
        " stored 1.2.840.10008.1.2.1"
    ]


@pytest.mark.sqlite_index
def test_reindex_rebuilds_the_index(archive: Archive, tmp_path: Path) -> None:
    before = {r["sop_instance_uid"]: r for r in archive.instances()}
    archive.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{archive.root}/index.sqlite{suffix}").unlink(missing_ok=True)
    with Archive(archive.root) as rebuilt:
        assert rebuilt.instances() == []
        assert len(rebuilt.check()) == 3  # every file unindexed
        assert rebuilt.reindex() == 3
        assert rebuilt.check() == []
        after = {r["sop_instance_uid"]: r for r in rebuilt.instances()}
        assert after.keys() == before.keys()
        for uid, row in after.items():
            for key in ROW_COLUMNS:
                if key != "received_at":
                    assert row[key] == before[uid][key], key


def test_reindex_drops_rows_of_deleted_files_and_skips_broken_ones(archive: Archive) -> None:
    gone = archive.path_of("1.2.3.4.5.0")
    gone.unlink()
    broken = archive.root / "1.2.3.4" / "broken.dcm"
    broken.write_bytes(b"not dicom")
    left_out: list[str] = []
    damaged: list[str] = []
    assert archive.reindex(left_out, damaged) == 2
    assert archive.get_instance("1.2.3.4.5.0") is None
    assert archive.check() == ["1.2.3.4/broken.dcm: not indexed"]
    # review77 F2: the instance the index held is told, not forgotten silently;
    # review100 W6: a file that cannot be read is damaged too (the command exits 1)
    rel = gone.relative_to(archive.root).as_posix()
    assert damaged == [
        f"{rel}: missing: SOP Instance 1.2.3.4.5.0, indexed, has no file; its record is"
        " dropped: restore the file from a copy first, and reindex again, to keep it",
        "1.2.3.4/broken.dcm: left out: cannot be read: not a PS3.10 file"
        " (no 'DICM' prefix and File Meta Information)",
    ]
    assert left_out == []


def test_reindex_keeps_the_record_of_a_file_truncated_since(archive: Archive) -> None:
    """review77 F1: a file the index held, truncated (cannot be read any more), was left
    out and its record dropped, exit 0: acknowledged, then forgotten. Its record is kept,
    told as damaged (exit 1), and check goes on reporting it."""
    path = archive.path_of("1.2.3.4.5.2")
    before = archive.get_instance("1.2.3.4.5.2")
    path.write_bytes(path.read_bytes()[:200])
    rel = path.relative_to(archive.root).as_posix()
    left_out: list[str] = []
    damaged: list[str] = []
    assert archive.reindex(left_out, damaged) == 3
    assert left_out == []
    (line,) = damaged
    assert line.startswith(f"{rel}: damaged: it cannot be read (")
    assert line.endswith(
        "the index's record is kept (check reports it): restore the file"
        " from a copy, or delete the instance"
    )
    after = archive.get_instance("1.2.3.4.5.2")
    assert after is not None
    assert {k: after[k] for k in ("digest", "file_size", "path", "received_at")} == {
        k: before[k] for k in ("digest", "file_size", "path", "received_at")
    }
    assert archive.check() == [f"{rel}: size 200, indexed {before['file_size']}"]
    if archive.index.engine.dialect != "sqlite":
        return
    from dicomstore.cli import main

    archive.close()
    assert main(["reindex", "--storage", str(archive.root)]) == 1  # (told: damaged)


def test_reindex_keeps_the_records_of_many_unreadable_files(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The index's rows of the files it cannot read are looked up a bounded number at a
    time (a query's parameters are bounded: thousands after a bad restore)."""
    from dicomstore.archive import reindex_rows

    monkeypatch.setattr(reindex_rows, "FIND_AT_ONCE", 2)
    for uid in ("1.2.3.4.5.0", "1.2.3.4.5.1", "1.2.3.4.5.2"):
        path = archive.path_of(uid)
        path.write_bytes(path.read_bytes()[:200])
    damaged: list[str] = []
    assert archive.reindex([], damaged) == 3 and len(damaged) == 3
    assert all(archive.get_instance(f"1.2.3.4.5.{i}") is not None for i in range(3))


def test_store_after_reindex(archive: Archive) -> None:
    archive.reindex()
    assert store(archive, dataset("1.2.3.4.5.7"), sop_uid="1.2.3.4.5.7").status == SUCCESS
    assert len(archive.instances()) == 4


def test_reindex_keeps_the_recorded_digest_of_a_file_damaged_since(archive: Archive) -> None:
    """review45 H2: reindex took the damaged bytes' digest as the record, and check was
    clean afterwards: what was acknowledged was forgotten, silently."""
    path = archive.path_of("1.2.3.4.5.2")
    recorded = archive.get_instance("1.2.3.4.5.2")["digest"]
    data = path.read_bytes()
    assert data.count(b"MR") == 1
    path.write_bytes(data.replace(b"MR", b"MG"))  # (a value changed: same size, framing)
    relpath = path.relative_to(archive.root).as_posix()
    problem = f"{relpath}: content differs from the indexed digest"
    assert archive.check() == [problem]
    left_out: list[str] = []
    damaged: list[str] = []
    assert archive.reindex(left_out, damaged) == 3
    assert left_out == [] and len(damaged) == 1
    assert damaged[0].startswith(f"{relpath}: damaged: ")
    assert archive.get_instance("1.2.3.4.5.2")["digest"] == recorded
    assert archive.check() == [problem]  # (still reported)


@pytest.mark.parametrize(
    ("old", "new"),
    [(b"\x02\x00P2", b"\x02\x00P9"), (b"1.2.3.5.1\0", b"1.2.3.5.9\0")],
    ids=["patient", "series"],
)
def test_reindex_keeps_the_whole_record_of_a_file_damaged_in_its_keys(
    archive: Archive, old: bytes, new: bytes
) -> None:
    """review98 R3: a file damaged in place in its Patient ID moved the instance to
    that other patient; in its Series Instance UID, it was left out as put in by hand
    ('move it there') and its record dropped, exit 0. The record of what was
    acknowledged is kept whole, told as damaged."""
    uid = "1.2.3.4.5.2"
    path = archive.path_of(uid)
    before = archive.get_instance(uid)
    data = path.read_bytes()
    assert data.count(old) == 1
    path.write_bytes(data.replace(old, new))
    relpath = path.relative_to(archive.root).as_posix()
    left_out: list[str] = []
    damaged: list[str] = []
    assert archive.reindex(left_out, damaged) == 3
    assert left_out == []
    assert damaged == [
        f"{relpath}: damaged: it differs from the size and digest recorded when it was"
        " stored; the index's record is kept (check reports it): restore the file from a"
        " copy, or delete the instance"
    ]
    after = archive.get_instance(uid)
    assert {k: after[k] for k in ROW_COLUMNS if k != "received_at"} == {
        k: before[k] for k in ROW_COLUMNS if k != "received_at"
    }
    assert archive.check() == [f"{relpath}: content differs from the indexed digest"]


def test_reindex_leaves_out_a_file_not_where_its_instance_is_filed(archive: Archive) -> None:
    """review45 H2: a file put at the archive's root was indexed there, and the next
    check reported the index ('indexed under study ...') with no word of what to do."""
    stray = archive.root / "stray.dcm"
    stray.write_bytes(archive.path_of("1.2.3.4.5.2").read_bytes())
    archive.path_of("1.2.3.4.5.2").unlink()
    left_out: list[str] = []
    assert archive.reindex(left_out) == 2
    assert left_out == [
        "stray.dcm: left out: not where the archive files its instance"
        " (1.2.3.5/1.2.3.5.1/1.2.3.4.5.2.dcm): move it there, or store it with `dicomstore send`"
    ]
    assert archive.check() == ["stray.dcm: not indexed"]


ACCEPT = ("--on-relational-mismatch", "accept")


def test_reindex_leaves_out_a_file_put_in_by_hand_whose_study_is_another_patient_s(
    archive: Archive, tmp_path: Path
) -> None:
    """review54 F7: a file of study 1.2.3.4 for another patient, copied to its place by
    hand, was indexed: one study under two patients, and check clean. The relational
    check judges the files the index did not hold (oldest first) as a store would."""
    with Archive(tmp_path / "elsewhere", fsync=False) as other:
        data = dataset("1.2.3.4.5.9", study="1.2.3.4", series="1.2.3.4.9", patient_id="P9")
        out = store(other, data, sop_uid="1.2.3.4.5.9")
        assert out.path is not None
        rel = out.path.relative_to(other.root).as_posix()
        (archive.root / rel).parent.mkdir(parents=True)
        shutil.copyfile(out.path, archive.root / rel)
    left_out: list[str] = []
    assert archive.reindex(left_out) == 3
    assert left_out == [
        f"{rel}: left out: Study Instance UID is already filed under another patient (store"
        " it with `dicomstore send`: the server's --on-relational-mismatch judges it)"
    ]
    assert archive.check() == [f"{rel}: not indexed"]
    assert {r["patient_id"] for r in archive.instances(study_uid="1.2.3.4")} == {"PID1"}
    if archive.index.engine.dialect != "sqlite":
        return
    archive.close()  # the index lost: every file judged, the oldest first
    for suffix in ("", "-wal", "-shm"):
        Path(f"{archive.root}/index.sqlite{suffix}").unlink(missing_ok=True)
    with Archive(archive.root) as rebuilt:  # (review55 M2: an "accept" archive's lost
        left_out = []  # index rebuilt left its files out): all taken in, as before
        assert rebuilt.reindex(left_out) == 4 and left_out == []
    from dicomstore.cli import main  # a file put in by hand again: judged, as the server

    (archive.root / rel).unlink()  # would (its policy given: reindex's option)
    assert main(["reindex", "--storage", str(archive.root)]) == 1  # (told missing)
    shutil.copyfile(out.path, archive.root / rel)
    assert main(["reindex", "--storage", str(archive.root)]) == 0
    with Archive(archive.root) as rebuilt:
        assert {r["patient_id"] for r in rebuilt.instances(study_uid="1.2.3.4")} == {"PID1"}
    assert main(["reindex", "--storage", str(archive.root), *ACCEPT]) == 0
    with Archive(archive.root) as rebuilt:
        assert {r["patient_id"] for r in rebuilt.instances(study_uid="1.2.3.4")} == {"PID1", "P9"}


def test_the_reindex_command_says_a_damaged_file_and_fails(archive: Archive, capsys) -> None:
    from dicomstore.cli import main

    path = archive.path_of("1.2.3.4.5.2")
    path.write_bytes(path.read_bytes().replace(b"MR", b"MG"))
    archive.close()
    assert main(["reindex", "--storage", str(archive.root)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("1.2.3.5/1.2.3.5.1/1.2.3.4.5.2.dcm: damaged: ")
    assert out[-1] == "reindexed 3 instances, 1 damaged"


def test_the_reindex_summary_names_each_kind(archive: Archive, capsys) -> None:
    """review115 F6: a file gone (its record dropped) and one that cannot be read (left
    out) were summed up as 'damaged'."""
    from dicomstore.cli import main

    archive.path_of("1.2.3.4.5.0").unlink()
    (archive.root / "1.2.3.4" / "broken.dcm").write_bytes(b"not dicom")
    archive.close()
    assert main(["reindex", "--storage", str(archive.root)]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == (
        "reindexed 2 instances, 1 file(s) left out, 1 missing"
    )


def test_reindex_keeps_the_record_of_a_file_in_a_folder_it_may_not_read(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review115 F5: a series folder of mode 000 (not root) stopped reindex, exit 2,
    where the README says such a file is told and its record kept (exit 1)."""
    from pathlib import Path

    path = archive.path_of("1.2.3.4.5.0")
    real = Path.exists

    def denied(self: Path, *args, **kwargs) -> bool:
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    path.rename(path.with_suffix(".hidden"))  # (not listed, as in a folder not readable)
    monkeypatch.setattr(Path, "exists", denied)
    left_out: list[str] = []
    damaged: list[str] = []
    archive.reindex(left_out, damaged)
    rel = path.relative_to(archive.root).as_posix()
    assert [line for line in damaged if line.startswith(rel)] == [
        f"{rel}: damaged: it cannot be read (Permission denied); the index's record is kept"
        " (check reports it): restore the file from a copy, or delete the instance"
    ]
    assert archive.get_instance("1.2.3.4.5.0") is not None
