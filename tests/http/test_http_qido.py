"""QIDO-RS (PS3.18 10.6) against a real uvicorn server over a filled archive."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from http_testlib import MR, HttpThread, make_dataset, store

from dicomstore.archive import Archive

STUDY_A, STUDY_B, STUDY_C = "1.2.826.0.1.3680043.10.9.1", "1.2.826.0.1.3680043.10.9.2", "1.2.9.3"
SERIES_CT, SERIES_MR = STUDY_A + ".1", STUDY_A + ".2"


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator[httpx.Client]:
    archive = Archive(tmp_path_factory.mktemp("qido") / "archive", fsync=False)
    a = {"study": STUDY_A, "patient_id": "PID1", "patient_name": "Doe^Jane"}
    store(archive, make_dataset("1.2.9.1.1", series=SERIES_CT, number=1, frames=3, **a))
    store(archive, make_dataset("1.2.9.1.2", series=SERIES_CT, number=2, **a))
    mr = {"modality": "MR", "sop_class": MR, "series_number": 2}
    store(archive, make_dataset("1.2.9.1.3", series=SERIES_MR, **mr, **a))
    store(
        archive,
        make_dataset(
            "1.2.9.2.1",
            study=STUDY_B,
            series=STUDY_B + ".1",
            patient_id="PID2",
            patient_name="DOE^JOHN",
            study_date="20231215",
            study_time="141500",
            accession="ACC2",
        ),
        calling_ae="OTHER",
    )
    store(
        archive,
        make_dataset(
            "1.2.9.3.1",
            study=STUDY_C,
            series=STUDY_C + ".1",
            patient_id="PID3",
            patient_name="Smith^Ann",
            modality="US",
            study_date="20240610",
            accession="X_1",
        ),
    )
    with HttpThread(archive) as srv, httpx.Client(base_url=srv.url) as http:
        yield http
    archive.close()


def uids(results: list[dict], tag: str = "0020000D") -> list[str]:
    return sorted(r[tag]["Value"][0] for r in results)


def search(client: httpx.Client, path: str, **params) -> list[dict]:
    r = client.get(path, params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom+json"
    return r.json()


def test_study_results_carry_table_10_6_3_3(client) -> None:
    (study,) = search(client, "/studies", PatientID="PID1")
    vrs = {
        "00080020": "DA", "00080030": "TM", "00080050": "SH", "00080056": "CS",
        "00080061": "CS", "00080090": "PN", "00081190": "UR", "00100010": "PN",
        "00100020": "LO", "00100030": "DA", "00100040": "CS", "0020000D": "UI",
        "00200010": "SH", "00201206": "IS", "00201208": "IS",
    }  # fmt: skip
    for tag, vr in vrs.items():
        assert study[tag]["vr"] == vr, tag
    assert study["00080061"]["Value"] == ["CT", "MR"]
    assert study["00201206"]["Value"] == [2]
    assert study["00201208"]["Value"] == [3]
    assert study["00100010"]["Value"] == [{"Alphabetic": "Doe^Jane"}]
    assert study["00081190"]["Value"] == [f"{client.base_url}/studies/{STUDY_A}"]
    assert study["00080056"]["Value"] == ["ONLINE"]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, [STUDY_A, STUDY_B, STUDY_C]),
        ({"PatientName": "doe*"}, [STUDY_A, STUDY_B]),  # PN: case-insensitive wildcard
        ({"PatientName": "DOE^JOH?"}, [STUDY_B]),
        ({"00100020": "PID3"}, [STUDY_C]),  # by tag
        ({"(0010,0020)": "PID3"}, [STUDY_C]),
        ({"StudyDate": "20240101-20241231"}, [STUDY_A, STUDY_C]),
        ({"StudyDate": "-20231231"}, [STUDY_B]),
        ({"StudyDate": "20240610-"}, [STUDY_C]),
        ({"StudyDate": "20231215"}, [STUDY_B]),
        ({"StudyTime": "0900-0959"}, [STUDY_A, STUDY_C]),
        ({"StudyTime": "14-"}, [STUDY_B]),
        ({"AccessionNumber": "ACC?"}, [STUDY_A, STUDY_B]),
        ({"AccessionNumber": "X_*"}, [STUDY_C]),
        ({"AccessionNumber": "acc1"}, []),  # SH: case-sensitive
        ({"ModalitiesInStudy": "MR"}, [STUDY_A]),
        ({"ModalitiesInStudy": "US,MR"}, [STUDY_A, STUDY_C]),
        ({"Modality": "CT"}, [STUDY_A, STUDY_B]),  # a series attribute at study level
        ({"StudyInstanceUID": f"{STUDY_A},{STUDY_C}"}, [STUDY_A, STUDY_C]),
        ({"StudyInstanceUID": f"{STUDY_B}\\{STUDY_C}"}, [STUDY_B, STUDY_C]),
        ({"SOPInstanceUID": "1.2.9.1.3"}, [STUDY_A]),
        ({"PatientName": "*", "fuzzymatching": "true"}, [STUDY_A, STUDY_B, STUDY_C]),
        ({"PatientID": ""}, [STUDY_A, STUDY_B, STUDY_C]),  # empty: universal matching
    ],
)
def test_study_matching(client, params, expected) -> None:
    assert uids(search(client, "/studies", **params)) == sorted(expected)


def test_limit_offset_and_more_results_warning(client) -> None:
    r = client.get("/studies", params={"limit": 2})
    assert len(r.json()) == 2
    assert "additional results" in r.headers["warning"]
    rest = client.get("/studies", params={"limit": 2, "offset": 2})
    assert len(rest.json()) == 1 and "warning" not in rest.headers
    assert uids(r.json() + rest.json()) == sorted([STUDY_A, STUDY_B, STUDY_C])


def test_series_searches(client) -> None:
    series = search(client, f"/studies/{STUDY_A}/series")
    assert uids(series, "0020000E") == [SERIES_CT, SERIES_MR]
    ct = next(s for s in series if s["0020000E"]["Value"] == [SERIES_CT])
    assert ct["00201209"]["Value"] == [2] and ct["00080060"]["Value"] == ["CT"]
    assert "00100010" not in ct  # study attributes only for /series
    assert ct["00081190"]["Value"][0].endswith(f"/studies/{STUDY_A}/series/{SERIES_CT}")
    everywhere = search(client, "/series", Modality="CT", PatientID="PID*")
    assert uids(everywhere, "0020000E") == [SERIES_CT, STUDY_B + ".1"]
    assert all("00100010" in s and "00201208" in s for s in everywhere)


def test_instance_searches(client) -> None:
    in_series = search(client, f"/studies/{STUDY_A}/series/{SERIES_CT}/instances")
    assert uids(in_series, "00080018") == ["1.2.9.1.1", "1.2.9.1.2"]
    assert "0020000E" not in in_series[0]
    in_study = search(client, f"/studies/{STUDY_A}/instances", SOPClassUID=MR)
    assert uids(in_study, "00080018") == ["1.2.9.1.3"]
    assert in_study[0]["0020000E"]["Value"] == [SERIES_MR]  # series attributes included
    everything = search(client, "/instances", InstanceNumber="1", Modality="CT")
    assert uids(everything, "00080018") == ["1.2.9.1.1", "1.2.9.2.1", "1.2.9.3.1"][:2]
    assert everything[0]["00100020"]["vr"] == "LO"


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/studies", {}),
        ("/series", {}),
        ("/instances", {}),
        (f"/studies/{STUDY_A}/instances", {}),
        ("/studies", {"includefield": "StudyInstanceUID,00081030,Rows"}),
        (f"/studies/{STUDY_A}/series/{SERIES_CT}/instances", {"includefield": "all"}),
    ],
)
def test_each_result_is_in_the_order_of_its_tags(client, path, params) -> None:
    """F.2.1: a DICOM JSON object's attributes are in tag order (made in that order,
    or sorted when include fields add some)."""
    results = search(client, path, **params)
    assert results
    for result in results:
        assert list(result) == sorted(result)


def test_includefield_reads_instance_headers(client) -> None:
    path = f"/studies/{STUDY_A}/series/{SERIES_CT}/instances"
    (multi,) = search(client, path, SOPInstanceUID="1.2.9.1.1", includefield="all")
    assert multi["00280010"] == {"vr": "US", "Value": [4]}
    assert multi["00280008"]["Value"] == [3]
    (named,) = search(client, path, SOPInstanceUID="1.2.9.1.1", includefield="SeriesDescription")
    assert named["0008103E"]["Value"] == ["Axial"]
    (study,) = search(client, "/studies", PatientID="PID1", includefield="00100010,Rows")
    assert "00280010" not in study  # instance attributes are not returned for studies


def test_path_and_parameter_that_disagree_match_nothing(client) -> None:
    assert search(client, f"/studies/{STUDY_A}/series", StudyInstanceUID=STUDY_B) == []
    assert search(client, "/studies", PatientID="nobody") == []


def test_unsupported_attribute_is_ignored_with_a_warning(client) -> None:
    r = client.get("/studies", params={"PatientWeight": "70"})
    assert r.status_code == 200 and len(r.json()) == 3
    assert "unsupported: PatientWeight" in r.headers["warning"]


@pytest.mark.parametrize(
    ("params", "headers", "status", "words"),
    [
        ({"NoSuchKeyword": "1"}, {}, 400, "NoSuchKeyword"),
        ({"StudyDate": "2024-13"}, {}, 400, "date"),
        ({"StudyDate": "99999999"}, {}, 400, "not a date"),  # (review35a: 200 [])
        ({"StudyDate": "20241301-20241302"}, {}, 400, "date"),
        ({"StudyTime": "250000"}, {}, 400, "not a time"),
        ({"limit": "-1"}, {}, 400, "limit"),
        ({"includefield": "Bogus"}, {}, 400, "Bogus"),
        ({"SeriesNumber": "x"}, {}, 400, "integer"),
        ([("limit", "1"), ("limit", "5")], {}, 400, "limit is given more than once"),
        ([("stable", "true"), ("stable", "false")], {}, 400, "more than once"),
        ({}, {"accept": "application/dicom+xml"}, 406, "media type"),
    ],
)
def test_errors_are_statuses_with_a_readable_line(client, params, headers, status, words) -> None:
    r = client.get("/studies", params=params, headers=headers)
    assert r.status_code == status
    assert r.headers["content-type"].startswith("text/plain")
    assert words in r.text and r.text.count("\n") == 1


def test_includefield_above_instances_reads_one_instances_header(tmp_path) -> None:
    """review45 M6: C-FIND returned Patient's Age at STUDY level and Manufacturer at
    SERIES level from a stored header; QIDO-RS left them out without a word."""
    archive = Archive(tmp_path / "archive", fsync=False)
    ds = make_dataset("1.2.9.7.1", study="1.2.9.7", series="1.2.9.7.1", patient_id="PID7")
    ds.PatientAge, ds.Manufacturer = "054Y", "BenchCo"
    store(archive, ds)
    with HttpThread(archive) as srv, httpx.Client(base_url=srv.url) as http:
        (study,) = search(
            http, "/studies", PatientID="PID7", includefield="PatientAge,Manufacturer"
        )
        (series,) = search(http, "/series", PatientID="PID7", includefield="Manufacturer")
    archive.close()
    assert study["00101010"] == {"vr": "AS", "Value": ["054Y"]}
    assert "00080070" not in study  # (a series attribute: not a study's)
    assert series["00080070"] == {"vr": "LO", "Value": ["BenchCo"]}


def test_an_index_that_is_down_is_503_with_its_cause_not_its_url(
    client, monkeypatch, caplog
) -> None:
    """review50 #4: the 503 gave any client the index URL, a password in it included
    ('index postgresql://pg@host/pacs?password=...: connection failed'); the log has it."""
    from dicomstore.archive import query as q
    from dicomstore.archive.engine import PostgresOperationalError

    def down(*_args, **_kwargs):
        raise PostgresOperationalError(
            "index postgresql://pg@db:5432/pacs?password=***: connection failed: refused",
            "connection failed: refused",
        )

    monkeypatch.setattr(q, "search", down)
    with caplog.at_level("WARNING", logger="dicomstore.http"):
        r = client.get("/studies")
    assert r.status_code == 503
    assert "connection failed: refused" in r.text and "postgresql" not in r.text
    assert "index postgresql://pg@db:5432/pacs?password=***" in caplog.text


def _value(result: dict, tag: str):
    return result[tag]["Value"][0] if tag in result else None


def test_the_counts_of_a_result_are_its_own_entity_s(client) -> None:
    """review111 F1: an All Series result gave its series' instance count as its
    study's (series of one study saying 2 and 1 of a study of 3), and includefield of
    a patient's counts gave the study's or series'. A study's and a series' counts
    are their own (PS3.4 C.3.2), read from their rows; a patient's are left out."""
    series = search(client, "/series", StudyInstanceUID=STUDY_A)
    assert uids(series, "0020000E") == [SERIES_CT, SERIES_MR]
    assert [_value(s, "00201209") for s in series] == [2, 1]  # (each series')
    assert [_value(s, "00201208") for s in series] == [3, 3]  # (their study's)
    assert [_value(s, "00201206") for s in series] == [2, 2]
    assert [s["00080061"]["Value"] for s in series] == [["CT", "MR"], ["CT", "MR"]]
    asked = search(
        client,
        f"/studies/{STUDY_A}/series",
        includefield="NumberOfStudyRelatedInstances,NumberOfPatientRelatedInstances",
    )
    assert [_value(s, "00201208") for s in asked] == [3, 3]
    assert all("00201204" not in s for s in asked)  # (a patient's: not given)
    (study,) = search(
        client, "/studies", StudyInstanceUID=STUDY_A, includefield="NumberOfPatientRelatedInstances"
    )
    assert _value(study, "00201208") == 3 and "00201204" not in study
    instances = search(client, "/instances", StudyInstanceUID=STUDY_A)
    assert {_value(i, "00201208") for i in instances} == {3}
    by_series = {i["0020000E"]["Value"][0]: _value(i, "00201209") for i in instances}
    assert by_series == {SERIES_CT: 2, SERIES_MR: 1}


@pytest.mark.parametrize(
    ("option", "said"),
    [
        ("fuzzymatching", "Only literal matching has been performed."),
        ("emptyvaluematching", "Empty Value Matching has not been performed."),
        ("multiplevaluematching", "Multiple Value Matching has not been performed."),
    ],
)
def test_matching_options_not_supported_are_said_so(client, option, said) -> None:
    """review111 F2, review114: PS3.18 8.3.4.2, 8.3.4.5, 8.3.4.6: a server without
    fuzzy, empty value or multiple value matching answers the option true with a
    Warning saying so (emptyvaluematching was taken for no parameter, as 'emptyvalue'),
    a value neither true nor false with 400."""
    r = client.get("/studies", params={"PatientName": "doe", option: "true"})
    assert r.status_code == 200
    assert (
        r.headers["Warning"] == f'299 dicomstore "The {option} parameter is not supported. {said}"'
    )
    r = client.get("/studies", params={"PatientName": "doe", option: "false"})
    assert "Warning" not in r.headers
    assert client.get("/studies", params={option: "bogus"}).status_code == 400


def test_the_counts_of_a_study_two_patients_hold_are_each_one_s(tmp_path) -> None:
    """review113 M2: the study rows were found by UID alone: under
    --on-relational-mismatch accept two patients hold one Study Instance UID, and a
    series of one gave the other's study counts (1 instance, MR for 3, CT)."""
    study = "1.2.826.0.1.3680043.10.992"
    archive = Archive(tmp_path / "a", fsync=False, on_relational_mismatch="accept")
    a = {"study": study, "series": study + ".1", "patient_id": "A", "patient_name": "A^A"}
    for n in range(3):
        store(archive, make_dataset(f"1.2.992.1.{n}", **a))
    b = {"study": study, "series": study + ".2", "patient_id": "B", "patient_name": "B^B"}
    store(archive, make_dataset("1.2.992.2.0", modality="MR", sop_class=MR, **b))
    with HttpThread(archive) as srv, httpx.Client(base_url=srv.url) as http:
        series = search(http, "/series", StudyInstanceUID=study)
    archive.close()
    found = {
        s["00100020"]["Value"][0]: (_value(s, "00201208"), s["00080061"]["Value"]) for s in series
    }
    assert found == {"A": (3, ["CT"]), "B": (1, ["MR"])}
