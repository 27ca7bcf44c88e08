"""A data set encoded otherwise than its presentation context says is refused (C000)."""

from __future__ import annotations

import io
import struct
import subprocess
import warnings
import zlib
from pathlib import Path

import pytest
from archive_testlib import CT, EXPLICIT_LE, IMPLICIT_LE, dataset, dcm_files, element, store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from test_archive_roundtrip import _candidates, _id

from dicomstore.archive import CANNOT_UNDERSTAND, SUCCESS, Archive, StoreOutcome
from dicomstore.archive import encoding as enc
from dicomstore.archive.encoding import INFLATED_PREFIX, encoding_mismatch
from dicomstore.archive.scan import PREFIX_SIZE, scan_header

EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
JPEG2000 = "1.2.840.10008.1.2.4.90"
PRIVATE = "1.2.3.999.1"
#: Transfer syntax of each encoding a data set is written in here.
SYNTAX = {"implicit": IMPLICIT_LE, "explicit": EXPLICIT_LE, "big": EXPLICIT_BE}
ENCODINGS = {"implicit": (True, True), "explicit": (False, True), "big": (False, False)}


@pytest.fixture
def archive(tmp_path: Path) -> Archive:
    with Archive(tmp_path / "root", fsync=False) as archive:
        yield archive


def write(ds, kind: str) -> bytes:
    """``ds`` as pydicom writes it in the encoding ``kind``."""
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = ENCODINGS[kind]
    write_dataset(buffer, ds)
    return buffer.getvalue()


def encoded(kind: str, pixels: int = 300) -> bytes:
    """The test library's data set in an encoding, or deflated ("deflated")."""
    ds = read_dataset(io.BytesIO(dataset(pixels=pixels)), False, True)
    if kind == "deflated":
        return deflate(write(ds, "explicit"))
    return write(ds, kind)


def deflate(data: bytes) -> bytes:
    deflater = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return deflater.compress(data) + deflater.flush()


def mismatch(data: bytes, ts: str) -> str | None:
    """What the check says of ``data`` as an Ingest holds it (its first PREFIX_SIZE bytes)."""
    return encoding_mismatch(data[:PREFIX_SIZE], len(data), ts)


# What each (context, data set) pair is answered; None: no mismatch.
IS_IMPLICIT = "data set is Implicit VR, context is Explicit VR Little Endian"
EXPECTED = {
    (IMPLICIT_LE, "implicit"): None,
    (IMPLICIT_LE, "explicit"): "data set is Explicit VR, context is Implicit VR Little Endian",
    (IMPLICIT_LE, "big"): "data set is Explicit VR BE, context is Implicit VR Little Endian",
    (IMPLICIT_LE, "deflated"): "data set is deflated, context is Implicit VR Little Endian",
    (EXPLICIT_LE, "implicit"): IS_IMPLICIT,
    (EXPLICIT_LE, "explicit"): None,
    (EXPLICIT_LE, "big"): "data set is Big Endian, context is Explicit VR Little Endian",
    (EXPLICIT_LE, "deflated"): "data set is deflated, context is Explicit VR Little Endian",
    (EXPLICIT_BE, "implicit"): "data set is Implicit VR LE, context is Explicit VR Big Endian",
    (EXPLICIT_BE, "explicit"): "data set is Little Endian, context is Explicit VR Big Endian",
    (EXPLICIT_BE, "big"): None,
    (EXPLICIT_BE, "deflated"): "data set is deflated, context is Explicit VR Big Endian",
    (DEFLATED, "implicit"): "data set is not deflated, context is Deflated Explicit VR LE",
    (DEFLATED, "explicit"): "data set is not deflated, context is Deflated Explicit VR LE",
    (DEFLATED, "big"): "data set is not deflated, context is Deflated Explicit VR LE",
    (DEFLATED, "deflated"): None,
}
for _ts in (JPEG2000, PRIVATE):  # encapsulated (and private) data sets are explicit LE
    EXPECTED.update(
        {
            (_ts, "implicit"): "data set is Implicit VR, context is Explicit VR LE (compressed)",
            (_ts, "explicit"): None,
            (_ts, "big"): "data set is Big Endian, context is Explicit VR LE (compressed)",
            (_ts, "deflated"): "data set is deflated, context is Explicit VR LE (compressed)",
        }
    )


@pytest.mark.parametrize("pixels", [300, 2_000_000], ids=["small", "larger-than-prefix"])
@pytest.mark.parametrize(("ts", "kind"), list(EXPECTED), ids=lambda v: str(v))
def test_each_encoding_on_each_context(ts: str, kind: str, pixels: int) -> None:
    data = encoded(kind, pixels)
    comment = mismatch(data, ts)
    assert comment == EXPECTED[ts, kind]
    if comment is not None:  # arrives whole in (0000,0902)
        assert StoreOutcome(CANNOT_UNDERSTAND, comment).wire_comment == comment


@pytest.mark.parametrize("path", _candidates(), ids=_id)
def test_pydicom_test_files_in_each_encoding(path: str) -> None:
    """Each pydicom test file, written by pydicom in each uncompressed encoding,
    passes on its own transfer syntax and is refused on the two others."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(path, force=True)
        if len(ds) == 0:
            pytest.skip("not a DICOM data set")
        written = {}
        for kind in ENCODINGS:
            try:
                written[kind] = write(ds, kind)
            except ValueError:  # encapsulated Pixel Data cannot be written big endian
                assert kind == "big"
    for kind, data in written.items():
        for context, ts in SYNTAX.items():
            comment = mismatch(data, ts)
            if context == kind:
                assert comment is None, (kind, comment)
            else:
                assert comment is not None and comment.startswith("data set is "), (kind, ts)


#: Elements a generated data set picks from: (tag, VR, value strategy).
_TEXT = hs.text(alphabet="ABCXYZ019 ^.", max_size=40)
_POOL = [
    (0x00080005, "CS", hs.sampled_from(["", "ISO_IR 100", "ISO_IR 192"])),
    (0x00080008, "CS", hs.sampled_from(["", "ORIGINAL\\PRIMARY", "DERIVED"])),
    (0x00080012, "DA", hs.sampled_from(["", "20240102"])),
    (0x00080060, "CS", hs.sampled_from(["", "CT", "MR"])),
    (0x00081030, "LO", _TEXT),
    (0x00090010, "LO", _TEXT),
    (0x00091001, "OB", hs.integers(0, 40_000).map(lambda n: bytes(2 * n))),
    (0x00100010, "PN", _TEXT),
    (0x00100020, "LO", _TEXT),
    (0x00180050, "DS", hs.sampled_from(["", "1.5", "0.625"])),
    (0x00280010, "US", hs.integers(0, 65535)),
    (0x7FE00010, "OW", hs.integers(0, 40_000).map(lambda n: bytes(range(256)) * (n // 128))),
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    picked=hs.lists(hs.sampled_from(range(len(_POOL))), unique=True, max_size=8).flatmap(
        lambda picked: hs.tuples(*(hs.tuples(hs.just(i), _POOL[i][2]) for i in picked))
    ),
    instance=hs.from_regex(r"1\.2\.[1-9][0-9]{0,20}", fullmatch=True),
)
def test_generated_data_sets_in_each_encoding(picked: tuple, instance: str) -> None:
    """Storable data sets (SOP Class and Instance UID present), other elements and
    lengths drawn at random, among them empty values (an implicit reading of an
    empty explicit element has a length of 0x4141 or more) and values longer than
    the prefix: each passes in its own encoding, is refused in the others."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CT, instance
    for i, value in picked:
        tag, vr, _ = _POOL[i]
        ds.add_new(tag, vr, value)
    for kind in ENCODINGS:
        data = write(ds, kind)
        for context, ts in SYNTAX.items():
            comment = mismatch(data, ts)
            assert (comment is None) == (context == kind), (kind, context, comment)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    picked=hs.lists(hs.sampled_from(range(len(_POOL))), unique=True, max_size=8).flatmap(
        lambda picked: hs.tuples(*(hs.tuples(hs.just(i), _POOL[i][2]) for i in picked))
    ),
    kind=hs.sampled_from(sorted(ENCODINGS)),
    cut=hs.integers(0, 64),
    flips=hs.lists(hs.tuples(hs.integers(0, 400), hs.integers(0, 255)), max_size=3),
)
def test_what_the_scan_reads_whole_as_explicit_le_the_check_never_refuses(
    picked: tuple, kind: str, cut: int, flips: list[tuple[int, int]]
) -> None:
    """``Ingest`` skips the encoding check for an Explicit VR Little Endian data set
    whose header ``scan_header`` read whole: for data sets in every encoding, cut
    short or with bytes changed, the check never refuses one the scan reads."""
    ds = Dataset()
    ds.SOPClassUID = CT
    for i, value in picked:
        tag, vr, _ = _POOL[i]
        ds.add_new(tag, vr, value)
    data = bytearray(write(ds, kind))
    data = data[: len(data) - min(cut, len(data) - 8)] if cut else data
    for at, byte in flips:
        if at < len(data):
            data[at] = byte
    prefix = bytes(data[:PREFIX_SIZE])
    if scan_header(prefix, len(data), False) is not None:
        for ts in (EXPLICIT_LE, JPEG2000):
            assert encoding_mismatch(prefix, len(data), ts) is None, (kind, ts)


def test_a_data_set_of_one_element() -> None:
    ds = read_dataset(io.BytesIO(element(0x00080016, "UI", CT)), False, True)
    for kind in ENCODINGS:
        data = write(ds, kind)
        for context, ts in SYNTAX.items():
            assert (mismatch(data, ts) is None) == (context == kind), (kind, context)


def test_an_implicit_length_that_spells_a_vr_is_settled_by_the_next_elements() -> None:
    """An implicit first element of 0x4144 bytes has "DA" where an explicit VR would
    be: an explicit reading of it fits once, then not (its value is no element)."""
    value = b"12" * (0x4144 // 2)
    data = struct.pack("<HHL", 0x0008, 0x0012, len(value)) + value
    data += struct.pack("<HHL", 0x0008, 0x0016, len(CT)) + CT.encode()
    assert data[4:6] == b"DA"
    assert mismatch(data, IMPLICIT_LE) is None
    assert mismatch(data, EXPLICIT_LE) == IS_IMPLICIT


def test_a_data_set_that_reads_both_ways_is_its_context_s() -> None:
    """Implicit, with a first value crafted to read as three explicit elements: both
    readings fit, so neither context refuses it (the context wins a tie)."""
    fake = element(0x00080000, "UL", b"\0\0\0\0") * 2 + element(0x00080001, "UL", b"\0" * 4)
    value = fake + b"A" * (0x4144 - len(fake))
    data = struct.pack("<HHL", 0x0008, 0x0012, len(value)) + value
    for tag in (0x00080016, 0x00080018):
        data += struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(CT) + 1) + CT.encode() + b"\0"
    assert mismatch(data, IMPLICIT_LE) is None
    assert mismatch(data, EXPLICIT_LE) is None


def test_a_first_element_longer_than_the_prefix() -> None:
    """Implicit, first value 100 kB: its end is beyond the prefix, but no explicit
    reading fits at all."""
    ds = read_dataset(io.BytesIO(element(0x00080016, "UI", CT)), False, True)
    ds.add_new(0x00080001, "UL", 1)
    ds.add_new(0x00041130, "OB", bytes(100_000))
    data = write(ds, "implicit")
    assert len(data) > PREFIX_SIZE
    assert mismatch(data, IMPLICIT_LE) is None
    assert mismatch(data, EXPLICIT_LE) == IS_IMPLICIT
    assert mismatch(write(ds, "explicit"), EXPLICIT_LE) is None


def test_undefined_length_sequence_first_tells_the_byte_order() -> None:
    """A first element of undefined length is not followed, but its value starts
    with an Item (FFFE,E000) in the data set's byte order (PS3.5 7.5)."""
    item = element(0x00080100, "SH", "CODE")
    little = (
        b"\x08\x00\x06\x00SQ\0\0\xff\xff\xff\xff"
        + b"\xfe\xff\x00\xe0"
        + struct.pack("<L", len(item))
        + item
        + b"\xfe\xff\xdd\xe0\0\0\0\0"
        + element(0x00080016, "UI", CT)
    )
    ds = read_dataset(io.BytesIO(little), False, True)
    big = write(ds, "big")
    assert big[12:16] == b"\xff\xfe\xe0\x00"
    assert mismatch(little, EXPLICIT_LE) is None
    assert mismatch(big, EXPLICIT_BE) is None
    assert mismatch(little, EXPLICIT_BE) == EXPECTED[EXPLICIT_BE, "explicit"]
    assert mismatch(big, EXPLICIT_LE) == EXPECTED[EXPLICIT_LE, "big"]


def test_a_vr_not_in_the_table_is_not_refused() -> None:
    """Two uppercase letters that are no VR (PS3.5 6.2): not an encoding question."""
    data = element(0x00080016, "UI", CT) + b"\x08\x00\x18\x00XX\x04\x00ABCD"
    assert mismatch(data, EXPLICIT_LE) is None


@pytest.mark.parametrize("ts", [IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE, DEFLATED])
def test_empty_and_cut_short_are_left_to_the_header_read(ts: str, archive: Archive) -> None:
    assert mismatch(b"", ts) is None
    assert mismatch(b"\x08\x00\x16\x00", ts) is None
    outcome = store(archive, b"", ts=ts)
    assert outcome.status == CANNOT_UNDERSTAND
    assert outcome.error_comment and not outcome.error_comment.startswith("cannot understand")


def test_garbage_is_left_to_the_header_read() -> None:
    for data in (bytes(100), b"\xff" * 64, bytes(range(256)) * 4):
        for ts in (IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE):
            assert mismatch(data, ts) is None, (data[:8], ts)


@pytest.mark.parametrize("ts", [IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE, DEFLATED])
def test_file_meta_or_a_whole_file_sent_as_the_data_set(ts: str, archive: Archive) -> None:
    meta = element(0x00020000, "UL", b"\x1c\0\0\0") + element(0x00020010, "UI", EXPLICIT_LE)
    body = dataset()
    assert mismatch(meta + body, ts) == "data set starts with File Meta Information (group 0002)"
    whole = bytes(128) + b"DICM" + meta + body
    assert mismatch(whole, ts) == "data set is a PS3.10 file (preamble, DICM, File Meta)"
    outcome = store(archive, whole, ts=ts)
    assert outcome.status == CANNOT_UNDERSTAND
    assert outcome.error_comment == "data set is a PS3.10 file (preamble, DICM, File Meta)"


def test_deflated_context(archive: Archive) -> None:
    explicit, implicit = encoded("explicit"), encoded("implicit")
    assert mismatch(deflate(explicit), DEFLATED) is None
    assert mismatch(deflate(implicit), DEFLATED) == (
        "inflated data set is Implicit VR, not Explicit VR LE"
    )
    assert mismatch(zlib.compress(explicit), DEFLATED) == (
        "data set has a zlib header: deflate it raw (PS3.5 A.5)"
    )
    assert mismatch(explicit, DEFLATED) == EXPECTED[DEFLATED, "explicit"]
    outcome = store(archive, deflate(implicit), ts=DEFLATED)  # was stored (pydicom switched)
    assert outcome.status == CANNOT_UNDERSTAND
    assert outcome.error_comment == "inflated data set is Implicit VR, not Explicit VR LE"
    assert dcm_files(archive.root) == []


def test_only_a_bounded_prefix_is_inflated(monkeypatch: pytest.MonkeyPatch) -> None:
    """A data set inflating to 200 MB (a deflate bomb, or a big image) costs
    INFLATED_PREFIX bytes of output, not the whole."""
    deflater = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    bomb = deflater.compress(encoded("explicit"))
    bomb += b"".join(deflater.compress(bytes(1 << 20)) for _ in range(200)) + deflater.flush()
    inflated: list[int] = []
    real = zlib.decompressobj

    class Spy:
        def __init__(self, *args: object) -> None:
            self._inflater = real(*args)

        def decompress(self, data: bytes, max_length: int = 0) -> bytes:
            out = self._inflater.decompress(data, max_length)
            inflated.append(len(out))
            return out

        @property
        def eof(self) -> bool:
            return self._inflater.eof

    monkeypatch.setattr(enc.zlib, "decompressobj", Spy)
    assert mismatch(bomb, DEFLATED) is None
    assert mismatch(deflate(encoded("implicit")) + bomb, DEFLATED) is not None
    assert inflated and max(inflated) <= INFLATED_PREFIX


# -- through begin/write/commit -----------------------------------------------------


@pytest.mark.parametrize(("ts", "kind"), [k for k, v in EXPECTED.items() if v], ids=str)
def test_a_mismatch_is_c000_and_nothing_is_stored(archive: Archive, ts: str, kind: str) -> None:
    outcome = store(archive, encoded(kind), ts=ts, chunk=100)
    assert outcome.status == CANNOT_UNDERSTAND, outcome
    assert outcome.error_comment == EXPECTED[ts, kind]
    assert outcome.offending_element is None
    assert dcm_files(archive.root) == [] and archive.instances() == []
    assert archive.check() == []


@pytest.mark.parametrize(("ts", "kind"), [k for k, v in EXPECTED.items() if not v], ids=str)
def test_a_matching_data_set_is_stored(archive: Archive, ts: str, kind: str) -> None:
    native_pixels = ts not in (JPEG2000, PRIVATE)  # (those want them encapsulated)
    data = encoded(kind, pixels=300 if native_pixels else 0)
    outcome = store(archive, data, ts=ts)
    assert outcome.status == SUCCESS, outcome
    assert outcome.path.read_bytes().endswith(data)
    dump = subprocess.run(["/usr/bin/dcmdump", str(outcome.path)], capture_output=True, text=True)
    assert dump.returncode == 0 and not dump.stderr, dump.stderr


def test_explicit_without_long_vrs_on_an_implicit_context(
    archive: Archive, caplog: pytest.LogCaptureFixture
) -> None:
    """Was stored with an Implicit VR meta (pydicom switched to explicit reading
    and nothing else noticed); DCMTK could not read the file. Logged, with the
    first element header (no value)."""
    data = dataset()
    with caplog.at_level("WARNING", logger="dicomstore.archive"):
        outcome = store(archive, data, ts=IMPLICIT_LE)
    assert outcome.status == CANNOT_UNDERSTAND
    assert outcome.error_comment == EXPECTED[IMPLICIT_LE, "explicit"]
    assert dcm_files(archive.root) == []
    (line,) = [r.getMessage() for r in caplog.records if r.name == "dicomstore.archive"]
    assert line.startswith(f"1.2.3.4.5.6.7: {outcome.error_comment} (transfer syntax {IMPLICIT_LE}")
    assert line.endswith(f"first element header {data[:8].hex(' ')})")
