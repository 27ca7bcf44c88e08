"""`dicomstore send` end to end: inputs, report, resume, summary and exit codes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from tests.conftest import PEER_ENV, ServerThread, dcmtk_storescp, free_port
from tests.services.test_scu_retry import FlakyHandler
from tests.services.test_scu_support import received_by_uid, sendable, uid_of

from dicomstore.cli import send as cli_send
from dicomstore.services.server import ServerConfig


def _main(*args: str) -> int:
    return cli_send.main([*args, "--retry-delay", "0.001", "--log-level", "error"])


def _report(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_folders_stdin_and_junk_files(tmp_path: Path, monkeypatch, capsys) -> None:
    files = sendable(tmp_path / "in" / "deep" / "er", compressed=False, limit=5)
    (tmp_path / "in" / "notes.txt").write_text("not DICOM\n")
    extra = sendable(tmp_path / "extra", compressed=True, limit=2)
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(f"{p}\n" for p in extra)))
    port = free_port()
    with dcmtk_storescp(port, tmp_path / "out", "+xa"):
        code = _main("127.0.0.1", str(port), str(tmp_path / "in"), "-")
    out = capsys.readouterr().out
    assert code == 0
    assert "sent 7 instance(s)" in out
    assert "skipped (not an instance to send): 1" in out and "notes.txt" in out
    assert set(received_by_uid(tmp_path / "out")) == {uid_of(p) for p in files + extra}


def test_nothing_to_send_is_a_usage_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "a.txt").write_text("hello")
    assert _main("127.0.0.1", str(free_port()), str(tmp_path)) == 2
    assert "no DICOM instance" in capsys.readouterr().err


def test_a_path_that_does_not_exist_sends_nothing(tmp_path: Path, capsys) -> None:
    """review35b F7: a typo in a path was "skipped (not DICOM)", the rest sent, exit 0."""
    files = sendable(compressed=False)[:1]
    typo = str(tmp_path / "stduy-typo")
    assert _main("127.0.0.1", str(free_port()), *map(str, files), typo) == 2
    assert capsys.readouterr().err == f"dicomstore: no such file or folder: {typo}\n"


def test_a_listed_path_that_cannot_be_read_is_a_failure(tmp_path: Path, monkeypatch, capsys):
    """A path on stdin that is gone (or unreadable) was "skipped (not an instance to
    send)" and the run exited 0: it is not sent, a failure (exit 1), not a skip."""
    files = sendable(compressed=False)[:1]
    gone = tmp_path / "gone.dcm"
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{files[0]}\n{gone}\n"))
    port = free_port()
    report = tmp_path / "r.jsonl"
    with dcmtk_storescp(port, tmp_path / "out"):
        code = _main("127.0.0.1", str(port), "-", "--report", str(report))
    out = capsys.readouterr().out
    assert code == 1
    assert "not sent: 1" in out and f"{gone}: cannot read: No such file or directory" in out
    assert "skipped" not in out
    assert sorted(r["outcome"] for r in _report(report)) == ["not-sent", "stored"]
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{gone}\n"))
    assert _main("127.0.0.1", str(free_port()), "-") == 7  # nothing stored


def test_report_warnings_failures_and_exit_codes(tmp_path: Path, capsys) -> None:
    files = sendable(compressed=False)[:4]
    uids_ = [uid_of(p) for p in files]
    handler = FlakyHandler({uids_[1]: [0xB000], uids_[2]: [0xA900], uids_[3]: [0xC123]})
    report = tmp_path / "report.jsonl"
    with ServerThread(ServerConfig(port=0), handler) as server:
        code = _main("127.0.0.1", str(server.port), *map(str, files), "--report", str(report))
    out = capsys.readouterr().out
    assert code == 1  # partial
    assert "warnings: 1 (B000 Warning: coercion of data elements: test B000 x1)" in out
    assert "failed: 2" in out and "A900" in out and "C123" in out
    rows = _report(report)
    assert [r["sop_instance_uid"] for r in rows] == uids_
    assert [r["outcome"] for r in rows] == ["stored", "warning", "failed", "failed"]
    assert rows[1]["status_hex"] == "0xB000" and rows[2]["error_comment"] == "test A900"
    assert rows[0]["bytes"] == Path(files[0]).stat().st_size - _meta_len(files[0])
    assert all(r["seconds"] > 0 and r["path"] for r in rows)


def _meta_len(path: Path) -> int:
    from dicomstore.services.sources import scan_file

    return scan_file(path).offset


def test_all_failed_exit_7(tmp_path: Path) -> None:
    files = sendable(compressed=False)[:2]
    handler = FlakyHandler({uid_of(p): [0xA900] for p in files})
    with ServerThread(ServerConfig(port=0), handler) as server:
        assert _main("127.0.0.1", str(server.port), *map(str, files)) == 7


def test_resume_sends_only_what_was_not_stored(tmp_path: Path, capsys) -> None:
    files = sendable(compressed=False)[:5]
    bad = uid_of(files[2])
    handler = FlakyHandler({bad: [0xA900]})
    report = tmp_path / "report.jsonl"
    with ServerThread(ServerConfig(port=0), handler) as server:
        args = ["127.0.0.1", str(server.port), *map(str, files), "--report", str(report)]
        assert _main(*args) == 1
        handler.stored.clear()
        assert _main(*args, "--resume", str(report)) == 0
    assert list(handler.stored) == [bad]  # only the failed one went again
    rows = _report(report)  # the same file: appended
    assert len(rows) == 10
    assert [r["outcome"] for r in rows[5:]].count("already-stored") == 4
    assert "already stored (--resume): 4" in capsys.readouterr().out


def test_progress_line_on_a_terminal(tmp_path: Path, capsys) -> None:
    files = sendable(compressed=False)[:3]
    with ServerThread(ServerConfig(port=0), FlakyHandler()) as server:
        assert _main("127.0.0.1", str(server.port), *map(str, files), "--progress", "on") == 0
    err = capsys.readouterr().err
    assert "\r3/3 instances" in err and "MB/s" in err and "ETA" in err


def test_module_entry_point_runs(tmp_path: Path) -> None:
    files = sendable(compressed=False)[:1]
    with ServerThread(ServerConfig(port=0), FlakyHandler()) as server:
        proc = subprocess.run(
            [sys.executable, "-m", "dicomstore.cli.send", "127.0.0.1", str(server.port)]
            + [str(files[0])],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 0, proc.stderr
    assert "sent 1 instance(s)" in proc.stdout


def _big_instance(path: Path, size: int) -> None:
    """A Secondary Capture whose Pixel Data is ``size`` bytes of a sparse file."""
    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.424242"
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    with open(path, "ab") as f:  # (7FE0,0010) OB, then a hole of `size` bytes
        f.write(b"\xe0\x7f\x10\x00OB\x00\x00" + size.to_bytes(4, "little"))
        f.truncate(f.tell() + size)


@pytest.mark.parametrize(
    "size_mib", [int(os.environ.get("DICOMSTORE_BIG_MIB", "192"))], ids=lambda n: f"{n}MiB"
)
def test_a_huge_instance_streams_in_bounded_memory(tmp_path: Path, size_mib: int) -> None:
    """Peak RSS of the sender < 128 MiB whatever the instance size (2048 MiB on demand)."""
    path = tmp_path / "huge.dcm"
    _big_instance(path, size_mib << 20)
    port = free_port()
    # The child reports its own VmHWM: ru_maxrss would count the forked image of pytest.
    script = (
        "import sys; from dicomstore.cli import send; code = send.main(sys.argv[1:]); "
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')]; "
        "print(hwm[0].split()[1]); sys.exit(code)"
    )
    with dcmtk_storescp(port, tmp_path / "out", "--ignore", "-pdu", "131072"):
        proc = subprocess.run(
            [sys.executable, "-c", script, "127.0.0.1", str(port), str(path)],
            capture_output=True,
            text=True,
            env=PEER_ENV,
            timeout=300,
        )
    assert proc.returncode == 0, proc.stderr
    assert "sent 1 instance(s)" in proc.stdout
    peak_mib = int(proc.stdout.split()[-1]) / 1024  # VmHWM in kB
    assert peak_mib < 128, peak_mib


def test_the_summary_names_at_most_five_kinds_of_answer() -> None:
    """review45 M2: with each answer's Error Comment in it, the count lines could be as
    long as the run; five kinds, then how many others."""
    from dicomstore.cli.send import summary
    from dicomstore.services.scu_send import Result

    results = []
    for n in range(8):
        r = Result(f"f{n}.dcm", outcome="failed", status=0xA900)
        r.error_comment = f"reason {n}"
        results.append(r)
    (_, counts, *failed) = summary(results, 1.0)
    assert counts.endswith("reason 4 x1, and 3 other kind(s))")
    assert failed[0] == "    f0.dcm: A900 Error: data set does not match SOP Class: reason 0"


def test_the_summary_says_why_an_association_was_rejected_and_what_was_converted() -> None:
    """review48 L3: 'failed: 2 (rejected x2)', the reason only in a stderr warning; the
    instances converted (--convert) were not counted."""
    from dicomstore.cli.send import summary
    from dicomstore.services.scu_send import Result

    why = "association rejected (permanent) by service user: called AE title not recognized"
    refused = [
        Result(f"f{n}.dcm", outcome="failed", reason=why, error_kind="rejected") for n in range(2)
    ]
    sent = Result("c.dcm", outcome="stored", bytes=10)
    sent.converted = True
    lines = summary([*refused, sent], 1.0)
    assert lines[0].endswith(", 1 converted (--convert)")
    assert lines[1] == f"  failed: 2 ({why} x2)"


def test_a_sop_class_the_scp_refuses_is_said_so(tmp_path: Path, capsys) -> None:
    """A SOP class whose every context was refused "abstract syntax not supported"
    (storescp's answer to a class it does not know) read "the SCP accepted it in no
    transfer syntax", as if a conversion could help."""
    ds = pydicom.dcmread(sendable(compressed=False)[0])
    private = "1.2.826.0.1.3680043.9.9999.8"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = private
    path = tmp_path / "private.dcm"
    ds.save_as(path)
    port = free_port()
    with dcmtk_storescp(port, tmp_path / "out"):
        code = _main("127.0.0.1", str(port), str(path))
    out = capsys.readouterr().out
    assert code == 7
    assert f"the SCP refused {private} (abstract syntax not supported)" in out
    assert "no transfer syntax" not in out


def test_a_peer_that_speaks_another_protocol_is_not_tried_again(tmp_path: Path) -> None:
    """review100 W12: a peer answering HTTP ('the peer is not a DICOM application
    entity') was tried 3 times more (about 7 s) before exit 5: no retry helps."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted, done = [], threading.Event()

    def answer_http() -> None:
        while True:
            conn, _ = listener.accept()
            if done.is_set():  # (the test's own connection, which ends this thread)
                return conn.close()
            accepted.append(conn)
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    thread = threading.Thread(target=answer_http, daemon=True)
    thread.start()
    try:
        code = _main(
            "127.0.0.1", str(listener.getsockname()[1]), str(sendable(compressed=False)[0])
        )
    finally:
        done.set()
        socket.create_connection(listener.getsockname()).close()
        thread.join(10)
        listener.close()
    assert code == 5 and len(accepted) == 1
