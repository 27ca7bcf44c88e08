"""The command line runs numpy's OpenBLAS on one thread (``cli/blas.py``): no
spinning helper threads at each start; the environment's own setting wins, and
the library leaves its host's environment alone."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = (
    "import os, {module}, numpy; "
    "print(os.environ.get('OPENBLAS_NUM_THREADS'), len(os.listdir('/proc/self/task')))"
)


def _run(module: str, **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS",)}
    code = PROBE.format(module=module)
    out = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_the_command_line_asks_for_one_blas_thread() -> None:
    assert _run("dicomstore.cli") == ["1", "1"]  # the main thread only


def test_the_environment_s_setting_wins() -> None:
    assert _run("dicomstore.cli", OPENBLAS_NUM_THREADS="2")[0] == "2"


def test_the_library_leaves_the_environment_alone() -> None:
    assert _run("dicomstore")[0] == "None"
