"""`--index` (issue 17): the same end-to-end run on both index engines — DCMTK
storescu into `dicomstore serve` (C-STORE), then QIDO-RS, C-FIND, STOW-RS, `ls`,
`stats`, `check`, `delete` and, with the server stopped, `reindex` — with the index
in SQLite (the default, index.sqlite in --storage) or in PostgreSQL (--index URL,
the files still under --storage); and the option from the config file and the
environment."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest
from tests.conftest import PEER_ENV, dcmtk, free_port, wait_listening
from tests.services.dcmqrscp_testlib import layout_files
from tests.services.query_testlib import serving_cli

from dicomstore.cli import main

PID1_STUDIES = {"1.2.9.1", "1.2.9.2"}


@pytest.fixture(params=["sqlite", "postgresql"])
def index_args(request: pytest.FixtureRequest) -> list[str]:
    """The `--index` arguments of each engine (none: the SQLite default)."""
    if request.param == "sqlite":
        return []
    return ["--index", request.getfixturevalue("postgres").new_url()]


def studies_found(capsys: pytest.CaptureFixture[str], port: int, *keys: str) -> set[str]:
    """C-FIND (`dicomstore find`, Study Root, STUDY level): the Study Instance UIDs."""
    args = ["find", "127.0.0.1", str(port), "--json", "--log-level", "error"]
    for key in keys:
        args += ["-k", key]
    assert main(args) == 0, capsys.readouterr().err
    return {
        json.loads(line)["0020000D"]["Value"][0] for line in capsys.readouterr().out.splitlines()
    }


def qido_studies(http_port: int, **params: str) -> set[str]:
    response = httpx.get(f"http://127.0.0.1:{http_port}/studies", params=params, timeout=10)
    assert response.status_code in (200, 204), response.text
    return {s["0020000D"]["Value"][0] for s in (response.json() if response.content else [])}


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code = main(list(args))
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_store_query_check_delete_reindex_on_each_engine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], index_args: list[str]
) -> None:
    files = layout_files(tmp_path / "source")
    storage = tmp_path / "archive"
    where = ["--storage", str(storage), *index_args]
    http_port = free_port()
    with serving_cli(storage, "--http-port", str(http_port), *index_args) as port:
        wait_listening(http_port)
        sent = subprocess.run(
            [dcmtk("storescu"), "-aec", "DICOMSTORE", "127.0.0.1", str(port), *map(str, files)],
            env=PEER_ENV,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr
        assert qido_studies(http_port, PatientName="doe*") == PID1_STUDIES
        assert qido_studies(http_port, ModalitiesInStudy="MR") == {"1.2.9.1"}
        assert studies_found(capsys, port, "PatientID=PID1") == PID1_STUDIES
        assert studies_found(capsys, port, "PatientName=M*") == {"1.2.9.4"}
        rows = json.loads(cli(capsys, "ls", "studies", *where, "--json"))
        assert {r["study_uid"] for r in rows} == {"1.2.9.1", "1.2.9.2", "1.2.9.3", "1.2.9.4"}
        assert json.loads(cli(capsys, "stats", *where, "--json"))["totals"]["instances"] == 9
        assert cli(capsys, "check", *where).strip() == "checked 9 instance(s): 0 problem(s)"
        assert "deleted study 1.2.9.2" in cli(capsys, "delete", "1.2.9.2", "--yes", *where)
        assert not (storage / "1.2.9.2").exists()
        assert studies_found(capsys, port, "PatientID=PID1") == {"1.2.9.1"}
        assert qido_studies(http_port, PatientID="PID1") == {"1.2.9.1"}
    assert (storage / "index.sqlite").exists() == (not index_args)
    assert "reindexed 8 instances" in cli(capsys, "reindex", *where)
    rows = json.loads(cli(capsys, "ls", "instances", *where, "--json"))
    assert len(rows) == 8 and all((storage / r["path"]).is_file() for r in rows)


def test_index_from_the_config_file_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dicomstore.cli import build_parser, settings

    url = "postgresql://dicomstore@db.example:5432/archive"
    config = tmp_path / "server.toml"
    config.write_text(f'index = "{url}"\n')
    args = settings.parse(build_parser(), ["serve", "--server-config", str(config)])
    assert args.index == url
    monkeypatch.setenv("DICOMSTORE_INDEX", url + "2")
    assert settings.parse(build_parser(), ["ls"]).index == url + "2"
    assert settings.parse(build_parser(), ["check"]).index == url + "2"


def test_an_unreachable_index_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/none"
    code = main(["serve", "--port", str(free_port()), "--storage", str(tmp_path), "--index", url])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("dicomstore: cannot open the archive"), err
    assert len(err.strip().splitlines()) == 1


def test_get_into_an_archive_opens_its_index_as_serve_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``get --storage`` takes ``--index`` and opens the archive as ``serve`` does: an
    unreachable index is one line (no index.sqlite of its own made in the storage)."""
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/none"
    storage = tmp_path / "archive"
    code = main(
        ["get", "127.0.0.1", str(free_port()), "-k", "StudyInstanceUID=1.2.3",
         "--storage", str(storage), "--index", url]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("dicomstore: cannot open the archive"), err
    assert len(err.strip().splitlines()) == 1
    assert not (storage / "index.sqlite").exists()


@pytest.mark.parametrize(
    "command",
    [["ls"], ["show", "1.2"], ["export", "1.2", "out"], ["stats"], ["delete", "1.2"], ["check"]]
    + [["reindex"], ["serve", "--port", "0"]],
)
def test_an_index_that_names_nothing_openable_is_a_usage_error(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """review77 F6: the archive commands printed a traceback (exit 1) where serve said
    one line (exit 2); the URL was shown mangled ('foo:' for 'foo://')."""
    storage = ["--storage", str(tmp_path / "s")]
    with pytest.raises(SystemExit) as ended:
        main([*command, *storage, "--index", "foo://x"])
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert "argument --index: not a postgresql:// URL nor a SQLite file: 'foo://x'" in err
    assert "Traceback" not in err
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "psycopg" else real(name, *a)
    )
    with pytest.raises(SystemExit) as ended:
        main([*command, *storage, "--index", "postgresql://u:secret@h/db"])
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert "a PostgreSQL index needs psycopg 3" in err and "secret" not in err
    assert not (tmp_path / "s").exists()


def _postgres_processes(data: Path) -> list[int]:
    """The postmaster of the tests' PostgreSQL server (its data folder ``data``) and
    every process it started."""
    postmaster = int((data / "postmaster.pid").read_text().split()[0])
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                children.append(int(entry.name))
    return [postmaster, *children]


def test_a_postgresql_index_that_stops_answering_holds_up_no_other_door(
    tmp_path: Path, postgres
) -> None:
    """review107 M1: with the PostgreSQL server stopped, a lone association's (window 1)
    store held up every other door: its commit ran on the event loop (waiting for the
    answer timeout), and the cancel of the statement cut at that timeout (libpq's
    blocking PQcancel through psycopg's binary module holds the GIL) stopped every
    thread until the server ran again. A C-ECHO is answered meanwhile: before the cut
    and after it."""
    import os
    import queue
    import signal
    import sys
    import threading
    import time

    from pydicom import examples

    examples.ct.save_as(tmp_path / "ct.dcm", enforce_file_format=True)
    port, storage = free_port(), tmp_path / "store"
    command = [sys.executable, "-m", "dicomstore.cli", "serve", "--port", str(port)]
    command += ["--storage", str(storage), "--index", postgres.new_url()]
    command += ["--index-answer-timeout", "5", "--log-level", "warning"]
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    assert server.stderr is not None
    reader = threading.Thread(
        target=lambda: [lines.put(line) for line in server.stderr], daemon=True
    )
    reader.start()
    echo = [sys.executable, "-m", "dicomstore.cli", "echo", "127.0.0.1", str(port)]
    echo += ["--aec", "DICOMSTORE", "--acse-timeout", "3", "--log-level", "error"]
    stopped: list[int] = []
    try:
        wait_listening(port, server)
        stopped = _postgres_processes(postgres.data)
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        storescu = [dcmtk("storescu"), "-aec", "DICOMSTORE", "127.0.0.1", str(port)]
        sender = subprocess.Popen([*storescu, str(tmp_path / "ct.dcm")], env=PEER_ENV)
        while not list(storage.glob(".tmp/node-*/*.part")):  # (its commit follows)
            assert sender.poll() is None
            time.sleep(0.01)
        during = subprocess.run(echo, capture_output=True, text=True, timeout=60)
        assert during.returncode == 0, during.stderr  # (the commit waits in a thread)
        while "the session is cut" not in (said := lines.get(timeout=60)):
            assert "Traceback" not in said, said
        after = subprocess.run(echo, capture_output=True, text=True, timeout=60)
        assert after.returncode == 0, after.stderr  # (its cancel waits without the GIL)
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        stopped = []
        assert sender.wait(timeout=120) is not None  # (answered once the server answers)
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        server.terminate()
        server.wait(timeout=60)
