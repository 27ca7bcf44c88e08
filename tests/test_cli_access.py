"""The access commands through their process: ls, show, export, stats, delete."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from dicomstore.archive import Archive
from dicomstore.archive.dicomfile import dataset_offset
from dicomstore.cli.access import main

CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY = "1.2.826.0.1.3680043.10.4"


def _dataset(sop: str, series: str, modality: str, number: int, **attrs: str) -> bytes:
    ds = pydicom.Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CT, sop
    ds.StudyInstanceUID = attrs.pop("study", STUDY)
    ds.SeriesInstanceUID = series
    ds.PatientID = attrs.pop("patient_id", "PID1")
    ds.PatientName = attrs.pop("patient_name", "Doe^Jane")
    ds.StudyDate = attrs.pop("study_date", "20240102")
    ds.AccessionNumber = attrs.pop("accession", "ACC1")
    ds.Modality, ds.InstanceNumber, ds.SeriesNumber = modality, number, 1
    ds.StudyDescription = "Head"
    if "issuer" in attrs:
        ds.IssuerOfPatientID = attrs.pop("issuer")
    buffer = pydicom.filebase.DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(buffer, ds)
    return buffer.getvalue()


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    return make_archive(tmp_path / "archive")


def make_archive(root: Path) -> Path:
    """Two patients: PID1 (Doe^Jane) with a study of two series (CT 2, MR 1), PID2
    (Roe^Rick) with one of one US instance."""
    with Archive(root, fsync=False) as archive:
        for sop, series, modality, number, attrs in (
            ("1.2.4.1", STUDY + ".1", "CT", 1, {}),
            ("1.2.4.2", STUDY + ".1", "CT", 2, {}),
            ("1.2.4.3", STUDY + ".2", "MR", 1, {}),
            ("1.2.4.4", "1.2.5.1", "US", 1, {"study": "1.2.5", "patient_id": "PID2",
                                             "patient_name": "Roe^Rick", "study_date": "20230101"}),
        ):  # fmt: skip
            ingest = archive.begin(
                sop_class_uid=CT,
                sop_instance_uid=sop,
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                calling_ae="CT01" if modality != "US" else "US01",
            )
            ingest.write(_dataset(sop, series, modality, number, **attrs))
            assert ingest.commit().is_success
    return root


def cli(*args: str, storage: Path | None = None, **kwargs) -> subprocess.CompletedProcess:
    extra = ["--storage", str(storage)] if storage is not None else []
    return subprocess.run(
        [sys.executable, "-m", "dicomstore.cli.access", *args, *extra],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        **kwargs,
    )


def test_ls_levels_as_tables(storage: Path) -> None:
    r = cli("ls", storage=storage)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["STUDY", "UID", "DATE"]
    assert len(lines) == 3 and lines[1].startswith(STUDY)  # the most recent study first
    assert lines[0].index("SERIES") < lines[0].index("INSTANCES")
    assert "CT,MR" in lines[1]
    patients = cli("ls", "patients", storage=storage).stdout.splitlines()
    assert [line.split()[0] for line in patients[1:]] == ["PID1", "PID2"]
    series = cli("ls", "series", "--modality", "C?", storage=storage).stdout.splitlines()
    assert len(series) == 2 and series[1].startswith(STUDY + ".1")
    instances = cli("ls", "instances", "--sender", "US01", storage=storage).stdout
    assert "1.2.4.4" in instances and "CT Image Storage" in instances


def test_ls_shows_the_issuer_when_one_is_held(storage: Path, capsys) -> None:
    """review83 F5: patients of one Patient ID under two issuers were two like rows,
    which `delete --patient-id` then asked to tell apart by `--issuer`."""
    assert "ISSUER" not in cli("ls", "patients", storage=storage).stdout  # (none held)
    with Archive(storage, fsync=False) as archive:
        ingest = archive.begin(
            sop_class_uid=CT, sop_instance_uid="1.2.4.9", transfer_syntax_uid="1.2.840.10008.1.2.1"
        )
        ingest.write(_dataset("1.2.4.9", "1.2.9.1", "CT", 1, study="1.2.9", issuer="HOSP_B"))
        assert ingest.commit().is_success
    for level in ("patients", "studies"):
        lines = cli("ls", level, "--patient-id", "PID1", storage=storage).stdout.splitlines()
        header = lines[0].split()
        assert header[header.index("ID") + 1] == "ISSUER", lines
        assert sorted(line[lines[0].index("ISSUER") :].split()[0] for line in lines[1:]) == [
            "Doe^Jane",
            "HOSP_B",
        ]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--patient-name", "doe*"], [STUDY]),
        (["--patient-id", "PID2"], ["1.2.5"]),
        (["--study-date", "20240101-20241231"], [STUDY]),
        (["--study-date", "-20231231"], ["1.2.5"]),
        (["--accession", "ACC?"], [STUDY, "1.2.5"]),
        (["--modality", "US"], ["1.2.5"]),
        (["--study-uid", f"{STUDY},1.2.5"], [STUDY, "1.2.5"]),
        (["--series-uid", STUDY + ".2"], [STUDY]),
        (["--sop-uid", "1.2.4.4"], ["1.2.5"]),
        (["--filter", "ModalitiesInStudy=MR"], [STUDY]),
        (["--filter", "00100020=PID1"], [STUDY]),
        (["--limit", "1", "--offset", "1"], ["1.2.5"]),
    ],
)
def test_ls_filters_as_json(storage: Path, options, expected, capsys) -> None:
    """In process (the same parser and code as the process, without its start-up cost)."""
    code = main(["ls", "studies", "--json", *options, "--storage", str(storage)])
    assert code == 0
    assert [row["study_uid"] for row in json.loads(capsys.readouterr().out)] == expected


def test_show_instance_header_and_summaries(storage: Path) -> None:
    r = cli("show", "1.2.4.3", storage=storage)
    assert r.returncode == 0
    assert "(0008,0060) Modality" in r.stdout and "'MR'" in r.stdout
    assert "(0002,0010) Transfer Syntax UID" in r.stdout
    header = json.loads(cli("show", "1.2.4.3", "--json", storage=storage).stdout)["header"]
    assert header["00080060"] == {"vr": "CS", "Value": ["MR"]}
    study = cli("show", STUDY, storage=storage).stdout
    assert "n_instances:" in study and "modalities:            CT, MR" in study
    assert STUDY + ".2" in study  # the table of its series
    series = json.loads(cli("show", STUDY + ".1", "--json", storage=storage).stdout)
    assert [i["sop_instance_uid"] for i in series["instances"]] == ["1.2.4.1", "1.2.4.2"]


def test_show_of_an_instance_truncated_since_says_so(storage: Path) -> None:
    """review77 F11: a cut-off header was shown, the index's size above it, exit 0."""
    (path,) = [p for p in storage.rglob("1.2.4.3.dcm")]
    whole = path.stat().st_size
    path.write_bytes(path.read_bytes()[:300])
    rel = path.relative_to(storage).as_posix()
    for json_form in ([], ["--json"]):
        r = cli("show", "1.2.4.3", *json_form, storage=storage)
        assert r.returncode == 1
        assert f"{rel}: damaged (300 bytes, {whole} indexed;" in r.stderr


def test_show_leaves_long_values_unread(tmp_path: Path, capsys) -> None:
    """``show`` read every value before the pixels: long ones are now given by their
    length (text) or a BulkDataURI (JSON), as the browse page and WADO-RS give them."""
    ds = pydicom.dcmread(
        pydicom.filebase.DicomBytesIO(_dataset("1.2.9.1", "1.2.9.2", "OT", 1, study="1.2.9")),
        force=True,
    )
    ds.add_new(0x00090010, "LO", "ACME")
    ds.add_new(0x00091010, "OB", b"\x7f" * 300_000)
    buffer = pydicom.filebase.DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(buffer, ds)
    root = tmp_path / "archive"
    with Archive(root, fsync=False) as archive:
        ingest = archive.begin(
            sop_class_uid=CT, sop_instance_uid="1.2.9.1", transfer_syntax_uid="1.2.840.10008.1.2.1"
        )
        ingest.write(buffer.getvalue())
        assert ingest.commit().is_success
    assert main(["show", "1.2.9.1", "--storage", str(root)]) == 0
    text = capsys.readouterr().out
    assert "(0009,1010) Private tag data  OB: (300000 bytes, not shown)" in text
    assert "\\x7f" not in text and "(0010,0010) Patient's Name" in text
    assert main(["show", "1.2.9.1", "--json", "--storage", str(root)]) == 0
    header = json.loads(capsys.readouterr().out)["header"]
    assert header["00091010"] == {
        "vr": "OB",
        "BulkDataURI": "studies/1.2.9/series/1.2.9.2/instances/1.2.9.1/bulkdata/00091010",
    }
    assert header["00100010"]["Value"] == [{"Alphabetic": "Doe^Jane"}]


def test_export_copies_ps310_files(storage: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = cli("export", STUDY, str(out), storage=storage)
    assert r.returncode == 0 and "exported 3 instance(s)" in r.stdout
    files = sorted(out.rglob("*.dcm"))
    assert len(files) == 3
    for path in files:
        assert path.read_bytes() == (storage / path.relative_to(out)).read_bytes()
        assert pydicom.dcmread(path).StudyInstanceUID == STUDY
    flat = tmp_path / "flat"
    assert cli("export", "1.2.4.4", str(flat), "--flat", storage=storage).returncode == 0
    assert [p.name for p in flat.iterdir()] == ["1.2.4.4.dcm"]
    with open(flat / "1.2.4.4.dcm", "rb") as fp:
        assert dataset_offset(fp) > 132


def test_export_goes_past_a_file_gone_or_damaged_and_tells_them(
    storage: Path, tmp_path: Path
) -> None:
    """review77 F3, F4: the first file gone ended the export (no count, a partial
    folder); a truncated one was exported as if whole, its indexed size printed, exit 0.
    Now every readable instance is exported, the others told, exit 1."""
    files = sorted(p for p in storage.rglob("*.dcm") if ".tmp" not in p.parts)
    study_files = [p for p in files if STUDY in p.parts[-3]]
    assert len(study_files) == 3
    gone, cut, whole = study_files
    gone.unlink()
    size = cut.stat().st_size
    cut.write_bytes(cut.read_bytes()[:100])
    out = tmp_path / "out"
    r = cli("export", STUDY, str(out), storage=storage)
    assert r.returncode == 1
    assert "exported 1 instance(s)" in r.stdout
    rel = {p: p.relative_to(storage).as_posix() for p in (gone, cut)}
    # (review115 F7: "No such file or directory", where the README says archive damage)
    said = f"{rel[gone]}: not exported: archive damage: instance {gone.stem}: its file is gone"
    assert said in r.stderr, r.stderr
    assert f"{rel[cut]}: not exported: archive damage: instance " in r.stderr
    assert f": file size 100, stored {size}" in r.stderr
    assert [p.name for p in out.rglob("*.dcm")] == [whole.name]


def test_export_never_gives_a_copy_damaged_since_it_was_stored(
    storage: Path, tmp_path: Path
) -> None:
    """A bit flipped in a stored file (its size unchanged): not exported, told, exit 1;
    the others exported (archive/checked.py: read through the indexed digest)."""
    files = sorted(p for p in storage.rglob("*.dcm") if ".tmp" not in p.parts)
    flipped, *others = [p for p in files if STUDY in p.parts[-3]]
    data = bytearray(flipped.read_bytes())
    data[-3] ^= 0x01
    flipped.write_bytes(bytes(data))
    out = tmp_path / "out"
    r = cli("export", STUDY, str(out), storage=storage)
    assert r.returncode == 1
    assert f"exported {len(others)} instance(s)" in r.stdout
    rel = flipped.relative_to(storage).as_posix()
    assert f"{rel}: not exported: archive damage: instance " in r.stderr
    assert "its data set differs from what was stored" in r.stderr
    assert sorted(p.name for p in out.rglob("*.dcm")) == sorted(p.name for p in others)
    assert not [p for p in out.rglob("*") if p.name.endswith(".part")]


def test_export_into_a_full_folder_stops_and_leaves_no_cut_file(
    storage: Path, tmp_path: Path
) -> None:
    """review100 W1: a full destination got an empty or cut file under each final name
    (pydicom read one without error) and one stderr line per instance. Copies go to a
    .part file renamed once whole; the first 'no space' stops the export."""
    from tests.archive.archive_testlib import mounted_tmpfs

    with mounted_tmpfs(tmp_path / "small", "4k") as small:
        r = cli("export", STUDY, str(small), storage=storage)
        assert r.returncode == 1, r.stderr
        assert "exported 1 instance(s)" in r.stdout
        assert r.stderr.strip().splitlines() == [
            f"dicomstore: stopped: {small}: No space left on device"
        ]
        files = [p for p in small.rglob("*") if p.is_file()]
        assert [p.suffix for p in files] == [".dcm"]  # (no .part, no cut copy)
        assert pydicom.dcmread(files[0]).StudyInstanceUID == STUDY


def test_an_interrupted_export_leaves_only_whole_files(
    storage: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """review100 W1: Ctrl-C left the copy under way cut, under its final name."""
    import shutil

    from dicomstore.cli import access

    copies = []
    copy = shutil.copyfileobj

    def interrupted(source, target, length=0):
        copies.append(target)
        if len(copies) == 2:  # (the second: half written, then Ctrl-C)
            target.write(source.read(100))
            raise KeyboardInterrupt
        return copy(source, target, length)

    monkeypatch.setattr(access.shutil, "copyfileobj", interrupted)
    out = tmp_path / "out"
    assert main(["export", STUDY, str(out), "--storage", str(storage)]) == 130
    assert "interrupted: 1 of 3 instance(s) exported" in capsys.readouterr().err
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0].suffix == ".dcm" and not files[0].name.startswith(".")
    assert pydicom.dcmread(files[0]).StudyInstanceUID == STUDY


def test_stats(storage: Path) -> None:
    r = cli("stats", storage=storage)
    assert r.returncode == 0
    assert "instances      4" in r.stdout and "CT01" in r.stdout and "US01" in r.stdout
    stats = json.loads(cli("stats", "--json", storage=storage).stdout)
    assert stats["totals"]["studies"] == 2
    assert {s["key"]: s["instances"] for s in stats["senders"]} == {"CT01": 3, "US01": 1}
    assert sum(d["instances"] for d in stats["days"]) == 4


def test_delete_refuses_without_tty_and_then_deletes_consistently(storage: Path) -> None:
    r = cli("delete", STUDY + ".2", storage=storage)
    assert r.returncode == 2 and "--yes" in r.stderr and r.stderr.count("\n") == 1
    assert (storage / STUDY / (STUDY + ".2")).exists()
    r = cli("delete", STUDY + ".2", "--yes", storage=storage)
    assert r.returncode == 0 and "1 instance(s)" in r.stdout
    assert not (storage / STUDY / (STUDY + ".2")).exists()
    r = cli("delete", "1.2.4.1", "--yes", storage=storage)
    assert r.returncode == 0
    rows = json.loads(cli("ls", "instances", "--json", storage=storage).stdout)
    assert sorted(row["sop_instance_uid"] for row in rows) == ["1.2.4.2", "1.2.4.4"]
    with Archive(storage) as archive:  # the archive stays consistent for `check`
        assert archive.check() == []


def _prompted(storage: Path, uid: str) -> tuple[int, int, bytes]:
    """`dicomstore delete UID` with a terminal as stdin, at its prompt: its pid, the
    terminal and what it wrote."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI with a terminal as stdin
        os.execv(
            sys.executable,
            [sys.executable, "-m", "dicomstore.cli.access", "delete", uid,
             "--storage", str(storage)],
        )  # fmt: skip
    output = b""
    while b"[y/N]" not in output:
        output += os.read(fd, 1024)
    return pid, fd, output


def _answered(pid: int, fd: int, answer: bytes) -> tuple[bytes, int]:
    """What the prompted delete wrote after ``answer``, and its exit code."""
    os.write(fd, answer)
    output = b""
    try:
        while chunk := os.read(fd, 1024):
            output += chunk
    except OSError:  # EIO once the child has exited
        pass
    _, status = os.waitpid(pid, 0)
    return output, os.waitstatus_to_exitcode(status)


def test_delete_asks_on_a_terminal(storage: Path) -> None:
    for answer, code in ((b"n\n", 1), (b"y\n", 0)):
        pid, fd, output = _prompted(storage, "1.2.5")
        assert b"study 1.2.5 of Roe^Rick (PID2): 1 instance(s)" in output
        assert _answered(pid, fd, answer)[1] == code
    assert not (storage / "1.2.5").exists()


def test_delete_removes_what_was_confirmed_not_what_came_since(storage: Path) -> None:
    """review50 #6: an instance stored while the prompt waited was deleted too, and
    the count printed was the one confirmed."""
    pid, fd, output = _prompted(storage, "1.2.5")
    assert b"study 1.2.5 of Roe^Rick (PID2): 1 instance(s)" in output
    with Archive(storage, fsync=False) as archive:  # another node stores into the study
        ingest = archive.begin(
            sop_class_uid=CT, sop_instance_uid="1.2.4.5", transfer_syntax_uid="1.2.840.10008.1.2.1"
        )
        ingest.write(_dataset("1.2.4.5", "1.2.5.2", "US", 2, study="1.2.5", patient_id="PID2"))
        assert ingest.commit().is_success
    output, code = _answered(pid, fd, b"y\n")
    assert code == 0
    assert b"deleted study 1.2.5 of Roe^Rick (PID2): 1 instance(s)" in output
    assert b"; 1 instance(s) stored since the count kept" in output
    rows = json.loads(cli("ls", "instances", "--json", storage=storage).stdout)
    assert "1.2.4.5" in {row["sop_instance_uid"] for row in rows}
    assert "1.2.4.4" not in {row["sop_instance_uid"] for row in rows}
    with Archive(storage) as archive:
        assert archive.check() == []


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["show", "9.9.9"], 1, "not a study, series or instance"),
        (["export", "9.9.9", "out"], 1, "not a study"),
        (["delete", "9.9.9", "--yes"], 1, "not a study"),
        (["ls", "--filter", "NoSuchKeyword=1"], 2, "unknown"),
        (["ls", "--filter", "novalue"], 2, "KEY=VALUE"),
        (["ls", "--study-date", "2024"], 2, "date"),
        (["ls", "--limit", "-1"], 2, "negative"),
        (["ls", "everything"], 2, "invalid choice"),
    ],
)
def test_errors_one_line_and_exit_codes(storage: Path, args, code, words) -> None:
    r = cli(*args, storage=storage)
    assert r.returncode == code
    assert words in r.stderr
    if code == 1:
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("dicomstore: ")


def test_errors_name_the_path(storage: Path, tmp_path: Path) -> None:
    """review35b F9: "dicomstore: Not a directory", "file is not a database": which?"""
    afile = tmp_path / "afile"
    afile.write_text("")
    r = cli("export", "1.2.4.1", str(afile), storage=storage)
    assert r.returncode == 1 and r.stderr.startswith(f"dicomstore: {afile}/")
    assert r.stderr.endswith(": Not a directory\n")
    for name in os.listdir(storage):
        if name.startswith("index.sqlite"):
            (storage / name).write_bytes(b"not a database" * 100)
    r = cli("ls", storage=storage)
    assert r.returncode == 1
    assert r.stderr == f"dicomstore: {storage}/index.sqlite: file is not a database\n"


def test_no_archive(tmp_path: Path) -> None:
    r = cli("ls", storage=tmp_path / "none")
    assert r.returncode == 1 and "no archive at" in r.stderr
    assert not (tmp_path / "none").exists()  # reading never creates an archive


def test_a_reader_that_goes_away_gets_no_complaint(tmp_path: Path) -> None:
    """`dicomstore ls instances | head -1`: more output than a pipe holds, the reader
    closes after one line; the command ends without a word on stderr."""
    root = tmp_path / "many"
    with Archive(root, fsync=False) as archive:
        for n in range(1500):
            sop = f"1.2.4.9.{n}"
            ingest = archive.begin(
                sop_class_uid=CT, sop_instance_uid=sop, transfer_syntax_uid="1.2.840.10008.1.2.1"
            )
            ingest.write(_dataset(sop, STUDY + ".9", "CT", n))
            assert ingest.commit().is_success
    command = [sys.executable, "-m", "dicomstore.cli.access", "ls", "instances"]
    proc = subprocess.Popen(
        [*command, "--storage", str(root), "--limit", "1500"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"SOP INSTANCE UID")
    proc.stdout.close()  # the reader is gone; ~200 KB were still to come
    err = proc.stderr.read()
    assert proc.wait(60) == 1
    assert err == b""


def test_reused_series_uid_is_listed_and_exported_under_its_own_study(tmp_path: Path) -> None:
    """`--on-relational-mismatch accept`: one Series UID in two patients' studies;
    ls counts each study's own instance, export of a study takes only its own."""
    root = tmp_path / "archive"
    with Archive(root, fsync=False, on_relational_mismatch="accept") as archive:
        for sop, study, patient, name in (
            ("1.2.6.1", "1.2.6", "A", "ALPHA^A"),
            ("1.2.7.1", "1.2.7", "B", "BETA^B"),
        ):
            ingest = archive.begin(
                sop_class_uid=CT, sop_instance_uid=sop, transfer_syntax_uid="1.2.840.10008.1.2.1"
            )
            data = _dataset(
                sop, "1.2.6.9", "CT", 1, study=study, patient_id=patient, patient_name=name
            )
            ingest.write(data)
            assert ingest.commit().is_success
    r = cli("ls", "studies", "--json", storage=root)
    rows = json.loads(r.stdout)
    assert sorted((s["study_uid"], s["patient_id"], s["n_instances"]) for s in rows) == [
        ("1.2.6", "A", 1),
        ("1.2.7", "B", 1),
    ]
    assert cli("export", "1.2.7", str(tmp_path / "out"), storage=root).returncode == 0
    exported = [pydicom.dcmread(p) for p in (tmp_path / "out").rglob("*.dcm")]
    assert [str(ds.PatientName) for ds in exported] == ["BETA^B"]
