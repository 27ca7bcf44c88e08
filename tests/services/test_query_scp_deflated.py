"""C-FIND return keys read from a stored Deflated Explicit VR Little Endian instance
(PS3.5 A.5): from its inflated copy, a value too long for an answer left unread there
(review53 #3: pydicom inflated the whole data set in memory, 375 MiB for a 192 MiB key)."""

from __future__ import annotations

import gc
import tracemalloc
import zlib
from pathlib import Path

from tests.archive.archive_testlib import dataset, store

from dicomstore import uids
from dicomstore.archive import Archive
from dicomstore.archive.reader import ArchiveReader
from dicomstore.services.query_scp import MAX_RETURNED_VALUE, _header

MiB = 1 << 20
SOP = "1.2.9.78.1.1"
COMMENTS, DESCRIPTION = 0x0040A160, 0x00081030  # (Text Value, UT)


def test_a_long_key_of_a_deflated_instance_is_not_read(tmp_path: Path, caplog) -> None:
    long_text = "x" * (32 * MiB)
    data = dataset(SOP, study="1.2.9.78", series="1.2.9.78.1", extra={COMMENTS: ("UT", long_text)})
    z = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = z.compress(data) + z.flush()
    del data, long_text
    archive = Archive(tmp_path / "archive", fsync=False)
    outcome = store(archive, deflated, sop_uid=SOP, ts=uids.DEFLATED_EXPLICIT_VR_LE, chunk=MiB)
    assert outcome.status == 0
    archive.close()
    reader = ArchiveReader(tmp_path / "archive")
    key = reader.instance(SOP)["path"]
    gc.collect()
    tracemalloc.start()
    try:
        with caplog.at_level("WARNING"):
            found = _header(reader, {"sample_path": key}, [COMMENTS, DESCRIPTION])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found is not None
    assert found[DESCRIPTION].value == "Head" and COMMENTS not in found
    assert f"({32 * MiB} bytes) is returned zero-length: over {MAX_RETURNED_VALUE}" in caplog.text
    assert peak < 4 * MiB, f"peak {peak / MiB:.1f} MiB"
    # the inflated copy is gone
    assert not [p for p in (tmp_path / "archive" / ".tmp").rglob("*") if p.is_file()]
