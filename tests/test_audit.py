"""The audit trail (issue "Hardening", point 4): JSON lines, batched fsync in a
thread, drained on close, rotated by size; against a real server with our
client and DCMTK storescu."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import multiprocessing
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicomstore import uids
from dicomstore.aio.client import associate
from dicomstore.archive import Archive
from dicomstore.audit import AuditLog
from dicomstore.errors import AssociationRejected
from dicomstore.policy import Policy
from dicomstore.services.server import Server, ServerConfig
from dicomstore.ul.items import UserIdentityRQ
from tests.conftest import PEER_ENV, ServerThread, dcmtk
from tests.test_hostile import SC, dataset

TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def all_records(path: Path, backups: int) -> list[dict]:
    """Oldest first: path.N ... path.1, path."""
    out: list[dict] = []
    for i in range(backups, 0, -1):
        rotated = path.with_name(f"{path.name}.{i}")
        if rotated.exists():
            out += lines(rotated)
    return out + lines(path)


def test_one_json_line_per_record_time_first(tmp_path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as audit:
        audit.association({"event": "association", "calling_ae": "A", "user": None})
        audit.instance({"sop_instance_uid": "1.2.3", "bytes": 10, "status": "0000"})
        audit.instance({"odd": b"\xff", "time": "ignored", "text": "é"})
    first, second, third = lines(path)
    assert list(first) == ["time", "event", "calling_ae", "user"]
    assert TIME.fullmatch(first["time"]) and first["user"] is None
    assert second["event"] == "instance" and second["bytes"] == 10
    assert third["odd"] == "b'\\xff'" and third["text"] == "é" and third["time"] != "ignored"
    assert path.read_bytes().isascii()  # \u escapes: any byte-oriented tool copes


def test_flush_waits_until_durable_and_close_drains(tmp_path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    audit.instance({"n": 0})
    assert audit.flush(timeout=30)
    assert [r["n"] for r in lines(path)] == [0]
    for n in range(1, 5001):
        audit.instance({"n": n})
    audit.close()  # no flush: close alone must write everything
    assert [r["n"] for r in lines(path)] == list(range(5001))
    audit.close()  # twice is fine
    with pytest.raises(ValueError, match="closed"):
        audit.instance({"n": -1})


def test_appends_to_an_existing_file(tmp_path) -> None:
    path = tmp_path / "audit.jsonl"
    for n in range(2):
        with AuditLog(path) as audit:
            audit.instance({"n": n})
    assert [r["n"] for r in lines(path)] == [0, 1]


def test_the_caller_never_waits_for_fsync_and_batches_share_one(tmp_path, monkeypatch) -> None:
    """While an fsync hangs, writes still return at once; what piled up goes
    out with one fsync."""
    real_fsync = os.fsync
    entered, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def slow_fsync(fd: int) -> None:
        calls.append(fd)
        entered.set()
        release.wait(30)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    audit.instance({"n": 0})
    assert entered.wait(30)  # the thread is inside fsync now
    for n in range(1, 1001):  # would deadlock here if writes waited for fsync
        audit.instance({"n": n})
    release.set()
    audit.close()
    assert [r["n"] for r in lines(path)] == list(range(1001))
    assert len(calls) <= 3  # the first record, then the 1000 others together


def rotated(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name + ".lock")


def test_rotation_keeps_every_file_by_default(tmp_path, caplog) -> None:
    """review58 M6: the 11th rotation deleted the oldest file, silently."""
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, max_bytes=400) as audit:
        for n in range(200):
            audit.instance({"n": n, "pad": "x" * 40})
    files = rotated(path)
    assert len(files) > 12  # rotated more than the old 10 backups
    assert [r["n"] for r in all_records(path, len(files) - 1)] == list(range(200))
    assert all(0 < (tmp_path / name).stat().st_size <= 400 for name in files)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_rotation_keeps_n_files_and_warns_of_those_deleted(tmp_path, caplog) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, max_bytes=400, keep=2) as audit:
        for n in range(60):
            audit.instance({"n": n, "pad": "x" * 40})
    files = rotated(path)
    assert files == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    for name in files:
        assert 0 < (tmp_path / name).stat().st_size <= 400
    kept = [r["n"] for r in all_records(path, 2)]
    assert kept == list(range(60 - len(kept), 60))  # the newest, in order, no gaps
    per_file = 400 // len((tmp_path / "audit.jsonl.1").read_text().splitlines()[0].encode() + b"\n")
    assert len(kept) >= 2 * per_file + 1  # two full files kept and the current file
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and all("deleted 1 file(s)" in w and "audit.jsonl.3" in w for w in warnings)
    assert all("--audit-log-keep" in w for w in warnings)


def test_a_smaller_keep_deletes_the_files_beyond_it_in_one_warning(tmp_path, caplog) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, max_bytes=200) as audit:  # one record a file, every file kept
        for n in range(6):
            audit.instance({"n": n, "pad": "x" * 60})
    assert len(rotated(path)) == 6  # path, .1 ... .5
    with AuditLog(path, max_bytes=200, keep=3) as audit:
        audit.instance({"n": 6, "pad": "x" * 60})  # rotates: .6, .5 and .4 go
    assert rotated(path) == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2", "audit.jsonl.3"]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "deleted 3 file(s)" in warning
    assert warning.endswith("beyond the 3 kept (--audit-log-keep): audit.jsonl.6, audit.jsonl.5,"
                            " audit.jsonl.4")  # fmt: skip
    assert [r["n"] for r in all_records(path, 3)] == list(range(3, 7))


def test_files_named_like_rotated_ones_but_not_ours_are_left_alone(tmp_path) -> None:
    path = tmp_path / "audit.jsonl"
    for name in ("audit.jsonl.0", "audit.jsonl.01", "audit.jsonl.2.gz", "audit.jsonl.x"):
        (tmp_path / name).write_text(name)
    with AuditLog(path, max_bytes=100) as audit:
        for n in range(3):
            audit.instance({"n": n, "pad": "x" * 60})
    for name in ("audit.jsonl.0", "audit.jsonl.01", "audit.jsonl.2.gz", "audit.jsonl.x"):
        assert (tmp_path / name).read_text() == name
    assert [r["n"] for r in all_records(path, 2)] == [0, 1, 2]


def test_max_bytes_0_never_rotates(tmp_path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, max_bytes=0) as audit:
        for n in range(100):
            audit.instance({"n": n, "pad": "x" * 40})
    assert rotated(path) == ["audit.jsonl"]
    assert [r["n"] for r in lines(path)] == list(range(100))


def test_a_file_renamed_away_is_followed_and_kept_in_order(tmp_path) -> None:
    """logrotate's ``create``: path renamed to path.1 while open; the next batch
    opens a new path, and the next rotation of ours moves that path.1 up too."""
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, max_bytes=400) as audit:
        audit.instance({"n": 0})
        assert audit.flush(timeout=30)
        os.rename(path, path.with_name("audit.jsonl.1"))  # (by logrotate)
        for n in range(1, 40):
            audit.instance({"n": n, "pad": "x" * 40})
    files = rotated(path)
    assert len(files) > 3
    assert [r["n"] for r in all_records(path, len(files) - 1)] == list(range(40))


def _writer(path: str, name: str, count: int, started: Any) -> None:
    """One process's writes (``serve --workers``: each process has its AuditLog)."""
    started.wait()
    with AuditLog(path, max_bytes=2000) as audit:
        for n in range(count):
            audit.instance({"writer": name, "n": n, "pad": "z" * (n % 50)})


def test_several_processes_share_one_file_and_its_rotation(tmp_path) -> None:
    path = tmp_path / "audit.jsonl"
    context = multiprocessing.get_context("spawn")
    started = context.Event()
    writers = [
        context.Process(target=_writer, args=(str(path), f"w{k}", 400, started)) for k in range(3)
    ]
    for writer in writers:
        writer.start()
    started.set()
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0
    names = [p for p in tmp_path.iterdir() if p.suffix != ".lock"]
    backups = len(names) - 1
    assert backups > 10  # rotated many times, by all three
    for p in names:  # every file within the limit: rotations were decided on its true size
        assert 0 < p.stat().st_size <= 2000
    records = all_records(path, backups)  # (each line whole JSON: none interleaved)
    for k in range(3):
        mine = [r["n"] for r in records if r["writer"] == f"w{k}"]
        assert mine == list(range(400))  # every record once, in its writer's order


def test_an_oversized_line_is_alone_in_its_file(tmp_path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, max_bytes=100) as audit:
        audit.instance({"n": 0})
        audit.instance({"n": 1, "pad": "y" * 300})  # alone in its file, never split
        audit.instance({"n": 2})
    assert rotated(path) == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    assert [[r["n"] for r in lines(path.with_name(f"audit.jsonl.{i}"))] for i in (2, 1)] == [
        [0],
        [1],
    ]
    assert [r["n"] for r in lines(path)] == [2]


def test_a_failed_write_is_retried_and_close_reports_what_is_lost(tmp_path, monkeypatch) -> None:
    real_write = os.write
    failing = {"on": True}
    failed = threading.Event()

    def write(fd: int, data) -> int:
        if failing["on"]:
            failed.set()
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    audit.instance({"n": 0})
    assert failed.wait(30)
    failing["on"] = False  # space again: close retries at once
    audit.close()
    assert [r["n"] for r in lines(path)] == [0]

    failing["on"] = True
    stuck = AuditLog(tmp_path / "stuck.jsonl")
    stuck.instance({"n": 1})
    with pytest.raises(OSError, match="1 records not written"):
        stuck.close()


class _Full:
    """``os.write`` failing with ENOSPC while ``on``; ``failed`` set at each failure."""

    def __init__(self, monkeypatch) -> None:
        self.on = True
        self.failed = threading.Event()
        real_write = os.write

        def write(fd: int, data) -> int:
            if self.on:
                self.failed.set()
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(fd, data)

        monkeypatch.setattr(os, "write", write)


def test_a_failed_write_is_retried_on_a_timer_not_at_the_next_record(
    tmp_path, monkeypatch, caplog
) -> None:
    """review58 L1: after a failure, the records waited for the next event."""
    caplog.set_level(logging.INFO, logger="dicomstore.audit")
    full = _Full(monkeypatch)
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path, retry_seconds=0.01)
    try:
        audit.instance({"n": 0})
        audit.instance({"n": 1})
        assert full.failed.wait(30)
        assert not audit.flush(timeout=0)
        full.on = False  # space again; no record comes
        assert audit.flush(timeout=30)
        assert [r["n"] for r in lines(path)] == [0, 1]
        messages = [(r.levelno, r.getMessage()) for r in caplog.records]
        assert (logging.ERROR, f"cannot write the audit log {path}: [Errno 28] No space left on"
                " device") in messages  # fmt: skip
        assert (logging.INFO, f"audit log {path} writable again: 2 records written") in messages
        assert audit.error is None
    finally:
        audit.close()


def test_what_waits_in_memory_is_bounded_and_the_dropped_counted(
    tmp_path, monkeypatch, caplog
) -> None:
    full = _Full(monkeypatch)
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path, retry_seconds=0.01, max_held=1000)
    try:
        audit.instance({"n": 0, "pad": "x" * 50})
        assert full.failed.wait(30)
        for n in range(1, 100):
            audit.instance({"n": n, "pad": "x" * 50})  # the caller never waits
        assert audit.dropped > 80
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert sum("records are dropped until" in e for e in errors) == 1  # once
        full.on = False
        assert audit.flush(timeout=30)
        written = [r["n"] for r in lines(path)]
        held = list(range(100 - audit.dropped))
        assert written == held  # the first ones, in order, up to the bound
        assert len(path.read_bytes()) <= 1000
        dropped = f"audit log {path}: {audit.dropped} records dropped: more than 1000 bytes"
        assert any(m.getMessage().startswith(dropped) for m in caplog.records)
        audit.instance({"n": 100})  # room again
        assert audit.flush(timeout=30) and lines(path)[-1]["n"] == 100
    finally:
        audit.close()


def test_a_bad_path_fails_at_construction(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        AuditLog(tmp_path / "missing-dir" / "audit.jsonl")
    with pytest.raises(ValueError):
        AuditLog(tmp_path / "a.jsonl", max_bytes=-1)
    with pytest.raises(ValueError):
        AuditLog(tmp_path / "a.jsonl", keep=-1)


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed")
def test_jq_reads_the_file(tmp_path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as audit:
        audit.association({"event": "association", "calling_ae": 'A "quoted" \\ AE'})
        audit.instance({"event": "instance", "sop_instance_uid": "1.2.3", "status": "0000"})
    done = subprocess.run(
        ["jq", "-r", 'select(.event=="instance") | .sop_instance_uid', str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == "1.2.3\n"
    slurped = subprocess.run(["jq", "-s", "length", str(path)], capture_output=True, text=True)
    assert slurped.returncode == 0 and slurped.stdout.strip() == "2"


# --------------------------------------------------------------------------- a real server

CONTEXTS = [(SC, [uids.EXPLICIT_VR_LE]), (uids.VERIFICATION, [uids.IMPLICIT_VR_LE])]


def test_server_audit_trail_with_our_client_and_rotation(tmp_path) -> None:
    (tmp_path / "policy.toml").write_text('[peers.MODALITY1]\n[users.alice]\n[peers."MONITOR"]\n')
    policy = Policy.load(tmp_path / "policy.toml")
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path, max_bytes=1000)

    async def main():
        archive = Archive(tmp_path / "archive", fsync=False)
        server = Server(ServerConfig(port=0), archive, gatekeeper=policy, audit=audit)
        await server.start()
        try:
            with pytest.raises(AssociationRejected):
                await associate("127.0.0.1", server.port, calling_ae="STRANGER")
            alice = UserIdentityRQ(1, False, b"alice")
            async with await associate(
                "127.0.0.1", server.port, calling_ae="MODALITY1", contexts=CONTEXTS, identity=alice
            ) as assoc:
                for n in range(5):
                    uid = f"1.2.3.{n}"
                    rsp = await assoc.store_stream(assoc.context_for(SC), SC, uid, [dataset(uid)])
                    assert rsp.status == 0
        finally:
            await server.close(grace=2)
            archive.close()

    asyncio.run(main())
    audit.close()
    records = all_records(path, 50)
    assert path.with_name("audit.jsonl.1").exists()  # it did rotate
    assert all(TIME.fullmatch(r["time"]) for r in records)
    rejected, *instances, accepted = records
    assert rejected["event"] == "association" and rejected["calling_ae"] == "STRANGER"
    assert rejected["outcome"].startswith("rejected") and rejected["peer"] == "127.0.0.1"
    assert [r["sop_instance_uid"] for r in instances] == [f"1.2.3.{n}" for n in range(5)]
    assert all(r["event"] == "instance" and r["status"] == "0000" for r in instances)
    assert all(r["calling_ae"] == "MODALITY1" and r["digest"] for r in instances)
    assert accepted["event"] == "association" and accepted["outcome"] == "released"
    assert accepted["user"] == "alice" and accepted["stored"] == 5 and accepted["failed"] == 0
    assert SC in accepted["contexts_accepted"]


def test_server_audit_trail_with_dcmtk(tmp_path) -> None:
    (tmp_path / "policy.toml").write_text("allow_unknown = true\n[users.bob]\n")
    src = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
    audit = AuditLog(tmp_path / "audit.jsonl")
    archive = Archive(tmp_path / "archive", fsync=False)
    with ServerThread(
        ServerConfig(port=0),
        archive,
        gatekeeper=Policy.load(tmp_path / "policy.toml"),
        audit=audit,
    ) as srv:
        args = ["-aet", "CT1", "-aec", "DICOMSTORE", "--user", "bob", "127.0.0.1", str(srv.port)]
        sent = subprocess.run(
            [dcmtk("storescu"), *args, str(src)], env=PEER_ENV, capture_output=True, text=True
        )
        echo = subprocess.run(
            [dcmtk("echoscu"), "-aet", "PROBE", "127.0.0.1", str(srv.port)],
            env=PEER_ENV,
            capture_output=True,
            text=True,
        )
    archive.close()
    audit.close()
    assert sent.returncode == 0, sent.stderr
    assert echo.returncode == 0, echo.stderr
    instance, stored, probed = lines(tmp_path / "audit.jsonl")
    assert instance["event"] == "instance" and instance["calling_ae"] == "CT1"
    assert instance["sop_instance_uid"] == str(pydicom.dcmread(src).SOPInstanceUID)
    assert instance["study_instance_uid"] == str(pydicom.dcmread(src).StudyInstanceUID)
    assert instance["status"] == "0000" and instance["bytes"] > 0
    assert stored["calling_ae"] == "CT1" and stored["user"] == "bob" and stored["stored"] == 1
    assert probed["calling_ae"] == "PROBE" and probed["user"] is None
    assert probed["outcome"] == "released" and probed["stored"] == 0


def test_instance_records_name_the_stored_study(tmp_path) -> None:
    """study_instance_uid comes from the index row: the stored copy's study, also for a
    kept duplicate (B000); a refused instance was not stored, so it has none (one
    sent again under another study too: review88 F2)."""
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    study, other = "1.2.826.0.1.3680043.10.7", "1.2.826.0.1.3680043.10.8"
    series = study + ".1"

    async def main() -> None:
        archive = Archive(tmp_path / "archive", fsync=False)
        server = Server(ServerConfig(port=0), archive, audit=audit)
        await server.start()
        try:
            async with await associate(
                "127.0.0.1", server.port, calling_ae="MODALITY1", contexts=CONTEXTS
            ) as assoc:
                ctx = assoc.context_for(SC)
                comment = b"\x20\x40\x00\x00\x4c\x54\x02\x00ok"  # (0020,4000) LT
                sent = [
                    ("1.2.3.1", dataset("1.2.3.1", study, series=series)),
                    ("1.2.3.1", dataset("1.2.3.1", study, comment, series)),  # differs: kept
                    ("1.2.3.2", dataset("1.2.3.3", study)),  # not the instance announced
                    ("1.2.3.1", dataset("1.2.3.1", other)),  # under another study: refused
                ]
                for uid, data in sent:
                    await assoc.store_stream(ctx, SC, uid, [data])
        finally:
            await server.close(grace=2)
            archive.close()

    asyncio.run(main())
    audit.close()
    stored, kept, refused, elsewhere = (r for r in lines(path) if r["event"] == "instance")
    assert (stored["status"], stored["study_instance_uid"]) == ("0000", study)
    assert (kept["status"], kept["study_instance_uid"]) == ("B000", study)
    assert kept["error_comment"] == "Duplicate with different content: kept the copy already stored"
    assert refused["status"] == "A900" and refused["study_instance_uid"] is None
    assert elsewhere["status"] == "A900" and elsewhere["study_instance_uid"] is None
    assert elsewhere["error_comment"] == "SOP Instance UID is already stored under another study"
