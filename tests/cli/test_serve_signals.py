"""How `dicomstore serve` stops on a signal: SIGINT, SIGTERM and SIGHUP are each a
graceful stop (in-flight operations finish), exit 0, the signal named in the log
(review58 L2: SIGHUP killed the server at once, exit 129, without a word)."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
from tests.conftest import free_port, serve_command, wait_listening


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_stops_the_server_gracefully(tmp_path: Path, sig: signal.Signals) -> None:
    port, log = free_port(), tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(serve_command(port, tmp_path / "archive"), stdout=out, stderr=out)
    try:
        wait_listening(port, proc)
        proc.send_signal(sig)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert f"{sig.name}: stopping gracefully" in text
    assert "shutting down: finishing in-flight operations" in text
