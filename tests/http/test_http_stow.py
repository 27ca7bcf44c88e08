"""STOW-RS (PS3.18 10.5): stored through the C-STORE ingest, answered per Annex I."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from http_testlib import CT, HttpThread, dataset_bytes, make_dataset, multipart_body, part10
from http_testlib import stow_post as post

from dicomstore.archive import Archive
from dicomstore.archive.dicomfile import dataset_offset

#: On both index engines (issue 17).
pytestmark = pytest.mark.usefixtures("index_engine")

STUDY = "1.2.826.0.1.3680043.10.5"
SERIES = STUDY + ".1"


def stored_dataset(archive: Archive, sop: str) -> bytes:
    with open(archive.path_of(sop), "rb") as fp:
        fp.seek(dataset_offset(fp))
        return fp.read()


def instance(sop: str, **kwargs) -> bytes:
    return part10(make_dataset(sop, study=STUDY, series=SERIES, **kwargs))


def test_all_stored_is_200_with_referenced_sop_sequence(server) -> None:
    client, archive = server
    r = post(client, [instance("1.2.5.1", frames=2), instance("1.2.5.2")])
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom+json"
    body = r.json()
    assert body["00081190"]["Value"] == [f"{client.base_url}/studies/{STUDY}"]
    assert "00081198" not in body
    items = body["00081199"]["Value"]
    assert [i["00081155"]["Value"][0] for i in items] == ["1.2.5.1", "1.2.5.2"]
    assert items[0]["00081150"]["Value"] == [CT]
    url = items[0]["00081190"]["Value"][0]
    assert url == f"{client.base_url}/studies/{STUDY}/series/{SERIES}/instances/1.2.5.1"
    # the data set is stored byte for byte, the archive wrote its own file meta
    sent = dataset_bytes(make_dataset("1.2.5.1", study=STUDY, series=SERIES, frames=2))
    assert stored_dataset(archive, "1.2.5.1") == sent
    assert archive.get_instance("1.2.5.1")["calling_ae"] == "STOW-RS"
    assert archive.check() == []
    assert client.get(url).status_code == 200  # and it is retrievable at once


def test_small_chunks_streamed_upload(server) -> None:
    client, archive = server
    body, content_type = multipart_body([instance("1.2.5.3", frames=4), instance("1.2.5.4")])

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 7):
            yield body[start : start + 7]

    r = client.post("/studies", content=chunks(), headers={"content-type": content_type})
    assert r.status_code == 200, r.text
    assert {row["sop_instance_uid"] for row in archive.instances()} == {"1.2.5.3", "1.2.5.4"}


def test_partial_failure_is_202_with_failure_reasons(server) -> None:
    client, archive = server
    mismatch = bytearray(instance("1.2.5.6"))  # the file meta names another instance
    at = mismatch.index(b"1.2.5.6", 132)
    mismatch[at : at + 7] = b"1.2.5.7"
    other_class = part10(make_dataset("1.2.5.8", sop_class="1.2.3.4.5.6.7"))
    r = post(client, [instance("1.2.5.5"), b"not dicom at all", bytes(mismatch), other_class])
    assert r.status_code == 202, r.text
    body = r.json()
    assert [i["00081155"]["Value"][0] for i in body["00081199"]["Value"]] == ["1.2.5.5"]
    reasons = [i["00081197"]["Value"][0] for i in body["00081198"]["Value"]]
    assert reasons == [0xC000, 0xA900, 0x0122]
    assert body["00081198"]["Value"][1]["00081155"]["Value"] == ["1.2.5.7"]
    assert "A900" in r.headers["warning"]  # (review80 F8: no command over STOW-RS)
    assert (
        "SOP Instance UID '1.2.5.6' differs from the '1.2.5.7' it was sent as"
        in (r.headers["warning"])
    )
    assert [row["sop_instance_uid"] for row in archive.instances()] == ["1.2.5.5"]
    assert archive.check() == []


def test_the_answer_is_in_the_media_type_accepted(server) -> None:
    """interop97 I3: the Store Instances Response was JSON whatever the Accept header
    said. dcm4che's stowrs asks for application/dicom+xml: the Native DICOM Model
    (PS3.19 A.1, PS3.18 10.5.3); what is neither JSON nor XML is 406, nothing stored."""
    import xml.etree.ElementTree as ET

    client, archive = server
    body, content_type = multipart_body([instance("1.2.5.40"), b"not dicom at all"])
    xml = {"content-type": content_type, "accept": "application/dicom+xml"}
    r = client.post("/studies", content=body, headers=xml)
    assert r.status_code == 202 and r.headers["content-type"] == "application/dicom+xml"
    ns = {"d": "http://dicom.nema.org/PS3.19/models/NativeDICOM"}
    root = ET.fromstring(r.content)
    assert root.tag == f"{{{ns['d']}}}NativeDicomModel"
    stored = root.find("d:DicomAttribute[@tag='00081199']", ns)
    assert stored is not None and stored.get("keyword") == "ReferencedSOPSequence"
    uid = stored.find("d:Item/d:DicomAttribute[@tag='00081155']/d:Value", ns)
    assert uid is not None and uid.text == "1.2.5.40" and uid.get("number") == "1"
    reason = root.find("d:DicomAttribute[@tag='00081198']/d:Item/d:DicomAttribute/d:Value", ns)
    assert reason is not None and reason.text == str(0xC000)
    url = root.find("d:DicomAttribute[@tag='00081190']/d:Value", ns)
    assert url is not None and url.text == f"{client.base_url}/studies/{STUDY}"
    png = {"content-type": content_type, "accept": "image/png"}
    refused = client.post("/studies", content=instance("1.2.5.41"), headers=png)
    assert refused.status_code == 406
    either = {"content-type": content_type, "accept": "application/json"}
    assert client.post("/studies", content=body, headers=either).json()["00081199"]
    # what older clients ask (review99 V7): XML, not 406
    for older in ("application/xml", "text/xml", 'multipart/related; type="application/dicom+xml"'):
        r = client.post("/studies", content=body, headers={**png, "accept": older})
        assert r.status_code == 202 and ET.fromstring(r.content).tag.endswith("NativeDicomModel")
    assert archive.get_instance("1.2.5.41") is None


def test_duplicate_with_other_content_is_a_warning(server) -> None:
    client, archive = server
    assert post(client, [instance("1.2.5.9")]).status_code == 200
    assert post(client, [instance("1.2.5.9")]).status_code == 200  # identical: success
    r = post(client, [instance("1.2.5.9", number=42)])  # policy keep: B000
    assert r.status_code == 202
    (item,) = r.json()["00081199"]["Value"]
    assert item["00081196"]["Value"] == [0xB000]
    # the door's B000 is the archive's: recorded, Storage Commitment fails it (review101 H2)
    from dicomstore.archive.commitment import PROCESSING_FAILURE, Reference, verify
    from dicomstore.archive.reader import ArchiveReader

    stored = archive.get_instance("1.2.5.9")
    assert stored is not None
    ref = Reference(stored["sop_class_uid"], "1.2.5.9")
    (verdict,) = verify(ArchiveReader(archive.root), [ref])
    assert verdict.failure_reason == PROCESSING_FAILURE, verdict.why


def test_duplicate_of_another_patient_is_a900(server) -> None:
    """review88 F2, the same rule as C-STORE's: a copy of a stored SOP Instance under
    another patient is refused (A900), not B000; the stored copy stays."""
    client, archive = server
    assert post(client, [instance("1.2.5.19")]).status_code == 200
    r = post(client, [instance("1.2.5.19", patient_id="PID2")])
    assert r.status_code == 409, r.text
    (failed,) = r.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xA900]
    assert "already stored under another patient" in r.headers["warning"]
    assert [row["patient_id"] for row in archive.instances()] == ["PID1"]
    # recorded as the B000 is: Storage Commitment fails it (review91 D1)
    from dicomstore.archive.commitment import PROCESSING_FAILURE, Reference, verify
    from dicomstore.archive.reader import ArchiveReader

    (row,) = archive.instances()
    (verdict,) = verify(ArchiveReader(archive.root), [Reference(row["sop_class_uid"], "1.2.5.19")])
    assert verdict.failure_reason == PROCESSING_FAILURE, verdict.why


@pytest.mark.parametrize(
    ("sop", "series"),
    [("1.2/../5.11", SERIES), ("../x", SERIES), ("1.2.5.12", "1.2\\3"), ("1.2.5.15", "1.2\x013")],
)
def test_a_uid_no_url_can_name_is_a900(server, sop, series) -> None:
    """review76 F3: a SOP Instance UID holding "/" was stored, its Retrieve URL 404
    (the router decodes %2F): not a UID (PS3.5 9.1), refused as C-STORE refuses it."""
    client, archive = server
    r = post(client, [instance("1.2.5.14"), part10(make_dataset(sop, study=STUDY, series=series))])
    assert r.status_code == 202, r.text
    body = r.json()
    (failed,) = body["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xA900]
    assert "not a UID (PS3.5 9.1)" in r.headers["warning"]
    assert [row["sop_instance_uid"] for row in archive.instances()] == ["1.2.5.14"]
    (stored,) = body["00081199"]["Value"]
    assert client.get(stored["00081190"]["Value"][0]).status_code == 200  # (retrievable)


def test_study_in_path_must_match(server) -> None:
    client, archive = server
    r = post(client, [part10(make_dataset("1.2.5.10", study="1.2.999"))], f"/studies/{STUDY}")
    assert r.status_code == 409
    (item,) = r.json()["00081198"]["Value"]
    assert item["00081197"]["Value"] == [0xA900]
    assert archive.instances() == [] and archive.check() == []
    assert post(client, [instance("1.2.5.11")], f"/studies/{STUDY}").status_code == 200


def test_unsupported_transfer_syntax_is_c122(server) -> None:
    client, _ = server
    data = bytearray(instance("1.2.5.12"))
    at = data.index(b"1.2.840.10008.1.2.1\x00")
    data[at : at + 20] = b"1.2.3.4.5.6.7.8.9.10"
    r = post(client, [bytes(data)])
    assert r.status_code == 409
    assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC122]


def test_a_broken_file_meta_is_c000_in_our_words(server) -> None:
    """review76 F6: pydicom's exception text reached the client ("'MultiValue' object
    has no attribute 'encode'", a KeyError's repr): the File Meta Information's UIDs
    are read from their bytes, and what is wrong is said."""
    client, archive = server
    two = bytearray(instance("1.2.5.31"))
    at = two.index(b"1.2.5.31", 132)
    two[at : at + 8] = b"1.2\\5.31"  # (two values: 1.2 and 5.31)
    lacking = bytearray(instance("1.2.5.32"))
    at = lacking.index(b"\x02\x00\x02\x00UI", 132)  # (0002,0002) renamed (0002,0001)...
    lacking[at : at + 4] = b"\x02\x00\x01\x00"  # (... whose VR OB it is not: kept as is)
    r = post(client, [bytes(two), bytes(lacking)])
    assert r.status_code == 409, r.text
    warning = r.headers["warning"]
    assert "C000 (0002,0003) Media Storage SOP Instance UID holds more than one value" in warning
    assert "C000 File Meta Information lacks (0002,0002) Media Storage SOP Class UID" in warning
    assert "object" not in warning and archive.instances() == []


@pytest.mark.parametrize(
    ("content_type", "body", "status"),
    [
        ("application/dicom", b"x", 415),
        ('multipart/related; type="application/dicom+json"; boundary=B', b"--B--", 415),
        ('multipart/related; type="application/dicom"', b"--B--", 400),
        ('multipart/related; type="application/dicom"; boundary=B', b"--B--\r\n", 400),
        ('multipart/related; type="application/dicom"; boundary=B', b"--B\r\n\r\nabc", 400),
        # (review35a: the last boundary won; a proxy may read the first)
        ('multipart/related; type="application/dicom"; boundary=A; boundary=B', b"--B--", 400),
    ],
)
def test_request_errors(server, content_type, body, status) -> None:
    client, archive = server
    r = client.post("/studies", content=body, headers={"content-type": content_type})
    assert r.status_code == status, r.text
    assert r.text.startswith(str(status))
    assert archive.instances() == []


@pytest.mark.parametrize("coding", ["gzip", "deflate", "x-unknown"])
def test_a_coded_body_is_415(server, coding) -> None:
    """review35a F10: gzip was "the multipart body ended early", x-unknown stored."""
    client, archive = server
    body, content_type = multipart_body([instance("1.2.5.40")])
    headers = {"content-type": content_type, "content-encoding": coding}
    r = client.post("/studies", content=body, headers=headers)
    assert r.status_code == 415 and f"content coding '{coding}' is not accepted" in r.text
    assert archive.instances() == []


def test_duplicate_policy_reject_is_shared(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "archive", fsync=False, on_duplicate="reject")
    with HttpThread(archive) as srv, httpx.Client(base_url=srv.url) as client:
        assert post(client, [instance("1.2.5.13")]).status_code == 200
        r = post(client, [instance("1.2.5.13")])
        assert r.status_code == 409
        assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC111]
    archive.close()


def test_read_only_app_refuses_stow(tmp_path: Path) -> None:
    Archive(tmp_path / "archive").close()
    with HttpThread(tmp_path / "archive") as srv, httpx.Client(base_url=srv.url) as client:
        r = post(client, [instance("1.2.5.14")])
        assert r.status_code == 405 and "read-only" in r.text
    writable = HttpThread(tmp_path / "archive", writable=True)
    with writable as srv, httpx.Client(base_url=srv.url) as client:
        assert post(client, [instance("1.2.5.14")]).status_code == 200


def test_trailing_padding_discarded_is_a_b006_warning(tmp_path: Path) -> None:
    """The policy is the archive's: STOW-RS answers its B006 as a Warning Reason."""
    padding = b"\xfc\xff\xfc\xffOB\0\0" + (8).to_bytes(4, "little") + bytes(8)
    archive = Archive(tmp_path / "archive", fsync=False, trailing_padding="discard")
    with HttpThread(archive) as srv, httpx.Client(base_url=srv.url) as client:
        r = post(client, [instance("1.2.5.15") + padding, instance("1.2.5.16")])
        assert r.status_code == 202, r.text  # stored, with a warning
        first, second = r.json()["00081199"]["Value"]
        assert first["00081196"]["Value"] == [0xB006]
        assert "00081196" not in second
        note = "1.2.5.15: B006 Data Set Trailing Padding (FFFC,FFFC), 20 bytes, discarded"
        assert note in r.headers["warning"]
        sent = dataset_bytes(make_dataset("1.2.5.15", study=STUDY, series=SERIES))
        assert stored_dataset(archive, "1.2.5.15") == sent
        assert archive.check() == []
    archive.close()


def test_failing_part_is_logged_at_warning_with_the_client(server, caplog) -> None:
    """One line per part in the C-STORE format: WARNING for a failure, DEBUG for a success."""
    caplog.set_level(logging.DEBUG, logger="dicomstore.storage")
    client, _ = server
    mismatch = bytearray(instance("1.2.5.17"))  # the file meta names another instance
    at = mismatch.index(b"1.2.5.17", 132)
    mismatch[at : at + 8] = b"1.2.5.18"
    r = post(client, [instance("1.2.5.19"), bytes(mismatch)])
    assert r.status_code == 202, r.text
    stored, failed = (x for x in caplog.records if x.name == "dicomstore.storage")
    assert stored.levelno == logging.DEBUG
    assert re.fullmatch(
        r"STOW-RS of 1\.2\.5\.19 from STOW-RS at 127\.0\.0\.1: status 0000 \(success\)",
        stored.getMessage(),
    )
    assert failed.levelno == logging.WARNING
    message = failed.getMessage()
    assert re.fullmatch(
        r"STOW-RS of 1\.2\.5\.18 from STOW-RS at 127\.0\.0\.1: status A900 \(failure\): .+", message
    ), message
    comment = r.headers["warning"].split("1.2.5.18: A900 ", 1)[1].rstrip('"')
    assert message.endswith(": " + comment)  # the Error Comment the client got


def test_many_refused_parts_are_logged_a_few_then_counted(server, caplog) -> None:
    """review87 F4: each of 10,000 junk parts wrote a WARNING line (2.4 MB of log from
    two requests in under a second): the first few, then one line counting the rest
    when the request ends. The answer still lists every part."""
    client, _ = server
    with caplog.at_level(logging.WARNING, "dicomstore.storage"):
        r = post(client, [b"not dicom %d" % n for n in range(10)])
    assert r.status_code == 409 and len(r.json()["00081198"]["Value"]) == 10
    lines = [m for m in caplog.messages if "of an unidentified instance" in m]
    assert len(lines) == 3 and lines[-1].endswith("said when the request ends)")
    assert any(m.endswith(": 7 more refused parts, not logged each") for m in caplog.messages)
