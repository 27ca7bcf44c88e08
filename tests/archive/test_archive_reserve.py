"""The reserve file (archive/reserve.py, review87 F1): an archive keeps room for a
delete, and a delete on a disk filled to the last byte uses it."""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from archive_testlib import dataset, mounted_tmpfs, store
from tests.test_cli_access import cli

from dicomstore.archive import Archive, reserve
from dicomstore.archive.outcome import SUCCESS


def test_an_archive_keeps_the_reserve_file(tmp_path: Path) -> None:
    with Archive(tmp_path / "root", fsync=False):
        pass
    path = tmp_path / "root" / reserve.NAME
    assert path.stat().st_size == reserve.SIZE
    assert path.stat().st_blocks * 512 >= reserve.SIZE  # allocated, not a hole
    leftovers = [p.name for p in (tmp_path / "root").rglob("*") if "reserve." in p.name]
    assert leftovers == []


def test_a_reserve_file_cut_short_by_a_crash_goes_at_the_next_start(
    tmp_path: Path, monkeypatch
) -> None:
    """review89 N3: made beside it, a reserve file a crash cut short stayed for good;
    it is made in .tmp, which a start empties."""
    root = tmp_path / "root"
    with Archive(root, fsync=False):
        pass
    (root / reserve.NAME).unlink()

    def crash(*args: object) -> None:
        raise SystemExit("killed")  # (before the rename: the temporary is left)

    with monkeypatch.context() as patch:
        patch.setattr(reserve.os, "replace", crash)
        with pytest.raises(SystemExit):
            reserve.keep(root)
    (left,) = [p for p in root.rglob("*") if "reserve." in p.name]
    assert left.parent == root / ".tmp"
    with Archive(root, fsync=False):
        assert not left.exists()
    assert (root / reserve.NAME).stat().st_size == reserve.SIZE


def test_no_reserve_file_takes_the_last_free_space(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(reserve.layout, "free_bytes", lambda root: 2 * reserve.SIZE - 1)
    with Archive(tmp_path / "root", fsync=False):
        pass
    assert not (tmp_path / "root" / reserve.NAME).exists()


def test_the_reserve_is_freed_only_when_the_disk_is_nearly_full(tmp_path: Path, monkeypatch):
    tmp_path.joinpath(reserve.NAME).write_bytes(b"x")
    monkeypatch.setattr(reserve.layout, "free_bytes", lambda root: reserve.SIZE)
    assert not reserve.release(tmp_path)
    monkeypatch.setattr(reserve.layout, "free_bytes", lambda root: reserve.SIZE - 1)
    assert reserve.release(tmp_path)
    assert not tmp_path.joinpath(reserve.NAME).exists()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB tmpfs (needs root and mount permission; skipped otherwise)."""
    with mounted_tmpfs(tmp_path / "small", "48m") as mount:
        yield mount


def _fill(path: Path) -> None:
    """Write ``path`` until the file system has not one byte left."""
    with open(path, "wb", buffering=0) as out:
        for size in (1 << 20, 4096, 1):
            block = b"\0" * size
            while True:
                try:
                    out.write(block)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break


@pytest.mark.sqlite_index  # (the index's log on the full disk; the delete in another process)
@pytest.mark.parametrize(
    ("serving", "door"),
    [(True, "cli"), (False, "cli"), (False, "api")],
    ids=["server-running", "server-stopped", "python-api"],
)
def test_a_delete_on_a_disk_full_to_the_last_byte_frees_space(
    small_fs: Path, serving: bool, door: str, caplog
) -> None:
    """As a server's archive stays open during the delete, or after its clean stop
    (review89 N1: the index's -wal and -shm files gone, opening the index failed
    before the delete freed the reserve: 'disk I/O error')."""
    root = small_fs / "archive"
    series = "1.2.3.4.5"
    archive = Archive(root)
    try:
        for n in range(3):
            sop = f"1.2.3.4.5.6.{n}"
            outcome = store(archive, dataset(sop, pixels=1 << 20), sop_uid=sop)
            assert outcome.status == SUCCESS
        assert (root / reserve.NAME).exists()
        if not serving:
            archive.close()
        _fill(small_fs / "filler")
        assert shutil.disk_usage(small_fs).free == 0
        if door == "cli":
            r = cli("delete", series, "--yes", storage=root)
            assert r.returncode == 0, r.stderr
            assert "the reserve file is freed for the delete" in r.stderr
        else:
            from dicomstore import query

            assert query.remove(root, series, audit_log="").instances == 3
            assert "the reserve file is freed for the delete" in caplog.text
        assert not list(root.rglob("*.dcm"))
        assert not (root / reserve.NAME).exists()  # (not made again: too little room)
        if not serving:
            archive = Archive(root)
        assert list(archive.instances()) == []
        assert archive.check() == []
        assert store(archive, dataset(pixels=1000)).status == SUCCESS  # storing resumes
    finally:
        archive.close()
