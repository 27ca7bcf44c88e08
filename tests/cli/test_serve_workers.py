"""`dicomstore serve --workers N` (cli/workers.py, issue 13): N processes behind one
port (the first accepts and passes connections on: aio/handoff.py) and one archive.
Four DCMTK storescu senders at once: every instance acknowledged is stored once,
byte for byte, `check` is clean, and both processes served associations; the
workers end with the first process, stopped or killed."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from tests.conftest import (
    echoes_held_at_once,
    free_port,
    index_option,
    serve_command,
    served_by_worker,
    wait_listening,
)
from tests.services.nodes_testlib import acknowledged, stored_files, storescu, write_instances

from dicomstore.archive import digests
from dicomstore.archive.reader import ArchiveReader
from dicomstore.cli import main

#: On both index engines.
pytestmark = pytest.mark.usefixtures("index_engine")

SENDERS, EACH, ECHOES = 4, 15, 16
DEADLINE = 60.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # (a zombie child of ours counts as gone)
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def _until(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        threading.Event().wait(0.05)


def _scrape(http_port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the server's /metrics by (name, sorted labels)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=30) as reply:
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _workers(log: Path) -> list[int]:
    found = re.search(r"worker process\(es\) started beside this one: ([\d, ]+)", log.read_text())
    return [int(pid) for pid in found.group(1).split(", ")] if found else []


def _serve(port: int, storage: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as err:
        proc = subprocess.Popen(
            serve_command(port, storage, "--fsync", "off", "--workers", "2", *extra),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    wait_listening(port, proc)
    _until(lambda: _workers(log), "the worker started")
    (worker,) = _workers(log)
    _until(lambda: f"[worker 1, pid {worker}] listening" in log.read_text(), "it listening")
    return proc


def test_four_senders_into_two_workers(tmp_path: Path) -> None:
    storage, log, port = tmp_path / "archive", tmp_path / "serve.log", free_port()
    sets = [write_instances(tmp_path / f"in{n}", f"1.2.13.{n}", EACH) for n in range(SENDERS)]
    audit = tmp_path / "audit.jsonl"  # (written by both processes)
    http = free_port()
    proc = _serve(port, storage, log, "--audit-log", str(audit), "--http-port", str(http))
    try:
        senders = [storescu(port, list(made)) for made in sets]
        logs = [sender.communicate(timeout=120)[0] for sender in senders]
        assert all(len(acknowledged(text)) == EACH for text in logs), logs
        # (each new connection goes to the process serving the fewest: both take some)
        for _ in range(ECHOES):
            assert main(["echo", "127.0.0.1", str(port)]) == 0
        (worker,) = _workers(log)
        # /metrics, served by the first process, counts what both stored (an echo's
        # association is counted just after its A-RELEASE-RP went: wait for the last)
        released = ("dicomstore_associations_total", (("outcome", "released"),))
        _until(lambda: _scrape(http).get(released) == SENDERS + ECHOES, "all counted")
        samples = _scrape(http)
        assert samples[("dicomstore_instances_stored_total", (("service", "C-STORE"),))] == (
            SENDERS * EACH
        )
        assert samples[("dicomstore_associations_total", (("outcome", "released"),))] == (
            SENDERS + ECHOES
        )
        assert samples[("dicomstore_archive_instances_total", ())] == SENDERS * EACH
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    assert not _alive(worker)  # stopped with the first process
    accepted = [line for line in log.read_text().splitlines() if "contexts accepted" in line]
    by_worker = sum("[worker 1," in line for line in accepted)
    assert len(accepted) == SENDERS + ECHOES and 0 < by_worker < SENDERS + ECHOES
    reader = ArchiveReader(storage)  # (on PostgreSQL: the same schema, engine.default_index)
    rows = {row["sop_instance_uid"]: row for row in reader.instances()}
    expected = {uid: digest for made in sets for uid, digest in made.values()}
    assert set(rows) == set(expected)
    for uid, digest in expected.items():
        assert digests.matches(digest, storage / rows[uid]["path"])
    assert main(["check", "--storage", str(storage), *index_option(storage)]) == 0
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    stored = sorted(r["sop_instance_uid"] for r in records if r["event"] == "instance")
    assert stored == sorted(expected)  # each instance audited once, whoever stored it
    assert sum(r["event"] == "association" for r in records) == SENDERS + ECHOES
    warnings = [line for line in log.read_text().splitlines() if " WARNING " in line]
    assert all("--fsync off" in line for line in warnings), warnings  # (nothing unexpected)


def test_durable_workers_one_killed_midway_keep_every_acknowledged_instance(
    tmp_path: Path,
) -> None:
    """Durable (the default): on SQLite each process commits its new instances
    before one syncfs (``archive/publish.py``), and a duplicate found from the other
    process's row flushes it before answering. Two senders send the same instances
    at once, two others their own; the worker is killed (SIGKILL) midway. After:
    every acknowledged instance is stored once, byte for byte, and `check` is clean."""
    storage, log, port = tmp_path / "archive", tmp_path / "serve.log", free_port()
    shared = write_instances(tmp_path / "shared", "1.2.13.9", 120)
    sets = [shared, shared] + [
        write_instances(tmp_path / f"own{n}", f"1.2.13.8.{n}", 120) for n in range(2)
    ]
    proc = _serve(port, storage, log, "--fsync", "on")
    try:
        (worker,) = _workers(log)
        senders = [storescu(port, list(made)) for made in sets]
        _until(lambda: stored_files(storage) >= 90, "a quarter stored")
        os.kill(worker, signal.SIGKILL)
        logs = [sender.communicate(timeout=120)[0] for sender in senders]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    acked = set().union(*(acknowledged(text) for text in logs))
    source = {path: value for made in sets for path, value in made.items()}
    assert acked  # (those the worker served, if any, stopped short: the kernel's choice)
    assert main(["check", "--storage", str(storage), *index_option(storage)]) == 0
    reader = ArchiveReader(storage)
    for path in acked:
        uid, digest = source[path]
        assert digests.matches(digest, storage / reader.instance(uid)["path"])


def test_connections_held_at_once_are_split_evenly(tmp_path: Path) -> None:
    """The first process passes each connection to the process serving the fewest
    (``aio/handoff.py``): four associations held open at once are served two and two
    (SO_REUSEPORT's hash put all four in one process in one run of eight)."""
    log, port = tmp_path / "serve.log", free_port()
    proc = _serve(port, tmp_path / "archive", log, "--log-level", "info")
    try:
        assert echoes_held_at_once(port) == [0, 0, 0, 0]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    assert served_by_worker(log) == (4, 2)


def test_the_start_up_warnings_are_said_once_not_once_per_worker(tmp_path: Path) -> None:
    """review109 I2, review110 L3: each worker ran the start of ``serve`` again and
    repeated what the options give up (--fsync off) and what the policy lets pass, and
    that HTTPS served nothing (the first serves it), tagged with its pid."""
    policy = tmp_path / "policy.toml"
    policy.write_text('allow_unknown = true\n[peers.MOD1]\nhosts = ["10.1.2.3"]\n')
    log = tmp_path / "serve.log"
    https = ("--http-tls-cert", "none.pem", "--http-tls-key", "none.key")  # (no --http-port)
    proc = _serve(free_port(), tmp_path / "archive", log, "--config", str(policy), *https)
    try:
        text = log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    assert text.count("--fsync off: acknowledged instances can be lost") == 1, text
    assert text.count("callers not under [peers] may") == 1, text
    # (review110 L3: a worker, which serves no HTTP, said HTTPS served none)
    assert text.count("without --http-port: no HTTP is served") == 1, text


def test_a_worker_ends_when_the_first_process_is_killed(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    proc = _serve(free_port(), tmp_path / "archive", log)
    (worker,) = _workers(log)
    proc.kill()
    proc.wait(30)
    _until(lambda: not _alive(worker), "the worker ending after the first process")


def test_a_worker_killed_is_started_again_and_serves(tmp_path: Path) -> None:
    """review119 F2: a worker killed (SIGKILL) was not replaced: the server ran on with
    one process fewer, the dead one a zombie until the stop. Now it is reaped and
    another started in its place, which serves connections and answers /metrics; the
    first process's exit says a worker failed (1)."""
    log, port, http = tmp_path / "serve.log", free_port(), free_port()
    proc = _serve(port, tmp_path / "archive", log, "--log-level", "info", "--http-port", str(http))
    try:
        (worker,) = _workers(log)
        os.kill(worker, signal.SIGKILL)
        again = r"worker 1 \(pid \d+\) ended unasked \(exit -9\): worker 1 started again, pid (\d+)"
        _until(lambda: re.search(again, log.read_text()), "the worker started again")
        new = int(re.search(again, log.read_text()).group(1))
        assert new != worker and not _alive(worker)  # (reaped: no zombie)
        _until(lambda: f"[worker 1, pid {new}] listening" in log.read_text(), "it listening")
        assert echoes_held_at_once(port) == [0, 0, 0, 0]
        accepted = [line for line in log.read_text().splitlines() if "contexts accepted" in line]
        assert sum(f"[worker 1, pid {new}]" in line for line in accepted) == 2
        released = ("dicomstore_associations_total", (("outcome", "released"),))
        _until(lambda: _scrape(http).get(released) == 4, "both processes' counted")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 1
    assert not _alive(new)


def test_workers_on_a_port_the_system_chooses(tmp_path: Path) -> None:
    """--port 0: the first process binds, the workers serve on the port it got."""
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            serve_command(0, tmp_path / "archive", "--fsync", "off", "--workers", "2")
            + ["--log-level", "info"],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        said = r"listening on 127\.0\.0\.1:(\d+)"
        _until(lambda: re.search(said, log.read_text()), "the first process listening")
        port = int(re.search(said, log.read_text()).group(1))
        assert port != 0
        _until(lambda: _workers(log), "the worker started")
        (worker,) = _workers(log)
        where = f"[worker 1, pid {worker}] listening on 127.0.0.1:{port} "
        _until(lambda: where in log.read_text(), "the worker serving the same port")
        assert echoes_held_at_once(port) == [0, 0, 0, 0]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    assert served_by_worker(log) == (4, 2)


def _exiting(code: int) -> None:
    os.kill(os.getpid(), -code) if code < 0 else sys.exit(code)


def test_a_worker_that_ended_badly_is_said_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    """``workers.stop`` tells whether a worker failed: the first process exits 1 then
    (a worker whose audit trail was not whole exits 1 itself). The SIGTERM of the stop
    ending one still starting is no failure; a crash (-11), a kill (-9) or Ctrl-C's
    traceback (1) is (review66 M1)."""
    import multiprocessing

    from dicomstore.cli import workers

    context = multiprocessing.get_context("spawn")
    codes = (0, 1, -signal.SIGSEGV, -signal.SIGKILL, 130)
    ended = [context.Process(target=_exiting, args=(code,)) for code in codes]
    for process in ended:
        process.start()
        process.join(30)  # (ended on their own: stop sends no SIGTERM)
    assert [process.exitcode for process in ended] == list(codes)
    stopped = context.Process(target=signal.pause)  # (the stop's SIGTERM: -15)
    stopped.start()
    assert workers.stop([ended[0], stopped], 30) is True
    assert stopped.exitcode == -signal.SIGTERM
    for process in ended[1:]:
        caplog.clear()
        assert workers.stop([process], 30) is False
        assert f"worker {process.pid} exited {process.exitcode}" in caplog.text


def test_workers_start_with_the_terminal_s_signals_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Ctrl-C to the process group while a worker starts: the first process's to act
    on (review66 L3: the worker died of it, exit 1, and the stop said it failed);
    the first process's own handlers are as they were."""
    from dicomstore.cli import workers

    seen = {}

    class Spy:
        def __init__(self, *args, **kwargs) -> None:
            self.pid = 0

        def start(self) -> None:
            seen.update({sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGHUP)})

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGHUP)}
    args = argparse.Namespace(worker_ends=[FakeEnd()], metrics_ends=None)
    spawning = argparse.Namespace(Process=Spy)
    monkeypatch.setattr(multiprocessing, "get_context", lambda method: spawning)
    workers.start(args, 0)
    assert seen == {signal.SIGINT: signal.SIG_IGN, signal.SIGHUP: signal.SIG_IGN}
    assert {sig: signal.getsignal(sig) for sig in before} == before


class FakeEnd:
    def close(self) -> None:
        pass
