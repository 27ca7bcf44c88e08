"""``--min-free`` is checked again while a data set arrives (services/storage.py;
review38mem N3: an unfinished C-STORE could fill the disk up to --max-instance-size,
unlimited by default, for up to the operation timeout)."""

from __future__ import annotations

from pathlib import Path

from dicomstore.services import storage
from dicomstore.services.folder_store import FolderStore
from dicomstore.services.storage import StoreLimits, StoreService

CT = "1.2.840.10008.5.1.4.1.1.2"


def test_a_data_set_arriving_past_the_free_space_floor_is_a700(tmp_path: Path, monkeypatch):
    service = StoreService(FolderStore(tmp_path, fsync=False), limits=StoreLimits(0, 1))
    caller = service.admit("C-STORE", "MODALITY", "DICOMSTORE", "127.0.0.1")
    storing = service.begin(
        caller,
        sop_class_uid=CT,
        sop_instance_uid="1.2.3.4",
        transfer_syntax_uid="1.2.840.10008.1.2",
    )
    assert storing.result is None and storing.free_floor is not None  # (free then)
    storing.next_free_check = 100
    storing.write(b"\0" * 60)
    assert storing.result is None
    monkeypatch.setattr(storage, "free_bytes", lambda _root: 0)  # (the disk filled up)
    storing.write(b"\0" * 60)
    assert storing.result is not None and storing.result.status == 0xA700
    assert ": only 0 B free (120 B in)" in (storing.result.comment or "")
    assert storing.sink is None  # (what follows is discarded)
