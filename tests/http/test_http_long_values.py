"""Values too long to inline in DICOM JSON, and their bulk data (review38mem D2, D4):
a value over 64 KiB is a BulkDataURI where PS3.18 F.2.7 allows one for its VR, else
its VR alone (logged); the bulk data of any such value is streamed from the file."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest
from http_testlib import HttpThread, make_dataset, store
from pydicom.dataset import Dataset
from test_instancejson import store_implicit

from dicomstore.archive import Archive
from dicomstore.http.dicomjson import MAX_INLINE, MAX_INLINE_IN_ITEM

STUDY, SERIES = "1.2.826.0.1.3680043.10.81", "1.2.826.0.1.3680043.10.81.1"
TEXT = ("report " * 20_000)[: MAX_INLINE + 10]  # (even: UT pads nothing)
DOCUMENT = bytes(range(256)) * 1024  # 256 KiB


@pytest.fixture(scope="module")
def web(tmp_path_factory) -> Iterator[tuple[httpx.Client, str]]:
    archive = Archive(tmp_path_factory.mktemp("long") / "archive", fsync=False)
    ds = make_dataset(SERIES + ".1", study=STUDY, series=SERIES)
    ds.add_new(0x0040A160, "UT", TEXT)
    ds.add_new(0x00420011, "OB", DOCUMENT)
    nested = Dataset()
    nested.add_new(0x0040A160, "UT", "t" * (MAX_INLINE_IN_ITEM + 2))  # (review39 #4)
    ds.ContentSequence = [nested]
    store(archive, ds)
    named = make_dataset(SERIES + ".2", study=STUDY, series=SERIES)
    named.PatientName = "N" * (MAX_INLINE + 2)  # (a PN no BulkDataURI may stand for)
    items = []
    for n in range(300):  # (a sequence over 8 KiB: read to be shown, review39 #6)
        item = Dataset()
        item.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.10.81.9.{n}"
        items.append(item)
    named.ReferencedImageSequence = items
    store_implicit(archive, named)
    with HttpThread(archive) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        yield client, srv.url
    archive.close()


def test_a_long_text_is_a_bulk_data_uri_served_from_the_file(web) -> None:
    client, url = web
    base = f"/studies/{STUDY}/series/{SERIES}/instances/{SERIES}.1"
    (item,) = client.get(base + "/metadata").json()
    assert item["0040A160"] == {"vr": "UT", "BulkDataURI": f"{url}{base}/bulkdata/0040A160"}
    assert item["00420011"] == {"vr": "OB", "BulkDataURI": f"{url}{base}/bulkdata/00420011"}
    assert item["0040A730"]["Value"] == [{"0040A160": {"vr": "UT"}}]  # (VR alone in an item)
    for tag, value in (("0040A160", TEXT.encode()), ("00420011", DOCUMENT)):
        r = client.get(f"{base}/bulkdata/{tag}")
        assert r.status_code == 200
        boundary = r.headers["content-type"].split("boundary=")[1].strip('"')
        part = r.content.split(b"--" + boundary.encode())[1]
        assert part.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n") == value
    assert client.get(f"{base}/bulkdata/00100010").status_code == 404  # (a PN: none)


def test_a_long_value_no_uri_may_stand_for_is_given_by_its_vr(web, caplog) -> None:
    client, _url = web
    with caplog.at_level(logging.WARNING, logger="dicomstore.http.dicomjson"):
        r = client.get(f"/studies/{STUDY}/series/{SERIES}/instances/{SERIES}.2/metadata")
    (item,) = r.json()
    assert item["00100010"] == {"vr": "PN"}
    assert f"PN of {MAX_INLINE + 2} bytes is given by its VR alone" in caplog.text


def test_the_browse_page_shows_a_long_value_by_its_length(web) -> None:
    """review38mem D5: the page read every value whole (917 MiB for a 400 MiB UT)."""
    client, _url = web
    page = client.get("/browse/instance", params={"uid": SERIES + ".1"}).text
    assert f"(0040,A160) Text Value  UT: ({len(TEXT)} bytes, not shown)" in page
    assert f"(0042,0011) Encapsulated Document  OB: ({len(DOCUMENT)} bytes, not shown)" in page
    assert "report report" not in page


def test_a_pattern_longer_than_any_name_is_400_not_503(web) -> None:
    """review38mem N1: a 60 KiB wildcard passed to SQLite, which refused it as an error
    of the index: 503 'index unavailable'."""
    client, _url = web
    r = client.get("/studies", params={"PatientName": "A" * 60_000 + "*"})
    assert r.status_code == 400
    assert "at most 1024 characters: PatientName has 60001" in r.text
    assert client.get("/studies", params={"PatientName": "DOE*"}).status_code == 200


def test_in_implicit_vr_the_dictionary_tells_a_sequence_and_a_bulk_vr(web) -> None:
    """review39 #6, #11: without an encoded VR a long sequence was hidden as '??', and
    /bulkdata served any attribute (a Patient's Name)."""
    client, _url = web
    page = client.get("/browse/instance", params={"uid": SERIES + ".2"}).text
    assert "Referenced Image Sequence  SQ: 300 item(s)" in page
    assert f"(0010,0010) Patient&#x27;s Name  PN: ({MAX_INLINE + 2} bytes, not shown)" in page
    base = f"/studies/{STUDY}/series/{SERIES}/instances/{SERIES}.2"
    assert client.get(f"{base}/bulkdata/00100010").status_code == 404
