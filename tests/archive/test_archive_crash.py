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
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomstore.archive import crashpoints

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
