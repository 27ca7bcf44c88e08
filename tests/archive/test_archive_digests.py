"""The data set digest the index records (archive/digests.py): XXH3-128 for what is
stored now, the BLAKE3 and SHA-256 rows of older archives still verified (check,
commitment, duplicates)."""

from __future__ import annotations

import hashlib
import os
from contextlib import closing
from pathlib import Path

import blake3
import pytest
from tests.archive.archive_testlib import dataset, digest_of, settled, store, stored_dataset

from dicomstore.archive import OUT_OF_RESOURCES, SUCCESS, WARNING_COERCION, Archive, digests
from dicomstore.archive.commitment import PROCESSING_FAILURE, Reference, verify
from dicomstore.archive.reader import ArchiveReader
from dicomstore.archive.schema import SCHEMA_VERSION, SchemaError

UID = "1.2.3.4.5.6.7"
DATA = dataset(patient_name="Digest^Test", pixels=4096)


def test_new_rows_record_xxh3_of_the_data_set(tmp_path: Path) -> None:
    with Archive(tmp_path / "root", fsync=False) as archive:
        outcome = store(archive, DATA, chunk=100)
        assert outcome.path is not None
        expected = digest_of(stored_dataset(outcome.path))
        assert expected.startswith("xxh3:") and len(expected) == len("xxh3:") + 32
        assert archive.get_instance(UID)["digest"] == expected
        assert digests.of_file(outcome.path) == expected
        assert digests.of_file(outcome.path, digests.SHA256) == _sha256(outcome.path)
        blake = "blake3:" + blake3.blake3(stored_dataset(outcome.path)).hexdigest()
        assert digests.of_file(outcome.path, digests.BLAKE3) == blake


def test_values_name_their_algorithm() -> None:
    assert digests.algorithm_of("xxh3:" + "0" * 32) == "xxh3"
    assert digests.algorithm_of("blake3:" + "0" * 64) == "blake3"  # schema 3's rows
    assert digests.algorithm_of("ab" * 32) == "sha256"  # an older archive's row
    assert digests.text(digests.new(digests.SHA256)) == hashlib.sha256().hexdigest()
    assert digests.text(digests.new(digests.BLAKE3)) == "blake3:" + blake3.blake3().hexdigest()
    assert digests.text(digests.new()) == digest_of(b"")
    with pytest.raises(ValueError, match="unknown digest algorithm"):
        digests.new("md5")


def test_same_reads_the_file_only_across_algorithms(tmp_path: Path) -> None:
    with Archive(tmp_path / "root", fsync=False) as archive:
        path = store(archive, DATA).path
        assert path is not None
    new, old = digests.of_file(path), _sha256(path)
    missing = tmp_path / "not-there.dcm"
    assert digests.same(new, new, missing)  # one algorithm: the values decide
    assert not digests.same(new, "xxh3:" + "0" * 32, missing)
    assert digests.same(old, new, path)  # an older row: the file read with SHA-256
    assert digests.same(digests.of_file(path, digests.BLAKE3), new, path)  # or BLAKE3
    assert not digests.same("blake3:" + "0" * 64, new, path)
    assert not digests.same("ab" * 32, new, path)
    with pytest.raises(FileNotFoundError):
        digests.same(old, new, missing)


def _legacy(archive: Archive, uid: str = UID, algorithm: str = digests.SHA256) -> Path:
    """Make the row of ``uid`` look written by an older dicomstore (SHA-256, or BLAKE3
    as schema 3 wrote)."""
    row = archive.get_instance(uid)
    assert row is not None
    path = archive.root / row["path"]
    with archive.index.lock:
        archive.index.begin()
        archive.index.put({**row, "digest": digests.of_file(path, algorithm)})
        archive.index.commit()
    assert digests.algorithm_of(archive.get_instance(uid)["digest"]) == algorithm
    return path


@pytest.mark.parametrize("algorithm", [digests.SHA256, digests.BLAKE3])
def test_an_older_archive_keeps_verifying(tmp_path: Path, algorithm: str) -> None:
    root = tmp_path / "root"
    with Archive(root, fsync=False) as archive:
        store(archive, DATA)
        path = _legacy(archive, algorithm=algorithm)
        assert archive.check() == []
    ref = Reference("1.2.840.10008.5.1.4.1.1.2", UID)
    (verdict,) = verify(ArchiveReader(root), [ref])
    assert verdict.committed, verdict.why
    flipped = bytearray(path.read_bytes())
    flipped[-3] ^= 0xFF  # same size, another pixel value
    path.write_bytes(bytes(flipped))
    with Archive(root, fsync=False) as archive:
        assert archive.check() == [
            f"{archive.get_instance(UID)['path']}: content differs from the indexed digest"
        ]
    (verdict,) = verify(ArchiveReader(root), [ref])
    assert verdict.failure_reason == PROCESSING_FAILURE


def test_a_duplicate_of_an_older_row_is_told_by_its_content(tmp_path: Path) -> None:
    with Archive(tmp_path / "root", fsync=False) as archive:
        store(archive, DATA)
        _legacy(archive)
        again = store(archive, DATA, chunk=1000)
        assert again.status == SUCCESS, again.error_comment  # the same bytes
        other = store(archive, dataset(patient_name="Other^Name", pixels=4096))
        assert other.status == WARNING_COERCION  # other bytes: the first copy kept
        assert archive.get_instance(UID)["patient_name"] == "Digest^Test"
        assert archive.check() == []
        assert settled(archive)


def _sha256(path: Path) -> str:
    return hashlib.sha256(stored_dataset(path)).hexdigest()


def _stamp(archive: Archive, version: int, mark: str = "") -> None:
    """Record ``version`` as the index's schema version (as that dicomstore did), with
    the tables of that version (before 5: no count of rewrites; before 7: no flag of
    the rows a rebuild made; 6: its mark, a time, ``mark``)."""
    engine, db = archive.index.engine, archive.index._db
    if version < 5:
        engine.create(db, "DROP TABLE IF EXISTS rewrites;", None)
    if version < 7:
        engine.create(db, "ALTER TABLE instance DROP COLUMN rebuilt;", None)
    if version == 6:
        engine.create(db, engine.ddl("CREATE TABLE rebuilt (received_at TEXT NOT NULL);"), None)
        if mark:
            engine.create(db, f"INSERT INTO rebuilt (received_at) VALUES ('{mark}');", None)
    engine.create(db, "", version)


@pytest.mark.parametrize(
    ("version", "algorithm"),
    [
        (2, digests.SHA256),
        (3, digests.BLAKE3),
        (4, digests.XXH3),
        (5, digests.XXH3),
        (6, digests.XXH3),
    ],
)
def test_an_index_of_an_older_version_is_stamped_7_not_rebuilt(
    tmp_path: Path, version: int, algorithm: str
) -> None:
    """Versions 2 (digests SHA-256), 3 (BLAKE3), 4 (XXH3), 5 (the count of rewrites)
    and 6 (the mark of the last rebuild, a time) have the same tables but the count of
    rewrites (before 5) and the flag of the rows a rebuild made: opened as they are
    (readers too: none flagged), a writer adds them and stamps them 7, so that a
    dicomstore of an older version, which would read 'xxh3:' digests as damage,
    rewrite rows without counting or take rebuilt rows for new arrivals (or new ones
    for rebuilt: review59 M2), refuses it from then on."""
    root = tmp_path / "root"
    with Archive(root, fsync=False) as archive:
        store(archive, DATA)
        _legacy(archive, algorithm=algorithm)
        _stamp(archive, version)
        assert archive.index.engine.version(archive.index._db) == version
    assert [row["sop_instance_uid"] for row in ArchiveReader(root).instances()] == [UID]
    assert ArchiveReader(root).rebuilt() == set()
    with Archive(root, fsync=False) as archive:
        assert archive.reindexed is None  # not rebuilt from the files
        db = archive.index._db
        assert archive.index.engine.version(db) == SCHEMA_VERSION == 7
        assert db.execute("SELECT one, n FROM rewrites").fetchall() == [(1, 0)]
        assert "rebuilt" not in archive.index.engine.table_names(db)
        assert db.execute("SELECT rebuilt FROM instance").fetchall() == [(None,)]
        assert digests.algorithm_of(archive.get_instance(UID)["digest"]) == algorithm
        assert archive.check() == []
        second = dataset("1.2.3.4.5.6.8", patient_name="Digest^Test", pixels=4096)
        assert store(archive, second, sop_uid="1.2.3.4.5.6.8").status == SUCCESS
        _stamp(archive, SCHEMA_VERSION + 1)  # as a later dicomstore would
    with pytest.raises(SchemaError, match="newer than this dicomstore"):
        Archive(root, fsync=False)
    # (review50 #12: a reader, `ls`, said 'run dicomstore reindex', which refuses it)
    with pytest.raises(SchemaError, match="newer than this dicomstore's .*: use the dicomstore"):
        ArchiveReader(root)


def test_the_mark_of_schema_6_flags_the_rows_received_by_it(tmp_path: Path) -> None:
    """review59 M2: schema 6 kept the mark of its last rebuild as a time; the writer
    that stamps it 7 flags the instances received by it (as schema 6 took them), and
    a reader before it reads the mark as that dicomstore did."""
    root = tmp_path / "root"
    with Archive(root, fsync=False) as archive:
        store(archive, DATA)
        second = dataset("1.2.3.4.5.6.8", patient_name="Digest^Test", pixels=4096)
        assert store(archive, second, sop_uid="1.2.3.4.5.6.8").status == SUCCESS
        mark = archive.get_instance(UID)["received_at"]
        _stamp(archive, 6, mark)
    assert ArchiveReader(root).rebuilt() == {UID}
    with Archive(root, fsync=False) as archive:
        assert archive.index.engine.version(archive.index._db) == SCHEMA_VERSION
        assert "rebuilt" not in archive.index.engine.table_names(archive.index._db)
    assert ArchiveReader(root).rebuilt() == {UID}


def _uncommitted_replace(tmp_path: Path, new_name: str) -> tuple[Path, Path, bytes]:
    """An archive holding an older (SHA-256) row, left as a crash before the COMMIT
    of a replace leaves it (``FileStorage.place``): the new file at the final name
    with its trace in ``.tmp``, the old one kept there as ``.bak``. (root, final
    path, the old file's bytes)."""
    root = tmp_path / "root"
    with Archive(root, fsync=False) as archive:
        store(archive, DATA)
        final = _legacy(archive)
    with Archive(tmp_path / "other", fsync=False) as other:  # the new version's file
        made = store(other, dataset(patient_name=new_name, pixels=4096)).path
        assert made is not None
        new_bytes = made.read_bytes()
    tmp = root / ".tmp"
    os.link(final, tmp / "x.part.bak")
    (tmp / "x.part").write_bytes(new_bytes)
    os.link(tmp / "x.part", tmp / "x.part.pub")
    os.rename(tmp / "x.part", final)
    return root, final, new_bytes


@pytest.mark.sqlite_index  # (the same archive opened twice; PostgreSQL: one schema per test)
def test_recovery_tells_an_older_rows_file_by_its_content(tmp_path: Path) -> None:
    old = tmp_path / "old"
    root, final, _ = _uncommitted_replace(old, "Digest^Tesx")  # (same size: the digests decide)
    backup = (root / ".tmp" / "x.part.bak").read_bytes()
    with Archive(root, fsync=False) as archive:  # start-up: the old file comes back
        assert final.read_bytes() == backup
        assert archive.get_instance(UID)["patient_name"] == "Digest^Test"
        assert archive.check() == []
    root, final, _ = _uncommitted_replace(tmp_path / "same", "Digest^Test")  # the same data set
    new_file = final.stat().st_ino
    with Archive(root, fsync=False) as archive:  # nothing to undo: the new file stays
        assert final.stat().st_ino == new_file and archive.check() == []


@pytest.mark.sqlite_index
def test_a_trace_recovery_cannot_decide_on_stays_for_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, final, _ = _uncommitted_replace(
        tmp_path, "Digest^Tesx"
    )  # (same size: the digests decide)
    backup = (root / ".tmp" / "x.part.bak").read_bytes()

    def unreadable(recorded: str, path: object) -> bool:
        raise OSError(5, "Input/output error")

    with monkeypatch.context() as patched:
        patched.setattr(digests, "matches", unreadable)
        with Archive(root, fsync=False):
            left = sorted(p.name for p in (root / ".tmp").iterdir() if p.name.startswith("x."))
            assert left == ["x.part.bak", "x.part.pub"]  # neither the trace nor the backup lost
    with Archive(root, fsync=False) as archive:  # readable again: settled
        assert final.read_bytes() == backup and archive.check() == []
        assert not [p for p in (root / ".tmp").iterdir() if p.name.startswith("x.")]


def test_a_duplicate_that_cannot_be_compared_is_a700(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreadable(recorded: str, path: object) -> bool:
        raise OSError(5, "Input/output error")

    with Archive(tmp_path / "root", fsync=False) as archive:
        store(archive, DATA)
        _legacy(archive)
        monkeypatch.setattr(digests, "matches", unreadable)
        again = store(archive, DATA)
        assert again.status == OUT_OF_RESOURCES, again
        assert "comparing it with the stored copy" in again.error_comment
        assert settled(archive)
        monkeypatch.undo()
        assert archive.check() == []


def test_check_restamps_an_index_of_schema_3_before_it_adopts_a_file(tmp_path: Path) -> None:
    """``check`` opens the index without ``migrate`` and may adopt files a crash left
    (recording ``xxh3:`` digests): the index is stamped 7 first, so that a dicomstore
    of schema 3 refuses it rather than take those digests for damage."""
    from dicomstore.archive.maintenance import run_check

    root = tmp_path / "root"
    with Archive(root, fsync=False) as archive:
        store(archive, DATA)
        _stamp(archive, 3)
    assert run_check(root, fsync=False) == []
    reader = ArchiveReader(root)
    with closing(reader.connect()) as db:
        assert reader.engine.version(db) == SCHEMA_VERSION == 7
