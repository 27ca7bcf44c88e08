"""The command line as a user meets it: exit codes and one-line messages."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from dicomstore.aio.server import ServerConfig
from dicomstore.cli import main
from dicomstore.ul import pdu as P
from tests.conftest import NullHandler, ServerThread, free_port, serve_command, wait_listening


@contextmanager
def fake_peer(reply: bytes | None) -> Iterator[int]:
    """A TCP peer that reads the A-ASSOCIATE-RQ and answers ``reply`` (None: silence)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    done = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            if reply is not None:
                conn.sendall(reply)
            done.wait(30)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        thread.join(10)
        listener.close()


def test_echo_success(capsys) -> None:
    with ServerThread(ServerConfig(port=0), NullHandler()) as srv:
        assert main(["echo", "127.0.0.1", str(srv.port), "--repeat", "2"]) == 0
    assert "success" in capsys.readouterr().out


def test_echo_connection_refused(capsys) -> None:
    assert main(["echo", "127.0.0.1", str(free_port())]) == 3
    err = capsys.readouterr().err.strip()
    assert err == "dicomstore: connection refused (is the server running?)"


def test_echo_rejected_says_why(capsys) -> None:
    config = ServerConfig(port=0, ae_title="ARCHIVE", require_called_aet=True)
    with ServerThread(config, NullHandler()) as srv:
        assert main(["echo", "127.0.0.1", str(srv.port), "--aec", "WRONG"]) == 4
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "called AE title not recognized" in err


def test_echo_aborted(capsys) -> None:
    with fake_peer(P.encode(P.Abort(P.ABORT_SOURCE_PROVIDER, P.ABORT_UNEXPECTED_PDU))) as port:
        assert main(["echo", "127.0.0.1", str(port)]) == 5
    assert "aborted" in capsys.readouterr().err


def test_echo_timed_out(capsys) -> None:
    with fake_peer(None) as port:
        assert main(["echo", "127.0.0.1", str(port), "--acse-timeout", "0.3"]) == 6
    assert "within 0.3s" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["echo", "127.0.0.1", "70000"],
        ["echo", "127.0.0.1", "104", "--aet", "THIS-AE-TITLE-IS-TOO-LONG"],
        ["serve", "--max-pdu", "100"],
        ["serve", "--transfer-syntax", "1.2.3.4.5"],
    ],
)
def test_bad_options_are_usage_errors(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_serve_starts_answers_and_stops_on_sigterm(tmp_path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        serve_command(port, tmp_path / "store"),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_listening(port, proc)
        assert main(["echo", "127.0.0.1", str(port), "--aec", "DICOMSTORE"]) == 0
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "shutting down" in err
    assert (tmp_path / "store").is_dir()


def test_serve_with_http_port_serves_dicomweb(tmp_path) -> None:
    import httpx

    port, http_port = free_port(), free_port()
    proc = subprocess.Popen(
        serve_command(
            port,
            tmp_path / "store",
            "--http-port",
            str(http_port),
            "--min-free",
            "1K",
            "--max-instance-size",
            "1G",
        ),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_listening(http_port, proc)
        reply = httpx.get(f"http://127.0.0.1:{http_port}/studies")
        assert reply.status_code in (200, 204)
        assert main(["echo", "127.0.0.1", str(port)]) == 0
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
