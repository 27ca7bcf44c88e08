"""The audit log's options (cli/audit_options.py, review58 M6): rotation size and the
rotated files kept, the same for every command that writes the audit log."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from dicomstore.audit import AuditLog
from dicomstore.cli import build_parser, settings
from dicomstore.cli.audit_options import close_audit_log, open_audit_log


def _parsed(argv: list[str], environ: dict[str, str] | None = None):
    return settings.parse(build_parser(argv), argv, environ or {})


@pytest.mark.parametrize(
    "argv",
    [
        ["serve"],
        ["get", "127.0.0.1", "104", "--storage", "x", "-k", "StudyInstanceUID=1"],
        ["delete", "1.2.3"],
    ],
)
def test_every_writer_has_the_options_and_keeps_every_file_by_default(argv, tmp_path) -> None:
    args = _parsed([*argv, "--audit-log", str(tmp_path / "a.jsonl")])
    assert (args.audit_log_max_size, args.audit_log_keep) == (64 * 2**20, 0)
    audit = open_audit_log(args)
    try:
        assert (audit.max_bytes, audit.keep) == (64 * 2**20, 0)
    finally:
        audit.close()


def test_the_options_from_the_command_line_and_the_environment(tmp_path: Path) -> None:
    path = str(tmp_path / "a.jsonl")
    args = _parsed(["serve", "--audit-log", path, "--audit-log-max-size", "1M",
                    "--audit-log-keep", "30"])  # fmt: skip
    audit = open_audit_log(args)
    audit.close()
    assert (audit.max_bytes, audit.keep) == (2**20, 30)
    environ = {"DICOMSTORE_AUDIT_LOG": path, "DICOMSTORE_AUDIT_LOG_MAX_SIZE": "0",
               "DICOMSTORE_AUDIT_LOG_KEEP": "5"}  # fmt: skip
    args = _parsed(["delete", "1.2.3"], environ)  # (as the server's: the same file)
    assert (str(args.audit_log), args.audit_log_max_size, args.audit_log_keep) == (path, 0, 5)
    with pytest.raises(settings.SettingsError, match="must be 0 or more"):
        _parsed(["delete", "1.2.3"], {"DICOMSTORE_AUDIT_LOG_KEEP": "-1"})


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
