"""A second `dicomstore serve` on one storage runs as a node beside the first (README:
Several nodes), and its start says so, naming the other (review58 L4: an operator who
started it by mistake was not told); the first, alone at its start, says nothing."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

from tests.conftest import free_port, serve_command, wait_listening

SAID = "other node(s) serve this archive now"


def _started(log: Path) -> str:
    """The log once its start is told (its last line: "storing into"), within 20 s."""
    deadline = time.monotonic() + 20
    while "storing into" not in (text := log.read_text()):
        assert time.monotonic() < deadline, text
        threading.Event().wait(0.02)
    return text


def test_a_second_server_on_one_storage_names_the_first(tmp_path: Path) -> None:
    storage, procs, logs = tmp_path / "archive", [], []  # (logs: their texts)
    try:
        for n in range(2):
            port, log = free_port(), tmp_path / f"serve{n}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(serve_command(port, storage), stdout=out, stderr=out)
            procs.append(proc)
            wait_listening(port, proc)
            logs.append(_started(log))  # (the second starts once the first told its start)
        first, second = logs
        assert SAID not in first
        (line,) = [line for line in second.splitlines() if SAID in line]
        assert f"1 {SAID}" in line and f"-{procs[0].pid}-" in line
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            assert proc.wait(30) == 0
