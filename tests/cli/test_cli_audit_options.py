"""The audit log's options (cli/audit_options.py, review58 M6): rotation size and the
rotated files kept, the same for every command that writes the audit log."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from dicomstore.audit import AuditLog
from dicomstore.cli import build_parser, settings
from dicomstore.cli.audit_options import audited_exit, close_audit_log, open_audit_log


def _parsed(argv: list[str], environ: dict[str, str] | None = None):
    return settings.parse(build_parser(argv), argv, environ or {})


def test_the_server_keeps_every_file_by_default(tmp_path) -> None:
    args = _parsed(["serve", "--audit-log", str(tmp_path / "a.jsonl")])
    assert (args.audit_log_max_size, args.audit_log_keep) == (64 * 2**20, 0)
    audit = open_audit_log(args)
    try:
        assert (audit.max_bytes, audit.keep) == (64 * 2**20, 0)
    finally:
        audit.close()


@pytest.mark.parametrize(
    "argv",
    [
        ["get", "127.0.0.1", "104", "--storage", "x", "-k", "StudyInstanceUID=1"],
        ["delete", "1.2.3"],
    ],
)
def test_a_command_adding_to_the_servers_file_never_rotates_it(argv, tmp_path) -> None:
    """review59 L1: by its own defaults (64M) `delete` rotated the server's file, which
    the server left to logrotate (`--audit-log-max-size 0`)."""
    path = tmp_path / "a.jsonl"
    path.write_bytes(b"{}\n" * 100)
    args = _parsed([*argv, "--audit-log", str(path)])
    assert not hasattr(args, "audit_log_max_size")
    audit = open_audit_log(args)
    try:
        assert (audit.max_bytes, audit.keep) == (0, 0)
    finally:
        audit.close()
    with pytest.raises(SystemExit):
        _parsed([*argv, "--audit-log-max-size", "1M"])


def test_the_options_from_the_command_line_and_the_environment(tmp_path: Path) -> None:
    path = str(tmp_path / "a.jsonl")
    args = _parsed(["serve", "--audit-log", path, "--audit-log-max-size", "1M",
                    "--audit-log-keep", "30"])  # fmt: skip
    audit = open_audit_log(args)
    audit.close()
    assert (audit.max_bytes, audit.keep) == (2**20, 30)
    environ = {"DICOMSTORE_AUDIT_LOG": path, "DICOMSTORE_AUDIT_LOG_MAX_SIZE": "0",
               "DICOMSTORE_AUDIT_LOG_KEEP": "5"}  # fmt: skip
    args = _parsed(["serve"], environ)
    assert (str(args.audit_log), args.audit_log_max_size, args.audit_log_keep) == (path, 0, 5)
    args = _parsed(["delete", "1.2.3"], environ)  # (as the server's: the same file)
    assert str(args.audit_log) == path
    with pytest.raises(settings.SettingsError, match="must be 0 or more"):
        _parsed(["serve"], {"DICOMSTORE_AUDIT_LOG_KEEP": "-1"})


def test_a_stop_while_it_cannot_be_written_is_one_error_line(tmp_path, monkeypatch, caplog) -> None:
    """(serve's stop printed a traceback: the records lost said in one line)."""
    path = tmp_path / "a.jsonl"
    audit = AuditLog(path, retry_seconds=0.01)

    def full(fd: int, data) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    audit.instance({"n": 1})
    assert close_audit_log(audit) is False
    assert caplog.messages[-1] == (
        f"audit log {path}: 1 records not written: [Errno 28] No space left on device"
    )


def test_a_run_whose_audit_trail_is_not_whole_exits_1(tmp_path, monkeypatch) -> None:
    """serve and get: records dropped while running (more than ``max_held`` waited)
    or not written at the close turn a success into 1; a failure keeps its code."""
    whole = AuditLog(tmp_path / "whole.jsonl")
    whole.instance({"n": 1})
    whole.close()
    assert whole.complete and audited_exit(0, whole) == 0 and audited_exit(0, None) == 0
    dropping = AuditLog(tmp_path / "dropped.jsonl", retry_seconds=0.01, max_held=10)
    written = os.write

    def full(fd: int, data) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    dropping.instance({"n": 1})  # (waits: the disk is full)
    dropping.instance({"n": 2, "long": "x" * 100})  # (past max_held: dropped)
    monkeypatch.setattr(os, "write", written)
    dropping.close()  # (nothing left to write: the close itself is fine)
    assert dropping.dropped == 1 and not dropping.complete
    assert (audited_exit(0, dropping), audited_exit(4, dropping)) == (1, 4)
