"""`dicomstore move` and `dicomstore get` (issue 15, PS3.4 C.4.2.2, C.4.3.2) against DCMTK
dcmqrscp: every level, the counts, A801, a sub-operation without a context (B000 and
the Failed SOP Instance UID List), C-GET into a folder and into an archive through
the store service, --json."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from tests.conftest import dcmtk_storescp, free_port
from tests.services.dcmqrscp_testlib import AET, dcmqrscp, layout_files
from tests.services.query_testlib import sop_uids

from dicomstore.archive.reader import ArchiveReader
from dicomstore.cli import main

STUDY_1 = sop_uids("1.2.9.1.1") + sop_uids("1.2.9.1.2")  # CT x3, MR x2


@pytest.fixture(scope="module")
def peers(tmp_path_factory) -> Iterator[tuple[int, Path, dict[str, Path]]]:
    """dcmqrscp holding query_testlib.LAYOUT, knowing DCMTK storescp --bit-preserving as
    DEST; (dcmqrscp's port, DEST's folder, the original files by SOP Instance UID)."""
    folder = tmp_path_factory.mktemp("retrieve")
    files = layout_files(folder)
    dest_port = free_port()
    received = folder / "dest"
    with (
        dcmtk_storescp(dest_port, received, "--bit-preserving"),
        dcmqrscp(folder / "qr", files, {"DEST": ("127.0.0.1", dest_port)}) as port,
    ):
        yield port, received, {pydicom.dcmread(f).SOPInstanceUID: f for f in files}


def command(name: str, port: int, *args: str) -> list[str]:
    return [name, "127.0.0.1", str(port), "--aec", AET, "--log-level", "error", *args]


def result_of(capsys, argv: list[str], code: int = 0) -> dict:
    assert main(argv) == code, capsys.readouterr()
    return json.loads(capsys.readouterr().out)


def received_uids(folder: Path) -> set[str]:
    return {pydicom.dcmread(p).SOPInstanceUID for p in folder.iterdir() if p.is_file()}


def same_dataset(path: Path, original: Path) -> bool:
    got, want = pydicom.dcmread(path), pydicom.dcmread(original)
    return got == want and got.file_meta.MediaStorageSOPInstanceUID == want.SOPInstanceUID


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-k", "StudyInstanceUID=1.2.9.1"], STUDY_1),
        (["-L", "SERIES", "-k", "StudyInstanceUID=1.2.9.3", "-k", "SeriesInstanceUID=1.2.9.3.1"],
         sop_uids("1.2.9.3.1")),
        (["-P", "-L", "IMAGE", "-k", "PatientID=PID1", "-k", "StudyInstanceUID=1.2.9.2",
          "-k", "SeriesInstanceUID=1.2.9.2.1", "-k", "SOPInstanceUID=1.2.9.2.1.1"],
         ["1.2.9.2.1.1"]),
    ],
)  # fmt: skip
def test_move_sends_to_the_destination(peers, capsys, args, expected) -> None:
    port, received, _ = peers
    before = received_uids(received)
    result = result_of(capsys, command("move", port, "--dest", "DEST", "--json", *args))
    assert (result["status"], result["completed"], result["failed"]) == ("0000", len(expected), 0)
    assert received_uids(received) - before == set(expected) - before


def test_move_text_output(peers, capsys) -> None:
    port, _, _ = peers
    assert main(command("move", port, "--dest", "DEST", "-k", "StudyInstanceUID=1.2.9.4")) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "C-MOVE to DEST: 0000 Success: sub-operations complete, no failures",
        "completed 1, failed 0, warning 0",
    ]


def test_a_move_of_nothing_says_so(peers, capsys) -> None:
    """review45 L18: 0000 with nothing moved (standard), exit 0, not a word."""
    port, _, _ = peers
    assert main(command("move", port, "--dest", "DEST", "-k", "StudyInstanceUID=9.9.9")) == 0
    said = capsys.readouterr()
    assert "completed 0, failed 0, warning 0" in said.out
    assert said.err == "dicomstore: C-MOVE to DEST: no instance matched the keys\n"


def test_move_to_an_unknown_destination_is_a801(peers, capsys) -> None:
    port, _, _ = peers
    argv = command("move", port, "--dest", "NOWHERE", "--json", "-k", "StudyInstanceUID=1.2.9.1")
    result = result_of(capsys, argv, code=1)
    assert result["status"] == "A801" and result["completed"] == 0


def test_get_into_a_folder(peers, capsys, tmp_path: Path) -> None:
    port, _, originals = peers
    out = tmp_path / "got"
    result = result_of(capsys, command("get", port, "-od", str(out), "--json",
                                       "-k", "StudyInstanceUID=1.2.9.1"))  # fmt: skip
    assert (result["status"], result["completed"], result["failed"]) == ("0000", 5, 0)
    files = sorted(out.iterdir())
    assert [p.name for p in files] == sorted(f"{uid}.dcm" for uid in STUDY_1)
    assert all(same_dataset(p, originals[p.stem]) for p in files)


def test_get_without_a_context_for_a_class_counts_failures(peers, capsys, tmp_path) -> None:
    port, _, _ = peers
    mr_only = ["--sop-class", "1.2.840.10008.5.1.4.1.1.4"]
    argv = command("get", port, "-od", str(tmp_path), *mr_only, "--json",
                   "-k", "StudyInstanceUID=1.2.9.1")  # fmt: skip
    result = result_of(capsys, argv, code=1)
    assert result["status"] == "B000"  # sub-operations complete, one or more failures
    assert (result["completed"], result["failed"]) == (2, 3)
    assert sorted(result["failed_sop_instance_uids"]) == sop_uids("1.2.9.1.1")
    assert received_uids(tmp_path) == set(sop_uids("1.2.9.1.2"))


def test_get_says_why_the_scp_may_not_send_what_it_failed(peers, capsys, tmp_path) -> None:
    """review48 L4: 'failed: UID' was all: the SCP cannot send a class (or syntax) that
    has no context here; sub-operations we refused ourselves are no such case."""
    port, _, _ = peers
    mr_only = ["--sop-class", "1.2.840.10008.5.1.4.1.1.4"]
    argv = command("get", port, "-od", str(tmp_path), *mr_only, "-k", "StudyInstanceUID=1.2.9.1")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "the SCP failed 3 sub-operation(s) without sending them" in err
    assert "--sop-class" in err and "move" in err
    argv = command("get", port, "-od", str(tmp_path / "small"), "--max-instance-size", "100",
                   "-k", "StudyInstanceUID=1.2.9.1")  # fmt: skip
    assert main(argv) == 1  # (each answered A700 by us: sent, refused here)
    assert "without sending" not in capsys.readouterr().err


def test_get_into_an_archive_through_the_store_service(peers, capsys, tmp_path) -> None:
    port, _, originals = peers
    root = tmp_path / "archive"
    argv = command("get", port, "--storage", str(root), "-k", "StudyInstanceUID=1.2.9.1\\1.2.9.4")
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines()[1] == "completed 6, failed 0, warning 0"
    rows = ArchiveReader(root).instances()
    assert sorted(r["sop_instance_uid"] for r in rows) == sorted([*STUDY_1, "1.2.9.4.1.1"])
    assert {r["calling_ae"] for r in rows} == {AET}  # the C-GET SCP stored them
    assert all(same_dataset(root / r["path"], originals[r["sop_instance_uid"]]) for r in rows)


@pytest.mark.parametrize(
    ("limit", "into"),
    [(["--max-instance-size", "100"], "-od"), (["--min-free", "100000T"], "--storage")],
)
def test_get_stores_within_serves_limits(peers, capsys, tmp_path, limit, into) -> None:
    port, _, _ = peers
    out = tmp_path / "into"
    argv = command("get", port, into, str(out), *limit, "--json", "-k", "StudyInstanceUID=1.2.9.1")
    result = result_of(capsys, argv, code=1)
    assert (result["completed"], result["failed"]) == (0, 5)  # each answered A700
    assert sorted(result["failed_sop_instance_uids"]) == sorted(STUDY_1)
    assert not out.exists() or not any(out.rglob("*.dcm"))


def test_get_into_an_archive_takes_the_server_s_policies_and_audit_log(
    peers, capsys, tmp_path, monkeypatch
) -> None:
    """review54 F1, F2: `get --storage` opened the archive with the built-in policies
    (a server on --on-duplicate reject answered C111, get B000) and wrote no audit
    record. It takes serve's options, from flags or DICOMSTORE_* as serve does."""
    port, _, _ = peers
    root, audit = tmp_path / "archive", tmp_path / "audit.jsonl"
    keys = ["--json", "-k", "StudyInstanceUID=1.2.9.4"]
    assert main(command("get", port, "--storage", str(root), *keys)) == 0
    capsys.readouterr()
    monkeypatch.setenv("DICOMSTORE_ON_DUPLICATE", "reject")
    argv = command("get", port, "--storage", str(root), "--audit-log", str(audit), *keys)
    result = result_of(capsys, argv, code=1)
    assert (result["completed"], result["failed"]) == (0, 1)  # C111 here: a failure
    (record,) = [json.loads(line) for line in audit.read_text().splitlines()]
    assert (record["event"], record["status"], record["service"]) == ("instance", "C111", "C-STORE")
    monkeypatch.setenv("DICOMSTORE_ON_DUPLICATE", "keep")
    assert result_of(capsys, command("get", port, "--storage", str(root), *keys))["ok"]


def test_a_get_that_lost_audit_records_exits_1(peers, capsys, caplog, tmp_path) -> None:
    """Every instance stored, but the audit log could not be written (/dev/full):
    an ERROR line with the records lost, and exit 1, not 0 (cli/audit_options.audited_exit)."""
    port, _, _ = peers
    root, audit = tmp_path / "archive", tmp_path / "audit.jsonl"
    audit.symlink_to("/dev/full")
    keys = ["--json", "-k", "StudyInstanceUID=1.2.9.4"]
    argv = command("get", port, "--storage", str(root), "--audit-log", str(audit), *keys)
    assert main(argv) == 1
    said = capsys.readouterr()
    assert (json.loads(said.out)["completed"], json.loads(said.out)["failed"]) == (1, 0)
    assert "1 records not written" in caplog.text


def test_get_needs_somewhere_to_store(peers, capsys) -> None:
    port, _, _ = peers
    assert main(command("get", port, "-k", "StudyInstanceUID=1.2.9.1")) == 2
    assert "-od DIR or --storage DIR" in capsys.readouterr().err


def test_get_into_a_file_says_so(peers, capsys, tmp_path) -> None:
    """review35b F13: "cannot open the archive afile": -od is a folder of files."""
    port, _, _ = peers
    afile = tmp_path / "afile"
    afile.write_text("")
    assert main(command("get", port, "-od", str(afile), "-k", "StudyInstanceUID=1.2.9.1")) == 1
    assert capsys.readouterr().err == f"dicomstore: cannot store into {afile}: File exists\n"


def test_a_get_the_peer_aborts_gives_the_counts_so_far(peers, capsys, tmp_path) -> None:
    """review48 M2: a peer's abort in the middle of a C-GET gave one line and no counts
    (with --json, no object), though instances were stored already."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET

    _, _, originals = peers
    first, second = (pydicom.dcmread(originals[uid]) for uid in STUDY_1[:2])

    def on_get(event):
        yield 2
        yield 0xFF00, first
        event.assoc.abort()
        yield 0xFF00, second

    ae = AE(ae_title=AET)
    ae.add_supported_context(GET)
    for ds in (first, second):
        ae.add_supported_context(ds.SOPClassUID, scu_role=True, scp_role=True)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_GET, on_get)])
    try:
        port = server.server_address[1]
        argv = command("get", port, "-od", str(tmp_path / "got"), "-k", "StudyInstanceUID=1.2.9.1")
        assert main(argv) == 5
    finally:
        server.shutdown()
    said = capsys.readouterr()
    assert said.out == (
        "C-GET: no final response; so far completed 1, failed 0, warning 0\n"
        "received here: stored 1, failed 0\n"
    )
    assert said.err == "dicomstore: association aborted by the peer (service user)\n"
    assert [p.name for p in (tmp_path / "got").rglob("*.dcm")] == [f"{first.SOPInstanceUID}.dcm"]
