"""The command line keeps freed memory for the next read (``cli/allocator.py``): a
file sent in chunks no longer faults every chunk's pages in anew. Shown on the real
``dicomstore send`` into DCMTK's storescp: its minor page faults with the settings,
and without them (glibc's default threshold of 128 KiB, pinned: ``MALLOC_*`` in the
environment leaves the allocator to glibc)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import dcmtk_storescp, free_port
from tests.services.nodes_testlib import write_instances

from dicomstore.cli import allocator

#: Instances of 0.5 MB, as a CT series' (each read in chunks of 64 KiB to 1 MiB).
COUNT, PIXELS = 40, 512 * 1024


def _send_faults(port: int, folder: Path, env: dict[str, str]) -> int:
    """Minor page faults of one ``dicomstore send`` of ``folder`` (from ``wait4``)."""
    command = [sys.executable, "-m", "dicomstore.cli", "send", "--progress", "off"]
    proc = subprocess.Popen(
        [*command, "127.0.0.1", str(port), str(folder)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0
    return usage.ru_minflt


@pytest.mark.skipif(not allocator.keep_freed_memory(), reason="glibc's malloc only")
def test_a_sent_file_no_longer_faults_its_chunks_in_anew(tmp_path: Path) -> None:
    write_instances(tmp_path / "in", "1.2.826.0.1.3680043.10.1443", COUNT, PIXELS)
    port = free_port()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"
    }
    with dcmtk_storescp(port, tmp_path / "out", "--ignore"):
        tuned = _send_faults(port, tmp_path / "in", env)
        # glibc's own threshold, 128 KiB, held there: left to itself it rises with the
        # first mmapped chunk freed, which may come before the first file or not
        # (modules compiled at import moved it: the test was fragile), so it is
        # pinned (any MALLOC_* also leaves the allocator to glibc: cli/allocator.py)
        left = _send_faults(port, tmp_path / "in", {**env, "MALLOC_MMAP_THRESHOLD_": "131072"})
    # (a start faults in some thousands of pages either way; each 0.5 MB sent, ~100 more)
    assert left - tuned > COUNT * 40, (tuned, left)


def test_the_allocator_settings_of_the_environment_are_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1")
    assert allocator.keep_freed_memory() is False
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert allocator.keep_freed_memory() is False
