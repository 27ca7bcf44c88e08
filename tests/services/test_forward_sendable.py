"""What of a forwarding batch is sent (services/forward_sendable.py): in the index, its
file there and intact; a cause that may pass is no damage."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from tests.archive.archive_testlib import dataset, store

from dicomstore.archive import Archive, digests
from dicomstore.archive.reader import ArchiveReader
from dicomstore.services import forward_sendable
from dicomstore.services.forward_queue import Entry

UID = "1.2.77.5.1"


def _entry() -> Entry:
    return Entry(1, "DEST", UID, "", 0)


def test_a_file_unreadable_for_now_is_sent_not_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review102 M3: a read error of the check before the send (out of descriptors,
    EIO, a stale NFS handle) made a permanent 'archive damage' failure; it used to fail
    the batch's read, tried again after a back-off. It is sent: the send's read decides."""
    root = tmp_path / "archive"
    with Archive(root, fsync=False) as archive:
        assert store(archive, dataset(UID), sop_uid=UID).status == 0

    def unreadable(recorded: str, path: object) -> bool:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(digests, "matches", unreadable)
    found, gone, damaged = forward_sendable.sendable(ArchiveReader(root), [_entry()])
    assert [item.sop_instance_uid for _e, item in found] == [UID]
    assert gone == damaged == []


def test_a_replace_committed_during_the_check_is_no_damage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review102 L1: the rows were read, a replace committed (another digest), then the
    file was hashed: 'archive damage' for an instance stored all along. A damaged
    verdict is judged again on the row read anew."""
    root = tmp_path / "archive"
    with Archive(root, fsync=False, on_duplicate="replace") as archive:
        assert store(archive, dataset(UID, pixels=512), sop_uid=UID).status == 0
        reader = ArchiveReader(root)
        before = forward_sendable._rows(reader, [UID])
        assert store(archive, dataset(UID, pixels=514), sop_uid=UID).status == 0
    real = forward_sendable._rows
    reads = iter([before])
    monkeypatch.setattr(
        forward_sendable, "_rows", lambda r, uids: next(reads, None) or real(r, uids)
    )
    found, gone, damaged = forward_sendable.sendable(reader, [_entry()])
    assert [item.sop_instance_uid for _e, item in found] == [UID]
    assert gone == damaged == []
