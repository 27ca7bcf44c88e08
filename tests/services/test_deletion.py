"""The audited removal (services/deletion.py), through the Python API's door
(``dicomstore.query.remove``): each removal an audit record and an INFO line, as
``dicomstore delete`` (tests/cli/test_cli_delete.py), and no removal without its
record when the audit log cannot be opened."""

from __future__ import annotations

import json
import logging
import os
import pwd
from pathlib import Path

import pytest
from tests.test_cli_access import STUDY, make_archive

from dicomstore.query import open_archive, remove


@pytest.fixture
def storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("DICOMSTORE_AUDIT_LOG", raising=False)
    return make_archive(tmp_path / "archive")


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _files(storage: Path) -> list[Path]:
    return sorted(p for p in storage.rglob("*.dcm") if ".tmp" not in p.parts)


def test_the_api_removal_writes_the_audit_record(storage: Path, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    series = remove(storage, STUDY + ".2", audit_log=audit, fsync=False)
    study = remove(storage, "1.2.5", audit_log=str(audit), fsync=False)
    assert (series.instances, study.instances) == (1, 1)
    first, second = _records(audit)
    assert first["event"] == "delete" and first["event_action"] == "D"
    assert (first["audit_event"], first["event_id"]) == ("DICOM Instances Accessed", "110103")
    assert (first["level"], first["uid"], first["selected_by"]) == ("series", STUDY + ".2", "uid")
    assert first["study_instance_uids"] == [STUDY]
    assert first["series_instance_uids"] == [STUDY + ".2"]
    assert first["patient_id"] == "PID1" and first["issuer_of_patient_id"] is None
    assert (first["instances"], first["bytes"], first["kept"]) == (1, series.bytes, 0)
    assert first["files_removed"] == 1
    assert (first["outcome"], first["problems"]) == ("deleted", [])
    assert first["user"] == pwd.getpwuid(os.getuid()).pw_name and first["pid"] == os.getpid()
    assert first["service"] == "dicomstore.query.remove"
    assert first["storage"] == str(storage.resolve()) and first["sop_instance_uid"] is None
    assert (second["audit_event"], second["event_id"]) == ("DICOM Study Deleted", "110105")
    assert (second["level"], second["patient_id"], second["instances"]) == ("study", "PID2", 1)
    assert second["study_instance_uids"] == ["1.2.5"]


def test_the_audit_log_from_the_environment(
    storage: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As ``dicomstore delete``: ``DICOMSTORE_AUDIT_LOG`` (the server's file)."""
    audit = tmp_path / "audit.jsonl"
    monkeypatch.setenv("DICOMSTORE_AUDIT_LOG", str(audit))
    remove(storage, "1.2.4.1", fsync=False)
    (record,) = _records(audit)
    assert record["level"] == "instance" and record["sop_instance_uid"] == "1.2.4.1"
    assert record["series_instance_uids"] == [STUDY + ".1"] and record["instances"] == 1


def test_an_open_audit_log_is_written_to_and_left_open(storage: Path, tmp_path: Path) -> None:
    from dicomstore.audit import AuditLog

    with AuditLog(tmp_path / "audit.jsonl") as audit:
        remove(storage, "1.2.4.1", audit_log=audit, fsync=False)
        remove(storage, "1.2.4.2", audit_log=audit, fsync=False)  # (still open)
    assert [r["uid"] for r in _records(tmp_path / "audit.jsonl")] == ["1.2.4.1", "1.2.4.2"]


def test_the_api_removal_logs_the_info_line(
    storage: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dicomstore.delete")
    result = remove(storage, "1.2.5", fsync=False)  # (no audit log: the line all the same)
    (line,) = [r for r in caplog.records if r.name == "dicomstore.delete"]
    assert line.levelno == logging.INFO
    user = pwd.getpwuid(os.getuid()).pw_name
    assert line.getMessage() == (
        f"deleted study 1.2.5 of patient PID2: 1 instance(s), {result.bytes} bytes (user {user})"
    )


def _missing_folder(tmp_path: Path) -> Path:
    return tmp_path / "missing" / "audit.jsonl"


def _under_a_file(tmp_path: Path) -> Path:
    (tmp_path / "a-file").write_text("")
    return tmp_path / "a-file" / "audit.jsonl"


def _read_only_folder(tmp_path: Path) -> Path:
    if os.geteuid() == 0:
        pytest.skip("root writes into a read-only folder")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder / "audit.jsonl"


@pytest.mark.parametrize("where", [_missing_folder, _under_a_file, _read_only_folder])
def test_an_audit_log_that_cannot_be_opened_deletes_nothing(
    storage: Path, tmp_path: Path, where, caplog: pytest.LogCaptureFixture
) -> None:
    from dicomstore.query import AuditLogUnavailableError

    audit = where(tmp_path)
    before = _files(storage)
    caplog.set_level(logging.INFO, logger="dicomstore.delete")
    with pytest.raises(AuditLogUnavailableError, match="nothing deleted") as raised:
        remove(storage, "1.2.5", audit_log=audit, fsync=False)
    assert isinstance(raised.value, OSError) and str(audit) in str(raised.value)
    assert _files(storage) == before and len(before) == 4
    assert open_archive(storage).locate("1.2.5")[0] == "study"
    assert not [r for r in caplog.records if r.name == "dicomstore.delete"]


def test_a_failed_api_removal_is_audited_as_failed(
    storage: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dicomstore.archive import removal

    def locked(*args, **kwargs):
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(removal, "remove", locked)
    audit = tmp_path / "audit.jsonl"
    with pytest.raises(OSError, match="Resource temporarily unavailable"):
        remove(storage, "1.2.5", audit_log=audit, fsync=False)
    (record,) = _records(audit)
    assert (record["outcome"], record["instances"], record["uid"]) == ("failed", 0, "1.2.5")
    assert record["problems"] == ["[Errno 11] Resource temporarily unavailable"]
    assert record["patient_id"] == "PID2" and record["study_instance_uids"] == ["1.2.5"]


def test_a_failed_removal_whose_record_is_not_written_either_raises_its_own_error(
    storage: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The removal failed and its audit log (here /dev/full) could not be written at
    the close: the removal's error is raised, the audit log's is an ERROR line
    (``deletion._close_quietly``; review63 L7)."""
    from dicomstore.archive import removal

    def locked(*args, **kwargs):
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(removal, "remove", locked)
    with pytest.raises(OSError, match="Resource temporarily unavailable"):
        remove(storage, "1.2.5", audit_log="/dev/full", fsync=False)
    assert caplog.messages[-1] == (
        "audit log /dev/full: 1 records not written: [Errno 28] No space left on device"
    )  # (the log's name once: it was said twice)
    assert len(_files(storage)) == 4  # (nothing deleted)


def _sweep_raising(error: BaseException):
    def sweep(*args, **kwargs):
        raise error

    return sweep


@pytest.mark.parametrize(
    ("error", "told"),
    [
        (OSError(5, "Input/output error"), "[Errno 5] Input/output error"),
        (KeyboardInterrupt(), "KeyboardInterrupt"),
    ],
)
def test_a_removal_failing_after_its_commit_is_audited_with_what_it_deleted(
    storage: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: BaseException,
    told: str,
) -> None:
    """Rows deleted and files unlinked, then the empty-folder sweep raises (or Ctrl-C):
    the record is ``incomplete`` with the real counts, not ``failed``, 0 instances;
    a BaseException too is recorded and logged, then raised (review61 M1)."""
    from dicomstore.archive import removal

    monkeypatch.setattr(removal, "_remove_empty_dirs", _sweep_raising(error))
    caplog.set_level(logging.INFO, logger="dicomstore.delete")
    audit = tmp_path / "audit.jsonl"
    with pytest.raises(type(error)):
        remove(storage, "1.2.5", audit_log=audit, fsync=False)
    assert len(_files(storage)) == 3  # (its one file is gone)
    (record,) = _records(audit)
    assert (record["outcome"], record["instances"], record["uid"]) == ("incomplete", 1, "1.2.5")
    assert record["bytes"] > 0 and record["problems"] == [told]
    assert record["patient_id"] == "PID2" and record["study_instance_uids"] == ["1.2.5"]
    (line,) = [r for r in caplog.records if r.name == "dicomstore.delete"]
    assert line.levelno == logging.ERROR
    assert line.getMessage().startswith("delete of study 1.2.5 interrupted (")
    # (review100 W8: its file removed, it was called incomplete as one still to do)
    assert "), every file removed: 1 instance(s)," in line.getMessage()
    assert told in line.getMessage()


def test_a_removal_interrupted_before_its_commit_is_audited_as_failed(
    storage: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dicomstore.archive import removal

    monkeypatch.setattr(removal, "remove", _sweep_raising(KeyboardInterrupt()))
    audit = tmp_path / "audit.jsonl"
    with pytest.raises(KeyboardInterrupt):
        remove(storage, "1.2.5", audit_log=audit, fsync=False)
    (record,) = _records(audit)
    assert (record["outcome"], record["instances"]) == ("failed", 0)
    assert record["problems"] == ["KeyboardInterrupt"] and len(_files(storage)) == 4


def _interrupted_at(point: str, storage: Path, audit: Path, monkeypatch) -> dict:
    """Remove study 1.2.5, Ctrl-C at crash point ``point``: its audit record."""
    from dicomstore.archive import crashpoints

    def reached(at: str) -> None:
        if at == point:
            raise KeyboardInterrupt

    monkeypatch.setattr(crashpoints, "ENABLED", True)
    monkeypatch.setattr(crashpoints, "reached", reached)
    with pytest.raises(KeyboardInterrupt):
        remove(storage, "1.2.5", audit_log=audit, fsync=False)
    (record,) = _records(audit)
    return record


def test_a_removal_interrupted_right_after_its_commit_is_audited_with_its_rows(
    storage: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C at the step right after the COMMIT (the ``delete.after-commit`` point, the
    lock just left): the rows are deleted, so the record is ``incomplete`` with their
    counts, not ``failed``, 0 instances (review63 L4)."""
    from dicomstore.query import NotStoredError

    record = _interrupted_at("delete.after-commit", storage, tmp_path / "a.jsonl", monkeypatch)
    assert (record["outcome"], record["instances"], record["uid"]) == ("incomplete", 1, "1.2.5")
    assert record["bytes"] > 0 and record["problems"] == ["KeyboardInterrupt"]
    assert record["study_instance_uids"] == ["1.2.5"]
    assert record["files_removed"] == 0  # (cut before unlinking: review63 L5)
    with pytest.raises(NotStoredError):  # (its rows are gone: the record is true)
        open_archive(storage).locate("1.2.5")


def test_a_removal_interrupted_before_its_commit_deletes_nothing_and_says_so(
    storage: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C at ``delete.after-intent`` (the rows removed, not committed): rolled back,
    recorded ``failed``, 0 instances, which is true (review63 L4/L7)."""
    record = _interrupted_at("delete.after-intent", storage, tmp_path / "a.jsonl", monkeypatch)
    assert (record["outcome"], record["instances"]) == ("failed", 0)
    assert len(_files(storage)) == 4 and open_archive(storage).locate("1.2.5")[0] == "study"


def test_an_audit_log_already_closed_deletes_nothing(
    storage: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An ``AuditLog`` passed in closed (left over after ``with``, closed by another
    thread) is refused before anything is deleted (review61 L1)."""
    from dicomstore.audit import AuditLog
    from dicomstore.query import AuditLogUnavailableError

    audit = AuditLog(tmp_path / "audit.jsonl")
    audit.close()
    caplog.set_level(logging.INFO, logger="dicomstore.delete")
    with pytest.raises(AuditLogUnavailableError, match="is closed; nothing deleted"):
        remove(storage, "1.2.5", audit_log=audit, fsync=False)
    assert len(_files(storage)) == 4 and open_archive(storage).locate("1.2.5")[0] == "study"
    assert _records(tmp_path / "audit.jsonl") == []
    assert not [r for r in caplog.records if r.name == "dicomstore.delete"]


def test_a_record_not_written_says_the_removal_was_done(storage: Path) -> None:
    """``/dev/full``: the study is deleted, its record cannot be written at close: the
    error says so and carries the Removal, told apart from "not deleted" (review61 L3)."""
    from dicomstore.query import AuditRecordNotWrittenError, Removal

    with pytest.raises(AuditRecordNotWrittenError, match="deleted, but its audit") as raised:
        remove(storage, "1.2.5", audit_log="/dev/full", fsync=False)
    assert isinstance(raised.value, OSError) and "/dev/full" in str(raised.value)
    assert isinstance(raised.value.removal, Removal)
    assert (raised.value.removal.level, raised.value.removal.instances) == ("study", 1)
    assert len(_files(storage)) == 3


def test_an_audit_log_closed_during_the_removal_says_the_removal_was_done(
    storage: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closed by another thread after the check (review61 L1, L3)."""
    from dicomstore.audit import AuditLog
    from dicomstore.query import AuditRecordNotWrittenError

    audit = AuditLog(tmp_path / "audit.jsonl")
    audit.close()
    monkeypatch.setattr(AuditLog, "closed", property(lambda self: False))  # (the race)
    with pytest.raises(AuditRecordNotWrittenError, match="is closed") as raised:
        remove(storage, "1.2.5", audit_log=audit, fsync=False)
    assert raised.value.removal.instances == 1 and len(_files(storage)) == 3


def test_an_empty_audit_log_means_none(
    storage: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``audit_log=""`` as ``DICOMSTORE_AUDIT_LOG=""``: no audit log (review61 L4), not
    the folder ``.``; not the environment's either."""
    monkeypatch.setenv("DICOMSTORE_AUDIT_LOG", str(tmp_path / "env-audit.jsonl"))
    monkeypatch.chdir(tmp_path)
    assert remove(storage, "1.2.5", audit_log="", fsync=False).instances == 1
    assert not (tmp_path / "env-audit.jsonl").exists()
    monkeypatch.setenv("DICOMSTORE_AUDIT_LOG", "")
    assert remove(storage, "1.2.4.1", fsync=False).instances == 1
    assert len(_files(storage)) == 2


def test_a_uid_not_stored_creates_no_audit_log(storage: Path, tmp_path: Path) -> None:
    from dicomstore.query import NotStoredError

    audit = tmp_path / "audit.jsonl"
    with pytest.raises(NotStoredError):
        remove(storage, "9.9.9", audit_log=audit, fsync=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive"]


def _left_without_rows(storage: Path, uid: str) -> list[Path]:
    """The files of ``uid`` put back after its delete: what a crash between its COMMIT
    and its unlinks, without removal intents, leaves."""
    files = [p for p in _files(storage) if uid in p.relative_to(storage).parts[:2]]
    saved = {path: path.read_bytes() for path in files}
    remove(storage, uid, fsync=False)
    for path, data in saved.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def test_files_left_without_rows_are_removed_and_recorded(storage: Path, tmp_path: Path) -> None:
    """A UID without rows whose files are on disk (an interrupted delete) still opens
    the audit log and is recorded (the check before opening it looks on disk too)."""
    (left,) = _left_without_rows(storage, "1.2.5")
    audit = tmp_path / "audit.jsonl"
    result = remove(storage, "1.2.5", audit_log=audit, fsync=False)
    assert (result.level, result.leftovers_removed) == ("files", 1) and not left.exists()
    (record,) = _records(audit)
    assert (record["level"], record["uid"], record["outcome"]) == ("files", "1.2.5", "deleted")
    assert (record["instances"], record["files_removed"]) == (0, 1)  # (no rows; one file)


def test_a_file_not_left_by_the_uid_s_delete_is_kept(storage: Path, tmp_path: Path) -> None:
    """review115 F1: a UID without rows had every .dcm under its folders unlinked unread:
    the only copy of an instance indexed elsewhere (another patient's, moved there by
    hand) and a foreign file went, the record naming neither. Only a file of the UID's
    own instances, filed where the archive files them and indexed nowhere, is its."""
    from dicomstore.query import NotStoredError

    remove(storage, "1.2.5", fsync=False)
    folder = storage / "1.2.5" / "1.2.5.1"
    folder.mkdir(parents=True)
    moved = folder / "1.2.4.1.dcm"  # (PID1's, indexed in its own study's folder)
    moved.write_bytes((storage / STUDY / f"{STUDY}.1" / "1.2.4.1.dcm").read_bytes())
    with pytest.raises(NotStoredError):
        remove(storage, "1.2.5", fsync=False)
    assert moved.exists()
    (storage / STUDY / f"{STUDY}.1" / "1.2.4.1.dcm").unlink()  # (its only copy now)
    with pytest.raises(NotStoredError):
        remove(storage, "1.2.5", fsync=False)
    assert moved.exists()


def test_a_leftovers_removal_interrupted_midway_is_incomplete_with_what_went(
    storage: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review63 L7: files left without rows, two of them; Ctrl-C after the first is
    unlinked: ``incomplete``, one file removed, the other still there."""
    from dicomstore.archive import crashpoints

    left = _left_without_rows(storage, STUDY + ".1")
    assert len(left) == 2
    folder = left[0].parent

    def reached(at: str) -> None:
        if at == "delete.after-unlink":
            raise KeyboardInterrupt

    monkeypatch.setattr(crashpoints, "ENABLED", True)
    monkeypatch.setattr(crashpoints, "reached", reached)
    audit = tmp_path / "audit.jsonl"
    with pytest.raises(KeyboardInterrupt):
        remove(storage, STUDY + ".1", audit_log=audit, fsync=False)
    (record,) = _records(audit)
    assert (record["level"], record["outcome"], record["files_removed"]) == (
        "files",
        "incomplete",
        1,
    )
    assert record["problems"] == ["KeyboardInterrupt"]
    assert len(list(folder.glob("*.dcm"))) == 1
