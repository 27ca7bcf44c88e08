"""The browse page in a real headless Chromium: from / down to an instance, all escaped."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator

import httpx
import pytest
from browser_testlib import chromium
from http_testlib import HttpThread, make_dataset, store

from dicomstore.archive import Archive

#: On both index engines (issue 17).
pytestmark = pytest.mark.usefixtures("index_engine")

EVIL_NAME = "<script>window.pwned=1</script>^Evil"
EVIL_TEXT = '"><img src=x onerror="window.pwned=2">'
STUDY = "1.2.826.0.1.3680043.10.3"
SERIES = STUDY + ".7"


@pytest.fixture(scope="module")
def site(tmp_path_factory, index_engine: str) -> Iterator[tuple[str, Archive]]:
    archive = Archive(tmp_path_factory.mktemp("browse") / "archive", fsync=False)
    for n in (1, 2):
        ds = make_dataset(
            f"1.2.3.7.{n}", study=STUDY, series=SERIES, patient_name=EVIL_NAME, number=n, frames=1
        )
        ds.PatientID = "ID/with?odd&chars"
        ds.StudyDescription = EVIL_TEXT
        ds.SeriesDescription = EVIL_TEXT
        store(archive, ds)
    store(archive, make_dataset("1.2.3.8.1", study="1.2.3.8", series="1.2.3.8.1", patient_id="P2"))
    with HttpThread(archive) as srv:
        yield srv.url, archive
    archive.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with chromium(tmp_path_factory.mktemp("chromium")) as driver:
        yield driver


def follow(driver, text: str) -> None:
    """Click the table link whose visible text is ``text``; wait for the new page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    old = driver.find_element(By.TAG_NAME, "html")
    (link,) = [a for a in driver.find_elements(By.CSS_SELECTOR, "tbody a") if a.text == text]
    link.click()
    WebDriverWait(driver, 30).until(expected_conditions.staleness_of(old))


def assert_not_injected(driver) -> None:
    from selenium.webdriver.common.by import By

    assert driver.execute_script("return window.pwned === undefined")
    assert driver.find_elements(By.TAG_NAME, "script") == []
    for img in driver.find_elements(By.TAG_NAME, "img"):  # only ours: rendered images
        src = img.get_attribute("src").split("/", 3)[3]
        assert src.startswith("studies/") and "/thumbnail" in src or "/rendered" in src, src
        assert img.get_attribute("onerror") is None


def test_from_patients_down_to_an_instance(site, browser) -> None:
    """Down from the patients, with each series' and instance's thumbnail and the
    instance's preview rendered by the server (``/thumbnail``, ``/rendered``)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, archive = site
    browser.get(url + "/")
    assert browser.title.startswith("Patients")
    body = browser.find_element(By.TAG_NAME, "body").text
    assert EVIL_NAME in body and "ID/with?odd&chars" in body  # shown as text, not markup
    assert_not_injected(browser)
    rows = browser.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert len(rows) == 2
    evil_row = next(r for r in rows if EVIL_NAME in r.text)
    cells = [td.text for td in evil_row.find_elements(By.TAG_NAME, "td")]
    assert cells[4:7] == ["1", "1", "2"]  # studies, series, instances
    patient_zip = evil_row.find_element(By.LINK_TEXT, "download zip").get_attribute("href")

    follow(browser, EVIL_NAME)  # the patient: its studies
    assert "Studies of" in browser.title
    assert EVIL_TEXT in browser.find_element(By.TAG_NAME, "body").text
    assert_not_injected(browser)
    zip_link = browser.find_element(By.LINK_TEXT, "download zip").get_attribute("href")
    assert zip_link == f"{url}/studies/{STUDY}?accept=application%2Fzip" or zip_link.endswith(
        f"/studies/{STUDY}?accept=application/zip"
    )

    follow(browser, "2024-01-02")  # the study: its series
    assert "Study 2024-01-02" in browser.title
    assert_not_injected(browser)
    cells = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "tbody td")]
    assert "CT" in cells and "2" in cells

    thumbs = "return [...document.images].map(i => i.complete && i.naturalWidth > 0)"
    WebDriverWait(browser, 30).until(lambda d: d.execute_script(thumbs) == [True])  # 1 series

    follow(browser, "1")  # the series (number 1): its instances
    assert browser.title.startswith("Series 1")
    assert len(browser.find_elements(By.CSS_SELECTOR, "tbody tr")) == 2
    WebDriverWait(browser, 30).until(lambda d: d.execute_script(thumbs) == [True, True])
    anchors = browser.find_elements(By.LINK_TEXT, "download .dcm")
    dcm_links = [a.get_attribute("href") for a in anchors]

    follow(browser, "2")  # instance number 2: its header
    assert browser.title.startswith("Instance 2")
    header = browser.find_element(By.TAG_NAME, "pre").text
    assert "1.2.3.7.2" in header and "(0010,0010) Patient's Name" in header
    assert EVIL_NAME in header
    assert_not_injected(browser)
    shown = "return [...document.images].map(i => i.complete && i.naturalWidth > 0)"
    WebDriverWait(browser, 30).until(lambda d: d.execute_script(shown) == [True])  # a preview

    # the download links give the stored files (zip for the study, .dcm for an instance)
    with httpx.Client() as client:
        (stored,) = [r for r in archive.instances() if r["sop_instance_uid"] == "1.2.3.7.1"]
        data = (archive.root / stored["path"]).read_bytes()
        assert client.get(dcm_links[0]).content == data
        for link in (zip_link, patient_zip):
            with zipfile.ZipFile(io.BytesIO(client.get(link).content)) as z:
                assert z.read(stored["path"]) == data
                assert len(z.namelist()) == 2


def test_unknown_pages_are_404(site) -> None:
    url, _ = site
    with httpx.Client(base_url=url) as client:
        assert client.get("/browse/study", params={"uid": "9.9"}).status_code == 404
        assert client.get("/browse/patient", params={"id": "nobody"}).status_code == 404
        assert client.get("/browse/patient.zip", params={"id": "nobody"}).status_code == 404
        # (review118 F4: no UID at all was 404 "study '' is not in the archive")
        for level in ("study", "series", "instance"):
            reply = client.get(f"/browse/{level}")
            assert reply.status_code == 400 and f"no {level} UID given" in reply.text


def test_a_wado_uri_request_is_400_not_the_patients_page(site) -> None:
    """review45 L6: /?requestType=WADO&... got the browse page, 200."""
    url, _ = site
    with httpx.Client(base_url=url) as client:
        reply = client.get("/", params={"requestType": "WADO", "studyUID": "1.2.3"})
    assert reply.status_code == 400 and "use WADO-RS" in reply.text


def test_search_finds_studies_by_name_id_accession_and_date(site) -> None:
    url, _ = site
    with httpx.Client(base_url=url) as client:
        home = client.get("/").text
        assert 'action="/browse/search"' in home
        assert "<p>2 patients, 2 studies, " in home  # (and "1 patient": review56)
        by_name = client.get("/browse/search", params={"name": "<script"})
        assert by_name.status_code == 200
        assert STUDY in by_name.text and "1.2.3.8" not in by_name.text
        assert "<script>window" not in by_name.text  # escaped, also in the form's value
        by_id = client.get("/browse/search", params={"id": "P2"}).text
        assert "study?uid=1.2.3.8" in by_id and STUDY not in by_id
        everything = client.get("/browse/search").text
        assert STUDY in everything and "study?uid=1.2.3.8" in everything
        none = client.get("/browse/search", params={"accession": "NOPE"}).text
        assert "No study matches." in none
        dated = client.get("/browse/search", params={"from": "1900-01-01", "to": "19000102"})
        assert dated.status_code == 200 and "No study matches." in dated.text
        on_the_day = client.get("/browse/search", params={"from": "2024-01-02", "to": "2024-01-02"})
        assert STUDY in on_the_day.text and "study?uid=1.2.3.8" in on_the_day.text
        since = client.get("/browse/search", params={"from": "2024-01-03", "accession": "ACC1"})
        assert "No study matches." in since.text
        assert STUDY in client.get("/browse/search", params={"accession": "ACC*"}).text
        for params, reason in (
            ({"from": "yesterday"}, "not a date"),
            ({"from": "20200102", "to": "20200101"}, "is after"),
            ({"name": "a\\b"}, "backslash"),
            ({"id": "x" * 201}, "longer than"),
        ):
            reply = client.get("/browse/search", params=params)
            assert reply.status_code == 400 and reason in reply.text, params


def test_one_of_each_is_said_in_the_singular() -> None:
    from dicomstore.http.browse import _counted

    assert [_counted(n, "study", "studies") for n in (0, 1, 2)] == [
        "0 studies",
        "1 study",
        "2 studies",
    ]
