"""The study-complete webhook's POST (services/webhook.py) and the study-stable command,
each bounded as a whole (review122 F1, F2)."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dicomstore.services import stability
from dicomstore.services.stable_log import StableStudy
from dicomstore.services.webhook import WebhookError, post_json

EVENT = StableStudy("1.2.3", "PID", 1, 1, "a", "b", "c", "/x/1.2.3")


@contextmanager
def answering(
    *chunks: bytes, forever: bytes | None = None, heads: list[bytes] | None = None
) -> Iterator[str]:
    """A server that reads a request's head (into ``heads``) and sends ``chunks``, then
    (``forever``) that line again and again until the client goes; its URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            if heads is not None:
                heads.append(data.partition(b"\r\n\r\n")[0])
            try:
                for chunk in chunks:
                    conn.sendall(chunk)
                while forever is not None and not stop.wait(0.05):
                    conn.sendall(forever)
            except OSError:
                pass  # (the client went)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    finally:
        stop.set()
        thread.join(30)
        listener.close()


def test_an_answer_trickled_for_ever_is_given_up_at_the_timeout() -> None:
    """review122 F1: a receiver sending a header line every few seconds held urllib's
    thread for ever (its timeout is per read); six held every thread of the loop's
    pool, and forwarding waited behind them."""
    slow = answering(b"HTTP/1.1 200 OK\r\n", forever=b"X-Slow: 1\r\n")
    with slow as url, pytest.raises(WebhookError, match="no whole answer within 0.5 s"):
        asyncio.run(post_json(url, b"{}", 0.5))


@pytest.mark.parametrize(
    ("answer", "says"),
    [(b"garbage\r\n\r\n", "not an HTTP answer"), (b"", "not an HTTP answer")],
)
def test_an_answer_that_is_no_http_is_a_webhook_error(answer: bytes, says: str) -> None:
    """review122 F4: it was an http.client error, caught by no one: a traceback, not
    the warning line."""
    with answering(answer) as url, pytest.raises(WebhookError, match=says):
        asyncio.run(post_json(url, b"{}", 30))


def test_the_status_is_returned_and_a_failure_said(caplog: pytest.LogCaptureFixture) -> None:
    with answering(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n") as url:
        assert asyncio.run(stability.post_event(url, EVENT)) == 204
    with answering(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n") as url:
        assert asyncio.run(stability.post_event(url, EVENT)) is None
    assert "--stable-webhook for study 1.2.3 failed: HTTP 500" in caplog.text
    with answering(b"HTTP/1.0 200\r\n\r\n") as url:  # (no reason phrase: HTTP/1.0)
        assert asyncio.run(stability.post_event(url, EVENT)) == 200


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def _gone(pid: int) -> bool:
    """Whether ``pid`` ends within 30 s (an orphan's end is init's to reap)."""
    for _ in range(3000):
        if not _alive(pid):
            return True
        threading.Event().wait(0.01)
    return False


def test_a_command_that_does_not_end_is_killed_with_what_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """review122 F2: a study-stable command that never ended was never timed out (and
    one per study ran at once, all outliving the server)."""
    monkeypatch.setattr(stability, "EXEC_TIMEOUT", 1.0)
    pids = tmp_path / "pids"
    script = (
        "import os, subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}'); time.sleep(600)"
    )
    caplog.set_level(logging.WARNING, "dicomstore")
    code = asyncio.run(stability.run_command([sys.executable, "-c", script, "{study}"], EVENT))
    assert code is None
    assert "did not end within 1 s: killed" in caplog.text
    command, child = map(int, pids.read_text().split())
    assert not _alive(command)  # (reaped)
    assert _gone(child)  # (killed with its process group)


def test_a_command_running_when_cancelled_is_killed(tmp_path: Path) -> None:
    """A stop past its grace cancels the command: it was left running, orphaned."""
    ready = tmp_path / "ready"
    script = f"import os, time; open({str(ready)!r}, 'w').write(str(os.getpid())); time.sleep(600)"

    async def main() -> None:
        task = asyncio.create_task(
            stability.run_command([sys.executable, "-c", script, "{study}"], EVENT)
        )
        while not (ready.exists() and ready.read_text()):  # (until it runs)
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert not _alive(int(ready.read_text()))  # (killed, reaped)


def test_an_interim_answer_is_followed_by_the_final_one() -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
    with answering(early + b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n") as url:
        assert asyncio.run(post_json(url, b"{}", 30)) == 201


def test_a_redirect_is_a_failure_not_followed(caplog: pytest.LogCaptureFixture) -> None:
    """review125: a 307 (or 1xx then 500) was logged at DEBUG as a success: the events
    of an http:// URL redirected to https were lost unsaid."""
    moved = b"HTTP/1.1 307 Temporary Redirect\r\nLocation: https://x/\r\n\r\n"
    with answering(moved) as url:
        assert asyncio.run(stability.post_event(url, EVENT)) is None
    assert "--stable-webhook for study 1.2.3 failed: HTTP 307" in caplog.text


def test_the_proxy_the_environment_names_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """review125: urllib took HTTP_PROXY/HTTPS_PROXY/NO_PROXY, the POST on the loop did
    not: a webhook reachable only through a proxy got nothing."""
    heads: list[bytes] = []
    with answering(b"HTTP/1.1 204 No Content\r\n\r\n", heads=heads) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.removesuffix("/hook").replace("//", "//u:p%40@"))
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        assert asyncio.run(post_json("http://hooks.example:8080/a?b=1", b"{}", 30)) == 204
    line, *fields = heads[0].split(b"\r\n")
    assert line == b"POST http://hooks.example:8080/a?b=1 HTTP/1.1"  # (the absolute form)
    assert b"Proxy-Authorization: Basic dTpwQA==" in fields  # (u:p@)
    with answering(b"HTTP/1.1 403 Forbidden\r\n\r\n", heads=heads) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.removesuffix("/hook"))
        with pytest.raises(WebhookError, match="the proxy refused the tunnel: HTTP 403"):
            asyncio.run(post_json("https://hooks.example/a", b"{}", 30))
    assert heads[1].startswith(b"CONNECT hooks.example:443 HTTP/1.1\r\n")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # (excluded: straight to it)
    with answering(b"HTTP/1.1 204 No Content\r\n\r\n", heads=heads) as direct:
        assert asyncio.run(post_json(direct, b"{}", 30)) == 204
    assert heads[2].startswith(b"POST /hook HTTP/1.1\r\n")
