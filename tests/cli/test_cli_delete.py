"""`dicomstore delete` (cli/delete.py): by UID or by patient, each removal an audit
record (`"event": "delete"`, PS3.15 A.5.3.8 / A.5.3.6 action D) and an INFO line
(review58 M5); the archive of ``tests/test_cli_access.py``."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest
from tests.test_cli_access import CT, STUDY, _answered, _dataset, cli, make_archive

from dicomstore.archive import Archive


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    return make_archive(tmp_path / "archive")


def _store(root: Path, sop: str, study: str, mismatch: str = "reject", **attrs: str) -> None:
    with Archive(root, fsync=False, on_relational_mismatch=mismatch) as archive:
        ingest = archive.begin(
            sop_class_uid=CT, sop_instance_uid=sop, transfer_syntax_uid="1.2.840.10008.1.2.1"
        )
        ingest.write(_dataset(sop, study + ".1", "CT", 1, study=study, **attrs))
        assert ingest.commit().is_success


def os_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _studies(storage: Path) -> list[str]:
    rows = json.loads(cli("ls", "studies", "--json", storage=storage).stdout)
    return sorted(row["study_uid"] for row in rows)


def test_each_removal_is_an_audit_record(storage: Path, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    r = cli("delete", STUDY + ".2", "--yes", "--audit-log", str(audit), storage=storage)
    assert r.returncode == 0, r.stderr
    r = cli("delete", "1.2.5", "--yes", "--audit-log", str(audit), storage=storage)
    assert r.returncode == 0, r.stderr
    series, study = _records(audit)
    assert series["event"] == "delete" and series["event_action"] == "D"
    assert (series["audit_event"], series["event_id"]) == ("DICOM Instances Accessed", "110103")
    assert (series["level"], series["uid"], series["selected_by"]) == (
        "series",
        STUDY + ".2",
        "uid",
    )
    assert series["study_instance_uids"] == [STUDY]
    assert series["series_instance_uids"] == [STUDY + ".2"]
    assert series["patient_id"] == "PID1" and series["issuer_of_patient_id"] is None
    assert (series["instances"], series["kept"], series["outcome"]) == (1, 0, "deleted")
    assert series["bytes"] > 0 and series["problems"] == []
    assert series["user"] == os_user() and series["pid"] != os.getpid()
    assert series["storage"] == str(storage.resolve()) and series["sop_instance_uid"] is None
    assert (study["audit_event"], study["event_id"]) == ("DICOM Study Deleted", "110105")
    assert (study["level"], study["patient_id"], study["instances"]) == ("study", "PID2", 1)
    assert study["study_instance_uids"] == ["1.2.5"]


def test_a_file_already_gone_is_told_and_the_delete_succeeds(storage: Path, tmp_path: Path) -> None:
    """review77 F13: the row deleted and audited, the wanted end reached, yet exit 1
    (README: not found / failed) for the file that was gone already."""
    audit = tmp_path / "audit.jsonl"
    (gone,) = [p for p in storage.rglob("*.dcm") if STUDY + ".2" in p.parts]
    gone.unlink()
    r = cli("delete", STUDY + ".2", "--yes", "--audit-log", str(audit), storage=storage)
    assert r.returncode == 0, r.stderr
    assert f"{gone.relative_to(storage).as_posix()}: already gone" in r.stderr
    assert "deleted series" in r.stdout
    (record,) = _records(audit)
    assert record["outcome"] == "deleted"
    assert record["problems"] == [f"{gone.relative_to(storage).as_posix()}: already gone"]


def test_the_audit_log_from_the_environment_and_an_info_line(storage: Path, tmp_path: Path) -> None:
    """As `get` and `reindex`, `delete` reads DICOMSTORE_AUDIT_LOG (the server's file)."""
    audit = tmp_path / "audit.jsonl"
    env = {**os.environ, "DICOMSTORE_AUDIT_LOG": str(audit)}
    r = subprocess.run(
        [sys.executable, "-m", "dicomstore.cli", "delete", "1.2.4.1", "--yes"]
        + ["--storage", str(storage)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    (record,) = _records(audit)
    assert record["level"] == "instance" and record["sop_instance_uid"] == "1.2.4.1"
    assert record["series_instance_uids"] == [STUDY + ".1"]
    (line,) = r.stderr.splitlines()
    assert (
        " INFO dicomstore.delete: deleted instance 1.2.4.1 of patient PID1: 1 instance(s)" in line
    )
    assert line.endswith(f"(user {os_user()})")


def test_an_audit_log_that_cannot_be_opened_deletes_nothing(storage: Path, tmp_path: Path) -> None:
    audit = tmp_path / "missing" / "audit.jsonl"
    r = cli("delete", "1.2.5", "--yes", "--audit-log", str(audit), storage=storage)
    assert r.returncode == 2
    said = "cannot open the audit log (--audit-log)"  # (review77 F15: which file it was)
    assert r.stderr == f"dicomstore: {said} {audit}: No such file or directory\n"
    assert "1.2.5" in _studies(storage)


def test_a_patients_studies_all_go_and_only_that_patients(storage: Path, tmp_path: Path) -> None:
    _store(storage, "1.2.4.7", "1.2.7", patient_id="PID1")
    _store(storage, "1.2.4.8", "1.2.8", patient_id="PID1", issuer="HOSP_B")  # another patient
    _store(storage, "1.2.4.9", "1.2.9", patient_id="PID1X")
    audit = tmp_path / "audit.jsonl"
    both = cli("delete", "--patient-id", "PID1", "--yes", storage=storage)
    assert both.returncode == 2
    assert "Patient ID PID1 is held by 2 patients (issuers none, 'HOSP_B')" in both.stderr
    r = cli("delete", "--patient-id", "PID1", "--issuer", "", "--yes", "--audit-log", str(audit),
            storage=storage)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert _studies(storage) == ["1.2.5", "1.2.8", "1.2.9"]
    assert f"deleted study {STUDY}: 3 instance(s)" in r.stdout
    assert "deleted study 1.2.7: 1 instance(s)" in r.stdout
    assert "deleted patient PID1, Doe^Jane: 2 study(ies), 4 instance(s)" in r.stdout
    records = _records(audit)
    assert sorted(r["uid"] for r in records) == sorted([STUDY, "1.2.7"])
    assert all(r["selected_by"] == "patient" and r["patient_id"] == "PID1" for r in records)
    assert all(r["audit_event"] == "DICOM Study Deleted" for r in records)
    r = cli("delete", "--patient-id", "PID1", "--issuer", "HOSP_B", "--yes", storage=storage)
    assert r.returncode == 0 and _studies(storage) == ["1.2.5", "1.2.9"]
    r = cli("delete", "--patient-id", "PID*", "--yes", storage=storage)  # no wildcard
    assert r.returncode == 1 and r.stderr == "dicomstore: no patient PID* in the archive\n"
    assert _studies(storage) == ["1.2.5", "1.2.9"]


def test_a_patient_delete_leaves_another_patients_instances_of_one_study_uid(
    storage: Path, tmp_path: Path
) -> None:
    """review59 H1: with ``accept``, one Study Instance UID holds two patients'
    instances; deleting one patient deleted the other's too, unnamed in the audit."""
    _store(storage, "1.2.4.7", "1.2.7", patient_id="PID7")
    _store(storage, "1.2.4.8", "1.2.7", "accept", patient_id="PID8", patient_name="Roe^Rick")
    audit = tmp_path / "audit.jsonl"
    r = cli("delete", "--patient-id", "PID7", "--yes", "--audit-log", str(audit), storage=storage)
    assert r.returncode == 0, r.stderr
    assert "deleted study 1.2.7: 1 instance(s)" in r.stdout
    assert "1 instance(s) kept (another patient's under this Study UID" in r.stdout
    rows = json.loads(
        cli("ls", "instances", "--json", "--study-uid", "1.2.7", storage=storage).stdout
    )
    assert [(row["sop_instance_uid"], row["patient_id"]) for row in rows] == [("1.2.4.8", "PID8")]
    (record,) = _records(audit)
    assert record["patient_id"] == "PID7" and record["uid"] == "1.2.7"
    with Archive(storage) as archive:
        assert archive.check() == []


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ([], "give the UID to delete or --patient-id"),
        (["1.2.5", "--patient-id", "PID2"], "give the UID to delete or --patient-id"),
        (["1.2.5", "--issuer", "X"], "--issuer goes with --patient-id"),
        (["--patient-id", " "], "an empty Patient ID"),
        (["--patient-id", "PID2"], "not a terminal (use --yes)"),  # (stdin: /dev/null)
    ],
)
def test_usage_errors_delete_nothing(storage: Path, args: list[str], words: str) -> None:
    r = cli("delete", *args, storage=storage)
    assert r.returncode == 2 and words in r.stderr and r.stderr.count("\n") == 1
    assert _studies(storage) == ["1.2.5", STUDY]


def test_a_patient_delete_asks_and_keeps_what_came_since(storage: Path) -> None:
    """The confirmation rules of a UID's: what was counted at the prompt goes."""
    import pty

    rick = {"patient_id": "PID2", "patient_name": "Roe^Rick"}
    _store(storage, "1.2.4.7", "1.2.7", **rick)
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI with a terminal as stdin
        os.execv(
            sys.executable,
            [sys.executable, "-m", "dicomstore.cli.access", "delete", "--patient-id", "PID2",
             "--storage", str(storage)],
        )  # fmt: skip
    output = b""
    while b"[y/N]" not in output:
        output += os.read(fd, 1024)
    assert b"Delete patient PID2, Roe^Rick: 2 study(ies), 2 instance(s)" in output
    _store(storage, "1.2.4.10", "1.2.5", **rick)  # into a counted study
    _store(storage, "1.2.4.11", "1.2.11", **rick)  # a new study
    output, code = _answered(pid, fd, b"y\n")
    assert code == 0, output
    assert b"deleted study 1.2.5: 1 instance(s), 512 B; 1 instance(s) kept (another" in output
    kept = b"kept 2 study(ies) of the patient holding instances stored since the count: "
    assert kept + b"1.2.11, 1.2.5" in output
    assert _studies(storage) == ["1.2.11", "1.2.5", STUDY]
    with Archive(storage) as archive:
        assert archive.check() == []


def test_a_failed_removal_is_audited_as_failed(
    storage: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    from dicomstore.archive import removal
    from dicomstore.cli.access import main

    def locked(*args, **kwargs):
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(removal, "remove", locked)
    audit = tmp_path / "audit.jsonl"
    code = main(["delete", "1.2.5", "--yes", "--audit-log", str(audit), "--storage", str(storage)])
    assert code == 1
    assert capsys.readouterr().err == "dicomstore: Resource temporarily unavailable\n"
    (record,) = _records(audit)
    assert (record["outcome"], record["instances"], record["uid"]) == ("failed", 0, "1.2.5")
    assert record["problems"] == ["[Errno 11] Resource temporarily unavailable"]
    assert record["patient_id"] == "PID2" and record["study_instance_uids"] == ["1.2.5"]
