"""``--loop`` (cli/options.add_loop, aio/loops.py): ``dicomstore serve`` receives
from DCMTK storescu and ``dicomstore send`` sends to DCMTK storescp on each event
loop, the server's log says which it runs on, and uvloop asked for when it is
not installed is one line and exit 2."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import dcmtk_storescp, free_port, serve_command, wait_listening
from tests.services.nodes_testlib import acknowledged, storescu, write_instances

from dicomstore.archive.reader import ArchiveReader
from dicomstore.cli import main


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_serve_receives_on_each_loop(tmp_path: Path, loop: str) -> None:
    made = write_instances(tmp_path / "in", "1.2.14.1", 3, pixels=64 * 1024)
    storage, log, port = tmp_path / "archive", tmp_path / "serve.log", free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            serve_command(port, storage, "--loop", loop), stdout=out, stderr=out
        )
    try:
        wait_listening(port, proc)
        sender = storescu(port, list(made))
        assert acknowledged(sender.communicate(timeout=60)[0]) == set(made)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert f"storing into {storage.resolve()} ({loop})" in log.read_text()
    uids = {row["sop_instance_uid"] for row in ArchiveReader(storage).instances()}
    assert uids == {uid for uid, _ in made.values()}


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_send_on_each_loop(tmp_path: Path, loop: str) -> None:
    made = write_instances(tmp_path / "in", "1.2.14.2", 3)
    port = free_port()
    with dcmtk_storescp(port, tmp_path / "out"):
        code = main(["send", "127.0.0.1", str(port), str(tmp_path / "in"), "--loop", loop])
    assert code == 0
    assert len(list((tmp_path / "out").iterdir())) == len(made)


def test_uvloop_asked_for_but_missing_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "uvloop.py").write_text("raise ImportError('not installed here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), *sys.path])}
    out = subprocess.run(
        serve_command(free_port(), tmp_path / "archive", "--loop", "uvloop"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "dicomstore: --loop uvloop: uvloop is not installed (pip install 'dicomstore[fast]')"
    )
