"""Compressed instances through dicomweb-client (PS3.18 10.4): frames as stored and
decoded, bulk data, rendered images and thumbnails, against a real uvicorn server.
Decoded frames are compared with pydicom's own decoding of the file."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from http_testlib import HttpThread, store, store_file
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames

from dicomstore.archive import Archive
from dicomstore.http import render

#: On both index engines (issue 17).
pytestmark = pytest.mark.usefixtures("index_engine")

EXPLICIT = "1.2.840.10008.1.2.1"
#: pydicom test files: transfer syntax family -> file (and its media type)
FILES = {
    "SC_rgb_jpeg_dcmtk.dcm": "image/jpeg",  # JPEG baseline, YBR_FULL
    "JPGExtended.dcm": "image/jpeg",  # JPEG extended, 12 bit
    "examples_ybr_color.dcm": "image/jpeg",  # JPEG baseline, 30 frames, YBR_FULL_422
    "JPEG2000.dcm": "image/jp2",
    "MR_small_jpeg_ls_lossless.dcm": "image/jls",
    "SC_rgb_rle_2frame.dcm": "image/dicom-rle",
    "rtdose_rle.dcm": "image/dicom-rle",  # 15 frames, 32 bit
}


@pytest.fixture(scope="module")
def site(
    tmp_path_factory, index_engine: str
) -> Iterator[tuple[DICOMwebClient, dict[str, dict], HttpThread]]:
    archive = Archive(tmp_path_factory.mktemp("compressed") / "archive", fsync=False)
    rows = {name: store_file(archive, get_testdata_file(name)).instance for name in FILES}
    with HttpThread(archive) as srv:
        yield DICOMwebClient(url=srv.url), rows, srv
    archive.close()


def _ids(row: dict) -> tuple[str, str, str]:
    return row["study_uid"], row["series_uid"], row["sop_instance_uid"]


def _original(name: str) -> Any:
    return pydicom.dcmread(get_testdata_file(name))


def _count(ds: Any) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def _frame_array(ds: Any, number: int) -> np.ndarray:
    array = ds.pixel_array
    return array[number - 1] if _count(ds) > 1 else array


def _le(array: np.ndarray) -> bytes:
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


@pytest.mark.parametrize("name", FILES)
def test_frames_as_stored(site, name) -> None:
    """transfer-syntax=* and the syntax's own media type give the stored codestream."""
    client, rows, _ = site
    ds = _original(name)
    count = _count(ds)
    stored = list(generate_frames(ds.PixelData, number_of_frames=count))
    numbers = [count, 1] if count > 1 else [1]
    syntax = ds.file_meta.TransferSyntaxUID
    for media_types in (
        (("application/octet-stream", "*"),),
        ((FILES[name], syntax),),
    ):
        frames = client.retrieve_instance_frames(
            *_ids(rows[name]), frame_numbers=numbers, media_types=media_types
        )
        assert frames == [stored[n - 1] for n in numbers], media_types


@pytest.mark.parametrize("name", FILES)
def test_frames_decoded_match_pydicom(site, name) -> None:
    client, rows, _ = site
    ds = _original(name)
    numbers = [1, _count(ds)] if _count(ds) > 1 else [1]
    frames = client.retrieve_instance_frames(
        *_ids(rows[name]),
        frame_numbers=numbers,
        media_types=(("application/octet-stream", EXPLICIT),),
    )
    assert frames == [_le(_frame_array(ds, n)) for n in numbers]


def test_each_frame_is_decoded_once(site, monkeypatch) -> None:
    """The first frame was decoded before answering (a 500 rather than a broken stream)
    and again for the answer: twice the work, for a JPEG 2000 frame."""
    from dicomstore.http import pixels

    client, rows, _ = site
    decoded: list[int] = []
    real = pixels.Frames.decoded

    def counted(self, number: int):
        decoded.append(number)
        return real(self, number)

    monkeypatch.setattr(pixels.Frames, "decoded", counted)
    ids = _ids(rows["examples_ybr_color.dcm"])
    native = (("application/octet-stream", EXPLICIT),)
    client.retrieve_instance_frames(*ids, frame_numbers=[1, 30], media_types=native)
    assert decoded == [1, 30]
    decoded.clear()
    uri = client.retrieve_instance_metadata(*ids)["7FE00010"]["BulkDataURI"]
    client.retrieve_bulkdata(uri, media_types=(("application/octet-stream",),))
    assert decoded == list(range(1, 31))


def test_content_types_name_what_is_sent(site) -> None:
    _, rows, srv = site
    study, series, sop = _ids(rows["JPEG2000.dcm"])
    url = f"{srv.url}/studies/{study}/series/{series}/instances/{sop}/frames/1"
    star = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    r = httpx.get(url, headers={"accept": star})
    assert r.status_code == 200
    assert (
        b"Content-Type: application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.91"
        in (r.content[:300])
    )
    r = httpx.get(url, headers={"accept": 'multipart/related; type="image/jp2"'})
    assert r.headers["content-type"].startswith('multipart/related; type="image/jp2"')
    assert b"Content-Type: image/jp2; transfer-syntax=1.2.840.10008.1.2.4.91" in r.content[:300]
    r = httpx.get(url, headers={"accept": 'multipart/related; type="image/jpeg"'})
    assert r.status_code == 406 and "stored as 1.2.840.10008.1.2.4.91" in r.text
    r = httpx.get(url[: -len("/1")] + "/9")
    assert r.status_code == 404 and "frame 9" in r.text


@pytest.mark.parametrize("name", ["examples_ybr_color.dcm", "JPEG2000.dcm"])
def test_pixel_data_bulk_data_from_the_metadata(site, name) -> None:
    """The BulkDataURI in the metadata works as is (with the port), as stored or decoded."""
    client, rows, srv = site
    ds = _original(name)
    meta = client.retrieve_instance_metadata(*_ids(rows[name]))
    uri = meta["7FE00010"]["BulkDataURI"]
    assert uri.startswith(srv.url + "/studies/")
    stored = client.retrieve_bulkdata(uri, media_types=(("application/octet-stream", "*"),))
    assert stored == list(generate_frames(ds.PixelData, number_of_frames=_count(ds)))
    (decoded,) = client.retrieve_bulkdata(uri, media_types=(("application/octet-stream",),))
    assert decoded == _le(ds.pixel_array)


def _image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_rle_2frame.dcm"])
def test_rendered_colour_is_the_decoded_image(site, name) -> None:
    client, rows, _ = site
    ds = _original(name)
    png = client.retrieve_instance_rendered(*_ids(rows[name]), media_types=("image/png",))
    assert np.array_equal(np.asarray(_image(png)), _frame_array(ds, 1))
    last = _count(ds)
    png = client.retrieve_instance_frames_rendered(
        *_ids(rows[name]), frame_numbers=[last], media_types=("image/png",)
    )
    assert np.array_equal(np.asarray(_image(png)), _frame_array(ds, last))
    jpeg = client.retrieve_instance_rendered(*_ids(rows[name]), media_types=("image/jpeg",))
    image = _image(jpeg)
    assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (ds.Columns, ds.Rows))


def test_rendered_grey_uses_the_window(site) -> None:
    client, rows, _ = site
    name = "MR_small_jpeg_ls_lossless.dcm"
    ds = _original(name)
    png = client.retrieve_instance_rendered(
        *_ids(rows[name]), media_types=("image/png",), params={"window": "600,800"}
    )
    assert np.array_equal(np.asarray(_image(png)), _windowed(ds.pixel_array, 600, 800))
    stored = client.retrieve_instance_rendered(*_ids(rows[name]), media_types=("image/png",))
    assert (ds.WindowCenter, ds.WindowWidth) == (600, 1600)
    assert np.array_equal(np.asarray(_image(stored)), _windowed(ds.pixel_array, 600, 1600))


def _windowed(array: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, computed here independently."""
    out = ((array.astype(float) - (center - 0.5)) / (width - 1) + 0.5) * 255
    return out.clip(0, 255).astype(np.uint8)


def test_each_window_function_as_ps3_3_gives_it() -> None:
    """review116 M2: linear-exact was drawn as linear, sigmoid refused (PS3.3
    C.11.2.1.3.2 and C.11.2.1.3.1, computed here independently); a stored VOI LUT
    Function is the stored window's."""
    ds = pydicom.Dataset()
    array = np.array([[0, 30, 40, 50, 100]], dtype=np.int16)
    values = array.astype(float)
    exact = ((values - 40) / 20 + 0.5) * 255
    expected = exact.clip(0, 255).astype(np.uint8)
    assert render.to_8bit(array, ds, (40, 20, "linear-exact")).tolist() == expected.tolist()
    sigmoid = 255 / (1 + np.exp(-4 * (values - 40) / 20))
    expected = sigmoid.clip(0, 255).astype(np.uint8)
    assert render.to_8bit(array, ds, (40, 20, "sigmoid")).tolist() == expected.tolist()
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 40, 20, "SIGMOID"
    assert render.to_8bit(array, ds, None).tolist() == expected.tolist()


def test_a_viewport_shows_the_part_asked_for() -> None:
    """PS3.18 8.3.5.1.3: sx,sy,sw,sh; negative: flipped."""
    array = np.arange(20).reshape(4, 5)
    assert render._part(array, (1, 1, 2, 2)).tolist() == [[6, 7], [11, 12]]
    assert render._part(array, (3, 0, -2, None)).tolist() == [[3, 2], [8, 7], [13, 12], [18, 17]]
    assert render._part(array, (0, 2, None, None)).tolist() == [
        [10, 11, 12, 13, 14],
        [15, 16, 17, 18, 19],
    ]


def test_without_a_window_min_to_max_is_shown() -> None:
    ds = pydicom.Dataset()
    array = np.array([[10, 20, 30]], dtype=np.int16)
    assert render.to_8bit(array, ds, None).tolist() == [[0, 127, 255]]
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1000  # the Modality LUT comes first
    assert render.to_8bit(array, ds, (-960, 2, "linear")).tolist() == [[0, 255, 255]]


def test_rendered_series_and_study_and_thumbnails(site) -> None:
    client, rows, _ = site
    study, series, sop = _ids(rows["JPEG2000.dcm"])
    jpeg = client.retrieve_series_rendered(study, series, media_types=("image/jpeg",))
    assert _image(jpeg).size == (_original("JPEG2000.dcm").Columns, _original("JPEG2000.dcm").Rows)
    for path in (
        f"studies/{study}",
        f"studies/{study}/series/{series}",
        f"studies/{study}/series/{series}/instances/{sop}",
    ):
        response = client._http_get(f"{client.base_url}/{path}/thumbnail")
        thumb = _image(response.content)
        assert response.headers["content-type"] == "image/jpeg"
        assert thumb.format == "JPEG" and max(thumb.size) == 128, path
    response = client._http_get(
        f"{client.base_url}/studies/{study}/thumbnail", params={"viewport": "64,32"}
    )
    assert _image(response.content).size[1] == 32


@pytest.mark.parametrize(
    ("query", "status", "words"),
    [
        ({"viewport": "0,10"}, 400, "viewport"),
        ({"viewport": "99999,10"}, 400, "viewport"),
        ({"window": "40"}, 400, "window"),
        ({"window": "40,80,bogus"}, 400, "window"),
        ({"window": "40,0.5"}, 400, "a linear window is at least 1 wide"),  # (review116 M2)
        ({"window": "40,0.5,linear-exact"}, 200, ""),
        ({"window": "40,80,sigmoid"}, 200, ""),
        ({"annotation": "bogus"}, 400, "annotation"),  # (review116 L4)
        ({"annotation": "patient,technique"}, 200, ""),
        ({"iccprofile": "bogus"}, 400, "iccprofile"),
        ({"quality": ["50", "60"]}, 400, "quality is given more than once"),
        ({"viewport": "64,64,0,0,32,32"}, 200, ""),  # (review116 L3)
        ({"viewport": "64,64,10,10,-8,"}, 200, ""),
        ({"viewport": "64,64,0,0,0,32"}, 400, "viewport"),
        ({"viewport": "64,64,99999,0,,"}, 400, "outside the frame"),
        ({"viewport": "64,64,1"}, 400, "viewport"),
        ({"window": "nan,nan"}, 400, "window"),  # (review35a: rendered as if not given)
        ({"window": "inf,1"}, 400, "window"),
        ({"quality": "0"}, 400, "quality"),
        ({"accept": "image/gif"}, 406, "image/jpeg"),
    ],
)
def test_rendered_parameters_are_checked(site, query, status, words) -> None:
    _, rows, srv = site
    study, series, sop = _ids(rows["JPEG2000.dcm"])
    url = f"{srv.url}/studies/{study}/series/{series}/instances/{sop}/rendered"
    r = httpx.get(url, params=query)
    assert (r.status_code, words in r.text) == (status, True), (query, r.text[:200])


def test_monochrome1_is_inverted() -> None:
    ds = pydicom.Dataset()
    ds.PhotometricInterpretation = "MONOCHROME1"
    array = np.array([[0, 50, 100]], dtype=np.uint16)
    assert render.to_8bit(array, ds, (50.5, 101, "linear")).tolist() == [[255, 128, 0]]
    ds.PhotometricInterpretation = "MONOCHROME2"
    assert render.to_8bit(array, ds, (50.5, 101, "linear")).tolist() == [[0, 127, 255]]


def test_a_frame_over_the_limit_is_refused(tmp_path) -> None:
    from dicomstore.http.limits import HttpLimits

    archive = Archive(tmp_path / "archive", fsync=False)
    row = store_file(archive, get_testdata_file("JPEG2000.dcm")).instance
    with HttpThread(archive, limits=HttpLimits(max_frame_bytes=1000)) as srv:
        study, series, sop = _ids(row)
        url = f"{srv.url}/studies/{study}/series/{series}/instances/{sop}"
        r = httpx.get(url + "/frames/1")
        assert r.status_code == 413 and "over the limit" in r.text
        assert httpx.get(url + "/rendered").status_code == 413
    archive.close()


def test_retrieve_urls_follow_base_url_host_and_trusted_proxy(tmp_path) -> None:
    from http_testlib import make_dataset

    archive = Archive(tmp_path / "archive", fsync=False)
    store(archive, make_dataset("1.2.3.4", study="1.2.3", series="1.2.3.1", frames=1))
    forwarded = {
        "x-forwarded-proto": "https",
        "x-forwarded-host": "pacs.example.org",
        "x-forwarded-prefix": "/dicomweb",
    }
    expected = "https://pacs.example.org/dicomweb/studies/1.2.3/series/1.2.3.1/instances/1.2.3.4"

    def uri(srv: HttpThread, headers: dict[str, str]) -> str:
        r = httpx.get(f"{srv.url}/studies/1.2.3/metadata", headers=headers)
        return r.json()[0]["7FE00010"]["BulkDataURI"]

    with HttpThread(archive) as srv:
        port = srv.server.port
        assert uri(srv, {"host": "127.0.0.1"}).startswith(f"http://127.0.0.1:{port}/studies/")
        assert uri(srv, forwarded).startswith(f"http://127.0.0.1:{port}/")  # not trusted
    from dicomstore.http.security import HttpSecurity

    named = HttpSecurity(allowed_hosts=("pacs.example.org",))  # (the proxy's name: hosts.py)
    with HttpThread(archive, trust_forwarded=True, security=named) as srv:
        assert uri(srv, forwarded) == expected + "/bulkdata/7FE00010"
        bad = {**forwarded, "x-forwarded-host": "a b"}
        assert uri(srv, bad).startswith("https://127.0.0.1:")  # malformed: ignored
        appended = {**forwarded, "x-forwarded-host": "localhost, pacs.example.org"}
        assert uri(srv, appended) == expected + "/bulkdata/7FE00010"  # (the proxy's: last)
    with HttpThread(archive, base_url="https://pacs.example.org/dicomweb") as srv:
        assert uri(srv, {}) == expected + "/bulkdata/7FE00010"
    archive.close()
