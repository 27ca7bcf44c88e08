"""How `dicomstore serve` stops on a signal: SIGINT, SIGTERM and SIGHUP are each a
graceful stop (in-flight operations finish), exit 0, the signal named in the log
(review58 L2: SIGHUP killed the server at once, exit 129, without a word)."""

from __future__ import annotations

import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from tests.conftest import free_port, serve_command, wait_listening

from dicomstore import uids
from dicomstore.dimse import CStoreRQ
from dicomstore.ul import items as I
from dicomstore.ul import pdu as P

CT = "1.2.840.10008.5.1.4.1.1.2"


@contextmanager
def serving(tmp_path: Path, *options: str) -> Iterator[tuple[int, subprocess.Popen, Path]]:
    """`dicomstore serve` listening: its port, process and log (killed if still alive)."""
    port, log = free_port(), tmp_path / "serve.log"
    with log.open("wb") as out:
        command = serve_command(port, tmp_path / "archive", *options)
        proc = subprocess.Popen(command, stdout=out, stderr=out)
    try:
        wait_listening(port, proc)
        yield port, proc, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_stops_the_server_gracefully(tmp_path: Path, sig: signal.Signals) -> None:
    with serving(tmp_path) as (_port, proc, log):
        proc.send_signal(sig)
        assert proc.wait(30) == 0, log.read_text()
    text = log.read_text()
    assert f"{sig.name}: stopping gracefully" in text
    assert "shutting down: finishing in-flight operations (10s at most)" in text
    assert text.splitlines()[-1].endswith("INFO dicomstore: stopped")  # (review100 W9)


def test_a_second_signal_while_stopping_is_said(tmp_path: Path) -> None:
    """review100 W9: a second Ctrl-C during the grace went unsaid."""
    with (
        serving(tmp_path, "--shutdown-grace", "60") as (port, proc, log),
        socket.create_connection(("127.0.0.1", port)) as sock,
    ):
        _a_data_set_begun(sock)
        proc.send_signal(signal.SIGTERM)  # (a data set begun: the stop waits for it)
        _said(log, "shutting down")
        proc.send_signal(signal.SIGINT)
        _said(log, "SIGINT again: already stopping")
        sock.close()  # (the association ends: the stop ends)
        assert proc.wait(30) == 0, log.read_text()
    assert log.read_text().splitlines()[-1].endswith("INFO dicomstore: stopped")


def _a_data_set_begun(sock: socket.socket) -> None:
    """On ``sock``: an association, and a C-STORE whose data set begins, never ends."""
    rq = P.AssociateRQ(
        "DICOMSTORE",
        "SLOW",
        [I.PresentationContextRQ(1, CT, [uids.EXPLICIT_VR_LE])],
        I.UserInformation(max_length=16384, implementation_class_uid="1.2.3"),
    )
    sock.sendall(P.encode(rq))
    assert sock.recv(1)[0] == P.ASSOCIATE_AC
    command = CStoreRQ(1, CT, "1.2.3.4").encode()
    sock.sendall(P.encode(P.PDataTF([P.PDV(1, True, True, command)])))
    sock.sendall(P.encode(P.PDataTF([P.PDV(1, False, False, b"\x08\x00" * 8)])))


def _said(log: Path, words: str) -> None:
    """Wait (20 s at most) for ``words`` in the log."""
    import threading
    import time

    deadline = time.monotonic() + 20
    while words not in (text := log.read_text()):
        assert time.monotonic() < deadline, text
        threading.Event().wait(0.02)


def test_a_transfer_past_the_shutdown_grace_is_cut_and_said(tmp_path: Path) -> None:
    """``--shutdown-grace`` (review58 L5: 10 s, fixed); the association it cuts, in the
    middle of a C-STORE's data set, says so (it was not logged)."""
    with (
        serving(tmp_path, "--shutdown-grace", "0.2") as (port, proc, log),
        socket.create_connection(("127.0.0.1", port)) as sock,
    ):
        _a_data_set_begun(sock)
        proc.send_signal(signal.SIGTERM)  # (a data set begun, never ended)
        assert proc.wait(30) == 0, log.read_text()
    text = log.read_text()
    assert "shutting down: finishing in-flight operations (0.2s at most)" in text
    assert "association ended (aborted: the server stopped): 0 stored, 0 failed" in text


def test_a_stop_that_lost_audit_records_exits_1(tmp_path: Path) -> None:
    """The audit log cannot be written (here /dev/full: ENOSPC): the server goes on,
    and its stop says how many records were lost and exits 1, not 0, as ``delete``
    fails when its record cannot be written (cli/audit_options.audited_exit)."""
    audit = tmp_path / "audit.jsonl"
    audit.symlink_to("/dev/full")
    with serving(tmp_path, "--audit-log", str(audit)) as (port, proc, log):
        with socket.create_connection(("127.0.0.1", port)) as sock:  # (a record: an association)
            rq = P.AssociateRQ(
                "DICOMSTORE",
                "AUDITED",
                [I.PresentationContextRQ(1, uids.VERIFICATION, [uids.IMPLICIT_VR_LE])],
                I.UserInformation(max_length=16384, implementation_class_uid="1.2.3"),
            )
            sock.sendall(P.encode(rq))
            assert sock.recv(1)[0] == P.ASSOCIATE_AC
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 1, log.read_text()
    assert "records not written" in log.read_text()


def test_a_signal_as_the_stop_ends_is_not_said_after_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """review112 L2: two signals at once (`timeout -s INT` signals the process and then
    its group): the second, handled after the stop's last line, logged 'SIGINT again:
    already stopping' after 'stopped', the line the README says a clean stop ends with."""
    import asyncio
    import logging
    import os
    import threading

    from tests.conftest import log_line

    from dicomstore.cli import build_parser, serve

    ending = serve.audited_exit

    def with_a_late_signal(code: int, audit: object) -> int:
        os.kill(os.getpid(), signal.SIGINT)  # (handled once the loop runs again)
        return ending(code, audit)

    monkeypatch.setattr(serve, "audited_exit", with_a_late_signal)
    caplog.set_level(logging.INFO, logger="dicomstore")
    argv = ["serve", "--storage", str(tmp_path / "a"), "--port", "0", "--fsync", "off"]
    args = build_parser(argv).parse_args(argv)
    with log_line("dicomstore", "storing into") as started:
        stopper = threading.Thread(
            target=lambda: started.wait(30) and os.kill(os.getpid(), signal.SIGTERM)
        )
        stopper.start()
        assert asyncio.run(serve.run(args)) == 0
        stopper.join(30)
    said = [r.getMessage() for r in caplog.records if r.name == "dicomstore"]
    assert "SIGTERM: stopping gracefully" in said
    assert said[-1] == "stopped", said
