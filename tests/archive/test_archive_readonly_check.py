"""``dicomstore check`` of an archive it must not write (review58 L6: on a read-only
snapshot it exited 2, ``.tmp/node-...lock: Read-only file system``): nothing under
the storage changes (every file's bytes and modification time, ``.tmp`` and the
index's files included), a dead node's journal is reported, not settled, and the
problems are those ``check`` finds. CI runs as root, which no mode bits stop: the
tests use ``--read-only``, and a file system reported read-only (``statvfs``) for
the automatic detection."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from archive_testlib import FINAL, dataset, die, store, uid

from dicomstore.archive import SUCCESS, Archive, frozen, journal, layout
from dicomstore.cli import main

pytestmark = pytest.mark.sqlite_index  # (the SQLite files are among what must not change)


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every file and folder under ``root`` (itself too): its bytes (files) and
    modification time."""
    seen: dict[str, tuple[Any, ...]] = {".": ("dir", os.stat(root).st_mtime_ns)}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            stat = path.stat(follow_symlinks=False)
            rel = path.relative_to(root).as_posix()
            data = path.read_bytes() if name in files else None
            seen[rel] = (stat.st_mode, stat.st_mtime_ns, stat.st_size, data)
    return seen


@pytest.fixture
def died(root: Path) -> Path:
    """An archive of three instances whose node died (killed: its folder, journal
    and batches committed before their flush left for the next start)."""
    archive = Archive(root)
    for n in range(3):
        assert store(archive, dataset(uid(n)), sop_uid=uid(n)).status == SUCCESS
    die(archive)
    return root


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    code = main(["check", *argv])
    return code, capsys.readouterr().out.splitlines()


def test_read_only_check_writes_nothing_and_lists_what_a_start_settles(
    died: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(died)
    (node,) = [p for p in (died / layout.TMP_DIR).iterdir() if p.is_dir()]
    code, lines = run(capsys, "--storage", str(died), "--read-only")
    assert snapshot(died) == before  # (no lock file, no -shm, nothing settled)
    assert code == 0, lines
    assert lines[0] == "read-only check (--read-only): nothing is written, nothing settled"
    assert lines[-1] == "checked 3 instance(s) read-only: 0 problem(s)"
    settle = [line for line in lines if line.startswith("a start would settle: ")]
    assert settle and all(f".tmp/{node.name}" in line for line in settle[:-1]), lines
    if (node / journal.NAME).exists():  # (a journal: with syncfs, layout.SYNCFS_AVAILABLE)
        assert (
            f"a start would settle: .tmp/{node.name}/journal: 3 record(s) of instances"
            " answered Success, whose files a start writes again from it where they"
            " still count"
        ) in lines
    with Archive(died) as again:  # a start settles it all: the dead node's folder goes
        assert len(again.instances()) == 3
    assert not node.exists()
    code, lines = run(capsys, "--storage", str(died), "--read-only")
    assert code == 0 and not any(line.startswith("a start would") for line in lines), lines


def test_read_only_check_finds_the_problems_check_finds(
    died: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    altered = died / FINAL.format(uid(1))
    data = bytearray(altered.read_bytes())
    data[-1] ^= 0xFF
    altered.write_bytes(bytes(data))
    (died / FINAL.format(uid(2))).unlink()
    before = snapshot(died)
    code, lines = run(capsys, "--storage", str(died), "--read-only")
    assert snapshot(died) == before
    problems = [line for line in lines[1:-1] if not line.startswith("a start would")]
    assert code == 1 and lines[-1] == "checked 3 instance(s) read-only: 2 problem(s)", lines
    assert problems == [
        f"{FINAL.format(uid(1))}: content differs from the indexed digest",
        f"{FINAL.format(uid(2))}: missing (SOP Instance {uid(2)})",
    ]


def test_a_snapshot_of_a_running_server_is_read_from_its_wal(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its committed rows are in the WAL (``immutable=1`` would not see them), and
    without its ``-shm`` SQLite cannot open it read-only: read from a copy elsewhere."""
    copy = tmp_path / "snapshot"
    with Archive(root) as archive:
        for n in range(2):
            assert store(archive, dataset(uid(n)), sop_uid=uid(n)).status == SUCCESS
        assert (root / "index.sqlite-wal").stat().st_size > 0
        shutil.copytree(root, copy, ignore=shutil.ignore_patterns("*-shm"))
    before = snapshot(copy)
    code, lines = run(capsys, "--storage", str(copy), "--read-only")
    assert snapshot(copy) == before
    assert code == 0 and lines[-1] == "checked 2 instance(s) read-only: 0 problem(s)", lines


def _on_a_read_only_medium(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """statvfs says ``ST_RDONLY`` under ``root`` (which stops root too)."""
    real = os.statvfs

    class ReadOnly:
        def __init__(self, path: Any) -> None:
            self.f_flag = real(path).f_flag | os.ST_RDONLY

    def statvfs(path: Any) -> Any:
        return ReadOnly(path) if str(path).startswith(str(root)) else real(path)

    monkeypatch.setattr(frozen.os, "statvfs", statvfs)


def test_a_read_only_file_system_is_checked_read_only(
    died: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Detected without the flag (statvfs says ``ST_RDONLY``, which stops root too)."""
    _on_a_read_only_medium(died, monkeypatch)
    before = snapshot(died)
    code, lines = run(capsys, "--storage", str(died))
    assert snapshot(died) == before
    assert lines[0] == (
        f"read-only check ({died} is on a read-only file system): nothing is written,"
        " nothing settled"
    )
    assert code == 0 and lines[-1] == "checked 3 instance(s) read-only: 0 problem(s)", lines


def test_ls_show_and_stats_read_a_read_only_archive_writing_nothing(
    died: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """review100 W5: on a read-only copy, ``check`` looked (above) but ``ls`` failed:
    'attempt to write a readonly database'. The reading commands read it as check does."""
    _on_a_read_only_medium(died, monkeypatch)
    before = snapshot(died)
    assert main(["ls", "instances", "--storage", str(died)]) == 0
    out = capsys.readouterr().out
    assert sum(uid(n) in out for n in range(3)) == 3, out
    assert main(["stats", "--storage", str(died)]) == 0
    assert main(["show", uid(1), "--storage", str(died)]) == 0
    assert snapshot(died) == before
