"""The header read from the bytes in memory equals the header pydicom reads from the file."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import pytest
from archive_testlib import CT, EXPLICIT_LE, IMPLICIT_LE, dataset, element, store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from pydicom import config
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from test_archive_roundtrip import _as_received, _candidates, _id

from dicomstore.archive import SUCCESS, Archive, ingest
from dicomstore.archive.dicomfile import HeaderError, encoding_of, read_header
from dicomstore.archive.fields import fields_of_elements, index_fields
from dicomstore.archive.scan import PREFIX_SIZE, scan_header


def slow_fields(data: bytes, ts: str) -> dict | None:
    """What pydicom reading the whole data set says (None: C000)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = read_header(io.BytesIO(data), 0, len(data), ts)
        except HeaderError:
            return None
        return index_fields(ds)


def fast_fields(data: bytes, ts: str, prefix: int | None = None) -> dict | None:
    """What the scan of the first ``prefix`` bytes says (None: read the file)."""
    implicit, little, deflated = encoding_of(ts)
    assert little and not deflated
    found = scan_header(data[:prefix] if prefix is not None else data, len(data), implicit)
    if found is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fields_of_elements(found, implicit)


def assert_agree(data: bytes, ts: str, prefixes: tuple[int | None, ...] = (None,)) -> bool:
    """The scan never accepts what pydicom refuses, and agrees when it accepts;
    True when the scan of the whole data set accepted it."""
    slow = slow_fields(data, ts)
    accepted = False
    for prefix in prefixes:
        fast = fast_fields(data, ts, prefix)
        if fast is not None:
            assert slow is not None, f"scan accepted what pydicom refuses (prefix {prefix})"
            assert fast == slow, prefix
            accepted = accepted or prefix is None
    return accepted


def _little_uncompressed_or_encapsulated(ts: str) -> bool:
    implicit, little, deflated = encoding_of(ts)
    return little and not deflated


@pytest.mark.parametrize("path", _candidates(), ids=_id)
def test_pydicom_test_files(path: str) -> None:
    data, ts, _ = _as_received(path)
    if not _little_uncompressed_or_encapsulated(ts):
        pytest.skip("big endian or deflated: always read by pydicom")
    assert_agree(data, ts, (None, 0, 8, 100, 1000, 4096, len(data) - 1))


def test_the_scan_accepts_ordinary_data_sets() -> None:
    accepted = 0
    files = _candidates()
    for path in files:
        data, ts, _ = _as_received(path)
        if _little_uncompressed_or_encapsulated(ts):
            accepted += assert_agree(data, ts)
    assert accepted >= len(files) // 2  # the rest go to pydicom: harmless but slower
    assert assert_agree(dataset(pixels=3000), EXPLICIT_LE)


def _pydicom_dataset(implicit: bool, **values: object) -> bytes:
    ds = Dataset()
    ds.SpecificCharacterSet = values.pop("charset", "ISO_IR 100")
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.4"
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, implicit
    write_dataset(fp, ds)
    return fp.getvalue()


TEXT = hs.text(
    alphabet=hs.sampled_from(list(" ^=\\ABCdéz09.-*\x00\t") + ["中", "\u00e4", "\x1b"]),
    max_size=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=TEXT,
    pid=TEXT,
    description=TEXT,
    number=hs.sampled_from(["7", " 7", "+7 ", "-3", "1.0", "", "  ", "12345678901", "x", "7\\8"]),
    implicit=hs.booleans(),
    charset=hs.sampled_from(["ISO_IR 100", "ISO_IR 192", "", "ISO_IR 6", "GB18030"]),
)
def test_values_are_converted_as_pydicom_converts_them(
    name: str, pid: str, description: str, number: str, implicit: bool, charset: str
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            data = _pydicom_dataset(
                implicit,
                charset=charset,
                PatientName=name,
                PatientID=pid,
                StudyDescription=description,
                SeriesNumber=number,
                InstanceNumber=number,
            )
        except (UnicodeError, ValueError, LookupError):
            return  # pydicom cannot write it in that character set
    ts = IMPLICIT_LE if implicit else EXPLICIT_LE
    assert assert_agree(data, ts, (None, 40))


def test_values_under_strict_reading_go_to_pydicom(monkeypatch: pytest.MonkeyPatch) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = _pydicom_dataset(False, PatientID="X" * 80)  # too long for an LO
    monkeypatch.setattr(config.settings, "reading_validation_mode", config.RAISE)
    assert assert_agree(data, EXPLICIT_LE)
    assert fast_fields(data, EXPLICIT_LE)["patient_id"] is None  # as pydicom: refused value


def _sequence(delimited: bool, implicit: bool = False) -> bytes:
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + element(0x00080100, "SH", "X")
    item += b"\xfe\xff\x0d\xe0" + bytes(4)
    head = b"\x08\x00\x15\x11" + (b"" if implicit else b"SQ\0\0") + b"\xff\xff\xff\xff"
    return head + item + (b"\xfe\xff\xdd\xe0" + bytes(4) if delimited else b"")


def _with_sequence(sequence: bytes, pixels: bool = True) -> bytes:
    base = dataset()
    cut = base.index(b"\x10\x00\x10\x00")  # before Patient's Name: (0008,1115) fits there
    data = base[:cut] + sequence + base[cut:]
    return data + (element(0x7FE00010, "OW", bytes(64)) if pixels else b"")


def test_undefined_length_sequences() -> None:
    good = _with_sequence(_sequence(True))
    assert assert_agree(good, EXPLICIT_LE, (None, 30, 60, len(good) - 70))
    bad = _with_sequence(_sequence(False))
    assert slow_fields(bad, EXPLICIT_LE) is None and fast_fields(bad, EXPLICIT_LE) is None
    last = dataset() + b"\x08\x00\x15\x11" + _sequence(True)[4:]  # out of order: pydicom's call
    assert_agree(last, EXPLICIT_LE)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=hs.sampled_from(
        [
            dataset(pixels=300),
            _with_sequence(_sequence(True)),
            dataset(extra={0x00091010: ("OB", b"x" * 40)}),
        ]
    ),
    cuts=hs.lists(hs.integers(min_value=0, max_value=2000), max_size=3),
    flips=hs.lists(hs.tuples(hs.integers(0, 2000), hs.integers(0, 255)), max_size=4),
    insert=hs.binary(max_size=12),
    prefix=hs.one_of(hs.none(), hs.integers(0, 2000)),
)
def test_the_scan_never_accepts_what_pydicom_refuses(
    base: bytes, cuts: list[int], flips: list[tuple[int, int]], insert: bytes, prefix: int | None
) -> None:
    data = bytearray(base)
    for at, value in flips:
        if at < len(data):
            data[at] = value
    if cuts:
        data = data[: min(cuts)]
    if insert and cuts:
        data[max(cuts) % (len(data) + 1) : max(cuts) % (len(data) + 1)] = insert
    assert_agree(bytes(data), EXPLICIT_LE, (None, prefix))


def test_a_header_longer_than_the_prefix_is_read_from_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = []
    real = ingest.read_header

    def counting(*args: object) -> object:
        reads.append(args)
        return real(*args)

    monkeypatch.setattr(ingest, "read_header", counting)
    with Archive(tmp_path / "root", fsync=False) as archive:
        assert store(archive, dataset(pixels=200_000), chunk=4096).status == SUCCESS
        assert reads == []  # the header was in memory
        uid = "1.2.3.4.5.6.8"
        big = dataset(uid, extra={0x00091010: ("OB", bytes(PREFIX_SIZE))}, patient_name="Far^Away")
        outcome = store(archive, big, sop_uid=uid, chunk=16000)
        assert outcome.status == SUCCESS
        assert len(reads) == 1  # Series Instance UID and more lie beyond the prefix
        assert outcome.instance["patient_name"] == "Far^Away"
        assert outcome.instance["series_uid"] == "1.2.3.4.5"
