"""What a start does with a journal (``recovery.replay``) when it cannot write
the way it wants to: no room for a new copy of a file, syncfs not to be
trusted (a journal carried to an older kernel), a file that cannot be written
at all. Nothing answered Success is lost; the journal goes only once what it
holds is durable."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from archive_testlib import FINAL, dataset, die, store, stored_dataset, uid

from dicomstore.archive import SUCCESS, Archive, journal, layout, recovery
from dicomstore.cli.options import open_archive

pytestmark = [
    pytest.mark.skipif(not layout.SYNCFS_AVAILABLE, reason="needs syncfs (Linux 5.8+)"),
    pytest.mark.sqlite_index,  # (the journal serves a SQLite index in the root)
]


@pytest.fixture
def journaled(root: Path) -> Iterator[tuple[Path, int]]:
    """An archive that answered one instance and died before its checkpoint: its
    journal folder, and the inode of the instance's file."""
    archive = Archive(root)
    assert archive.storage._journal is not None
    stored = store(archive, dataset(uid(1)), sop_uid=uid(1))
    assert stored.status == SUCCESS and stored.path is not None
    inode = os.stat(stored.path).st_ino
    folder = archive.tmp_dir
    die(archive)
    assert (folder / journal.NAME).exists()
    yield folder, inode


def _no_room_for(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Creating a file in ``folder`` fails: the file system is full."""
    real_open = os.open

    def full(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if flags & os.O_CREAT and Path(str(path)).parent == folder:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(recovery.os, "open", full)


def test_with_no_room_for_a_new_copy_the_record_is_written_over_the_file(
    root: Path,
    journaled: tuple[Path, int],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A full file system does not stop every start: the record goes over the
    file in place (its blocks are there already), flushed, and the log says so."""
    folder, inode = journaled
    path = root / FINAL.format(uid(1))
    with monkeypatch.context() as patch, caplog.at_level(logging.WARNING):
        _no_room_for(folder, patch)
        with Archive(root, journal=False) as again:
            assert [r["sop_instance_uid"] for r in again.instances()] == [uid(1)]
    assert "written over in place" in caplog.text and str(path) in caplog.text
    assert os.stat(path).st_ino == inode and stored_dataset(path) == dataset(uid(1))
    assert not folder.exists()  # (the journal went: what it held is durable)
    with Archive(root) as after:
        assert after.check() == []


def test_with_no_room_and_no_file_the_start_stops_and_keeps_the_journal(
    root: Path,
    journaled: tuple[Path, int],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The file is gone and there is no room to write it: the start stops with
    an error that names the journal and the way out; the next start, with room,
    brings the instance back."""
    folder, _ = journaled
    path = root / FINAL.format(uid(1))
    path.unlink()
    with monkeypatch.context() as patch:
        _no_room_for(folder, patch)
        with pytest.raises(OSError, match="No space left") as raised:
            Archive(root, journal=False)
        assert open_archive(root, journal=False) is None  # (serve's: one line, exit)
    said = str(raised.value)
    assert str(folder / journal.NAME) in said and "start again, after freeing space" in said
    assert raised.value.errno == errno.ENOSPC
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 1 and str(folder / journal.NAME) in said[0] and "No space" in said[0]
    assert (folder / journal.NAME).exists()
    with Archive(root) as again:
        assert [r["sop_instance_uid"] for r in again.instances()] == [uid(1)]
        assert stored_dataset(path) == dataset(uid(1)) and again.check() == []


def test_where_syncfs_cannot_be_trusted_each_file_and_folder_is_fsynced(
    root: Path, journaled: tuple[Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A journal carried to a kernel whose syncfs does not report errors (before
    5.8) is still made durable, file by file, before it goes."""
    folder, _ = journaled
    path = root / FINAL.format(uid(1))
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def syncfs(fd: int) -> None:
        raise AssertionError("syncfs is not trusted here")

    with monkeypatch.context() as patch:
        patch.setattr(layout, "SYNCFS_AVAILABLE", False)
        patch.setattr(layout, "syncfs", syncfs)
        patch.setattr(os, "fsync", fsync)
        with Archive(root, journal=False, fsync=False) as again:
            assert [r["sop_instance_uid"] for r in again.instances()] == [uid(1)]
    # the new copy (under its temporary name, before the rename), then the folders
    assert any(name.startswith(str(folder)) and name.endswith(".tmp") for name in synced)
    assert str(path.parent) in synced and str(folder) in synced
    assert not folder.exists() and stored_dataset(path) == dataset(uid(1))
