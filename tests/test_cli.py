"""The command line as a user meets it: exit codes and one-line messages."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from dicomstore.cli import main
from dicomstore.services.server import ServerConfig
from dicomstore.ul import pdu as P
from tests.conftest import (
    NullHandler,
    ServerThread,
    free_port,
    serve_command,
    start_up_log,
    wait_listening,
)


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


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["serve", "--port", "99999"], "dicomstore serve: error: argument --port: port out of"),
        (["send", "--parallel", "x"], "dicomstore send: error: argument --parallel"),
        (["sned"], "dicomstore: error: argument {serve,"),
    ],
)
def test_an_option_mistaken_is_one_line(capsys, argv: list[str], says: str) -> None:
    """review100 W4: ~50 lines of usage came before the one line that said what was
    wrong (the config file's and the environment's forms were one line)."""
    with pytest.raises(SystemExit) as ended:
        main(argv)
    assert ended.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(says) and line.endswith("--help)")


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
    # (review100 W7: what of ours it points at)
    assert "called AE title not recognized (we called 'WRONG': --aec sets it, called_ae=" in err


def test_a_peer_closing_before_any_answer_may_be_a_tls_port(capsys) -> None:
    """review100 W7: a plain client on the TLS port was told only that the connection
    closed (the server's log said why)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def close_after_reading() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)

    thread = threading.Thread(target=close_after_reading, daemon=True)
    thread.start()
    try:
        assert main(["echo", "127.0.0.1", str(listener.getsockname()[1])]) == 5
    finally:
        thread.join(10)
        listener.close()
    err = capsys.readouterr().err.strip()
    said = "closed unexpectedly: before any answer (a TLS port? then --tls; or one with too"
    assert said in err and err.endswith("pending from here: its log says why)"), err


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
        ["serve", "--max-associations", "0"],  # (review35b F3, F4, F13: took, then failed)
        ["serve", "--max-ops", "-1"],
        ["echo", "127.0.0.1", "104", "--repeat", "0"],
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


def test_serve_without_http_loads_no_http_stack(tmp_path) -> None:
    """DICOM alone does not pay for Starlette, uvicorn or the metrics (startup CPU is
    part of what a receiver costs; they once came in through the HTTPS check)."""
    port = free_port()
    command = serve_command(port, tmp_path / "store")
    err = start_up_log([command[0], "-X", "importtime", *command[1:]], port)
    imported = {line.rsplit("|", 1)[-1].strip() for line in err.splitlines() if "|" in line}
    assert "dicomstore.services.acceptor" in imported  # (the listing is there)
    for module in ("starlette", "uvicorn", "prometheus_client", "dicomstore.http"):
        assert module not in imported, module


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


def test_serve_http_max_body_bounds_stow(tmp_path) -> None:
    """--http-max-body: a STOW-RS body declared larger is 413 before it is read."""
    import httpx

    port, http_port = free_port(), free_port()
    command = serve_command(
        port, tmp_path / "store", "--http-port", str(http_port), "--http-max-body", "1K"
    )
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(http_port, proc)
        reply = httpx.post(
            f"http://127.0.0.1:{http_port}/studies",
            content=b"x" * 2000,
            headers={"content-type": 'multipart/related; type="application/dicom"; boundary=B'},
        )
        assert reply.status_code == 413
        assert "larger than the limit of 1024 bytes" in reply.text
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "refused (413)" in err


def test_trailing_padding_option_parses() -> None:
    from dicomstore.cli import build_parser

    assert build_parser().parse_args(["serve"]).trailing_padding == "keep"
    args = build_parser().parse_args(["serve", "--trailing-padding", "discard"])
    assert args.trailing_padding == "discard"


def test_serve_syncfs_option_reaches_the_archive(monkeypatch, tmp_path) -> None:
    from dicomstore.cli import build_parser, serve

    opened: list[dict] = []
    monkeypatch.setattr(serve, "open_archive", lambda storage, **kw: opened.append(kw))
    for given, expected in (([], None), (["--syncfs", "off"], False)):
        # (--port 0: the default port may be another server's here, answered 3 first)
        argv = ["serve", "--storage", str(tmp_path), "--port", "0", *given]
        args = build_parser().parse_args(argv)
        assert asyncio.run(serve.run(args)) == 2  # (no archive: a usage error)
        assert opened.pop()["syncfs"] is expected
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--syncfs", "on"])


def test_trailing_padding_bad_value_is_a_one_line_error(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--trailing-padding", "strip"])
    assert exc.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1
    assert "--trailing-padding" in errors[0] and "'strip'" in errors[0]
    assert "discard" in errors[0] and "keep" in errors[0]


def test_serve_trailing_padding_discard_end_to_end(tmp_path) -> None:
    """`dicomstore serve --trailing-padding discard` and `dicomstore send` (our SCU,
    which streams the file's data set as it is): B006, the file cut, the archive sound."""
    import io
    import json

    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from dicomstore.archive import Archive
    from dicomstore.archive.dicomfile import dataset_offset

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality = "PAD", "CT"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    padding = b"\xfc\xff\xfc\xffOB\0\0" + (20).to_bytes(4, "little") + bytes(20)
    sent = tmp_path / "padded.dcm"
    sent.write_bytes(buffer.getvalue() + padding)
    report = tmp_path / "report.jsonl"
    storage = tmp_path / "store"
    port = free_port()
    proc = subprocess.Popen(
        serve_command(port, storage, "--fsync", "off", "--trailing-padding", "discard"),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_listening(port, proc)
        code = main(["send", "127.0.0.1", str(port), str(sent), "--report", str(report)])
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert code == 0  # a warning counts as stored
    (row,) = [json.loads(line) for line in report.read_text().splitlines()]
    assert row["status_hex"] == "0xB006"
    assert row["error_comment"] == "Data Set Trailing Padding (FFFC,FFFC), 32 bytes, discarded"
    with Archive(storage) as archive:
        path = archive.path_of(ds.SOPInstanceUID)
        assert archive.get_instance(ds.SOPInstanceUID)["file_size"] == path.stat().st_size
    with open(path, "rb") as fp:
        fp.seek(dataset_offset(fp))
        stored = fp.read()
    original = buffer.getvalue()
    with io.BytesIO(original) as fp:
        assert stored == original[dataset_offset(fp) :]  # all but the padding
    assert main(["check", "--storage", str(storage)]) == 0


@pytest.mark.parametrize("command", ["serve", "reindex"])
def test_an_unusable_storage_is_one_line(tmp_path, capsys, command) -> None:
    afile = tmp_path / "a-file"
    afile.write_text("not a folder")
    port = ["--port", "0"] if command == "serve" else []  # (its port is tried first)
    assert main([command, "--storage", str(afile), *port]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"dicomstore: cannot open the archive {afile}: not a folder"]


def test_a_storage_under_a_file_names_the_file(tmp_path, capsys) -> None:
    """review100: `--storage /dev/null/x` said '/dev/null/x/.tmp: Not a directory',
    naming a folder the operator never typed instead of the file in the way."""
    afile = tmp_path / "a-file"
    afile.write_text("not a folder")
    storage = afile / "x" / "y"
    assert (
        main(["serve", "--storage", str(storage), "--port", "0"]) == 2
    )  # (reindex: "no archive at")
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"dicomstore: cannot open the archive {storage}: {afile}: not a folder"]


@pytest.mark.sqlite_index
@pytest.mark.parametrize("command", ["serve", "check"])
def test_a_damaged_index_says_reindex_mends_it(tmp_path, capsys, command) -> None:
    """review45 M7: 'cannot open the archive d: d: database disk image is malformed',
    the folder said twice and no word of reindex, which mends it."""
    from dicomstore.archive import Archive

    storage = tmp_path / "d"
    Archive(storage, fsync=False).close()
    index = storage / "index.sqlite"
    with open(index, "r+b") as f:
        f.write(b"not a database" * 8)
    port = ["--port", "0"] if command == "serve" else []
    # (check: a problem found, 1, review77 F17b: 2 told monitoring its call was wrong)
    assert main([command, "--storage", str(storage), *port]) == (2 if command == "serve" else 1)
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert err == (
        f"dicomstore: cannot open the archive {storage}: file is not a database (its index is"
        f" damaged: `dicomstore reindex --storage {storage}` builds a new one from the files,"
        " the damaged one kept aside)"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tls-ca", "{missing}"], "--tls-ca {missing}: No such file or directory"),
        (["--tls-ca", "{garbage}"], "--tls-ca {garbage}: not usable: "),
        (["--tls-cert", "{missing}", "--tls-key", "{missing}"], "--tls-cert {missing}: No such"),
    ],
)
@pytest.mark.parametrize("command", ["echo", "send"])
def test_unusable_tls_files_are_one_line_naming_the_option(
    tmp_path, capsys, command, argv, message
) -> None:
    files = {"missing": tmp_path / "missing.pem", "garbage": tmp_path / "garbage.pem"}
    files["garbage"].write_text("garbage")
    argv = [a.format(**files) for a in argv]
    paths = [str(tmp_path)] if command == "send" else []
    assert main([command, "127.0.0.1", str(free_port()), *paths, *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dicomstore: cannot set up TLS: ")
    assert message.format(**files) in err[0]


def test_serve_with_an_unusable_certificate_is_one_line(tmp_path, capsys) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("garbage")
    argv = ["serve", "--storage", str(tmp_path / "s"), "--port", str(free_port())]
    assert main([*argv, "--tls-cert", str(garbage), "--tls-key", str(garbage)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    prefix = f"dicomstore: cannot set up TLS: --tls-cert {garbage} with --tls-key {garbage}: "
    assert len(err) == 1 and err[0].startswith(prefix + "not usable: ")
    assert not (tmp_path / "s").exists()  # nothing created before the options are checked


@pytest.mark.parametrize("command", ["check", "reindex"])
def test_check_and_reindex_do_not_create_a_missing_archive(tmp_path, capsys, command) -> None:
    missing = tmp_path / "typo"
    assert main([command, "--storage", str(missing)]) == 1
    assert capsys.readouterr().err.startswith(f"dicomstore: no archive at {missing}")
    assert not missing.exists()
    if command == "check":  # a folder without an index is no archive to check either
        missing.mkdir()
        assert main([command, "--storage", str(missing)]) == 1
        assert list(missing.iterdir()) == []


@pytest.mark.parametrize("command", ["check", "ls"])
def test_an_archive_whose_index_is_lost_is_named_with_its_remedy(tmp_path, capsys, command) -> None:
    """review112 I1: check (and ls, show, export) said "no archive at DIR" of a storage
    full of stored instances whose index was lost; serve named `reindex`."""
    from dicomstore.archive import Archive
    from dicomstore.archive.reader import ArchiveReader
    from tests.archive.archive_testlib import dataset, store

    storage = tmp_path / "archive"
    with Archive(storage, fsync=False) as archive:
        assert store(archive, dataset()).status == 0
    assert ArchiveReader(storage).count("instance") == 1
    for lost in storage.glob("index.sqlite*"):
        lost.unlink()
    assert main([command, "--storage", str(storage)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"dicomstore: no archive at {storage} (no index.sqlite), though it")
    assert f"`dicomstore reindex --storage {storage}` indexes them again" in err


def test_check_of_a_storage_it_may_not_read_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    """review115 F9: check of a storage folder of mode 000 (as a user, not root) ended in
    a traceback (PermissionError from the look for its index)."""
    from pathlib import Path

    storage = tmp_path / "s"
    storage.mkdir()
    real = Path.exists

    def denied(self: Path, *args, **kwargs) -> bool:
        if self == storage / "index.sqlite":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "exists", denied)
    assert main(["check", "--storage", str(storage)]) == 1
    assert (
        capsys.readouterr().err
        == f"dicomstore: cannot read {storage}/index.sqlite: Permission denied\n"
    )


def test_an_archive_that_cannot_be_opened_on_a_full_disk_says_so(
    tmp_path, capsys, monkeypatch
) -> None:
    """review115 F8: on a full disk check, serve and reindex said only 'disk I/O error'
    (SQLite's words), nothing of the disk."""
    import shutil
    import sqlite3
    from types import SimpleNamespace

    from dicomstore.cli import options

    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=0))
    options._cannot_open(tmp_path, sqlite3.OperationalError("disk I/O error"))
    assert capsys.readouterr().err == (
        f"dicomstore: cannot open the archive {tmp_path}: disk I/O error"
        " (the disk is full: 0 bytes free; free some space)\n"
    )


def test_an_empty_index_beside_stored_files_names_reindex(tmp_path, capsys) -> None:
    """review115 F4: a zero-byte index.sqlite made ls and stats advise "or start
    dicomstore serve once", which refuses a storage of files its index does not hold."""
    from dicomstore.archive import Archive
    from tests.archive.archive_testlib import dataset, store

    storage = tmp_path / "archive"
    with Archive(storage, fsync=False) as archive:
        assert store(archive, dataset()).status == 0
    for name in ("index.sqlite-wal", "index.sqlite-shm"):
        (storage / name).unlink(missing_ok=True)
    (storage / "index.sqlite").write_bytes(b"")
    assert main(["ls", "--storage", str(storage)]) == 1
    err = capsys.readouterr().err
    assert "the index is empty (no tables), though it holds stored instances" in err, err
    assert f"`dicomstore reindex --storage {storage}`" in err and "serve" not in err


def test_serve_refuses_an_archive_it_may_not_write(tmp_path, capsys, monkeypatch) -> None:
    """review115 F9: with an index.sqlite it may not write (a user, not root), serve
    started and answered every store A700; it stops at start now, in one line."""
    from dicomstore.archive import frozen

    storage = tmp_path / "s"
    said = f"{storage}/index.sqlite is not writable"
    monkeypatch.setattr(frozen, "unwritable", lambda root, index=None: said)
    assert main(["serve", "--storage", str(storage), "--port", "0"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"dicomstore: cannot open the archive {storage}: {said}: nothing could be stored"
        " (`dicomstore check` reads it)"
    )
