"""The index's health while an archive serves (``index_health.py``, review58 M2-M4):
its file removed (stores were answered Success into the unlinked inode), damage a
store meets (said once, with the remedy), ``check`` of a damaged index (it said
"0 problem(s)"), and what ``Archive.cannot_store`` tells readiness."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from archive_testlib import damage, dataset, store

from dicomstore.archive import OUT_OF_RESOURCES, SUCCESS, Archive, index_health, layout
from dicomstore.cli import main


def fill(archive: Archive, n: int = 60) -> None:
    """``n`` instances in 7 studies, 3 series each: an index of a few dozen pages."""
    for i in range(n):
        data = dataset(f"1.2.3.4.5.{i}", study=f"1.2.3.{i % 7}", series=f"1.2.3.{i % 7}.{i % 3}")
        assert store(archive, data, sop_uid=f"1.2.3.4.5.{i}").status == SUCCESS


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


@pytest.mark.sqlite_index
def test_a_store_after_the_index_file_was_removed_is_refused(
    root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(index_health, "WATCH_EVERY", 0.0)  # (every batch looks: no waiting)
    with Archive(root, fsync=False) as archive:
        assert store(archive, dataset("1.2.3.4.5.1"), sop_uid="1.2.3.4.5.1").status == SUCCESS
        for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
            (root / name).unlink(missing_ok=True)
        for uid in ("1.2.3.4.5.2", "1.2.3.4.5.3"):
            outcome = store(archive, dataset(uid), sop_uid=uid)
            assert outcome.status == OUT_OF_RESOURCES
            assert outcome.error_comment == (
                "index unavailable: its file was removed or replaced: restart after a reindex"
            )
            assert not list(root.glob(f"*/*/{uid}.dcm"))  # (nothing left behind)
        assert archive.health.problems() == [
            "the archive index file was removed while the server ran (see the log)"
        ]
    (said,) = errors(caplog)  # (once)
    assert said.startswith(f"the index {root / 'index.sqlite'} was removed while the server ran")
    assert f"run `dicomstore reindex --storage {root}` to index the stored files again" in said


@pytest.mark.sqlite_index
def test_the_index_file_is_looked_at_once_a_second_not_per_batch(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hot path (issue 13): one stat a second at most, whatever the batches."""
    looked = []
    real = index_health._identity
    monkeypatch.setattr(index_health, "_identity", lambda path: looked.append(1) or real(path))
    now = [1000.0]
    monkeypatch.setattr(index_health, "monotonic", lambda: now[0])
    with Archive(root, fsync=False) as archive:
        looked.clear()
        for i in range(5):
            assert store(archive, dataset(f"1.2.3.{i}"), sop_uid=f"1.2.3.{i}").status == SUCCESS
        assert looked == []
        now[0] += index_health.WATCH_EVERY
        assert store(archive, dataset("1.2.3.9"), sop_uid="1.2.3.9").status == SUCCESS
        assert looked == [1]


@pytest.mark.sqlite_index
def test_a_store_meeting_a_damaged_index_says_the_remedy_once(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Archive(root, fsync=False) as archive:
        fill(archive)
    damage(root / "index.sqlite")
    with Archive(root, fsync=False) as archive:
        assert archive.health.problems() == []  # (nothing has met it yet)
        for uid in ("1.2.3.4.5.998", "1.2.3.4.5.999"):
            outcome = store(archive, dataset(uid, study="1.2.3.1", series="1.2.3.1.1"), sop_uid=uid)
            assert outcome.status == OUT_OF_RESOURCES
            assert outcome.error_comment == ("index error: database disk image is malformed")
        assert archive.health.problems() == ["the archive index is damaged (see the log)"]
    (said,) = errors(caplog)
    assert said.startswith(f"the index {root / 'index.sqlite'} is damaged (database disk image")
    assert f"run `dicomstore reindex --storage {root}` (it keeps the damaged file aside" in said


@pytest.mark.sqlite_index
def test_check_reports_a_damaged_index_and_reindex_mends_it(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """review58 M3: `check` said "checked 25 instance(s): 0 problem(s)", exit 0."""
    with Archive(root, fsync=False) as archive:
        fill(archive)
    damage(root / "index.sqlite")
    assert main(["check", "--storage", str(root)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{root / 'index.sqlite'}: damaged (SQLite's quick_check: "), lines
    assert lines[0].endswith(
        f"): `dicomstore reindex --storage {root}` builds a new index from the files,"
        " the damaged one kept aside"
    )
    assert lines[-1].endswith(f"{len(lines) - 1} problem(s)")
    assert main(["reindex", "--storage", str(root)]) == 0
    assert main(["check", "--storage", str(root)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "checked 60 instance(s): 0 problem(s)"


def test_a_sound_index_passes_the_quick_check(root: Path) -> None:
    """(PostgreSQL: nothing to run, see ``index_health``'s notes.)"""
    with Archive(root, fsync=False) as archive:
        fill(archive, 3)
        assert index_health.quick_check(archive.index) == []


def test_cannot_store_probes_the_temporary_folder(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Archive(root, fsync=False) as archive:
        assert archive.cannot_store() == []
        assert list(archive.tmp_dir.iterdir()) == []  # (the probe removed)

        def read_only(folder: Path) -> None:
            raise OSError(errno.EROFS, "Read-only file system")

        monkeypatch.setattr(layout, "probe_writable", read_only)
        assert archive.cannot_store() == [
            "the archive's temporary folder cannot be written: Read-only file system"
        ]
