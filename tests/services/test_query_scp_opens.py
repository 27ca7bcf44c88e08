"""C-FIND return keys read from a stored header open the stored file once: the
transfer syntax from the file meta read in that opening (the file was opened twice,
once for its file meta, then for its header)."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
from tests.archive.archive_testlib import count_opens, dataset, store

from dicomstore import uids
from dicomstore.archive import Archive
from dicomstore.archive.reader import ArchiveReader
from dicomstore.archive.stored import read_file_header
from dicomstore.services.query_scp import _header

SOP = "1.2.9.79.1.1"
DESCRIPTION = 0x00081030


def _reader(tmp_path: Path, deflate: bool) -> tuple[ArchiveReader, str]:
    data = dataset(SOP, study="1.2.9.79", series="1.2.9.79.1")
    ts = uids.EXPLICIT_VR_LE
    if deflate:
        z = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        data, ts = z.compress(data) + z.flush(), uids.DEFLATED_EXPLICIT_VR_LE
    archive = Archive(tmp_path / "archive", fsync=False)
    assert store(archive, data, sop_uid=SOP, ts=ts).status == 0
    archive.close()
    reader = ArchiveReader(tmp_path / "archive")
    return reader, reader.instance(SOP)["path"]


@pytest.mark.parametrize("deflate", [False, True], ids=["explicit", "deflated"])
def test_a_return_key_opens_the_stored_file_once(tmp_path, monkeypatch, deflate) -> None:
    reader, key = _reader(tmp_path, deflate)
    opens = count_opens(monkeypatch)
    found = _header(reader, {"sample_path": key}, [DESCRIPTION])
    assert found is not None and found[DESCRIPTION].value == "Head"
    assert opens == [key]


@pytest.mark.parametrize("deflate", [False, True], ids=["explicit", "deflated"])
def test_a_file_header_opens_the_stored_file_once(tmp_path, monkeypatch, deflate) -> None:
    reader, key = _reader(tmp_path, deflate)
    opens = count_opens(monkeypatch)
    ds = read_file_header(reader.storage, key, inflated_limit=1 << 20)
    assert ds.StudyDescription == "Head" and ds.file_meta.TransferSyntaxUID
    assert opens == [key]


def test_an_unreadable_file_gives_no_keys_logged(tmp_path, caplog) -> None:
    reader, key = _reader(tmp_path, False)
    path = reader.storage.local_path(key)
    assert path is not None
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\x7f")
    with caplog.at_level("WARNING"):
        assert _header(reader, {"sample_path": key}, [DESCRIPTION]) is None
    assert "C-FIND: return keys not read from" in caplog.text
