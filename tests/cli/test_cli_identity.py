"""The SCU commands' user identity options (PS3.7 D.3.3.7): --user, --password,
--password-file, --jwt-file, against a server whose policy requires an identity
(review45 M5: our own SCUs could not get in where DCMTK's `storescu --user` did)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.conftest import ServerThread
from tests.services.test_admission_throttle import POLICY
from tests.test_policy import FAST

from dicomstore.archive import Archive
from dicomstore.cli import main
from dicomstore.passcodes import hash_passcode
from dicomstore.policy import Policy
from dicomstore.services.server import ServerConfig


@pytest.fixture
def served(tmp_path: Path):
    path = tmp_path / "policy.toml"
    path.write_text(POLICY.format(alice=hash_passcode("correct horse", **FAST)))
    config = ServerConfig(port=0, max_failed_admissions=0)
    archive = Archive(tmp_path / "archive", fsync=False)
    with ServerThread(config, archive, gatekeeper=Policy.load(path)) as srv:
        srv.archive = archive
        yield srv
    archive.close()


def _echo(srv: ServerThread, *extra: str) -> int:
    return main(["echo", "127.0.0.1", str(srv.port), "--aet", "STORER", *extra])


def test_a_user_and_passcode_get_in(served, tmp_path, capsys) -> None:
    assert _echo(served) == 4  # (no identity: rejected)
    assert "may be refused" not in capsys.readouterr().err
    assert _echo(served, "--user", "alice", "--password", "wrong") == 4
    # (review100 W7: 'no reason given' only; the identity sent is named)
    assert (
        "(the user identity sent (--user, --password, --jwt-file; identity=) may be refused)"
        in (capsys.readouterr().err)
    )
    assert _echo(served, "--user", "alice", "--password", "correct horse") == 0
    secret = tmp_path / "secret"
    secret.write_text("correct horse\n")
    assert _echo(served, "--user", "alice", "--password-file", str(secret)) == 0
    assert "C-ECHO to ANY-SCP@127.0.0.1" in capsys.readouterr().out


def test_a_repeated_echo_says_how_many_answered(served, capsys) -> None:
    assert _echo(served, "--user", "alice", "--password", "correct horse", "--repeat", "3") == 0
    assert capsys.readouterr().out.endswith(": success (3 C-ECHOs)\n")


def test_a_repeated_echo_failing_says_how_many_answered_before(served, capsys, monkeypatch):
    """review63 I1: the k-th of N failing said nothing of the k-1 before it."""
    from dicomstore.aio.client import ClientAssociation
    from dicomstore.dimse.messages import CEchoRSP

    answered = ClientAssociation.echo
    calls = []

    async def echo(self):
        calls.append(1)
        rsp = await answered(self)
        return rsp if len(calls) < 3 else CEchoRSP(rsp.message_id_being_responded_to, 0x0211)

    monkeypatch.setattr(ClientAssociation, "echo", echo)
    assert _echo(served, "--user", "alice", "--password", "correct horse", "--repeat", "5") == 1
    err = capsys.readouterr().err
    assert "C-ECHO answered 0x0211" in err and "(after 2 of 5 answered Success)" in err, err


def test_send_takes_the_identity_too(served) -> None:
    from pydicom.data import get_testdata_file

    ct = str(get_testdata_file("CT_small.dcm"))
    login = ["--aet", "STORER", "--user", "alice", "--password", "correct horse"]
    assert main(["send", "127.0.0.1", str(served.port), *login, "--progress", "off", ct]) == 0
    assert len(served.archive.instances()) == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--password", "x"], "a passcode needs --user NAME"),
        (["--user", "a", "--jwt-file", "/nonexistent"], "/nonexistent: No such file"),
        (["--user", "a", "--password-file", "/nonexistent"], "/nonexistent: No such file"),
    ],
)
def test_identity_options_that_cannot_be_used_are_one_line(extra, message, capsys) -> None:
    assert main(["echo", "127.0.0.1", "1", *extra]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("dicomstore: ") and message in line


def test_a_passcode_from_a_pipe_or_not_utf8(served, tmp_path, capsys) -> None:
    """review47 #4: a pipe's size is 0, so its passcode was never read (an empty one was
    sent, refused, counted); a file not UTF-8 ended in a traceback."""
    import os
    import threading

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text("correct horse\n"))
    writer.start()
    assert _echo(served, "--user", "alice", "--password-file", str(fifo)) == 0
    writer.join()
    latin = tmp_path / "latin"
    latin.write_bytes("pässword".encode("latin-1"))
    assert _echo(served, "--user", "alice", "--password-file", str(latin)) == 2
    assert f"{latin}: not UTF-8 text" in capsys.readouterr().err
