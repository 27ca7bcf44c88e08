"""``get -od DIR``'s folder of files (services/folder_store.py): names, and links left
in a shared folder (review38scu #2, #14)."""

from __future__ import annotations

import os
from pathlib import Path

from dicomstore.services.folder_store import FolderStore

CT = "1.2.840.10008.5.1.4.1.1.2"
IVR = "1.2.840.10008.1.2"


def receive(store: FolderStore, uid: str, data: bytes = b"\0" * 8) -> None:
    sink = store.begin(sop_class_uid=CT, sop_instance_uid=uid, transfer_syntax_uid=IVR)
    sink.write(data)
    sink.commit()


def test_links_left_in_the_folder_are_replaced_never_written_through(tmp_path: Path) -> None:
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_text("precious data\n")
    for name in ("1.2.3.1.dcm.part", "1.2.3.1.dcm"):  # (the old .part name, the final one)
        (out / name).symlink_to(victim)
    receive(FolderStore(out, fsync=False), "1.2.3.1")
    assert victim.read_text() == "precious data\n"
    final = out / "1.2.3.1.dcm"
    assert not final.is_symlink() and final.read_bytes().endswith(b"\0" * 8)
    assert sorted(os.listdir(out)) == ["1.2.3.1.dcm", "1.2.3.1.dcm.part"]  # (no .part left)


def test_uids_that_are_not_uids_get_names_of_their_own(tmp_path: Path) -> None:
    store = FolderStore(tmp_path, fsync=False)
    odd = ["1.2.3/4", "1.2.3_4", "1.2.3\\4", ".", "..", "../../escape"]
    for uid in odd:
        receive(store, uid)
    names = sorted(os.listdir(tmp_path))
    assert len(names) == len(odd)  # none overwrote another
    assert all(n.startswith("x-") and n.endswith(".dcm") for n in names)
    receive(store, "1.2.3.4 ")  # a valid one (its padding dropped) keeps its name
    assert (tmp_path / "1.2.3.4.dcm").is_file()
    receive(store, "1.2.03.4")  # and one with a leading zero (review39 #14)
    assert (tmp_path / "1.2.03.4.dcm").is_file()


def test_an_aborted_instance_leaves_no_part_file(tmp_path: Path) -> None:
    store = FolderStore(tmp_path, fsync=False)
    sink = store.begin(sop_class_uid=CT, sop_instance_uid="1.2.3.5", transfer_syntax_uid=IVR)
    sink.write(b"x")
    sink.abort()
    assert os.listdir(tmp_path) == []
