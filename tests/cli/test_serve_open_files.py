"""dicomstore serve raises its soft limit of open files (cli/serve.py)."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import resource
from dicomstore.cli.serve import _more_open_files
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
_more_open_files()
print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)
"""


def test_the_soft_limit_of_open_files_is_raised_to_the_hard_one() -> None:
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
    soft, hard = (int(v) for v in out.stdout.split())
    assert soft == min(hard if hard >= 0 else 65536, 65536) and soft > 256
