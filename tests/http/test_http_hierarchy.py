"""Hierarchy integrity at the HTTP doors: STOW-RS answers A900 for a series or
study filed elsewhere and for a data set without Study/Series UID; QIDO, WADO
metadata, the browse page and its zips never show one patient's instance
under another's study, nor select "everything" from an empty Patient ID."""

from __future__ import annotations

import io
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from http_testlib import HttpThread, make_dataset, multipart_body, part10, store

from dicomstore.archive import Archive

#: On both index engines (issue 17).
pytestmark = pytest.mark.usefixtures("index_engine")

STUDY_A, STUDY_B = "1.2.826.0.1.3680043.10.8.1", "1.2.826.0.1.3680043.10.8.2"
SERIES = STUDY_A + ".1"


def alpha(sop: str = "1.2.8.1", **kw):
    return make_dataset(
        sop, study=STUDY_A, series=SERIES, patient_id="A", patient_name="ALPHA^A", **kw
    )


def beta(sop: str = "1.2.8.2", **kw):
    kw.setdefault("study", STUDY_B)
    kw.setdefault("series", SERIES)
    return make_dataset(sop, patient_id="B", patient_name="BETA^B", **kw)


@pytest.fixture
def web(tmp_path: Path, request) -> Iterator[tuple[httpx.Client, Archive]]:
    archive = Archive(tmp_path / "archive", fsync=False, **getattr(request, "param", {}))
    with HttpThread(archive) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        yield client, archive
    archive.close()


def stow(client: httpx.Client, *datasets) -> httpx.Response:
    body, content_type = multipart_body([part10(ds) for ds in datasets])
    return client.post("/studies", content=body, headers={"content-type": content_type})


def failures(response: httpx.Response) -> dict[str, int]:
    items = response.json().get("00081198", {}).get("Value", [])
    return {i["00081155"]["Value"][0]: i["00081197"]["Value"][0] for i in items}


def test_stow_refuses_a_series_of_another_study(web) -> None:
    client, archive = web
    r = stow(client, alpha(), beta())
    assert r.status_code == 202, r.text
    assert failures(r) == {"1.2.8.2": 0xA900}
    assert [i["sop_instance_uid"] for i in archive.instances()] == ["1.2.8.1"]
    meta = client.get(f"/studies/{STUDY_B}/metadata")
    assert meta.status_code == 404


def test_stow_refuses_a_study_of_another_patient(web) -> None:
    client, archive = web
    assert stow(client, alpha()).status_code == 200
    r = stow(client, beta(study=STUDY_A, series=SERIES + ".2"))
    assert r.status_code == 409, r.text
    assert failures(r) == {"1.2.8.2": 0xA900}


def test_stow_refuses_another_patient_and_study_after_the_pixels(web) -> None:
    """review76 F1: elements after the Pixel Data that repeat the Patient ID and Study
    Instance UID (a reader keeping the last of two files the stored instance under
    patient A's study) are refused C000, in the same check as C-STORE's."""
    client, archive = web
    assert stow(client, alpha()).status_code == 200
    tail = b""
    for tag, vr, value in ((0x00100020, b"LO", b"A "), (0x0020000D, b"UI", STUDY_A.encode())):
        value += b"\0" * (len(value) % 2)
        tail += struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value
    data = part10(beta(frames=1, series=STUDY_B + ".1")) + tail
    body, content_type = multipart_body([data])
    r = client.post("/studies", content=body, headers={"content-type": content_type})
    assert r.status_code == 409, r.text
    assert failures(r) == {"1.2.8.2": 0xC000}
    assert [i["sop_instance_uid"] for i in archive.instances()] == ["1.2.8.1"]


@pytest.mark.parametrize("missing", ["StudyInstanceUID", "SeriesInstanceUID"])
def test_stow_refuses_a_data_set_without_study_or_series(web, missing: str) -> None:
    client, archive = web
    ds = alpha()
    delattr(ds, missing)
    r = stow(client, ds)
    assert r.status_code == 409, r.text
    assert failures(r) == {"1.2.8.1": 0xA900}
    assert archive.instances() == []


@pytest.mark.parametrize("web", [{"on_relational_mismatch": "accept"}], indirect=True)
def test_accepted_reuse_never_shows_one_patient_under_the_others_study(web) -> None:
    client, archive = web
    assert stow(client, alpha(), beta()).status_code == 200
    names = [
        item["00100010"]["Value"][0]["Alphabetic"]
        for item in client.get(f"/studies/{STUDY_B}/metadata").json()
    ]
    assert names == ["BETA^B"]
    studies = client.get("/studies", params={"includefield": "all"}).json()
    counts = {s["0020000D"]["Value"][0]: s["00201208"]["Value"][0] for s in studies}
    assert counts == {STUDY_A: 1, STUDY_B: 1}
    series = client.get(f"/studies/{STUDY_A}/series").json()
    assert [s["00201209"]["Value"][0] for s in series] == [1]


def test_browse_and_zip_with_an_empty_patient_id(web) -> None:
    client, archive = web
    for study in ("1.2.8.10", "1.2.8.20"):
        store(
            archive, make_dataset(f"{study}.1.1", study=study, series=f"{study}.1", patient_id="")
        )
    store(archive, alpha())
    home = client.get("/").text
    assert "/browse/patient?id=&" not in home and "patient.zip?id=&" not in home
    # each ID-less patient links to its own study, never to a page of every study
    assert 'href="/browse/study?uid=1.2.8.10"' in home
    assert 'href="/browse/study?uid=1.2.8.20"' in home
    assert "/studies/1.2.8.10?accept=application/zip" in home
    for page in ("/browse/patient", "/browse/patient.zip"):
        r = client.get(page, params={"id": ""})
        assert r.status_code == 400, r.text
        assert "patient ID" in r.text
    zipped = client.get("/studies/1.2.8.10", params={"accept": "application/zip"})
    assert zipped.status_code == 200
    names = zipfile.ZipFile(io.BytesIO(zipped.content)).namelist()
    assert len(names) == 1 and "1.2.8.10.1.1" in names[0]
    # a patient with an ID: exact match on ID and Issuer, only its own instances
    zipped = client.get("/browse/patient.zip", params={"id": "A", "issuer": ""})
    assert len(zipfile.ZipFile(io.BytesIO(zipped.content)).namelist()) == 1
    assert client.get("/browse/patient", params={"id": "A*"}).status_code == 404


def test_downloads_named_in_letters_a_header_cannot_hold(web) -> None:
    """review38web #5: a Patient ID in Japanese made the patient zip answer 500."""
    client, archive = web
    ds = make_dataset("1.2.8.30.1.1", study="1.2.8.30", series="1.2.8.30.1", patient_id="患者1")
    ds.SpecificCharacterSet = "ISO_IR 192"
    store(archive, ds)
    r = client.get("/browse/patient.zip", params={"id": "患者1", "issuer": ""})
    assert r.status_code == 200, r.text
    assert r.headers["content-disposition"] == (
        "attachment; filename=\"__1.zip\"; filename*=UTF-8''%E6%82%A3%E8%80%851.zip"
    )
    assert len(zipfile.ZipFile(io.BytesIO(r.content)).namelist()) == 1
    r = client.get("/studies/1.2.8.30", params={"accept": "application/zip"})
    assert r.headers["content-disposition"] == 'attachment; filename="1.2.8.30.zip"'


def test_a_query_parameter_named_path_is_kept_in_the_pager(web) -> None:
    """review38web #6: ``?path=x&offset=1`` answered 500 (a keyword of the URL maker)."""
    client, archive = web
    store(archive, alpha())
    for page in ("/", "/browse/search"):
        r = client.get(page, params={"path": "x", "offset": "1"})
        assert r.status_code == 200, r.text
        assert f'href="{page}?path=x&amp;offset=0"' in r.text
