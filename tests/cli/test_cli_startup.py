"""What the command line loads before it sends: neither pydicom (and numpy, PIL,
requests behind it) nor the server; ``dicomstore send`` starts in about half the
CPU time it took with them (issue 13). ``send --commit`` loads them when it asks."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = """
import sys
from dicomstore.cli import build_parser
build_parser().parse_args(["send", "127.0.0.1", "104", "x.dcm"])
import dicomstore.services.scu_send, dicomstore.services.storage_scu
heavy = sorted(m for m in ("pydicom", "numpy", "PIL", "requests") if m in sys.modules)
server = sorted(m for m in sys.modules if m in (
    "dicomstore.services.server", "dicomstore.services.acceptor", "dicomstore.archive.index"))
print(heavy, server)
"""


def test_send_loads_neither_pydicom_nor_the_server() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=dict(os.environ), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "[] []"
