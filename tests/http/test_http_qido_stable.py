"""QIDO-RS and study-complete events (issue 16, http/qido.py, services/stable_search.py):
a study reported stable carries dicomstore's private block (0009,0010) "DICOMSTORE",
(0009,1010) DT (PS3.5 7.8.1, PS3.18 F.2.2) and passes ``stable=true``, until an
instance arrives after its event."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from http_testlib import HttpThread, make_dataset, store

from dicomstore.archive import Archive
from dicomstore.archive.reader import ArchiveReader
from dicomstore.services.stable_log import StableLog, StableStudy

#: On both index engines (issue 17).
pytestmark = pytest.mark.usefixtures("index_engine")

STABLE, OTHER, NEVER = "1.2.826.0.1.3680043.10.7.1", "1.2.826.0.1.3680043.10.7.2", "1.2.7.3"
CREATOR, STABLE_AT = "00090010", "00091010"


def _store(archive: Archive, study: str, n: int) -> None:
    uid = f"{study}.1.{n}"
    store(archive, make_dataset(uid, study=study, series=study + ".1", number=n))


def report(root: Path, study: str, stable_at: str) -> None:
    """A study-complete event covering the study's newest instance, as
    services/stability.py logs it."""
    arrivals = [r["received_at"] for r in ArchiveReader(root).instances(StudyInstanceUID=study)]
    first, last = min(arrivals), max(arrivals)
    event = StableStudy(study, "PID1", len(arrivals), 1, first, last, stable_at, "")
    StableLog(root, fsync=False).append(event)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[httpx.Client, Archive]]:
    archive = Archive(tmp_path / "archive", fsync=False)
    for study in (STABLE, OTHER, NEVER):
        _store(archive, study, 1)
    with HttpThread(archive) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        yield client, archive
    archive.close()


def studies(client: httpx.Client, path: str = "/studies", **params: str) -> dict[str, dict]:
    r = client.get(path, params=params)
    assert r.status_code == 200, r.text
    return {row["0020000D"]["Value"][0]: row for row in r.json()}


def test_a_reported_study_shows_when_it_became_stable_and_passes_the_filter(site) -> None:
    client, archive = site
    report(archive.root, STABLE, "2024-06-01T12:30:45.123456+00:00")
    report(archive.root, OTHER, "2024-06-02T08:00:00.000001+02:00")  # DT is given in UTC
    found = studies(client)
    assert found[STABLE][CREATOR] == {"vr": "LO", "Value": ["DICOMSTORE"]}
    assert found[STABLE][STABLE_AT] == {"vr": "DT", "Value": ["20240601123045.123456+0000"]}
    assert found[OTHER][STABLE_AT]["Value"] == ["20240602060000.000001+0000"]
    assert list(found[STABLE]) == sorted(found[STABLE])  # F.2.2: ordered by tag
    assert CREATOR not in found[NEVER] and STABLE_AT not in found[NEVER]
    assert sorted(studies(client, stable="true")) == sorted([STABLE, OTHER])
    assert list(studies(client, stable="false")) == [NEVER]
    # the study attributes of /series carry it; a study's series (no study attributes) do not
    (series,) = client.get("/series", params={"StudyInstanceUID": STABLE}).json()
    assert series[STABLE_AT]["Value"] == ["20240601123045.123456+0000"]
    (own,) = client.get(f"/studies/{STABLE}/series").json()
    assert STABLE_AT not in own
    assert client.get(f"/studies/{NEVER}/series", params={"stable": "true"}).json() == []


def test_limit_and_offset_count_the_studies_the_filter_keeps(site) -> None:
    client, archive = site
    report(archive.root, STABLE, "2024-06-01T12:00:00+00:00")
    report(archive.root, NEVER, "2024-06-01T12:00:00+00:00")
    r = client.get("/studies", params={"stable": "true", "limit": "1"})
    assert len(r.json()) == 1 and "additional results" in r.headers["warning"]
    rest = client.get("/studies", params={"stable": "true", "limit": "1", "offset": "1"}).json()
    assert {r.json()[0]["0020000D"]["Value"][0], rest[0]["0020000D"]["Value"][0]} == {
        STABLE,
        NEVER,
    }


def test_an_instance_after_the_event_makes_the_study_unstable_until_the_next(site) -> None:
    client, archive = site
    report(archive.root, STABLE, "2024-06-01T12:00:00+00:00")
    assert STABLE_AT in studies(client)[STABLE]
    _store(archive, STABLE, 2)
    assert STABLE_AT not in studies(client)[STABLE]
    assert STABLE in studies(client, stable="false")
    assert STABLE not in studies(client, stable="true")
    report(archive.root, STABLE, "2024-06-01T13:00:00+00:00")
    assert studies(client)[STABLE][STABLE_AT]["Value"] == ["20240601130000.000000+0000"]
    assert STABLE in studies(client, stable="true")


def test_the_filter_compares_arrivals_as_times_not_as_text(site) -> None:
    client, archive = site
    arrivals = ArchiveReader(archive.root).instances(StudyInstanceUID=STABLE)
    (newest,) = [datetime.fromisoformat(r["received_at"]) for r in arrivals]
    behind = newest.astimezone(timezone(timedelta(hours=-5))).isoformat()  # the same instant
    event = StableStudy(STABLE, "PID1", 1, 1, behind, behind, "2024-06-01T12:00:00+00:00", "")
    StableLog(archive.root, fsync=False).append(event)
    assert list(studies(client, stable="true")) == [STABLE]
    assert STABLE_AT in studies(client)[STABLE]


@pytest.mark.parametrize("value", ["yes", "", "TRUE", "1"])
def test_another_value_of_stable_is_a_400_with_the_reason(site, value: str) -> None:
    client, _archive = site
    r = client.get("/studies", params={"stable": value})
    assert r.status_code == 400
    assert "stable must be true or false" in r.text


def test_stable_elements_are_in_utc_dt() -> None:
    from dicomstore.http.dicomjson import stable_elements

    assert stable_elements(None) == {}
    when = datetime(2024, 1, 2, 3, 4, 5, 6, UTC).isoformat()
    assert stable_elements(when)[STABLE_AT]["Value"] == ["20240102030405.000006+0000"]
