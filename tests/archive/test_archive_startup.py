"""What an archive's start-up says and refuses (``startup.py``, review58 M4, M7): a
storage holding instances with an index that holds none (a server served it empty,
silently), a new archive (a stale ``--storage`` made one, silently), an older
schema's index rebuilt from the files (no log line, its left-out files dropped)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from archive_testlib import dataset, store

from dicomstore.archive import SUCCESS, Archive
from dicomstore.archive.maintenance import run_reindex
from dicomstore.archive.schema import SCHEMA_VERSION
from dicomstore.archive.startup import UnindexedStorageError
from dicomstore.cli.options import open_archive

UIDS = ("1.2.3.4.5.1", "1.2.3.4.5.2")


def messages(caplog: pytest.LogCaptureFixture, level: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelname == level and r.name == "dicomstore.archive"
    ]


@pytest.fixture
def restored(tmp_path: Path) -> Path:
    """A storage whose study folders came back without their index (a restore of the
    files, an index removed between runs): the instances of :data:`UIDS`."""
    first = tmp_path / "first"
    with Archive(first, fsync=False) as archive:
        for uid in UIDS:
            assert store(archive, dataset(uid), sop_uid=uid).status == SUCCESS
    root = (tmp_path / "restored").resolve()
    root.mkdir()
    shutil.copytree(first / "1.2.3.4", root / "1.2.3.4")
    return root


def test_a_server_refuses_a_storage_whose_index_holds_none_of_its_files(
    restored: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(UnindexedStorageError) as refused:
        Archive(restored, fsync=False, require_index=True)
    said = str(refused.value)
    first = sorted(restored.glob("1.2.3.4/*/*.dcm"))[0].relative_to(restored).as_posix()
    assert said.startswith(f"{restored} holds stored instances ({first} ...) but its index ")
    assert said.endswith(
        f"holds none (lost, or a new one): `dicomstore reindex --storage {restored}`"
        " indexes them again"
    )
    with Archive(restored, fsync=False) as archive:  # (the API, to reindex: warned)
        assert archive.instances() == []
    (warned,) = messages(caplog, "WARNING")
    assert warned == said
    assert run_reindex(restored, [], fsync=False) == len(UIDS)
    with Archive(restored, fsync=False, require_index=True) as archive:
        assert sorted(r["sop_instance_uid"] for r in archive.instances()) == list(UIDS)


def test_files_reindex_leaves_out_do_not_refuse_a_start(
    restored: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """review59 M4: any ``<dir>/<dir>/*.dcm`` refused every start, with no index file
    too, and the ``reindex`` named left it out: only files the archive filed (named
    by their own UIDs) are stored instances."""
    stored = sorted(restored.glob("1.2.3.4/*/*.dcm"))
    for stray in ("exports/2024/IMG0001.dcm", "lost+found/#1234/x.dcm", "1.2.3.4/9.9/9.9.9.dcm"):
        (restored / stray).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(stored[0], restored / stray)  # (an instance filed elsewhere)
    shutil.move(stored[0].parent, restored / "1.2.3.4" / "1.2.3.4.5.6.7")  # (its series: not)
    left_out: list[str] = []
    with Archive(restored, fsync=False, require_index=True) as archive:  # (no refusal)
        assert archive.instances() == []
    assert messages(caplog, "WARNING") == []
    assert run_reindex(restored, left_out, fsync=False) == 0  # (what reindex says of them)
    assert len(left_out) == 5 and all(": left out: not where" in line for line in left_out)


def test_an_archive_filed_instance_refuses_and_is_named(restored: Path) -> None:
    """One file filed as the archive files it, beside stray ones, is enough, and the
    refusal names it (an index removed between runs: no ``index.sqlite``)."""
    (restored / "exports").mkdir()
    shutil.copyfile(next(restored.glob("1.2.3.4/*/*.dcm")), restored / "exports" / "a.dcm")
    kept = sorted(restored.glob("1.2.3.4/*/*.dcm"))[-1]
    for other in restored.glob("1.2.3.4/*/*.dcm"):
        if other != kept:
            other.unlink()
    assert not (restored / "index.sqlite").exists()
    with pytest.raises(UnindexedStorageError) as refused:
        Archive(restored, fsync=False, require_index=True)
    assert f"holds stored instances ({kept.relative_to(restored).as_posix()} ...)" in str(
        refused.value
    )


def test_the_command_line_start_says_it_in_one_line(
    restored: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert open_archive(restored, fsync=False) is None  # (serve's and get's)
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"dicomstore: cannot open the archive {restored}: {restored} holds")
    assert f"`dicomstore reindex --storage {restored}` indexes them again" in err


def test_a_new_archive_is_said_and_an_empty_one_opens_quietly(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="dicomstore.archive"):
        with Archive(root, fsync=False, require_index=True):
            pass
        assert messages(caplog, "INFO") == [f"creating a new archive at {root}"]
        caplog.clear()
        with Archive(root, fsync=False, require_index=True) as archive:  # (empty: not new)
            assert store(archive, dataset(UIDS[0]), sop_uid=UIDS[0]).status == SUCCESS
        with Archive(root, fsync=False, require_index=True):
            pass
    assert messages(caplog, "INFO") == []


V1_SCHEMA = """
CREATE TABLE instance (sop_instance_uid TEXT PRIMARY KEY, series_uid TEXT NOT NULL);
PRAGMA user_version=1;
"""


@pytest.mark.sqlite_index
def test_an_older_schema_rebuilt_at_start_is_told_with_what_it_left_out(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Archive(root, fsync=False) as archive:
        for uid in UIDS:
            assert store(archive, dataset(uid), sop_uid=uid).status == SUCCESS
        cut = archive.path_of(UIDS[0])
    assert cut is not None
    cut.write_bytes(cut.read_bytes()[:100])  # (a bad sector, a bad copy)
    for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
        (root / name).unlink(missing_ok=True)
    db = sqlite3.connect(root / "index.sqlite")
    db.executescript(V1_SCHEMA)
    db.close()
    with (
        caplog.at_level("INFO", logger="dicomstore.archive"),
        Archive(root, fsync=False, require_index=True) as archive,
    ):
        assert archive.reindexed == 1
    before, after = messages(caplog, "INFO")
    assert before == (
        f"index {root / 'index.sqlite'}: schema 1 is older than {SCHEMA_VERSION}: rebuilding"
        " it from the files (every file's header is read before the archive opens)"
    )
    assert after.startswith("index rebuilt from the files: 1 instance(s) in ")
    assert after.endswith(" s, 1 file(s) left out (`dicomstore check` lists them as not indexed)")
    (left_out,) = messages(caplog, "WARNING")
    relpath = cut.relative_to(root).as_posix()
    assert left_out.startswith(f"index rebuild: {relpath}: left out: cannot be read: ")


@pytest.mark.sqlite_index
def test_a_refused_start_leaves_no_index_behind(restored: Path, capsys) -> None:
    """review77 F9: the refused start left a new, empty index.sqlite: `ls` and `stats`
    then showed an empty archive (exit 0) where they had said "no archive" (exit 1)."""
    from dicomstore.cli import main

    assert main(["ls", "--storage", str(restored)]) == 1
    with pytest.raises(UnindexedStorageError):
        Archive(restored, fsync=False, require_index=True)
    assert not list(restored.glob("index.sqlite*"))
    capsys.readouterr()
    assert main(["ls", "--storage", str(restored)]) == 1
    assert "no archive at" in capsys.readouterr().err
