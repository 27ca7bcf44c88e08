"""The header read from the bytes in memory equals the header pydicom reads from the file."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import warnings
from collections.abc import Callable
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

from dicomstore import vr
from dicomstore.archive import SUCCESS, Archive, ingest, scan
from dicomstore.archive.dicomfile import HeaderError, encoding_of, read_header
from dicomstore.archive.fields import SPECIFIC_CHARACTER_SET, fields_of_elements, index_fields
from dicomstore.archive.rawheader import Unsure
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


# -- undefined-length sequences walked without pydicom (scan.walk_sequence) ---------

_SHORT_VRS = ["CS", "LO", "SH", "UI", "US", "UL", "DS", "IS", "DA", "PN"]
_LONG_VRS = ["OB", "OW", "UT", "UN", "UC"]


def _encode_element(tag: int, vr: str, value: bytes) -> bytes:
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode()
    if vr in _LONG_VRS or vr == "SQ":
        return head + struct.pack("<HL", 0, len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def _encode_items(
    items: list, undefined: bool, encode: Callable[[tuple], bytes] | None = None
) -> bytes:
    """The value of a sequence: its items (each of defined or undefined length),
    their elements encoded by ``encode`` (default: explicit VR)."""
    out = b""
    for elements, item_undefined in items:
        body = b"".join((encode or _encode_any)(e) for e in elements)
        if item_undefined:
            out += b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + body + b"\xfe\xff\x0d\xe0" + bytes(4)
        else:
            out += b"\xfe\xff\x00\xe0" + struct.pack("<L", len(body)) + body
    return out + (b"\xfe\xff\xdd\xe0" + bytes(4) if undefined else b"")


def _encode_any(node: tuple) -> bytes:
    if node[0] == "sq":
        _, tag, items, undefined = node
        value = _encode_items(items, undefined)
        head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + b"SQ\0\0"
        return head + (b"\xff\xff\xff\xff" if undefined else struct.pack("<L", len(value))) + value
    _, tag, vr, value = node
    return _encode_element(tag, vr, value)


_tags = hs.builds(
    lambda g, e: g << 16 | e, hs.integers(4, 0x40).map(lambda g: 2 * g), hs.integers(1, 0xFFFF)
)
_leaf = hs.builds(
    lambda tag, vr, value: ("el", tag, vr, value),
    _tags,
    hs.sampled_from(_SHORT_VRS + _LONG_VRS),
    hs.binary(max_size=24),
)


def _trees(leaf: hs.SearchStrategy, tags: hs.SearchStrategy) -> hs.SearchStrategy:
    """Elements and sequences of items of them, nested, each of either length."""
    return hs.recursive(
        leaf,
        lambda inner: hs.builds(
            lambda tag, items, undefined: ("sq", tag, items, undefined),
            tags,
            hs.lists(hs.tuples(hs.lists(inner, max_size=4), hs.booleans()), max_size=3),
            hs.booleans(),
        ),
        max_leaves=12,
    )


_nodes = _trees(_leaf, _tags)


@settings(max_examples=300, deadline=None)
@given(
    items=hs.lists(hs.tuples(hs.lists(_nodes, max_size=4), hs.booleans()), max_size=4),
    flips=hs.lists(hs.tuples(hs.integers(0, 400), hs.integers(0, 255)), max_size=3),
    cut=hs.one_of(hs.none(), hs.integers(0, 400)),
)
def test_sequences_are_walked_where_pydicom_ends_them(
    items: list, flips: list[tuple[int, int]], cut: int | None
) -> None:
    """Walked without pydicom, an explicit VR sequence ends where pydicom's
    read_sequence ends it; on damaged bytes the walk may give up (None: pydicom
    reads it), never end elsewhere."""
    value = bytearray(_encode_items(items, True))
    intact = not flips and cut is None and SPECIFIC_CHARACTER_SET not in _tags_in(items)
    for at, byte in flips:
        if at < len(value):
            value[at] = byte
    if cut is not None:
        value = value[:cut]
    buf = b"\x08\x00\x15\x11SQ\0\0\xff\xff\xff\xff" + bytes(value) + element(0x00100010, "PN", "A")
    walked = _walked(buf, 12, False)
    by_pydicom = scan._skip_with_pydicom(buf, len(buf), 0x00081115, "SQ", 12, False)
    assert scan._skip_sequence(buf, len(buf), 0x00081115, "SQ", 12, False) == by_pydicom
    if walked is not None:
        assert walked == by_pydicom
    if intact:
        assert walked == 12 + len(value)  # (what the walk is for: no pydicom)


def test_data_sets_with_sequences_are_read_without_pydicom() -> None:
    """The storing server stays without pydicom for data sets with sequences of
    undefined length, explicit or implicit VR (RSS, CPU); a UN one still loads it."""
    explicit = _with_sequence(_sequence(True))
    item = struct.pack("<HHL", 0x0008, 0x0100, 2) + b"X "
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + item + b"\xfe\xff\x0d\xe0" + bytes(4)
    implicit = b"\x08\x00\x15\x11\xff\xff\xff\xff" + item + b"\xfe\xff\xdd\xe0" + bytes(4)
    implicit += struct.pack("<HHL", 0x0010, 0x0010, 2) + b"A "
    un = _with_sequence(_sequence(True).replace(b"SQ\0\0", b"UN\0\0", 1))
    ob = _with_sequence(_sequence(True).replace(b"SQ\0\0", b"OB\0\0", 1))  # (no sequence)
    code = (
        "import sys; from dicomstore.archive.scan import scan_header; "
        f"assert scan_header({explicit!r}, {len(explicit)}, False) is not None; "
        f"assert scan_header({implicit!r}, {len(implicit)}, True) is not None; "
        f"assert scan_header({ob!r}, {len(ob)}, False) is None; "
        "assert 'pydicom' not in sys.modules, 'loaded'; "
        f"scan_header({un!r}, {len(un)}, False); "
        "assert 'pydicom' in sys.modules, 'UN'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


_IMPLICIT_TAGS = [
    0x00081115,  # SQ in the dictionary
    0x00081140,
    0x0040A730,
    0x00080100,  # other VRs: pydicom reads an undefined length up to a delimiter
    0x00100010,
    0x7FE00010,
    0x60003000,  # a repeating group (OB or OW)
    0x60000010,
    0x00091010,  # private: a sequence if its value starts with an item
    0x00090010,  # a private creator
    0x00291020,
    0x00080000,  # group lengths
    0x00200000,
]


def _encode_implicit(node: tuple) -> bytes:
    if node[0] == "sq":
        _, tag, items, undefined = node
        value = _encode_items(items, undefined, _encode_implicit)
        length = 0xFFFFFFFF if undefined else len(value)
        return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, length) + value
    _, tag, _, value = node
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)) + value


_implicit_tags = hs.one_of(hs.sampled_from(_IMPLICIT_TAGS), _tags)
_implicit_nodes = _trees(
    hs.builds(lambda tag, value: ("el", tag, None, value), _implicit_tags, hs.binary(max_size=24)),
    _implicit_tags,
)


@settings(max_examples=300, deadline=None)
@given(
    top=hs.sampled_from([0x00081115, 0x00091010]),
    items=hs.lists(hs.tuples(hs.lists(_implicit_nodes, max_size=4), hs.booleans()), max_size=4),
    flips=hs.lists(hs.tuples(hs.integers(0, 400), hs.integers(0, 255)), max_size=3),
)
def test_implicit_sequences_are_walked_where_pydicom_ends_them(
    top: int, items: list, flips: list[tuple[int, int]]
) -> None:
    """The same in implicit VR, where the dictionary decides which undefined
    lengths are sequences (``vr.dictionary_sq``): never an end pydicom does not
    find; every intact sequence whose undefined lengths are all sequences walked."""
    data = bytearray(_encode_implicit(("sq", top, items, True)))
    for at, byte in flips:
        if 8 <= at < len(data):
            data[at] = byte
    buf = bytes(data) + struct.pack("<HHL", 0x0010, 0x0010, 2) + b"A "
    by_pydicom = scan._skip_with_pydicom(buf, len(buf), top, None, 8, True)
    assert scan._skip_sequence(buf, len(buf), top, None, 8, True) == by_pydicom
    if top != 0x00081115 and buf[8:12] != b"\xfe\xff\x00\xe0":
        return  # a private tag without an item: no sequence to pydicom (nor here)
    walked = _walked(buf, 8, True)
    if walked is not None:
        assert walked == by_pydicom
    if not flips and _all_sequences(items) and SPECIFIC_CHARACTER_SET not in _tags_in(items):
        assert walked == len(data)  # (what the walk is for: no pydicom)


def _tags_in(items: list) -> set[int]:
    """Every tag of the elements in ``items``, nested ones too (a Specific Character
    Set that is a sequence is one pydicom cannot read: not an intact data set)."""
    tags = set()
    for elements, _ in items:
        for node in elements:
            tags.add(node[1])
            if node[0] == "sq":
                tags |= _tags_in(node[2])
    return tags


def _all_sequences(items: list) -> bool:
    """Whether every undefined length inside is one pydicom reads as a sequence, and
    every value of a tag the dictionary says SQ is one (the walker reads its items)."""
    for elements, _ in items:
        for node in elements:
            if node[0] == "el" and node[3] and vr.dictionary_sq(node[1]):
                return False  # (bytes that are no items under an SQ tag: pydicom reads them)
            if node[0] == "sq":
                is_sq = vr.dictionary_sq(node[1])
                if node[3] and is_sq is not True and not (is_sq is None and node[2]):
                    return False  # (unknown tag: a sequence if it has an item)
                if not _all_sequences(node[2]):
                    return False
    return True


def test_the_dictionary_vrs_are_pydicoms() -> None:
    """``vr.dictionary_sq`` answers as pydicom's reader looks a tag up."""
    from pydicom.datadict import DicomDictionary, _dictionary_vr_fast

    tags = [*DicomDictionary, *_IMPLICIT_TAGS, *range(0x50000000, 0x50FF3000, 0x10F3)]
    tags += [0x60103000, 0x7F000010, 0x00090010, 0x00111000, 0x1234ABCD]
    for tag in tags:
        try:
            expected: bool | None = _dictionary_vr_fast(tag) == "SQ"
        except KeyError:
            expected = None
        assert vr.dictionary_sq(tag) is expected, hex(tag)


def _walked(buf: bytes, value: int, implicit: bool) -> int | None:
    """Where ``scan.walk_sequence`` ends the sequence, or None when it is unsure."""
    try:
        return scan.walk_sequence(buf, value, implicit)
    except Unsure:
        return None


def test_an_item_overrun_by_its_elements_is_left_to_pydicom() -> None:
    """An element running past the end of its item (of defined length) is damage
    the walk does not judge: pydicom reads that data set."""
    inner = element(0x00080100, "SH", "ABCD")
    item = b"\xfe\xff\x00\xe0" + struct.pack("<L", len(inner) - 2) + inner
    buf = b"\x08\x00\x15\x11SQ\0\0\xff\xff\xff\xff" + item + b"\xfe\xff\xdd\xe0" + bytes(4)
    assert _walked(buf, 12, False) is None
    intact = item[:4] + struct.pack("<L", len(inner)) + inner
    buf = b"\x08\x00\x15\x11SQ\0\0\xff\xff\xff\xff" + intact + b"\xfe\xff\xdd\xe0" + bytes(4)
    assert _walked(buf, 12, False) == len(buf)


def test_an_implicit_data_set_whose_first_length_reads_as_a_vr_goes_to_pydicom() -> None:
    """pydicom takes such a data set for explicit VR (and then refuses it): the scan
    must not accept it (a length of 0x4142 bytes: 'B', 'A')."""

    def implicit(tag: int, value: bytes) -> bytes:
        return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)) + value

    data = implicit(0x00080008, b"O" * 0x4141 + b" ")
    data += implicit(0x00080016, CT.encode() + b"\0") + implicit(0x00080018, b"1.2.3\0")
    data += implicit(0x0020000D, b"1.2\0") + implicit(0x0020000E, b"1.2.3\0")
    assert data[4:6] == b"BA"
    assert fast_fields(data, IMPLICIT_LE) is None
    assert_agree(data, IMPLICIT_LE)


def test_sequences_nested_too_deep_go_to_pydicom_reading_the_file() -> None:
    """Beyond 64 open sequences the scan gives up, without pydicom's read_sequence
    (which nests deeper than pydicom's read_header of the file can)."""
    inner = element(0x00080100, "SH", "X")
    for _ in range(80):
        item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + inner + b"\xfe\xff\x0d\xe0" + bytes(4)
        inner = b"\x08\x00\x15\x11SQ\0\0\xff\xff\xff\xff" + item + b"\xfe\xff\xdd\xe0" + bytes(4)
    data = _with_sequence(inner)
    assert fast_fields(data, EXPLICIT_LE) is None
    shallow = _with_sequence(_sequence(True))
    assert fast_fields(shallow, EXPLICIT_LE) is not None
