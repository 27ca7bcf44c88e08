"""A stored copy read through its indexed size and digest (archive/checked.py): the
stream of an intact copy gives its bytes unchanged; a damaged one raises DamagedCopy
on the read that would give its last bytes (or at its open, for a size that differs),
whatever the sizes of the reads and the seeks."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from tests.archive.archive_testlib import dataset, in_meta, store

from dicomstore.archive import Archive
from dicomstore.archive.checked import DamagedCopy
from dicomstore.archive.reader import ArchiveReader

UID = "1.2.3.4.5.6.7"


def _stored(tmp_path: Path) -> tuple[ArchiveReader, dict, bytes]:
    root = tmp_path / "root"
    with Archive(root, fsync=False) as archive:
        store(archive, dataset(patient_name="Checked^Read", pixels=300_000))
    reader = ArchiveReader(root)
    row = reader.instance(UID)
    return reader, row, reader.path(row).read_bytes()


def _read_all(stream, size: int) -> bytes:
    out = []
    while block := stream.read(size):
        out.append(block)
    return b"".join(out)


@pytest.mark.parametrize("size", [1, 4096, 65536, 1 << 20, -1])
def test_an_intact_copy_reads_unchanged(tmp_path: Path, size: int) -> None:
    reader, row, whole = _stored(tmp_path)
    with reader.open_checked(row) as f:
        assert _read_all(f, size) == whole
        assert f.read(10) == b""  # (judged once: still nothing to say)


def test_seeks_and_rereads_keep_the_digest_running(tmp_path: Path) -> None:
    reader, row, whole = _stored(tmp_path)
    with reader.open_checked(row) as f:
        f.seek(200_000)  # (the bytes skipped are hashed)
        assert f.read(100) == whole[200_000:200_100]
        f.seek(1000)  # (back: read again, not hashed twice)
        assert f.read(5000) == whole[1000:6000]
        f.seek(-10, os.SEEK_END)
        assert f.read() == whole[-10:]
    with reader.open_checked(row) as f:
        f.verify()


def _flip(path: Path, at: int) -> None:  # (at < 0: from the end)
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("size", [4096, 1 << 20, -1])
def test_a_flipped_bit_is_raised_before_the_last_bytes(
    tmp_path: Path, size: int, caplog: pytest.LogCaptureFixture
) -> None:
    reader, row, whole = _stored(tmp_path)
    _flip(reader.path(row), len(whole) // 2)
    given = []
    with caplog.at_level(logging.WARNING), reader.open_checked(row) as f:
        with pytest.raises(DamagedCopy, match="differs from what was stored"):
            while block := f.read(size):
                given.append(block)
        with pytest.raises(DamagedCopy):  # (and again: its verdict is kept)
            f.read(size)
    assert len(b"".join(given)) < len(whole)  # the last bytes never given
    assert f"archive damage: instance {UID}" in caplog.text


def test_a_file_of_another_size_is_refused_at_its_open(tmp_path: Path) -> None:
    reader, row, whole = _stored(tmp_path)
    reader.path(row).write_bytes(whole[:-2])
    with pytest.raises(DamagedCopy, match=f"file size {len(whole) - 2}, stored {len(whole)}"):
        reader.open_checked(row)
    reader.path(row).write_bytes(whole + b"\0\0")
    with pytest.raises(DamagedCopy, match="stored"):
        reader.open_checked(row)


def test_a_file_cut_after_its_open_is_raised_at_its_end(tmp_path: Path) -> None:
    reader, row, whole = _stored(tmp_path)
    f = reader.open_checked(row)
    with f, open(reader.path(row), "r+b") as w:
        w.truncate(len(whole) - 100)  # (after the open's size check)
        with pytest.raises(DamagedCopy, match=f"ends at byte {len(whole) - 100}"):
            _read_all(f, 65536)


def test_a_damaged_meta_is_damage(tmp_path: Path) -> None:
    reader, row, whole = _stored(tmp_path)
    damaged = bytearray(whole)
    damaged[128:132] = b"XXXX"  # (no DICM prefix: no data set to find)
    reader.path(row).write_bytes(bytes(damaged))
    with pytest.raises(DamagedCopy, match="File Meta Information"):
        reader.open_checked(row)


def test_verify_reads_the_rest(tmp_path: Path) -> None:
    reader, row, whole = _stored(tmp_path)
    _flip(reader.path(row), len(whole) - 1)
    with reader.open_checked(row) as f:
        f.read(10)
        with pytest.raises(DamagedCopy):
            f.verify()


def _replaced_twice(tmp_path: Path, second: bytes, third: bytes) -> tuple[ArchiveReader, dict]:
    """The row of an instance as read before two replaces: the third version is filed
    at the key the first had (a replace alternates two keys)."""
    root = tmp_path / "root"
    with Archive(root, fsync=False, on_duplicate="replace") as archive:
        store(archive, dataset(patient_name="First^V", pixels=3000))
        reader = ArchiveReader(root)
        first = reader.instance(UID)
        for data in (second, third):
            assert store(archive, data).status == 0
    assert reader.instance(UID)["path"] == first["path"]  # (back at the first key)
    return reader, first


@pytest.mark.parametrize("pixels", [3000, 3002])  # (the same size; another)
def test_a_version_filed_at_the_same_key_since_is_no_damage(
    tmp_path: Path, pixels: int, caplog: pytest.LogCaptureFixture
) -> None:
    """review104 F1: replaced twice (or deleted and stored again) between a search and
    its read, the version now at the key is read against the row read before: it was
    'archive damage', an aborted C-MOVE, a cut WADO-RS answer; it is that version,
    judged against the row the index has now."""
    third = dataset(patient_name="Third^V", pixels=pixels)
    reader, before = _replaced_twice(tmp_path, dataset(patient_name="Second", pixels=3000), third)
    with caplog.at_level(logging.WARNING), reader.open_checked(before) as f:
        data = f.read()
    assert data.endswith(third) and "archive damage" not in caplog.text


def test_a_version_filed_since_is_still_judged(tmp_path: Path) -> None:
    third = dataset(patient_name="Third^V", pixels=3000)
    reader, before = _replaced_twice(tmp_path, dataset(patient_name="Second", pixels=3000), third)
    _flip(reader.path(before), -5)
    with reader.open_checked(before) as f, pytest.raises(DamagedCopy, match="differs"):
        f.read()


def test_a_file_meta_that_names_another_syntax_is_damage(tmp_path: Path) -> None:
    """review104 F2: the digest covers the data set only; a flipped bit in the File Meta
    Information (a JPEG 2000 lossless relabelled lossy) went out whole."""
    reader, row, whole = _stored(tmp_path)
    explicit, big = b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.2.2\0"
    reader.path(row).write_bytes(in_meta(whole, explicit, big))
    said = "File Meta Information names transfer syntax 1.2.840.10008.1.2.2; stored"
    with pytest.raises(DamagedCopy, match=said):
        reader.open_checked(row)


def test_a_file_meta_that_names_another_instance_is_as_stored(tmp_path: Path) -> None:
    """sweep106: a C-STORE whose command names another SOP Instance than its data set
    (DCMTK storescu takes it from a file's meta) is filed by its data set's UID, its
    meta keeping the command's: intact as stored, it was taken for damage."""
    reader, row, whole = _stored(tmp_path)
    reader.path(row).write_bytes(in_meta(whole, UID.encode(), b"1.2.3.4.5.6.8"))
    with reader.open_checked(row) as f:
        assert f.read() == in_meta(whole, UID.encode(), b"1.2.3.4.5.6.8")


def test_requests_for_a_version_being_read_wait_for_that_read(tmp_path: Path) -> None:
    """review113 L4: a viewer's first requests for frames of one file each read it whole
    (6 to 8 reads for 16 at once); those that come while it is read wait for that read."""
    import threading

    from dicomstore.archive.checked import CheckedOnce

    reader, row, _data = _stored(tmp_path)
    entered, go = threading.Event(), threading.Event()
    opened: list[int] = []

    def slow_open(row, local):
        opened.append(1)
        entered.set()
        assert go.wait(30)
        return reader.open_checked(row, local)

    once, local = CheckedOnce(), reader.local_path(row)
    first = threading.Thread(target=once.check, args=(row, local, slow_open))
    first.start()
    assert entered.wait(30)
    others = [threading.Thread(target=once.check, args=(row, local, slow_open)) for _ in range(7)]
    for thread in others:
        thread.start()
    go.set()
    for thread in (first, *others):
        thread.join(30)
    assert opened == [1]
