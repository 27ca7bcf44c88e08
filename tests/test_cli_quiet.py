"""A quiet, friendly command line: `send` prints a summary (per-instance lines with
-v only), Ctrl-C is one line, exit 130 and a flushed --report, library warnings
stay out of the output, and --log-format json writes one JSON object a line."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset

from dicomstore.services.server import ServerConfig
from tests.conftest import ServerThread
from tests.services.test_scu_retry import FlakyHandler
from tests.services.test_scu_support import sendable, uid_of

SEND = [sys.executable, "-m", "dicomstore.cli", "send"]


def _send(port: int, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    command = [*SEND, "127.0.0.1", str(port), *args, "--retry-delay", "0.001"]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def test_send_prints_only_the_summary_unless_verbose(tmp_path: Path) -> None:
    files = sendable(compressed=False)[:5]
    bad = uid_of(files[3])
    handler = FlakyHandler({bad: [0xA900] * 2})
    with ServerThread(ServerConfig(port=0), handler) as server:
        quiet = _send(server.port, *map(str, files), "--retries", "0")
        verbose = _send(server.port, *map(str, files), "--retries", "0", "-v")
    assert quiet.returncode == verbose.returncode == 1
    assert quiet.stderr == ""  # not a terminal: no line per instance
    assert quiet.stdout.splitlines()[1:] == [
        "  failed: 1 (A900 Error: data set does not match SOP Class: test A900 x1)",
        f"    {files[3]}: A900 Error: data set does not match SOP Class: test A900",
    ]  # (review45 M2: the Error Comment, the peer's reason, was left out)
    assert quiet.stdout.startswith("sent 4 instance(s)")
    lines = verbose.stderr.splitlines()
    assert len(lines) == 5
    assert sum(" INFO dicomstore.send: stored: " in line for line in lines) == 4
    assert [line for line in lines if " WARNING " in line][0].endswith(
        f"failed: {files[3]} [A900 Error: data set does not match SOP Class] test A900"
    )


def test_a_try_again_is_said_with_verbose_only(tmp_path: Path) -> None:
    """review112 L1: each retry of an instance refused for a while (A700) was an INFO
    line on stderr without -v, one per file and try."""
    files = sendable(compressed=False)[:3]
    busy = uid_of(files[1])
    with ServerThread(ServerConfig(port=0), FlakyHandler({busy: [0xA700]})) as server:
        quiet = _send(server.port, *map(str, files), "--retries", "1")
    with ServerThread(ServerConfig(port=0), FlakyHandler({busy: [0xA700]})) as server:
        verbose = _send(server.port, *map(str, files), "--retries", "1", "-v")
    assert quiet.returncode == verbose.returncode == 0, quiet
    assert quiet.stderr == "" and quiet.stdout.startswith("sent 3 instance(s)")
    assert sum(", retrying" in line for line in verbose.stderr.splitlines()) == 1


def _lying_file(path: Path) -> Path:
    """An instance whose file meta says Explicit VR while the data set is implicit:
    pydicom warns (UserWarning) twice when it reads it."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.4243"
    ds.PatientID = "P"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes().replace(b"1.2.840.10008.1.2\x00", b"1.2.840.10008.1.2.1")
    path.write_bytes(data)
    return path


def test_library_warnings_stay_out_of_the_output(tmp_path: Path) -> None:
    lying = _lying_file(tmp_path / "lying.dcm")
    proc = subprocess.run(
        [sys.executable, "-W", "always", "-c", "import pydicom,sys; pydicom.dcmread(sys.argv[1])"]
        + [str(lying)],
        capture_output=True,
        text=True,
    )
    warned = ("UserWarning", "Invalid value for VR UI", "Expected explicit VR")
    assert all(text in proc.stderr for text in warned)  # the file does make pydicom warn
    good = sendable(compressed=False)[:1]
    with ServerThread(ServerConfig(port=0), FlakyHandler()) as server:
        proc = _send(server.port, str(lying), *map(str, good), "-v")
    assert proc.returncode == 0, proc.stderr
    assert not [text for text in warned if text in proc.stderr], proc.stderr
    assert f"{lying}: " in proc.stdout  # what matters is said in the summary


def test_log_format_json_one_object_a_line(tmp_path: Path) -> None:
    files = sendable(compressed=False)[:2]
    with ServerThread(ServerConfig(port=0), FlakyHandler()) as server:
        proc = _send(server.port, *map(str, files), "-v", "--log-format", "json")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stderr.splitlines()]
    assert len(records) == 2
    for record in records:
        assert list(record)[:4] == ["time", "level", "logger", "message"]
        assert record["time"].endswith("Z") and record["level"] == "INFO"
        assert record["logger"] == "dicomstore.send"
    assert records[0]["message"] == f"stored: {files[0]} [0000 Success] test 0000"


def test_json_formatter_keeps_extra_fields_and_exceptions() -> None:
    import logging

    from dicomstore.cli.logs import JsonFormatter

    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x.y", logging.ERROR, __file__, 1, "a %s", ("b",), None)
        record.exc_info = sys.exc_info()
    record.peer = "10.0.0.1"
    entry = json.loads(JsonFormatter().format(record))
    assert (entry["logger"], entry["level"], entry["message"]) == ("x.y", "ERROR", "a b")
    assert entry["peer"] == "10.0.0.1"
    assert "ValueError: boom" in entry["exception"]


class _Stalling(FlakyHandler):
    """Stores every instance but ``stall``, whose commit waits for ``release``."""

    def __init__(self, stall: str) -> None:
        super().__init__()
        self.stall = stall
        self.reached = threading.Event()
        self.release = threading.Event()

    def begin(self, *, sop_instance_uid: str, **kw):
        sink = super().begin(sop_instance_uid=sop_instance_uid, **kw)
        if sop_instance_uid != self.stall:
            return sink
        handler = self

        class Stalled:
            write, abort = sink.write, sink.abort

            def commit(self):
                handler.reached.set()
                handler.release.wait(60)
                return SimpleNamespace(status=0xA700, error_comment="stalled")

        return Stalled()


def test_ctrl_c_is_one_line_exit_130_and_a_flushed_report(tmp_path: Path) -> None:
    files = sendable(compressed=False)[:3]
    handler = _Stalling(uid_of(files[1]))
    report = tmp_path / "report.jsonl"
    with ServerThread(ServerConfig(port=0, max_ops=1), handler) as server:
        command = [*SEND, "127.0.0.1", str(server.port), *map(str, files)]
        command += ["--report", str(report), "--max-ops", "1"]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert handler.reached.wait(60), "the second instance never arrived"
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            handler.release.set()
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130
    assert err == (
        f"dicomstore: interrupted after 1 of 3 instance(s); each answer so far is in {report}\n"
    )
    assert out == ""
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert [(r["sop_instance_uid"], r["outcome"]) for r in rows] == [(uid_of(files[0]), "stored")]
    assert pydicom.dcmread(files[0]).SOPInstanceUID in handler.stored


def test_pydicom_records_stay_out_but_critical_ones() -> None:
    """review34b F5: a decoder that fails logs an ERROR with two tracebacks, where the
    result line says "cannot convert ...: why"; dropped unless --log-level debug."""
    import logging

    from dicomstore.cli.logs import _quiet_pydicom

    def record(name: str, level: int) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, "message", None, None)

    assert not _quiet_pydicom(record("pydicom.pixels.decoders.base", logging.ERROR))
    assert not _quiet_pydicom(record("pydicom", logging.WARNING))
    assert _quiet_pydicom(record("pydicom", logging.CRITICAL))
    assert _quiet_pydicom(record("dicomstore.send", logging.ERROR))
    assert _quiet_pydicom(record("pydicomish", logging.INFO))
    # review107 L3: psycopg's "error ignored terminating <Pipeline [BAD]>" beside ours
    assert not _quiet_pydicom(record("psycopg", logging.WARNING))
    assert not _quiet_pydicom(record("psycopg.pool", logging.ERROR))
    assert _quiet_pydicom(record("psycopgish", logging.WARNING))
