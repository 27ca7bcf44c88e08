"""The data set digest the index records (archive/digests.py): BLAKE3 for what is
stored now, SHA-256 rows of older archives still verified (check, commitment,
duplicates)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import blake3
import pytest
from tests.archive.archive_testlib import dataset, store, stored_dataset

from dicomstore.archive import SUCCESS, WARNING_COERCION, Archive, digests
from dicomstore.archive.commitment import PROCESSING_FAILURE, Reference, verify
from dicomstore.archive.reader import ArchiveReader

UID = "1.2.3.4.5.6.7"
DATA = dataset(patient_name="Digest^Test", pixels=4096)


def test_new_rows_record_blake3_of_the_data_set(tmp_path: Path) -> None:
    with Archive(tmp_path / "root", fsync=False) as archive:
        outcome = store(archive, DATA, chunk=100)
        assert outcome.path is not None
        expected = "blake3:" + blake3.blake3(stored_dataset(outcome.path)).hexdigest()
        assert archive.get_instance(UID)["digest"] == expected
        assert digests.of_file(outcome.path) == expected
        assert digests.of_file(outcome.path, digests.SHA256) == _sha256(outcome.path)


def test_values_name_their_algorithm() -> None:
    assert digests.algorithm_of("blake3:" + "0" * 64) == "blake3"
    assert digests.algorithm_of("ab" * 32) == "sha256"  # an older archive's row
    assert digests.text(digests.new(digests.SHA256)) == hashlib.sha256().hexdigest()
    assert digests.text(digests.new()) == "blake3:" + blake3.blake3().hexdigest()
    with pytest.raises(ValueError, match="unknown digest algorithm"):
        digests.new("md5")


def test_same_reads_the_file_only_across_algorithms(tmp_path: Path) -> None:
    with Archive(tmp_path / "root", fsync=False) as archive:
        path = store(archive, DATA).path
        assert path is not None
    new, old = digests.of_file(path), _sha256(path)
    missing = tmp_path / "not-there.dcm"
    assert digests.same(new, new, missing)  # one algorithm: the values decide
    assert not digests.same(new, "blake3:" + "0" * 64, missing)
    assert digests.same(old, new, path)  # an older row: the file read with SHA-256
    assert not digests.same("ab" * 32, new, path)
    with pytest.raises(FileNotFoundError):
        digests.same(old, new, missing)


def _legacy(archive: Archive, uid: str = UID) -> Path:
    """Make the row of ``uid`` look written by an older dicomstore (SHA-256)."""
    row = archive.get_instance(uid)
    assert row is not None
    path = archive.root / row["path"]
    with archive.index.lock:
        archive.index.begin()
        archive.index.put({**row, "digest": _sha256(path)})
        archive.index.commit()
    assert digests.algorithm_of(archive.get_instance(uid)["digest"]) == "sha256"
    return path


def test_an_older_archive_keeps_verifying(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with Archive(root, fsync=False) as archive:
        store(archive, DATA)
        path = _legacy(archive)
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
        assert not any(archive.tmp_dir.iterdir())


def _sha256(path: Path) -> str:
    return hashlib.sha256(stored_dataset(path)).hexdigest()
