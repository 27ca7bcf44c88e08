"""review57 Low: a stored instance whose compressed Pixel Data cannot be decoded (a
damaged JPEG Baseline scan) was 406 on /rendered and /thumbnail, "no acceptable media
type", though the client asked for one made here for sound data. It is 500 naming
the damage, logged for the operator naming the instance; 406 stays for an Accept
that cannot be produced and for a missing codecs extra (naming it). The same for an
instance transcoded to Explicit VR Little Endian and for fragments that cannot be read
(review57 Low's rest: they were 406)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from http_testlib import HttpThread, store_file
from pydicom.data import get_testdata_file

from dicomstore.archive import Archive
from dicomstore.http import pixels

pytest.importorskip("numpy")
pytest.importorskip("PIL")

OCTET = 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'


@pytest.fixture
def damaged(tmp_path: Path) -> Iterator[tuple[httpx.Client, str, str]]:
    """A client, the URL of a JPEG Baseline instance whose scan is garbage (its SOF
    true), and that instance's SOP Instance UID."""
    from pydicom.encaps import encapsulate, generate_frames

    ds = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    scan = frame.index(b"\xff\xda")  # (Start of Scan: the header up to it kept)
    ds.PixelData = encapsulate([frame[:scan] + b"\xff\xda\x00\x0c" + b"\x5a" * 4000 + b"\xff\xd9"])
    ds.SOPInstanceUID = "1.2.9.66.1.1"
    yield from _served(tmp_path, ds)


def _served(tmp_path: Path, ds: pydicom.Dataset) -> Iterator[tuple[httpx.Client, str, str]]:
    """``ds`` stored and served: a client, its URL, its SOP Instance UID."""
    ds.save_as(tmp_path / "stored.dcm")
    archive = Archive(tmp_path / "archive", fsync=False)
    row = store_file(archive, tmp_path / "stored.dcm").instance
    url = f"/studies/{row['study_uid']}/series/{row['series_uid']}/instances/{ds.SOPInstanceUID}"
    with HttpThread(archive) as srv, httpx.Client(base_url=srv.url) as client:
        yield client, url, ds.SOPInstanceUID
    archive.close()


@pytest.mark.parametrize("tail", ["/rendered", "/thumbnail", "/frames/1/rendered"])
@pytest.mark.parametrize("accept", ["image/png", "image/jpeg", "*/*"])
def test_a_damaged_codestream_is_500_naming_it(damaged, caplog, tail, accept) -> None:
    client, url, sop = damaged
    with caplog.at_level("WARNING", logger="dicomstore.http"):
        r = client.get(url + tail, headers={"accept": accept})
    assert r.status_code == 500, r.text
    said = "frame 1 cannot be decoded, the installed decoders cannot read the stored Pixel Data"
    assert said + " (damaged, or a form they do not support): " in r.text
    assert r.text.count("\n") == 1 and "is damaged" not in r.text  # (sweep106 F3)
    (line,) = [m for m in caplog.messages if "cannot be decoded" in m]
    assert sop in line and "the installed decoders cannot read its stored Pixel Data" in line


def test_decoded_frames_of_a_damaged_codestream_are_500(damaged) -> None:
    client, url, _ = damaged
    r = client.get(url + "/frames/1", headers={"accept": OCTET})
    assert r.status_code == 500 and "cannot read the stored Pixel Data (damaged, or" in r.text
    as_stored = client.get(
        url + "/frames/1", headers={"accept": 'multipart/related; type="image/jpeg"'}
    )
    assert as_stored.status_code == 200  # (as stored: nothing to decode)


@pytest.mark.parametrize("tail", ["/rendered", "/thumbnail"])
def test_an_accept_that_cannot_be_made_is_still_406(damaged, tail) -> None:
    client, url, _ = damaged
    r = client.get(url + tail, headers={"accept": "image/gif"})
    assert r.status_code == 406 and "media type" in r.text, r.text


@pytest.mark.parametrize("tail", ["/rendered", "/thumbnail"])
def test_a_missing_codecs_extra_is_still_406_naming_it(damaged, monkeypatch, tail) -> None:
    client, url, _ = damaged
    missing = "no decoder for 1.2.840.10008.1.2.4.50 is installed: install dicomstore[codecs]"
    monkeypatch.setattr(pixels, "decoder_missing", lambda syntax: missing)
    r = client.get(url + tail, headers={"accept": "image/png"})
    assert r.status_code == 406 and "install dicomstore[codecs]" in r.text, r.text


DICOM = 'multipart/related; type="application/dicom"'


@pytest.mark.parametrize("accept", [DICOM, "application/dicom"])
def test_transcoding_a_damaged_codestream_is_500_naming_it(damaged, caplog, accept) -> None:
    """Before: 406 "cannot be transcoded", though Explicit VR Little Endian is made for
    any sound instance."""
    client, url, sop = damaged
    with caplog.at_level("WARNING", logger="dicomstore.http"):
        r = client.get(url, headers={"accept": accept})
    assert r.status_code == 500, r.text
    want = "cannot be transcoded to 1.2.840.10008.1.2.1, the installed decoders cannot read"
    assert want + " the stored data (damaged, or a form they do not support): " in r.text
    assert r.text.count("\n") == 1 and "is damaged" not in r.text  # (sweep106 F3)
    (line,) = [m for m in caplog.messages if "cannot be transcoded" in m]
    assert sop in line and "the installed decoders cannot read its stored data" in line
    as_stored = client.get(url, headers={"accept": accept + "; transfer-syntax=*"})
    assert as_stored.status_code == 200  # (as stored: nothing to decode)


def test_transcoding_without_the_codecs_extra_is_still_406_naming_it(damaged, monkeypatch):
    client, url, _ = damaged
    missing = "no decoder for 1.2.840.10008.1.2.4.50 is installed: install dicomstore[codecs]"
    monkeypatch.setattr(pixels, "decoder_missing", lambda syntax: missing)
    r = client.get(url, headers={"accept": DICOM})
    assert r.status_code == 406 and "install dicomstore[codecs]" in r.text, r.text


def test_transcoding_a_syntax_no_decoder_reads_is_still_406_naming_it(tmp_path) -> None:
    """review63 M1: a sound instance in a syntax pydicom has no decoder for (MPEG-2 here;
    H.264, HEVC ...) was answered 500 "damaged"; nothing is known to be wrong with it."""
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 Main Profile
    ds.SOPInstanceUID = "1.2.9.66.1.3"
    served = _served(tmp_path, ds)
    try:
        client, url, _ = next(served)
        r = client.get(url, headers={"accept": DICOM})
        head = client.head(url, headers={"accept": DICOM})
    finally:
        served.close()
    assert r.status_code == 406, r.text
    assert "no decoder for transfer syntax 1.2.840.10008.1.2.4.100" in r.text, r.text
    assert head.status_code == 406  # (review64 L5: HEAD said 200 where GET says 406)


@pytest.fixture
def misplaced(tmp_path: Path) -> Iterator[tuple[httpx.Client, str, str]]:
    """A client, the URL of a 2-frame JPEG Baseline instance whose Basic Offset Table
    puts frame 2 inside frame 1's item, and its SOP Instance UID."""
    from pydicom.encaps import encapsulate, generate_frames

    ds = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    data = bytearray(encapsulate([frame, frame], has_bot=True))
    data[12:16] = (2).to_bytes(4, "little")  # (frame 2's offset: 2, not an item's)
    ds.PixelData, ds.NumberOfFrames = bytes(data), 2
    ds.SOPInstanceUID = "1.2.9.66.1.2"
    yield from _served(tmp_path, ds)


@pytest.mark.parametrize(
    ("tail", "accept"),
    [
        ("/frames/2", 'multipart/related; type="image/jpeg"'),  # (before: 200, then cut)
        ("/frames/2", OCTET),  # (before: 406)
        ("/frames/2/rendered", "image/png"),  # (before: 406)
    ],
)
def test_a_frame_its_fragments_cannot_give_is_500_naming_it(misplaced, caplog, tail, accept):
    client, url, sop = misplaced
    with caplog.at_level("WARNING", logger="dicomstore.http"):
        r = client.get(url + tail, headers={"accept": accept})
    assert r.status_code == 500, r.text
    said = "frame 2 cannot be read from its fragments, the stored Pixel Data is damaged: "
    assert said in r.text and r.text.count("\n") == 1
    (line,) = [m for m in caplog.messages if "cannot be read from its fragments" in m]
    assert sop in line and "stored Pixel Data damaged" in line
