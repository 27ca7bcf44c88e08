"""A replace (``--on-duplicate replace``) puts the new version at the instance's other
place (``layout.other_place``) and removes the old file after its COMMIT: the file
a committed row names is never written over before a COMMIT (review50 #1, #2).
Run on both engines (conftest)."""

from __future__ import annotations

from pathlib import Path

import pytest
from archive_testlib import dataset, dcm_files, die, store, stored_dataset
from test_archive_engine import _failing_commit

from dicomstore.archive import SUCCESS, Archive, layout
from dicomstore.archive.reader import ArchiveReader
from dicomstore.archive.removal import remove

UID = "1.2.3.4.5.6.81"
BASE = f"1.2.3.4/1.2.3.4.5/{UID}.dcm"
OTHER = f"1.2.3.4/1.2.3.4.5/{UID}.r.dcm"


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in dcm_files(root) if ".tmp" not in p.parts)


def test_the_two_places_take_turns(tmp_path: Path) -> None:
    with Archive(tmp_path / "root", fsync=False, on_duplicate="replace") as archive:
        for n, expected in enumerate([BASE, OTHER, BASE, OTHER]):
            version = dataset(UID, patient_name=f"Version{n}")
            outcome = store(archive, version, sop_uid=UID)
            assert outcome.status == SUCCESS
            assert outcome.instance["path"] == expected
            assert _files(archive.root) == [expected]
            assert stored_dataset(archive.root / expected) == version
        assert archive.check() == []
        archive.reindex()
        assert [r["path"] for r in archive.instances()] == [OTHER]
        assert remove(archive.root, UID).files_removed == 1
        assert _files(archive.root) == []


def test_a_file_left_at_the_other_place_is_removed_by_a_delete(tmp_path: Path) -> None:
    """(a crash's leftover, never committed: ``removal.leftovers``)"""
    with Archive(tmp_path / "root", fsync=False) as archive:
        assert store(archive, dataset(UID), sop_uid=UID).status == SUCCESS
        (archive.root / OTHER).write_bytes((archive.root / BASE).read_bytes())
        assert archive.check() == [f"{OTHER}: not indexed"]
        assert remove(archive.root, UID).instances == 1
        assert remove(archive.root, UID).leftovers_removed == 1  # (no row left: its files)
        assert _files(archive.root) == []


def test_a_file_at_neither_place_is_left_out_by_reindex(tmp_path: Path) -> None:
    with Archive(tmp_path / "root", fsync=False) as archive:
        assert store(archive, dataset(UID), sop_uid=UID).status == SUCCESS
        stray = f"1.2.3.4/1.2.3.4.5/{UID}.x.dcm"
        (archive.root / BASE).rename(archive.root / stray)
        left_out: list[str] = []
        archive.reindex(left_out)
        assert left_out == [
            f"{stray}: left out: not where the archive files its instance ({BASE}):"
            " move it there, or store it with `dicomstore send`"
        ]


@pytest.mark.parametrize("commits", [False, True], ids=["not-committed", "committed"])
@pytest.mark.parametrize("settled_by", ["the next batch", "a start"])
def test_a_replace_in_doubt_never_takes_the_acknowledged_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, commits: bool, settled_by: str
) -> None:
    """review50 #1: its COMMIT not read back (the index unreachable), it was answered
    A700 and its trace dropped, after its rename over the acknowledged file: a start
    then threw the old file's ``.bak`` away. Now each file stays where it is, the
    index's row names one of them, and the rows settle the rest (before the next
    batch, or at a start)."""
    root = tmp_path / "root"
    first, second = dataset(UID, patient_name="First"), dataset(UID, patient_name="Second")
    archive = Archive(root, fsync=False, on_duplicate="replace")
    try:
        assert store(archive, first, sop_uid=UID).status == SUCCESS
        _failing_commit(archive, monkeypatch, commits=commits, then_unreadable=True)
        assert store(archive, second, sop_uid=UID).status == 0xA700
        served = second if commits else first
        (row,) = ArchiveReader(root).instances()
        assert stored_dataset(root / row["path"]) == served
        assert _files(root) == [BASE, OTHER]
        if settled_by == "the next batch":
            assert store(archive, dataset("1.2.3.4.5.6.82"), sop_uid="1.2.3.4.5.6.82").status == 0
            assert archive.check() == []
    finally:
        if settled_by == "a start":
            die(archive)  # (a close would settle them as the next batch does)
        archive.close()
    with Archive(root, fsync=False) as again:
        assert again.check() == []
        later = ["1.2.3.4/1.2.3.4.5/1.2.3.4.5.6.82.dcm"] if settled_by == "the next batch" else []
        assert _files(root) == sorted([OTHER if commits else BASE, *later])
        assert stored_dataset(again.path_of(UID)) == served  # type: ignore[arg-type]
        assert not list(again.tmp_dir.rglob("*"))


def test_the_other_place_of_each_name() -> None:
    assert layout.other_place(BASE) == OTHER
    assert layout.other_place(OTHER) == BASE
    assert layout.is_place(OTHER, "1.2.3.4", "1.2.3.4.5", UID)
    assert not layout.is_place(OTHER, "1.2.3.4", "1.2.3.4.6", UID)


def test_copies_out_of_the_archive_are_named_as_it_files_them(tmp_path: Path) -> None:
    """`export` and the ZIPs of WADO-RS and the browse page name a replaced instance's
    copy <sop>.dcm, not by its place (<sop>.r.dcm)."""
    from dicomstore.cli.access import main
    from dicomstore.http.zipstream import instance_files

    root = tmp_path / "root"
    with Archive(root, fsync=False, on_duplicate="replace") as archive:
        for name in ("First", "Second"):
            assert store(archive, dataset(UID, patient_name=name), sop_uid=UID).status == 0
    assert main(["export", UID, str(tmp_path / "out"), "--storage", str(root)]) == 0
    assert _files(tmp_path / "out") == [BASE]
    reader = ArchiveReader(root)
    assert [name for name, _ in instance_files(reader, reader.instances())] == [BASE]


def test_an_instance_selected_before_a_replace_is_sent_as_it_is_now(tmp_path: Path) -> None:
    """review51 #1: C-GET, C-MOVE and forwarding read the key they selected: its file
    gone with the replace, the sub-operation failed ('cannot read')."""
    from dicomstore.services.retrieve import Selected, scan_selected

    root = tmp_path / "root"
    with Archive(root, fsync=False, on_duplicate="replace") as archive:
        assert store(archive, dataset(UID, patient_name="First"), sop_uid=UID).status == 0
        reader = ArchiveReader(root)
        (row,) = reader.instances()
        keys = ("sop_instance_uid", "sop_class_uid", "transfer_syntax_uid", "path", "study_uid")
        item = Selected(*(row[k] for k in keys), reader)  # type: ignore[arg-type]
        assert store(archive, dataset(UID, patient_name="Second"), sop_uid=UID).status == 0
        assert scan_selected(item).path == root / OTHER
        assert remove(root, UID).instances == 1
        with pytest.raises(Exception, match="cannot read"):  # (deleted: not sent, as before)
            scan_selected(item)
