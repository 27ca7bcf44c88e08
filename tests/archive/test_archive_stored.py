"""Reading a stored Deflated Explicit VR Little Endian data set (PS3.5 A.5,
``archive/stored.py``): its large values are left unread in the inflated copy, as
those of a data set never deflated are in the file, and read from there on access
(review53 #3); the copy lives as long as whoever reads from it."""

from __future__ import annotations

import gc
import os
import tracemalloc
import zlib
from pathlib import Path

from pydicom.dataelem import RawDataElement
from tests.archive.archive_testlib import dataset, store

from dicomstore import uids
from dicomstore.archive import Archive
from dicomstore.archive.stored import opened, read_file_header, read_stored

MiB = 1 << 20
SOP = "1.2.9.79.1.1"
TEXT = 0x0040A160  # Text Value, UT
LONG = b"abcdefgh" * (2 * MiB)  # 16 MiB


def _open_files() -> int:
    """Descriptors open now, after a collection: the garbage earlier tests left (a
    server's sockets, files) closes here, not between two counts of a test."""
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


def _archive(tmp_path: Path) -> tuple[Archive, str]:
    data = dataset(SOP, study="1.2.9.79", series="1.2.9.79.1", extra={TEXT: ("UT", LONG)})
    z = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = z.compress(data) + z.flush()
    archive = Archive(tmp_path / "archive", fsync=False)
    outcome = store(archive, deflated, sop_uid=SOP, ts=uids.DEFLATED_EXPLICIT_VR_LE, chunk=MiB)
    assert outcome.status == 0
    (row,) = archive.instances(sop_instance_uid=SOP)
    return archive, row["path"]


def test_a_large_value_is_left_unread_and_read_from_the_copy(tmp_path: Path) -> None:
    archive, key = _archive(tmp_path)
    before = _open_files()
    tracemalloc.start()
    try:
        found = read_stored(archive.storage, key, uids.DEFLATED_EXPLICIT_VR_LE)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MiB, f"peak {peak / MiB:.1f} MiB"
    raw = found.dataset.get_item(TEXT, keep_deferred=True)
    assert isinstance(raw, RawDataElement) and raw.value is None and raw.length == len(LONG)
    assert found.dataset.StudyDescription == "Head"
    assert found.dataset[TEXT].value.encode() == LONG  # (on access: from the copy)
    assert _open_files() == before + 1  # the copy, held by the data set
    del found, raw
    assert _open_files() == before
    archive.close()


def test_the_copy_is_let_go_at_once_when_nothing_was_left_unread(tmp_path: Path) -> None:
    archive, key = _archive(tmp_path)
    before = _open_files()
    found = read_stored(archive.storage, key, uids.DEFLATED_EXPLICIT_VR_LE, defer_size=None)
    assert found.dataset[TEXT].value.encode() == LONG
    assert _open_files() == before
    archive.close()


def test_opened_reads_them_from_its_copy_while_the_block_lasts(tmp_path: Path) -> None:
    archive, key = _archive(tmp_path)
    before = _open_files()
    syntax = uids.DEFLATED_EXPLICIT_VR_LE
    with opened(archive.storage, key, syntax, inflated_limit=64 * MiB) as (found, copy):
        assert copy is not None
        raw = found.dataset.get_item(TEXT, keep_deferred=True)
        assert isinstance(raw, RawDataElement) and raw.value is None
        copy.seek(raw.value_tell)
        assert copy.read(8) == LONG[:8]
        assert found.dataset[TEXT].value.encode() == LONG
    assert _open_files() == before
    archive.close()


def test_the_file_header_names_its_meta_and_defers_as_asked(tmp_path: Path) -> None:
    archive, key = _archive(tmp_path)
    ds = read_file_header(archive.storage, key, inflated_limit=64 * MiB, defer_size=1024)
    assert ds.file_meta.TransferSyntaxUID == uids.DEFLATED_EXPLICIT_VR_LE
    assert ds.get_item(TEXT, keep_deferred=True).value is None
    assert ds.SOPInstanceUID == SOP and ds[TEXT].value.encode() == LONG
    archive.close()
