"""Crash consistency by fault injection (``archive/crashpoints.py``): a replace that
keeps or moves an instance, and a delete, killed (SIGKILL) at each named step,
20 rounds per point; after recovery ``check`` is clean, the index serves the
last committed version byte for byte and ``reindex`` gives the same rows.

The rounds run in ``crash_driver.py``, a single-threaded process of their own
that forks the children to kill (this process may have threads).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from archive_testlib import dataset, store, stored_dataset

from dicomstore.archive import SUCCESS, Archive, crashpoints, layout
from dicomstore.archive.recovery import ArchiveBusyError, hold
from dicomstore.cli import main

DRIVER = Path(__file__).with_name("crash_driver.py")
ROUNDS = 20


@pytest.fixture(scope="module")
def drivers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, subprocess.Popen[str]]]:
    """One driver per crash point, all started at once: the rounds mostly wait on
    fsync, so they overlap well even on two cores."""
    env = {k: v for k, v in os.environ.items() if k != crashpoints.ENV}
    started = {}
    for point in crashpoints.POINTS:
        work = tmp_path_factory.mktemp(point.replace(".", "-"))
        started[point] = subprocess.Popen(
            [sys.executable, str(DRIVER), point, str(ROUNDS), str(work)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
    yield started
    for proc in started.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("point", crashpoints.POINTS)
def test_every_crash_point_recovers_to_the_last_committed_version(
    drivers: dict[str, subprocess.Popen[str]], point: str
) -> None:
    if point == "publish.after-flush" and not layout.SYNCFS_AVAILABLE:
        pytest.skip("a new instance is committed before its flush only with syncfs")
    out, err = drivers[point].communicate(timeout=300)
    assert drivers[point].returncode == 0, err
    report = json.loads(out.splitlines()[-1])
    assert report == {"point": point, "rounds": ROUNDS, "failures": []}, err


def test_crash_points_are_named_and_off_by_default() -> None:
    assert os.environ.get(crashpoints.ENV) is None and not crashpoints.ENABLED
    with pytest.raises(ValueError, match="unknown crash point"):
        crashpoints.enable("publish.after-comit")
    with pytest.raises(ValueError, match="must be 1 or more"):
        crashpoints.enable("publish.after-commit:0")
    assert not crashpoints.ENABLED
    crashpoints.enable("publish.after-commit:3")
    try:
        assert crashpoints.ENABLED
        crashpoints.reached("publish.after-commit")  # 1st and 2nd: still alive
        crashpoints.reached("publish.after-commit")
        crashpoints.reached("publish.before-commit")  # not armed
    finally:
        crashpoints.enable("")
    assert not crashpoints.ENABLED


# -- reindex and check: what they keep, and what they may do beside a server ------------

UID = "1.2.3.4.5.6.7"


def _leftover_of_a_replace(root: Path) -> tuple[bytes, bytes, Path, Path]:
    """Version 1 in study 1.2.9, replaced by version 2 moved to study 1.2.1; then
    version 1's file put back at its old name, as an unsettled crash leaves it.
    (Version 1's path sorts after version 2's.)"""
    v1 = dataset(UID, study="1.2.9", series="1.2.9.1", patient_name="One")
    v2 = dataset(UID, study="1.2.1", series="1.2.1.1", patient_name="Two")
    with Archive(root, fsync=False, on_duplicate="replace") as archive:
        old = store(archive, v1, sop_uid=UID).path
        saved = old.read_bytes()
        new = store(archive, v2, sop_uid=UID).path
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_bytes(saved)
    return v1, v2, old, new


def test_reindex_keeps_the_indexed_version_and_tells_what_it_left_out(tmp_path: Path) -> None:
    root = tmp_path / "root"
    v1, v2, old, new = _leftover_of_a_replace(root)
    os.utime(old, (2e9, 2e9))  # the replaced version even looks newer
    with Archive(root, fsync=False) as archive:
        assert archive.check() == ["1.2.9/1.2.9.1/1.2.3.4.5.6.7.dcm: not indexed"]
        left_out: list[str] = []
        assert archive.reindex(left_out) == 1
        assert stored_dataset(archive.path_of(UID)) == v2
        assert left_out == [
            "1.2.9/1.2.9.1/1.2.3.4.5.6.7.dcm: left out: SOP Instance 1.2.3.4.5.6.7"
            " is also in 1.2.1/1.2.1.1/1.2.3.4.5.6.7.dcm (the indexed one)"
        ]


@pytest.mark.sqlite_index
def test_reindex_without_an_index_keeps_the_latest_written(tmp_path: Path, capsys) -> None:
    root = tmp_path / "root"
    v1, v2, old, new = _leftover_of_a_replace(root)
    os.utime(old, (1e9, 1e9))
    os.utime(new, (2e9, 2e9))
    for name in os.listdir(root):
        if name.startswith("index.sqlite"):
            os.unlink(root / name)  # the index is lost
    assert main(["reindex", "--storage", str(root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "1.2.9/1.2.9.1/1.2.3.4.5.6.7.dcm: left out: SOP Instance 1.2.3.4.5.6.7"
        " is also in 1.2.1/1.2.1.1/1.2.3.4.5.6.7.dcm (the latest written)",
        "reindexed 1 instances, 1 file(s) left out",
    ]
    with Archive(root, fsync=False) as archive:
        assert stored_dataset(archive.path_of(UID)) == v2


@pytest.mark.sqlite_index
@pytest.mark.parametrize(
    ("first", "why"),
    [(0, "file is not a database"), (4096, "database disk image is malformed")],
    ids=["header", "past-the-schema"],
)
def test_reindex_sets_a_damaged_index_aside_and_builds_one(
    tmp_path: Path, caplog, first: int, why: str
) -> None:
    """review35b F9, review35c 4: reindex refused a damaged index.sqlite, whether the
    damage showed on opening it or when it was read."""
    root = tmp_path / "root"
    v1, v2, old, new = _leftover_of_a_replace(root)
    index = root / "index.sqlite"
    size = max(index.stat().st_size, first + 4096)
    with open(index, "r+b") as f:
        f.seek(first)
        f.write(b"not a database" * ((size - first) // 14))
    damaged = index.read_bytes()
    assert main(["reindex", "--storage", str(root)]) == 0
    (kept,) = [p for p in root.iterdir() if p.name.startswith("index.sqlite.damaged-")]
    assert kept.read_bytes() == damaged
    assert f"index.sqlite is damaged ({why})" in caplog.text
    with Archive(root, fsync=False) as archive:
        assert archive.path_of(UID) is not None


@pytest.mark.sqlite_index
def test_check_beside_a_server_leaves_its_temporaries_and_reindex_waits_for_it(
    tmp_path: Path, capsys
) -> None:
    root = tmp_path / "root"
    with Archive(root, fsync=False) as server:
        assert store(server, dataset(UID), sop_uid=UID).status == SUCCESS
        in_flight = server.tmp_dir / "other-0.part"
        in_flight.write_bytes(b"an instance being received")
        assert main(["check", "--storage", str(root)]) == 0
        assert in_flight.exists()  # the server owns .tmp
        assert main(["reindex", "--storage", str(root)]) == 1
        err = capsys.readouterr().err
        assert err == (
            f"dicomstore: reindex: the archive {root} is in use by a server or another"
            " archive: stop the server first\n"
        )
    fd = hold(root.resolve(), exclusive=True)  # as reindex does
    try:
        with pytest.raises(ArchiveBusyError, match="in use by a reindex or a check"):
            Archive(root)
    finally:
        os.close(fd)
    # no server: check recovers first (as a start would), reindex runs
    (root / ".tmp" / "other-1.part").write_bytes(b"left by a crash")
    assert main(["check", "--storage", str(root)]) == 0
    assert not any((root / ".tmp").iterdir())
    assert main(["reindex", "--storage", str(root)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "reindexed 1 instances"


@pytest.mark.sqlite_index
def test_the_next_delete_finishes_a_killed_delete_beside_a_server(tmp_path: Path, capsys) -> None:
    """``dicomstore delete`` killed after its row COMMIT (its own crash point); the
    next ``delete`` removes the files, while a server keeps the archive open."""
    root = tmp_path / "root"
    with Archive(root, fsync=False) as server:
        for uid in ("1.2.3.4.5.6.1", "1.2.3.4.5.6.2"):
            assert store(server, dataset(uid), sop_uid=uid).status == SUCCESS
        env = {**os.environ, crashpoints.ENV: "delete.after-commit"}
        argv = ["delete", "1.2.3.4.5.6.1", "--yes", "--storage", str(root)]
        killed = subprocess.run([sys.executable, "-m", "dicomstore.cli", *argv], env=env)
        assert killed.returncode == -signal.SIGKILL
        assert server.check() == ["1.2.3.4/1.2.3.4.5/1.2.3.4.5.6.1.dcm: not indexed"]
        assert main(["delete", "1.2.3.4.5.6.2", "--yes", "--storage", str(root)]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0] == "removed 1 file(s) an interrupted delete or replace left"
        assert server.check() == []
        assert not any(server.tmp_dir.iterdir())
