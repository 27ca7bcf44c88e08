"""review63 M2: a native instance whose file was cut short after its header (the
header still declaring the whole Pixel Data) answered /frames and /bulkdata 200, then
a bare OSError ended the stream (uvicorn's traceback, no WARNING naming the damage),
while /rendered and /thumbnail answered 500 "damaged". Every path now answers the
same 500 (``pixels.damaged``) before its status; a file cut once the answer has begun
cuts the answer off with the damaged WARNING, not a traceback."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from http_testlib import HttpThread, get_or_cut, make_dataset, store

from dicomstore.archive import Archive
from dicomstore.archive.stored import PixelValue
from dicomstore.http import pixels
from dicomstore.http.common import HttpError

STUDY, SERIES, SOP = "1.2.826.0.1.3680043.10.63", "1.2.826.0.1.3680043.10.63.1", "1.2.63.2.1"
URL = f"/studies/{STUDY}/series/{SERIES}/instances/{SOP}"
OCTET = 'multipart/related; type="application/octet-stream"'

#: The frames path's own findings, behind the whole-copy check (which finds these
#: cut files damaged first: tests/http/test_http_damaged_copy.py).
pytestmark = pytest.mark.usefixtures("unchecked")


@pytest.fixture
def cut(tmp_path: Path) -> Iterator[HttpThread]:
    """A 2-frame 64x64 16-bit native instance, its file's last 5000 bytes cut off."""
    archive = Archive(tmp_path / "archive", fsync=False)
    ds = make_dataset(SOP, study=STUDY, series=SERIES, frames=2, rows=64, columns=64)
    store(archive, ds)
    yield from _cut_served(archive, SOP, 5000)


def _cut_served(archive: Archive, sop: str, cut_off: int) -> Iterator[HttpThread]:
    """The file of ``sop`` without its last ``cut_off`` bytes, ``archive`` served."""
    path = archive.path_of(sop)
    assert path is not None
    os.truncate(path, path.stat().st_size - cut_off)
    with HttpThread(archive) as web:
        yield web
    archive.close()


CASES = [
    ("/frames/1", OCTET),  # (before: 200)
    ("/frames/2", OCTET),  # (before: 200, then a traceback)
    ("/bulkdata/7FE00010", OCTET),  # (the same)
    ("/rendered", "image/png"),  # (500 before too)
    ("/thumbnail", "image/jpeg"),
    ("/frames/2/rendered", "image/png"),
]


@pytest.mark.parametrize(("tail", "accept"), CASES)
def test_native_pixel_data_cut_short_is_500_naming_it(cut, caplog, tail, accept) -> None:
    with caplog.at_level(logging.WARNING):
        status, body = get_or_cut(cut.server.port, URL + tail, {"accept": accept})
    assert status == 500 and body is not None, (status, body)
    text = body.decode()
    said = "the Pixel Data cannot be read, the stored Pixel Data is damaged: "
    assert said in text and "5000 bytes past the end of the file" in text, text
    (line,) = [m for m in caplog.messages if "stored Pixel Data damaged" in m]
    assert SOP in line
    assert "Exception in ASGI application" not in caplog.text


@pytest.mark.parametrize("tail", ["/frames/1,2", "/bulkdata/7FE00010"])
def test_a_file_cut_once_the_answer_began_cuts_it_off(cut, caplog, monkeypatch, tail) -> None:
    """The check before answering passed (the file cut only afterwards): the read that
    comes short ends the answer cleanly, with the damaged WARNING."""
    monkeypatch.setattr(pixels, "within", lambda *args, **kwargs: None)
    with caplog.at_level(logging.WARNING):
        status, body = get_or_cut(cut.server.port, URL + tail, {"accept": OCTET})
    assert status == 200 and body is None  # (cut: not a whole answer)
    damage = [m for m in caplog.messages if "stored Pixel Data damaged" in m]
    assert damage and SOP in damage[0], caplog.messages
    assert any("cut off" in m for m in caplog.messages), caplog.messages
    assert "Exception in ASGI application" not in caplog.text
    assert "returned without completing" not in caplog.text


def test_pixel_data_not_matching_its_syntax_is_damaged_not_406() -> None:
    """review63 L3: the stored data contradicting itself is 500 ``damaged``, not 406."""
    ds = make_dataset(SOP, frames=1)
    encapsulated = PixelValue(0x7FE00010, "OB", 1000, None)
    with pytest.raises(HttpError) as raised:
        pixels.Frames._checked(None, "k", "1.2.840.10008.1.2.1", ds, encapsulated, 1 << 20)  # type: ignore[arg-type]
    assert raised.value.status == 500, raised.value.message
    assert "does not match its transfer syntax" in raised.value.message
    assert "stored Pixel Data is damaged" in raised.value.message


DEFLATED_SOP = "1.2.63.2.9"


@pytest.fixture
def deflated_cut(tmp_path: Path) -> Iterator[HttpThread]:
    """A deflated instance (PS3.5 A.5) of incompressible pixels, its deflate stream cut
    short (the file's last 3000 bytes gone)."""
    from http_testlib import store_file
    from pydicom.dataset import FileMetaDataset

    archive = Archive(tmp_path / "archive", fsync=False)
    ds = make_dataset(DEFLATED_SOP, study=STUDY, series=SERIES, frames=2, rows=64, columns=64)
    ds.PixelData = os.urandom(len(ds.PixelData))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    ds.save_as(tmp_path / "d.dcm", enforce_file_format=True)
    store_file(archive, tmp_path / "d.dcm")
    yield from _cut_served(archive, DEFLATED_SOP, 3000)


@pytest.mark.parametrize(("tail", "accept"), CASES[:1] + CASES[2:5])
def test_a_deflate_stream_cut_short_is_500_naming_it(deflated_cut, caplog, tail, accept):
    """review64 L2: 500 "internal error: InflateError" and a traceback on the four
    frames paths (a transcoded retrieve said "damaged" already)."""
    url = f"/studies/{STUDY}/series/{SERIES}/instances/{DEFLATED_SOP}{tail}"
    with caplog.at_level(logging.WARNING):
        status, body = get_or_cut(deflated_cut.server.port, url, {"accept": accept})
    assert status == 500 and body is not None, (status, body)
    assert "the stored data set is damaged: " in body.decode(), body
    assert [m for m in caplog.messages if "stored data set damaged" in m]
    assert "Exception in ASGI application" not in caplog.text


def test_a_file_deleted_while_its_frames_are_sent_is_not_called_damaged(tmp_path, caplog):
    """review64 L4: a file deleted (or replaced) while its frames were sent cut the answer
    off, rightly, but was logged as "the stored Pixel Data is damaged"."""
    from dicomstore.archive.filestorage import FileStorage
    from dicomstore.http import frames
    from dicomstore.http.answer import AnswerBroken

    archive = Archive(tmp_path / "archive", fsync=False)
    store(archive, make_dataset(SOP, study=STUDY, series=SERIES, frames=2, rows=64, columns=64))
    path = archive.path_of(SOP)
    assert path is not None
    row = {
        "path": path.relative_to(tmp_path / "archive").as_posix(),
        "transfer_syntax_uid": "1.2.840.10008.1.2.1",
    }
    found = pixels.Frames.open(FileStorage(tmp_path / "archive"), row, 1 << 29)
    choice = frames.Choice(False, frames.OCTET, "1.2.840.10008.1.2.1")
    parts = frames._frame_parts(found, choice, [1, 2], "bnd", None)
    next(parts), next(parts)  # (frame 1's part header and bytes sent)
    path.unlink()  # (a delete meanwhile)
    with caplog.at_level(logging.WARNING), pytest.raises(AnswerBroken):
        list(parts)
    archive.close()
    assert "went while it was sent" in caplog.text
    assert "damaged" not in caplog.text


def test_other_bulk_data_cut_short_is_500_before_answering(tmp_path, caplog) -> None:
    """review64 L3: an Encapsulated Document (0042,0011) cut short answered 200, then the
    answer was cut off, logged as "shorter than its Pixel Data header says"."""
    archive = Archive(tmp_path / "archive", fsync=False)
    ds = make_dataset("1.2.63.2.7", study=STUDY, series=SERIES)  # (no Pixel Data)
    ds.EncapsulatedDocument = bytes(20000)
    ds["EncapsulatedDocument"].VR = "OB"
    store(archive, ds)
    path = archive.path_of("1.2.63.2.7")
    assert path is not None
    os.truncate(path, path.stat().st_size - 3000)
    url = f"/studies/{STUDY}/series/{SERIES}/instances/1.2.63.2.7/bulkdata/00420011"
    with HttpThread(archive) as web, caplog.at_level(logging.WARNING):
        status, body = get_or_cut(web.server.port, url, {"accept": OCTET})
    archive.close()
    assert status == 500 and body is not None, (status, body)
    said = "the bulk data (00420011) cannot be read, the stored bulk data (00420011) is damaged"
    assert said in body.decode() and "3000 bytes past the end" in body.decode(), body
    assert "Pixel Data" not in caplog.text
