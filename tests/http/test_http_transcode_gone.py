"""review63 L1: an instance whose file went (deleted or replaced) between retrieve's
check and its transcode answered 500 with an ERROR, "cannot read: No such file or
directory", not the documented 404: ``sources.Unreadable`` drops the errno, so the
file's absence is asked of the storage."""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dicomstore.http.common import HttpError
from dicomstore.http.transcoding import transcode_or_refuse

ROW = {
    "path": "1/2/1.2.3.dcm",
    "transfer_syntax_uid": "1.2.840.10008.1.2.4.50",
    "sop_class_uid": "1.2.840.10008.5.1.4.1.1.7",
    "sop_instance_uid": "1.2.3",
}


def _refused(storage: Any) -> HttpError:
    with pytest.raises(HttpError) as raised:
        transcode_or_refuse(_archive(storage), ROW, 1 << 30, 1 << 29)  # type: ignore[arg-type]
    return raised.value


class _Intact:
    """A stored copy opened as ``ArchiveReader.open_checked`` does, taken as intact
    (these rows have no digest: what is tested here is the transcode's read)."""

    def __init__(self, f: Any) -> None:
        self.f = f

    def __enter__(self) -> _Intact:
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()

    def verify(self) -> None:
        """Nothing to compare."""


def _archive(storage: Any) -> Any:
    """An archive reader of ``storage`` as far as the transcode uses one."""

    def open_checked(row: dict[str, Any]) -> _Intact:
        path = storage.local_path(row["path"])
        return _Intact(open(path, "rb") if path is not None else storage.open(row["path"]))

    return SimpleNamespace(storage=storage, open_checked=open_checked, follow=lambda row: None)


def _gone(key: str) -> bool:
    return False


def _opener(error: OSError) -> Any:
    def open_(key: str) -> Any:
        raise error

    return open_


def test_a_local_file_gone_before_its_transcode_is_404(tmp_path: Path, caplog) -> None:
    gone = tmp_path / "gone.dcm"
    storage = SimpleNamespace(local_path=lambda key: gone, scratch=lambda: None, exists=_gone)
    with caplog.at_level(logging.ERROR):
        refused = _refused(storage)
    assert (refused.status, refused.message) == (404, "deleted since the search")
    assert not caplog.records


@pytest.mark.parametrize("code", [errno.ENOENT, errno.ENOTDIR])
def test_a_stream_gone_before_its_transcode_is_404(code) -> None:
    error = OSError(code, "gone")
    storage = SimpleNamespace(
        exists=_gone, local_path=lambda key: None, scratch=lambda: None, open=_opener(error)
    )
    refused = _refused(storage)
    assert (refused.status, refused.message) == (404, "deleted since the search")


def test_a_file_that_cannot_be_read_is_still_500_logged(caplog) -> None:
    error = PermissionError(errno.EACCES, "Permission denied")
    storage = SimpleNamespace(
        exists=lambda key: True,
        local_path=lambda key: None,
        scratch=lambda: None,
        open=_opener(error),
    )
    with caplog.at_level(logging.ERROR):
        refused = _refused(storage)
    assert refused.status == 500 and "Permission denied" in refused.message
    assert any("not transcoded" in m for m in caplog.messages)


def test_a_damaged_native_instance_without_the_codecs_extra_is_500_damaged(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    """review64 M1: without the ``codecs`` extra (no numpy), a damaged Implicit VR
    instance (cut short) transcoded was 406 "install dicomstore[codecs]": a native
    syntax needs no decoder, so it is the damage's 500 as on /frames."""
    from pydicom.dataset import Dataset, FileMetaDataset

    from dicomstore.archive.filestorage import FileStorage
    from dicomstore.http import pixels

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2"
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", "1.2.9.64.1"
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 8, 8, 7
    ds.PhotometricInterpretation, ds.PixelRepresentation = "MONOCHROME2", 0
    ds.PixelData = bytes(64 * 64)
    path = tmp_path / "n.dcm"
    ds.save_as(path, enforce_file_format=True, implicit_vr=True, little_endian=True)
    path.write_bytes(path.read_bytes()[:-3000])  # (cut inside its Pixel Data)
    no_extra = "decoding needs numpy: install dicomstore[codecs]"
    monkeypatch.setattr(pixels, "decoder_missing", lambda syntax: no_extra)
    row = {**ROW, "path": "n.dcm", "transfer_syntax_uid": "1.2.840.10008.1.2"}
    with (
        caplog.at_level(logging.WARNING, logger="dicomstore.http"),
        pytest.raises(HttpError) as raised,
    ):
        transcode_or_refuse(_archive(FileStorage(tmp_path)), row, 1 << 30, 1 << 29)
    assert raised.value.status == 500 and "damaged" in raised.value.message
    assert any("damaged" in m for m in caplog.messages)


def test_a_storage_that_cannot_tell_whether_the_file_is_there_leaves_the_500(caplog) -> None:
    """review64 L6: the existence check ran inside the ``except`` clause: a storage
    raising there escaped as a traceback instead of the read's 500."""

    def cannot_tell(key: str) -> bool:
        raise RuntimeError("object store unreachable")

    storage = SimpleNamespace(
        exists=cannot_tell,
        local_path=lambda key: None,
        scratch=lambda: None,
        open=_opener(OSError(errno.EIO, "I/O error")),
    )
    with caplog.at_level(logging.ERROR):
        refused = _refused(storage)
    assert refused.status == 500 and "I/O error" in refused.message
