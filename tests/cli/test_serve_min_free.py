"""``serve --min-free`` above the free space at start: a WARNING before the start's last
line (review100 W3: a unit mistyped, 100T for 100G, refused every store while the log
said only 'storing into')."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from tests.cli.test_serve_other_nodes import _started
from tests.conftest import free_port, serve_command, wait_listening


def test_a_floor_above_the_free_space_is_a_warning_at_start(tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            serve_command(port, tmp_path / "archive", "--min-free", "1000000T"),
            stdout=out,
            stderr=out,
        )
    try:
        wait_listening(port, proc)
        text = _started(log)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    (line,) = [line for line in text.splitlines() if "--min-free" in line]
    assert "WARNING" in line and "--min-free 1000000 TiB: only " in line
    assert line.endswith("free: every store is refused A700 until space is freed")
