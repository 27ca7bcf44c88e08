"""Elements that readers frame each by its own rule (review80 F1, F2, F5): an explicit VR
not in PS3.5 6.2 (pydicom reads a 2-byte length or switches to Implicit VR, DCMTK a
4-byte one) and an undefined length where PS3.5 7.1 allows none (pydicom reads to a
delimiter, DCMTK refuses). What follows them is another data set for each reader, so
the index would file the instance under the patient one of them sees: C000, at every
door (``Ingest._check``: C-STORE, STOW-RS, imports). Sequences, UN and encapsulated
Pixel Data of undefined length stay stored."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from archive_testlib import IMPLICIT_LE, dataset, element, store, stored_dataset

from dicomstore.archive import Archive

DELIMITER = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
ITEM_END = struct.pack("<HHL", 0xFFFE, 0xE00D, 0)


@pytest.fixture
def archive(tmp_path: Path):
    with Archive(tmp_path / "a", fsync=False) as archive:
        yield archive


def implicit(tag: int, value: bytes, length: int | None = None) -> bytes:
    size = len(value) if length is None else length
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, size) + value


def implicit_dataset(*extra: bytes, sop: bytes = b"1.2.3.4.5.6.7\0") -> bytes:
    """A small Implicit VR data set with ``extra`` elements between its UIDs and the rest."""
    head = implicit(0x00080016, b"1.2.840.10008.5.1.4.1.1.2\0")
    head += implicit(0x00080018, sop)
    tail = implicit(0x00100020, b"PID1") + implicit(0x0020000D, b"1.2.3.4\0")
    return head + b"".join(extra) + tail + implicit(0x0020000E, b"1.2.3.4.5 ")


def refused(archive: Archive, data: bytes, *words: str, ts: str | None = None) -> None:
    out = store(archive, data, **({"ts": ts} if ts else {}))
    assert out.status == 0xC000, out
    for word in words:
        assert word in out.error_comment, out.error_comment
    assert archive.instances() == []


@pytest.mark.parametrize("vr", [b"ZZ", b":\x00", b"\x00\x00"], ids=["ZZ", "punct", "nul"])
def test_a_vr_not_in_ps35_is_refused(archive: Archive, vr: bytes) -> None:
    """review80 F1/F2: laid out for both readings, the index and pydicom read PID1 where
    DCMTK read another patient."""
    odd = struct.pack("<HH2sH", 0x0009, 0x0010, vr, 4) + b"abcd"
    data = dataset(extra={0x00091000: ("LO", "x")})
    at = data.index(struct.pack("<HH", 0x0009, 0x1000))
    refused(archive, data[:at] + odd + data[at:], "(0009,0010)", "has a VR not in PS3.5 6.2")


@pytest.mark.parametrize("vr", [b"OB", b"UT", b"LO"])
def test_an_undefined_length_other_than_sq_un_or_pixels_is_refused(archive, vr) -> None:
    """review80 F5: stored, a file DCMTK cannot read (sent on as it is by C-MOVE)."""
    odd = struct.pack("<HH2sHL", 0x0009, 0x1001, vr, 0, 0xFFFFFFFF) + DELIMITER
    if vr == b"LO":  # (a short VR: no 4-byte length, read as 0xFFFF then)
        odd = struct.pack("<HH2sH", 0x0009, 0x1001, vr, 0xFFFF)
        refused(archive, dataset() + odd)
        return
    data = dataset(extra={0x00091000: ("LO", "x")})
    at = data.index(struct.pack("<HH", 0x0009, 0x1000)) + 10
    refused(archive, data[:at] + odd + data[at:], "of undefined length, which only SQ")


def test_implicit_undefined_lengths_that_are_no_sequence_are_refused(archive) -> None:
    """Implicit VR: a dictionary LO of undefined length, and a private element of
    undefined length that holds elements, not items (pydicom reads to the delimiter,
    DCMTK misses its Sequence Delimitation Item)."""
    lo = implicit(0x00081030, b"", 0xFFFFFFFF) + DELIMITER
    refused(archive, implicit_dataset(lo), "of undefined length", ts=IMPLICIT_LE)
    inner = implicit(0x00100020, b"OTHER ")
    private = implicit(0x00091001, inner, 0xFFFFFFFF) + DELIMITER
    refused(archive, implicit_dataset(private), "does not frame as a sequence", ts=IMPLICIT_LE)


def test_sequences_un_and_encapsulated_pixels_of_undefined_length_stay_stored(archive) -> None:
    item = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + element(0x00100020, "LO", "X")
    sq = struct.pack("<HH2sHL", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF) + item + ITEM_END
    data = dataset(extra={0x00081030: ("LO", "d")})
    at = data.index(struct.pack("<HH", 0x0008, 0x1030)) + 10
    data = data[:at] + sq + DELIMITER + data[at:]
    out = store(archive, data)
    assert out.status == 0 and stored_dataset(out.path) == data
    private = implicit(0x00091001, implicit(0xFFFEE000, implicit(0x00100020, b"IN")), 0xFFFFFFFF)
    data = implicit_dataset(private + DELIMITER, sop=b"1.2.3.4.5.6.8\0")
    out = store(archive, data, ts=IMPLICIT_LE, sop_uid="1.2.3.4.5.6.8")
    assert out.status == 0 and stored_dataset(out.path) == data


def _item(length: int, body: bytes) -> bytes:
    return struct.pack("<HHL", 0xFFFE, 0xE000, length) + body


@pytest.mark.parametrize(
    "sequence",
    [
        _item(10, element(0x00081150, "UI", "1.2.840.10008.5.1.4.1.1.7")),  # item overrun
        element(0x00081150, "UI", "1.2.840.10008.5.1.4.1.1.7"),  # an element, no item
    ],
    ids=["item-overrun", "no-item"],
)
@pytest.mark.parametrize("deflated", [False, True], ids=["plain", "deflated"])
def test_an_undefined_length_sequence_that_does_not_frame_is_refused_in_any_syntax(
    archive: Archive, sequence: bytes, deflated: bool
) -> None:
    """review82 F5: the verdict depended on the syntax and the size: a small such SQ was
    never walked when plain (stored, a file DCMTK cannot read), and deflated its header
    was read again behind the walk (an inflated source reads forward only), naming a
    tag made of the UID's bytes."""
    import zlib

    sq = struct.pack("<HH2sHL", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF) + sequence + DELIMITER
    data = dataset(extra={0x00081030: ("LO", "x" * 60)})
    at = data.index(struct.pack("<HH", 0x0008, 0x1030)) + 8 + 60
    data = data[:at] + sq + data[at:]
    ts = None
    if deflated:
        z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = z.compress(data) + z.flush()
        data += b"\0" * (len(data) % 2)
        ts = "1.2.840.10008.1.2.1.99"
    out = store(archive, data, **({"ts": ts} if ts else {}))
    assert out.status == 0xC000, out
    assert out.offending_element == (0x00081140,), out
    assert archive.instances() == []


@pytest.mark.parametrize("deflated", [False, True], ids=["plain", "deflated"])
def test_check_names_a_file_stored_before_it_was_refused(
    archive: Archive, monkeypatch, deflated: bool
) -> None:
    """An archive may hold files stored before they were refused (review80: an
    undefined-length OB, which pydicom reads to a delimiter and DCMTK refuses):
    ``check`` names them, plain or deflated; a file that frames one way it does not."""
    import zlib

    from dicomstore.archive import ingest

    out = store(archive, dataset(sop_uid="1.2.3.4.5.6.9"), sop_uid="1.2.3.4.5.6.9")
    assert out.status == 0 and archive.check() == []
    odd = struct.pack("<HH2sHL", 0x0009, 0x1001, b"OB", 0, 0xFFFFFFFF) + DELIMITER
    data = dataset(extra={0x00091000: ("LO", "x")})
    at = data.index(struct.pack("<HH", 0x0009, 0x1000)) + 10
    data, ts = data[:at] + odd + data[at:], None
    if deflated:
        z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = z.compress(data) + z.flush()
        data, ts = data + b"\0" * (len(data) % 2), "1.2.840.10008.1.2.1.99"
    monkeypatch.setattr(ingest, "judged", lambda *args: None)  # (as before review80)
    out = store(archive, data, **({"ts": ts} if ts else {}))
    assert out.status == 0, out
    monkeypatch.undo()
    [line] = archive.check()
    assert line.startswith(f"{out.path.relative_to(archive.root).as_posix()}: refused if")
    assert "(0009,1001)" in line and "of undefined length, which only SQ" in line


def test_check_judges_a_stored_file_as_the_ingest_judged_it(archive: Archive) -> None:
    """review85 F1: `check` walked every element strictly, where the ingest walks what
    the scan saw to walk: an odd element inside a small sequence of defined length
    (its length ends it for every reader), stored today, was 'refused if received now'."""
    inner = struct.pack("<HH2sHL", 0x0009, 0x1001, b"OB", 0, 0xFFFFFFFF) + DELIMITER
    item = element(0x00090010, "LO", "ACME") + inner
    body = struct.pack("<HHL", 0xFFFE, 0xE000, len(item)) + item
    sq = struct.pack("<HH2sHL", 0x0009, 0x1010, b"SQ", 0, len(body)) + body
    data = dataset(extra={0x00090010: ("LO", "ACME")})
    at = data.index(struct.pack("<HH", 0x0010, 0x0010))
    out = store(archive, data[:at] + sq + data[at:])
    assert out.status == 0, out
    assert archive.check() == []
