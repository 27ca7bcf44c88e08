"""The fast DICOM JSON encoder (``http/instancejson.py``) against the reference
(pydicom's ``to_json_dict``, ``dicomjson_reference.py``), byte for byte: every pydicom
test file the archive stores, every character set file, UN and private sequences,
Implicit VR with private tags, nested sequences cut at the depth limit."""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import pydicom
import pytest
from dicomjson_reference import read_metadata as reference
from http_testlib import CT, make_dataset, store, store_file
from pydicom.data import get_charset_files, get_testdata_file, get_testdata_files
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from test_http_depth import store_nested

from dicomstore.archive import Archive
from dicomstore.archive.filestorage import FileStorage
from dicomstore.archive.layout import resolve
from dicomstore.archive.reader import ArchiveReader
from dicomstore.http import jsonvalues
from dicomstore.http.instancejson import read_metadata, read_metadata_text

STUDY = "1.2.826.0.1.3680043.10.11"


def _bulk(tag: int) -> str:
    return f"http://h/bulkdata/{tag:08X}"


def assert_same(archive: Archive, depth: int = 50, uid: str | None = None) -> int:
    """Every stored instance (or ``uid``) encoded both ways, compared as text; how many."""
    filters = {} if uid is None else {"SOPInstanceUID": uid}
    rows = list(ArchiveReader(archive.root).search("instance", filters))
    storage = FileStorage(archive.root)
    for row in rows:
        key = row["path"]
        path = resolve(archive.root, key)
        ts = row["transfer_syntax_uid"]
        want_cut: list[int] = []
        want = reference(path, ts, _bulk, max_depth=depth, cut=want_cut)
        text = json.dumps(want, ensure_ascii=False)
        for _ in range(2):  # the second time from the memo
            cut: list[int] = []
            got = read_metadata(storage, key, ts, _bulk, max_depth=depth, cut=cut)
            assert json.dumps(got, ensure_ascii=False) == text, (path.name, row["sop_instance_uid"])
            assert bool(cut) == bool(want_cut)
            cut = []  # the text the metadata cache keeps, made without the object
            got_text = read_metadata_text(storage, key, ts, _bulk, max_depth=depth, cut=cut)
            assert got_text == text, (path.name, row["sop_instance_uid"])
            assert bool(cut) == bool(want_cut)
        tags = sorted(int(k, 16) for k in list(want)[::3])
        subset = read_metadata(storage, key, ts, _bulk, tags, max_depth=depth)
        assert subset == reference(path, ts, _bulk, tags, max_depth=depth)
    return len(rows)


def test_every_storable_pydicom_test_file(tmp_path: Path) -> None:
    """Each file compared as soon as it is stored (some files share a SOP Instance UID)."""
    archive = Archive(tmp_path / "a", fsync=False, on_duplicate="replace")
    compared = 0
    for path in sorted(get_testdata_files("*.dcm")):
        try:
            outcome = store_file(archive, path)
        except Exception:  # noqa: BLE001 - no file meta, no UIDs, refused: not storable as is
            continue
        compared += assert_same(archive, uid=outcome.instance["sop_instance_uid"])
    assert compared >= 60
    archive.close()


def as_dataset(path: str, n: int, implicit: bool = False) -> Dataset:
    ds = pydicom.dcmread(path, force=True)
    ds.SOPClassUID = ds.get("SOPClassUID", CT)
    ds.SOPInstanceUID = f"{STUDY}.77.{n}"
    ds.StudyInstanceUID = ds.get("StudyInstanceUID", f"{STUDY}.77")
    ds.SeriesInstanceUID = f"{STUDY}.77.{n}.1"
    return ds


@pytest.mark.parametrize("name", ["chr*.dcm"])
def test_every_character_set_file(tmp_path: Path, name: str) -> None:
    archive = Archive(tmp_path / "a", fsync=False)
    files = sorted(get_charset_files(name))
    assert len(files) >= 15
    for n, path in enumerate(files):
        store(archive, as_dataset(path, n))
    assert assert_same(archive) == len(files)
    archive.close()


def test_un_and_private_sequences_and_odd_values(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "a", fsync=False)
    store(archive, as_dataset(get_testdata_file("UN_sequence.dcm"), 1))
    ds = make_dataset(f"{STUDY}.2", study=STUDY, series=f"{STUDY}.1", frames=1)
    ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう\\=^x\\Only"
    ds.SpecificCharacterSet = ["ISO_IR 192"]
    item = Dataset()
    item.add_new(0x00090010, "LO", "CREATOR")
    item.add_new(0x00091001, "OB", bytes(range(256)) * 6)  # big, inline inside a sequence
    item.add_new(0x00091002, "UN", b"\x01\x02")
    item.add_new(0x00091003, "SQ", Sequence([Dataset()]))
    item.PatientName = "Müller^Jörg"
    ds.add_new(0x00090010, "LO", "CREATOR")
    ds.add_new(0x00091010, "SQ", Sequence([item, Dataset()]))
    ds.add_new(0x00091011, "UN", b"\x00" * 2000)  # private UN over the threshold
    ds.add_new(0x00091012, "UN", b"\x05\x06")
    put_raw(ds, 0x00200032, "DS", b"-0\\1e3\\ 2.5\\abc ")  # one DS pydicom cannot read
    put_raw(ds, 0x00201041, "DS", b"-0\\1e3\\ 2.5 \\.5")
    put_raw(ds, 0x00200012, "IS", b"1\\\\3 ")  # an empty value
    put_raw(ds, 0x00200100, "IS", b"1.5 ")  # (no whole number: pydicom cut it to 1)
    put_raw(ds, 0x00200020, "CS", b"A\\B\\\x00")
    put_raw(ds, 0x00080061, "CS", b"\xe9T ")  # not ASCII where it must be
    put_raw(ds, 0x00081115, "SQ", unsorted_item())
    ds.add_new(0x00200013, "IS", "+7")
    ds.add_new(0x00209165, "AT", [0x00100010, 0x7FE00010])
    ds.add_new(0x00181310, "US", [0, 4, 3, 0])
    ds.add_new(0x00280106, "SS", -5)
    ds.add_new(0x00181320, "FL", 0.1)
    ds.add_new(0x00081030, "LO", ["a ", "", " b"])
    ds.add_new(0x00204000, "LT", "line 1\r\nline 2  ")
    ds.add_new(0x00081190, "UR", "http://x/y  ")
    ds.add_new(0x00400254, "LO", "")
    store(archive, ds)
    implicit = make_dataset(f"{STUDY}.3", study=STUDY, series=f"{STUDY}.1", frames=1)
    implicit.add_new(0x00290010, "LO", "SIEMENS CSA HEADER")
    implicit.add_new(0x00291008, "CS", "IMAGE NUM 4")  # a private VR pydicom knows
    implicit.add_new(0x00280120, "US", 0)  # US or SS: by Pixel Representation
    store_implicit(archive, implicit)
    assert assert_same(archive) == 3
    # review116 M1: an IS or DS that is no plain number, each value as the number it
    # reads as, null when none (pydicom gave nothing of these, and an IS "1.5" as 1)
    row = ArchiveReader(archive.root).instance(f"{STUDY}.2")
    ts = row["transfer_syntax_uid"]
    got = read_metadata(FileStorage(archive.root), row["path"], ts, _bulk, max_depth=50)
    assert got["00200032"] == {"vr": "DS", "Value": [-0.0, 1000.0, 2.5, None]}
    assert got["00200012"] == {"vr": "IS", "Value": [1, None, 3]}
    assert got["00200100"] == {"vr": "IS", "Value": [1.5]}
    archive.close()


def unsorted_item() -> bytes:
    """A sequence value of one item whose elements are out of order (pydicom sorts)."""

    def elem(tag: int, vr: bytes, value: bytes) -> bytes:
        return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value

    content = elem(0x00100020, b"LO", b"ID") + elem(0x00080100, b"SH", b"CODE")
    return struct.pack("<HHL", 0xFFFE, 0xE000, len(content)) + content


def put_raw(ds: Dataset, tag: int, vr: str, value: bytes) -> None:
    """A value written as these bytes, whatever pydicom thinks of them."""
    ds[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)


def store_implicit(archive: Archive, ds: Dataset) -> None:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, ds)
    ingest = archive.begin(
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid=ds.SOPInstanceUID,
        transfer_syntax_uid="1.2.840.10008.1.2",
        calling_ae="X",
    )
    ingest.write(buffer.getvalue())
    assert not ingest.commit().is_failure


@pytest.mark.parametrize("levels", [19, 20, 21, 60])  # walked, cut by the encoder, by pydicom
def test_the_depth_cut_and_its_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, levels: int
) -> None:
    archive = Archive(tmp_path / "a", fsync=False)
    store_nested(archive, levels)
    with caplog.at_level(logging.WARNING, logger="dicomstore.http.dicomjson"):
        assert assert_same(archive, depth=20) == 1
    assert ("sequences nested deeper than 20 levels" in caplog.text) == (levels >= 20)
    archive.close()


def test_the_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonvalues, "MEMO_LIMIT", 3)
    jsonvalues._MEMO.clear()
    jsonvalues.TEXT_MEMO.clear()
    for n in range(10):
        assert jsonvalues.value_json("IS", str(n).encode(), True, ("iso8859",)) == {
            "vr": "IS",
            "Value": [n],
        }
        assert len(jsonvalues._MEMO) <= 3
        text = jsonvalues.attribute_text(0x00200013, "IS", str(n).encode(), True, ("iso8859",))
        assert text == f'"00200013": {{"vr": "IS", "Value": [{n}]}}'
        assert len(jsonvalues.TEXT_MEMO) <= 3
    long = b"x" * (jsonvalues.MEMO_MAX_VALUE + 2)  # (a long value is made, not kept)
    jsonvalues._MEMO.clear()
    jsonvalues.TEXT_MEMO.clear()
    assert jsonvalues.value_json("LT", long, True, ("iso8859",)) == {
        "vr": "LT",
        "Value": [long.decode()],
    }
    assert jsonvalues.attribute_text(0x00204000, "LT", long, True, ("iso8859",))
    assert not jsonvalues._MEMO and not jsonvalues.TEXT_MEMO


def test_numbers_not_finite_are_null(tmp_path: Path) -> None:
    """review76 F2: an FD or FL of NaN or infinity (IEEE 754), a DS "nan" or "1e999",
    came out as bare NaN / Infinity: no JSON (RFC 8259 6), and a viewer's JSON.parse
    failed on the metadata of the whole study. Such a value is null (PS3.18 F.2.5),
    on the fast path, pydicom's, inside a sequence and in the cached text alike."""
    archive = Archive(tmp_path / "a", fsync=False)
    nan, inf = float("nan"), float("inf")
    ds = make_dataset(f"{STUDY}.7", study=STUDY, series=f"{STUDY}.1", frames=1)
    ds.add_new(0x00189087, "FD", nan)
    ds.add_new(0x00189089, "FD", [inf, -inf, 1.0])
    ds.add_new(0x00181320, "FL", nan)
    put_raw(ds, 0x00281050, "DS", b"nan ")
    put_raw(ds, 0x00281051, "DS", b"1e999\\2 ")
    item = Dataset()
    item.add_new(0x00189087, "FD", -inf)
    ds.add_new(0x00400275, "SQ", Sequence([item]))
    store(archive, ds)
    storage = FileStorage(archive.root)
    (row,) = ArchiveReader(archive.root).search("instance", {})
    key, ts = row["path"], row["transfer_syntax_uid"]

    def strict(text: str) -> dict:
        def refuse(token: str) -> None:
            raise AssertionError(f"not JSON: {token}")

        return json.loads(text, parse_constant=refuse)

    for _ in range(2):  # (the second time from the memo)
        got = strict(json.dumps(read_metadata(storage, key, ts, _bulk, max_depth=50)))
        assert strict(read_metadata_text(storage, key, ts, _bulk, max_depth=50)) == got
        assert got["00189087"]["Value"] == [None]
        assert got["00189089"]["Value"] == [None, None, 1.0]
        assert got["00181320"]["Value"] == [None]
        assert got["00281050"]["Value"] == [None]
        assert got["00281051"]["Value"] == [None, 2]
        assert got["00400275"]["Value"][0]["00189087"]["Value"] == [None]
    archive.close()
