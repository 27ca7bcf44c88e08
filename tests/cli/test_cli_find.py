"""`dicomstore find` (issue 15, PS3.4 C.4.1.2) against `dicomstore serve` and DCMTK
dcmqrscp: every level, wildcard, range and UID-list keys, the table and --json,
refusals with their Error Comment and exit code, Ctrl-C as a C-CANCEL-RQ."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from tests.conftest import ServerThread, free_port
from tests.services.dcmqrscp_testlib import AET, dcmqrscp, layout_files
from tests.services.query_testlib import WaitingSCP, _FindSCP, serving_layout

from dicomstore.archive import Archive
from dicomstore.cli import main
from dicomstore.services.server import ServerConfig

#: (arguments, the unique key's tag, the values expected) at every level of both models
CASES = [
    (["-P", "-L", "PATIENT", "-k", "PatientName=D*"], "00100020", {"PID1"}),
    (["-P", "-L", "STUDY", "-k", "PatientID=PID1"], "0020000D", {"1.2.9.1", "1.2.9.2"}),
    (
        ["-P", "-L", "SERIES", "-k", "PatientID=PID1", "-k", "0020,000D=1.2.9.1",
         "-k", "Modality=MR"],
        "0020000E",
        {"1.2.9.1.2"},
    ),
    (
        ["-P", "-L", "IMAGE", "-k", "PatientID=PID2", "-k", "StudyInstanceUID=1.2.9.3",
         "-k", "SeriesInstanceUID=1.2.9.3.1"],
        "00080018",
        {"1.2.9.3.1.1", "1.2.9.3.1.2"},
    ),
    (["-k", "PatientName=*J*"], "0020000D", {"1.2.9.1", "1.2.9.2", "1.2.9.3"}),
    (["-S", "-k", "StudyDate=20231201-20241231"], "0020000D", {"1.2.9.1", "1.2.9.3"}),
    (["-k", "StudyDate=-20230101"], "0020000D", {"1.2.9.4"}),
    (["-k", "StudyInstanceUID=1.2.9.2\\1.2.9.4\\1.2.9.99"], "0020000D", {"1.2.9.2", "1.2.9.4"}),
    (["-L", "SERIES", "-k", "StudyInstanceUID=1.2.9.1"], "0020000E", {"1.2.9.1.1", "1.2.9.1.2"}),
    (
        ["-L", "IMAGE", "-k", "StudyInstanceUID=1.2.9.1", "-k", "SeriesInstanceUID=1.2.9.1.1",
         "-k", "SOPInstanceUID=1.2.9.1.1.1\\1.2.9.1.1.3"],
        "00080018",
        {"1.2.9.1.1.1", "1.2.9.1.1.3"},
    ),
]  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[int]:
    """`dicomstore serve` on an archive holding query_testlib.LAYOUT; its port."""
    with serving_layout(tmp_path_factory.mktemp("query") / "archive") as port:
        yield port


@pytest.fixture(scope="module")
def qrscp(tmp_path_factory) -> Iterator[int]:
    folder = tmp_path_factory.mktemp("dcmqrscp")
    with dcmqrscp(folder, layout_files(folder)) as port:
        yield port


def find(port: int, *args: str, aec: str = "DICOMSTORE") -> list[str]:
    return ["find", "127.0.0.1", str(port), "--aec", aec, "--log-level", "error", *args]


def json_matches(capsys, port: int, args: list[str], aec: str = "DICOMSTORE") -> list[dict]:
    assert main(find(port, *args, "--json", aec=aec)) == 0, capsys.readouterr().err
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.mark.parametrize(("args", "unique", "expected"), CASES)
def test_every_level_and_matching_against_dicomstore_serve(
    served, capsys, args, unique, expected
) -> None:
    found = json_matches(capsys, served, args)
    assert sorted(m[unique]["Value"][0] for m in found) == sorted(expected)
    level = args[args.index("-L") + 1] if "-L" in args else "STUDY"
    assert all(m["00080052"]["Value"] == [level] for m in found)


@pytest.mark.parametrize(("args", "unique", "expected"), CASES)
def test_every_level_and_matching_against_dcmqrscp(qrscp, capsys, args, unique, expected) -> None:
    found = json_matches(capsys, qrscp, args, aec=AET)
    assert sorted(m[unique]["Value"][0] for m in found) == sorted(expected)


@pytest.mark.parametrize("which", ["serve", "dcmqrscp"])
def test_the_table_and_non_ascii_names(served, qrscp, capsys, which) -> None:
    port, aec = (served, "DICOMSTORE") if which == "serve" else (qrscp, AET)
    args = ["-P", "-L", "PATIENT", "-k", "PatientName=M*", "-k", "PatientBirthDate"]
    assert main(find(port, *args, aec=aec)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["PatientID", "PatientName", "PatientBirthDate"]
    assert lines[1].split() == ["PID3", "Müller^Hans"] and lines[2] == "(1 match)"
    found = json_matches(capsys, port, args, aec=aec)
    assert found[0]["00100010"]["Value"] == [{"Alphabetic": "Müller^Hans"}]


def test_the_table_lines_up_counts_and_lists(served, capsys) -> None:
    args = ["-k", "PatientID=PID1", "-k", "ModalitiesInStudy", "-k", "NumberOfStudyRelatedSeries"]
    assert main(find(served, *args)) == 0
    header, *rows, total = capsys.readouterr().out.splitlines()
    assert header.split() == [
        "StudyInstanceUID",
        "PatientID",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
    ]
    assert sorted(r.split() for r in rows) == [
        ["1.2.9.1", "PID1", "CT\\MR", "2"],
        ["1.2.9.2", "PID1", "CT", "1"],
    ]
    assert all(len(r) == len(header) for r in rows)  # counts right-aligned under their header
    assert total == "(2 matches)"


def test_no_match_is_success(served, capsys) -> None:
    assert main(find(served, "-k", "PatientID=NOBODY")) == 0
    assert capsys.readouterr().out == "(0 matches)\n"


def test_a_failure_status_is_one_line_with_the_error_comment(served, capsys) -> None:
    assert main(find(served, "-L", "SERIES", "-k", "Modality=CT")) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("dicomstore: C-FIND failed: A900") and "relational" in err
    assert len(err.splitlines()) == 1
    # a value its VR cannot hold is refused here, before sending (review48 L6: the SCP's
    # C000 said it before; README: exit 2)
    assert main(find(served, "-k", "StudyDate=2024")) == 2
    assert "StudyDate: not a date (YYYYMMDD) or date range: '2024'" in capsys.readouterr().err


def test_ff01_is_reported(served, capsys) -> None:
    assert main(find(served, "-P", "-L", "PATIENT", "-k", "PatientAge=042Y")) == 0
    assert "answered FF01" in capsys.readouterr().err


def test_keys_in_sequence_items_as_findscu_gives_them(served, capsys) -> None:
    """review48 L5: `-k Seq[0].Keyword=value` (pynetdicom's; DCMTK's with tags) was
    refused as 'not a DICOM keyword or tag'. The item reaches the SCP: ours says
    sequence matching is not done (FF01) when the item holds a value, not without."""
    path = "ReferencedStudySequence[0].ReferencedSOPInstanceUID"
    assert main(find(served, "-k", "StudyInstanceUID=1.2.9.1", "-k", f"{path}=1.2.3")) == 0
    assert "answered FF01" in capsys.readouterr().err
    tags = "(0008,1110)[0].(0008,1150)"
    assert main(find(served, "-k", "StudyInstanceUID=1.2.9.1", "-k", tags)) == 0
    out = capsys.readouterr()
    assert "FF01" not in out.err and "1.2.9.1" in out.out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-k", "NoSuchKey=1"], "not a DICOM keyword or tag: 'NoSuchKey'"),
        (["-k", "PatientName[0].PatientID=1"], "PatientName is not a sequence"),
        (["-k", "ReferencedStudySequence[x].PatientID="], "not a sequence path (Seq[0]"),
        (["-k", "ProcedureCodeSequence[0].StudyDate=2024"], "StudyDate: not a date"),
        (["-k", "QueryRetrieveLevel=FRAME"], "Query/Retrieve Level 'FRAME'"),
        (["-L", "STUDY", "-k", "QueryRetrieveLevel=SERIES"], "two Query/Retrieve Levels"),
    ],
)
def test_bad_keys_are_usage_errors(capsys, args, message) -> None:
    assert main(find(free_port(), *args)) == 2
    assert message in capsys.readouterr().err


def test_refusals_have_their_exit_codes(tmp_path: Path, capsys) -> None:
    assert main(find(free_port(), "-k", "PatientName")) == 3
    assert "connection refused" in capsys.readouterr().err
    archive = Archive(tmp_path / "archive", fsync=False)
    config = ServerConfig(port=0, allowed_calling_aets=frozenset({"SOMEONE"}))
    try:
        with ServerThread(config, archive) as srv:
            assert main(find(srv.port, "-k", "PatientName")) == 4
            err = capsys.readouterr().err
            assert "calling AE title not recognized" in err
            # (review110 I1: a pin of its address or certificate refuses so too)
            assert "--aet sets it, calling_ae= in Python; or a policy refuses it from" in err
    finally:
        archive.close()


def test_ctrl_c_cancels_the_find_and_exits_130() -> None:
    scp = WaitingSCP()
    with scp as port:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dicomstore.cli", *find(port, "--json", aec="WAITING")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            first = json.loads(proc.stdout.readline())  # the first match is out
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert first["0020000D"]["Value"] == ["1.2.3.1"] and out == ""
    assert scp.cancelled.is_set()
    assert proc.returncode == 130
    assert err == "dicomstore: cancelled after 1 match(es)\n"


def test_a_reader_that_goes_away_is_not_a_connection_failure(served) -> None:
    """`dicomstore find ... | head -1` (review34b F4): the closed pipe was reported as
    "cannot connect: Broken pipe", exit 3; now nothing is said, exit 1 (as `ls`)."""
    command = [
        sys.executable,
        "-m",
        "dicomstore.cli",
        *find(served, "-k", "PatientName=*", "--json"),
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # gone before the first line
    err = proc.stderr.read()
    assert proc.wait(60) == 1, err
    assert err == b""


class _RudeSCP(_FindSCP):
    """One match whose Patient's Name holds terminal escapes and a forged row, then an
    A-ABORT (review38scu #5, #6)."""

    def __init__(self) -> None:
        super().__init__("RUDE")

    def handle(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = "1.2.3.4"
        ds.PatientName = "\x1b]0;PWNED\x07\x1b[31mRED\r\nFAKE ROW"
        yield 0xFF00, ds
        event.assoc.abort()


def test_what_arrived_before_an_abort_is_printed_on_one_line_each(capsys) -> None:
    with _RudeSCP() as port:
        argv = ["find", "127.0.0.1", str(port), "--aec", "RUDE", "-k", "PatientName"]
        assert main(argv) == 5
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "StudyInstanceUID  PatientName",
        "1.2.3.4           \\x1b]0;PWNED\\x07\\x1b[31mRED\\r\\nFAKE ROW",
    ]
    assert err == "dicomstore: association aborted by the peer (service user)\n"


def test_a_match_whose_identifier_is_no_data_set_is_skipped_and_exits_1(capsys) -> None:
    """review38scu #7: a Study Instance UID cut short printed as '1.2', exit 0."""
    from tests.services.fake_scp import FakeSCP, find_answers

    from dicomstore.services.conversion import encode_dataset

    good = Dataset()
    good.QueryRetrieveLevel = "STUDY"
    good.StudyInstanceUID = "1.2.3.4.5"
    data = encode_dataset(good, "1.2.840.10008.1.2.1")  # (the syntax the fake accepts)
    with FakeSCP(find_answers([data, data[:-5], b"\xff" * 37])) as port:
        assert main(["find", "127.0.0.1", str(port), "-k", "StudyInstanceUID"]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == ["StudyInstanceUID", "1.2.3.4.5", "(1 match)"]
    assert err.splitlines()[-1] == (
        "dicomstore: 2 match(es) skipped: their Identifier is not a data set (the log says why)"
    )
