"""Rendering is bounded: an instance with 1,000 levels of nested sequences (stored:
defined-length sequences are valid PS3.5 7.5, and that deep the limit,
``framing.MAX_DEPTH``) gets a browse page and DICOM JSON of a bounded depth, saying
where it stops. It used to take the browse page past 4 GiB. It converts to another
transfer syntax; one level deeper is refused by STOW-RS too (review53 #8)."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from http_testlib import EXPLICIT_LE, HttpThread, dataset_bytes, make_dataset, part10, stow_post

from dicomstore.archive import Archive
from dicomstore.framing import MAX_DEPTH
from dicomstore.http.limits import DEFAULT, HttpLimits

STUDY = "1.2.826.0.1.3680043.10.8"
SOP = STUDY + ".1.1"
CONTENT_SEQUENCE = (0x0040, 0xA730)


def nested(depth: int) -> bytes:
    """Content Sequence nested ``depth`` levels (defined lengths, Explicit VR LE), each
    item holding a Code Value naming its level, built from the inside out."""
    inner = b""
    for level in range(depth, 0, -1):
        value = f"L{level}".encode().ljust(6)
        code = struct.pack("<HH2sH", 0x0008, 0x0100, b"SH", len(value)) + value
        item_value = code + inner
        item = struct.pack("<HHI", 0xFFFE, 0xE000, len(item_value)) + item_value
        inner = struct.pack("<HH2sHI", *CONTENT_SEQUENCE, b"SQ", 0, len(item)) + item
    return inner


def store_nested(archive: Archive, depth: int) -> None:
    ds = make_dataset(SOP, study=STUDY, series=STUDY + ".1")
    ingest = archive.begin(
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid=SOP,
        transfer_syntax_uid=EXPLICIT_LE,
        calling_ae="DEEP",
    )
    ingest.write(dataset_bytes(ds) + nested(depth))
    outcome = ingest.commit()
    assert not outcome.is_failure, outcome


@pytest.fixture
def deep(tmp_path: Path) -> Iterator[httpx.Client]:
    archive = Archive(tmp_path / "archive", fsync=False)
    store_nested(archive, MAX_DEPTH)
    with HttpThread(archive) as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
        yield client
    archive.close()


def test_browse_page_renders_a_bounded_depth(deep) -> None:
    r = deep.get("/browse/instance", params={"uid": SOP})
    assert r.status_code == 200
    depth = DEFAULT.max_sequence_depth
    assert f"deeper levels not shown: at most {depth} are" in r.text
    assert f"&#x27;L{depth - 1}&#x27;" in r.text and f"&#x27;L{depth}&#x27;" not in r.text
    assert "(0010,0010) Patient&#x27;s Name" in r.text  # the rest of the header is there
    assert len(r.content) < 200_000


def test_metadata_is_cut_at_the_same_depth(deep) -> None:
    r = deep.get(f"/studies/{STUDY}/metadata")
    assert r.status_code == 200
    (instance,) = r.json()
    levels, element = 0, instance["0040A730"]
    while "Value" in element:
        levels += 1
        (item,) = element["Value"]
        assert item["00080100"]["Value"] == [f"L{levels}"]
        element = item.get("0040A730", {"vr": "SQ"})
    assert element == {"vr": "SQ"}  # the cut: a sequence without its items
    assert levels == DEFAULT.max_sequence_depth - 1


def test_includefield_of_a_deep_sequence_is_cut_too(deep) -> None:
    r = deep.get(f"/studies/{STUDY}/instances", params={"includefield": "ContentSequence"})
    assert r.status_code == 200
    text = r.text
    assert text.count('"0040A730"') == DEFAULT.max_sequence_depth


def test_the_element_budget_stops_a_wide_header(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "archive", fsync=False)
    store_nested(archive, 5)
    limits = HttpLimits(max_rendered_elements=20)
    with HttpThread(archive, limits=limits) as srv, httpx.Client(base_url=srv.url) as client:
        r = client.get("/browse/instance", params={"uid": SOP})
    archive.close()
    assert r.status_code == 200
    assert "more elements not shown (at most 20 are)" in r.text


def test_at_the_limit_converts_to_another_transfer_syntax(tmp_path: Path) -> None:
    """An Implicit VR copy, delivered in Explicit VR Little Endian: it was 406."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = make_dataset(SOP, study=STUDY, series=STUDY + ".1")
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, ds)
    inner = b""
    for _ in range(MAX_DEPTH):  # Content Sequence, Implicit VR, defined lengths
        item = struct.pack("<HHI", 0xFFFE, 0xE000, len(inner)) + inner
        inner = struct.pack("<HHI", *CONTENT_SEQUENCE, len(item)) + item
    archive = Archive(tmp_path / "archive", fsync=False)
    ingest = archive.begin(
        sop_class_uid=ds.SOPClassUID, sop_instance_uid=SOP, transfer_syntax_uid="1.2.840.10008.1.2"
    )
    ingest.write(buffer.getvalue() + inner)
    assert ingest.commit().status == 0
    url = f"/studies/{STUDY}/series/{STUDY}.1/instances/{SOP}"
    with HttpThread(archive) as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
        r = client.get(url, params={"accept": f"application/dicom; transfer-syntax={EXPLICIT_LE}"})
    archive.close()
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
    assert r.content.count(b"\x40\x00\x30\xa7SQ") == MAX_DEPTH  # every level, explicit VR


def test_stow_refuses_one_level_deeper(tmp_path: Path) -> None:
    """The one home: STOW-RS goes through the archive's ingest as C-STORE does."""
    archive = Archive(tmp_path / "archive", fsync=False)
    ds = make_dataset(SOP, study=STUDY, series=STUDY + ".1")
    meta_and_header = part10(ds)
    with HttpThread(archive) as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
        r = stow_post(client, [meta_and_header + nested(MAX_DEPTH + 1)])
        assert r.status_code == 409, r.text
        (failed,) = r.json()["00081198"]["Value"]
        assert failed["00081197"]["Value"] == [0xC000]
        assert "sequences nested deeper than 1000 (PS3.5 7.5)" in r.headers["warning"]
        assert archive.instances() == []
        assert stow_post(client, [meta_and_header + nested(MAX_DEPTH)]).status_code == 200
    assert len(archive.instances()) == 1
    archive.close()
