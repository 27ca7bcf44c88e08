"""Several `dicomstore serve` nodes on one storage root: forwarding and the
study-complete events run in one node only, the one holding their lock
(``archive/nodes.ServiceLock``, issue 17)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from tests.cli.test_cli_index import qido_studies
from tests.conftest import dcmtk_storescp, free_port, serve_command, wait_listening
from tests.services.nodes_testlib import write_instances

from dicomstore.services.stable_log import StableLog

DEADLINE = 60.0


@contextmanager
def node(storage: Path, log: Path, *extra: str) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A `dicomstore serve` node listening on a free port, its stderr in ``log``."""
    port = free_port()
    with log.open("wb") as err:
        proc = subprocess.Popen(
            serve_command(port, storage, "--fsync", "off", *extra),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        wait_listening(port, proc)
        yield port, proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
    proc.wait(timeout=30)


def until(condition: Callable[[], bool], what: str) -> None:
    """Wait, within the deadline, for what a child process writes (no event to wait on)."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        threading.Event().wait(0.05)


def send(port: int, file: Path) -> None:
    sent = subprocess.run(
        [sys.executable, "-m", "dicomstore.cli", "send", "127.0.0.1", str(port), str(file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr


def test_forwarding_and_events_run_in_one_node_of_a_storage_root(tmp_path: Path) -> None:
    storage = tmp_path / "archive"
    (first_file,) = write_instances(tmp_path / "a", "1.2.17.1", 1)
    (second_file,) = write_instances(tmp_path / "b", "1.2.17.2", 1)
    forward = ("--forward", f"DEST=127.0.0.1:{free_port()}", "--stable-age", "0.5")
    logs = {name: tmp_path / f"{name}.log" for name in ("first", "second", "refused", "third")}

    with node(storage, logs["first"], *forward) as (first_port, first):
        refused = subprocess.run(
            serve_command(free_port(), storage, "--fsync", "off", *forward),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 2, refused.stderr
        line = (
            f"dicomstore: forwarding from {storage} already runs in another node "
            f"(host {os.uname().nodename}, pid {first.pid}): enable --forward on one node only"
        )
        assert refused.stderr.strip().splitlines()[-1] == line

        with node(storage, logs["second"], "--stable-age", "0.5") as (second_port, second):
            warning = (
                f"study-complete events of {storage} run in another node "
                f"(host {os.uname().nodename}, pid {first.pid}); not here"
            )
            assert warning in logs["second"].read_text()
            # Each study is reported once, the second node's too (the first reads
            # what the other node stores from the index: services/arrivals.py); had
            # the second node a watcher of its own, its study would be there twice.
            send(second_port, second_file)
            send(first_port, first_file)
            events = StableLog(storage)
            until(lambda: len(list(events.read())) >= 2, "both studies' events")
            assert sorted(e.study_uid for e in events.read()) == ["1.2.17.1.0", "1.2.17.2.0"]

            stop(first)  # its locks go with it: the second node takes the events over
            until(
                lambda: "run in this node now" in logs["second"].read_text(),
                "the second node taking the events over",
            )
            # ... and forwarding can be enabled on another node
            with node(storage, logs["third"], *forward[:2]) as (_, third):
                assert third.poll() is None
            assert second.poll() is None
    assert "already runs in another node" not in logs["third"].read_text()


@pytest.mark.usefixtures("index_engine")  # on both engines (issue 17)
def test_every_node_answers_qido_stable_alike(tmp_path: Path) -> None:
    """QIDO-RS ``stable=`` (issue 16) on two nodes of one archive: the event log the
    events node appends to (in the shared storage root) and the index give every
    node the same answer, whichever node the instances came through."""
    storage = tmp_path / "archive"
    # studies .0 (instances 0 and 4) and .1 (instance 1)
    first, second, _, _, later = write_instances(tmp_path / "in", "1.2.17.3", 5)
    again, other = "1.2.17.3.0", "1.2.17.3.1"
    http = free_port(), free_port()
    # (a quiet time long enough for the answers after `later` to be looked at before
    # the events node, which reads the other node's stores, reports the study again)
    events = ("--stable-age", "3", "--http-port", str(http[0]))
    with (
        node(storage, tmp_path / "a.log", *events) as (events_port, _),
        node(storage, tmp_path / "b.log", "--http-port", str(http[1])) as (other_port, _),
    ):
        for port in http:
            wait_listening(port)
        send(other_port, second)
        send(events_port, first)
        until(lambda: len(list(StableLog(storage).read())) >= 2, "both studies' events")
        for port in http:
            assert qido_studies(port, stable="true") == {again, other}
            assert qido_studies(port, stable="false") == set()
        send(other_port, later)  # after its event: the study is receiving again
        for port in http:
            assert qido_studies(port, stable="true") == {other}
            assert qido_studies(port, stable="false") == {again}


@pytest.mark.usefixtures("index_engine")  # on both engines
def test_what_another_node_stores_is_forwarded_and_reported(tmp_path: Path) -> None:
    """Forwarding and the events run in one node (the first); instances sent to the
    other node only are forwarded (DCMTK storescp) and their studies reported,
    each once."""
    storage, out = tmp_path / "archive", tmp_path / "out"
    out.mkdir()
    files = list(write_instances(tmp_path / "in", "1.2.17.4", 2))  # studies .0 and .1
    port = free_port()
    forward = ("--forward", f"DEST=127.0.0.1:{port}", "--stable-age", "0.5")
    with (
        dcmtk_storescp(port, out),
        node(storage, tmp_path / "a.log", *forward),
        node(storage, tmp_path / "b.log") as (other_port, _),
    ):
        for file in files:
            send(other_port, file)
        until(lambda: len(list(out.iterdir())) == 2, "the other node's instances forwarded")
        events = StableLog(storage)
        until(lambda: len(list(events.read())) >= 2, "their study-complete events")
    assert sorted(e.study_uid for e in events.read()) == ["1.2.17.4.0", "1.2.17.4.1"]
    assert len(list(out.iterdir())) == 2  # (each once)


def test_the_events_go_to_the_node_forwarding_when_stable(tmp_path: Path) -> None:
    """review88 F5: a node forwarding when=stable refused to start while another node
    held the study-complete events (after a failover, for good: none hands them back).
    It asks for them; the node running them for no rule hands them over, and takes
    them back once that node ends."""
    storage, out = tmp_path / "archive", tmp_path / "out"
    out.mkdir()
    (file,) = write_instances(tmp_path / "in", "1.2.17.5", 1)
    port = free_port()
    logs = {name: tmp_path / f"{name}.log" for name in ("plain", "forwarding")}
    stable = ("--stable-age", "0.5")
    with (
        dcmtk_storescp(port, out),
        node(storage, logs["plain"], *stable) as (plain_port, plain),
    ):
        until(lambda: (storage / ".events.lock").exists(), "the plain node taking the events")
        forward = ("--forward", f"DEST=127.0.0.1:{port};when=stable", *stable)
        with node(storage, logs["forwarding"], *forward) as (_, forwarding):
            until(
                lambda: "run in this node now" in logs["forwarding"].read_text(),
                "the forwarding node taking the events",
            )
            assert "handed to the node forwarding when=stable" in logs["plain"].read_text()
            send(plain_port, file)  # (stored by the other node, stable, then forwarded)
            until(lambda: len(list(out.iterdir())) == 1, "the study forwarded when stable")
            assert forwarding.poll() is None
        until(
            lambda: logs["plain"].read_text().count("run in this node now") == 1,
            "the plain node taking the events back",
        )
        assert plain.poll() is None
    assert [e.study_uid for e in StableLog(storage).read()] == ["1.2.17.5.0"]
