"""Helpers shared by the Storage SCU tests (and the unit tests of the file scanner).

The data set of a received file is found here independently of the code under
test (pydicom reads the meta), so "byte-identical" means what it says.
"""

from __future__ import annotations

import shutil
import struct
import warnings
from pathlib import Path
from typing import Any

import pydicom
import pydicom.data
import pytest
from pydicom.filereader import _read_file_meta_info

from dicomstore import uids
from dicomstore.services import sources
from dicomstore.services.storage_scu import MAX_CONTEXTS, propose_contexts

TESTFILES = Path(pydicom.data.__file__).parent / "test_files"


def dataset_bytes(path: Path) -> bytes:
    """Everything after the File Meta Information, located by pydicom's own reader."""
    with open(path, "rb") as f:
        if f.read(132)[128:132] != b"DICM":
            f.seek(0)
            return f.read()
        _read_file_meta_info(f)
        return f.read()


def sendable(
    dest: Path | None = None, *, compressed: bool | None = None, limit: int | None = None
) -> list[Path]:
    """pydicom's test files we can send, one per SOP Instance UID (copied to ``dest``).

    ``compressed`` True/False keeps only encapsulated/unencapsulated ones.
    Broken files (no SOP UIDs, cut short, odd data set length) are left out, and
    those not sent byte for byte (a deflated one padded to an even length).
    """
    chosen: dict[str, Path] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sorted(TESTFILES.glob("*.dcm")):
            try:
                inst = sources.scan_file(path)
            except sources.NotDicom:
                continue
            whole = inst.offset + inst.size == path.stat().st_size and not inst.padding
            if inst.size % 2 or not whole or inst.sop_instance_uid in chosen:
                continue
            encapsulated = uids.as_uid(inst.transfer_syntax).is_encapsulated
            if compressed is not None and encapsulated != compressed:
                continue
            chosen[inst.sop_instance_uid] = path
    paths = list(chosen.values())[:limit]
    if dest is not None:
        dest.mkdir(parents=True, exist_ok=True)
        paths = [Path(shutil.copy(p, dest / p.name)) for p in paths]
    return paths


def received_by_uid(folder: Path) -> dict[str, Path]:
    """Files written by a receiver, keyed by their SOP Instance UID."""
    out: dict[str, Path] = {}
    for path in folder.rglob("*"):
        if path.is_file():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            if "SOPInstanceUID" in ds:  # a receiver may leave a partial file behind
                out[str(ds.SOPInstanceUID)] = path
    return out


def uid_of(path: Path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return str(pydicom.dcmread(path, stop_before_pixels=True, force=True).SOPInstanceUID)


def summary_of(results: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in results:
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
    return counts


# -- unit tests of the scanner and the context plan ---------------------------------


def test_scan_finds_the_data_set_where_pydicom_does() -> None:
    paths = sendable()
    assert len(paths) >= 40
    for path in paths:
        inst = sources.scan_file(path)
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        assert inst.sop_class_uid == ds.SOPClassUID, path
        assert inst.sop_instance_uid == ds.SOPInstanceUID, path
        assert path.read_bytes()[inst.offset :] == dataset_bytes(path), path
        assert inst.size == path.stat().st_size - inst.offset


def test_files_without_meta_start_at_zero_with_the_encoding_pydicom_finds() -> None:
    little = sources.scan_file(TESTFILES / "ExplVR_LitEndNoMeta.dcm")
    big = sources.scan_file(TESTFILES / "ExplVR_BigEndNoMeta.dcm")
    assert (little.offset, little.transfer_syntax) == (0, uids.EXPLICIT_VR_LE)
    assert (big.offset, big.transfer_syntax) == (0, uids.EXPLICIT_VR_BE)


@pytest.mark.parametrize(
    "content",
    [b"", b"hello world\n" * 50, bytes(range(256)) * 40, b"\0" * 128 + b"DICM"],
)
def test_non_dicom_files_are_refused_with_a_reason(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.dcm"
    path.write_bytes(content)
    with pytest.raises(sources.NotDicom) as info:
        sources.scan_file(path)
    assert str(info.value)


def test_a_deflated_file_is_scanned_through_pydicom() -> None:
    inst = sources.scan_file(TESTFILES / "image_dfl.dcm")
    assert inst.transfer_syntax == uids.DEFLATED_EXPLICIT_VR_LE
    assert inst.sop_instance_uid


def test_meta_parser_skips_long_vr_elements_and_stops_at_group_8() -> None:
    def elem(tag: int, vr: bytes, value: bytes) -> bytes:
        group, el = tag >> 16, tag & 0xFFFF
        if vr in (b"OB", b"UN"):
            return struct.pack("<HH2s2xI", group, el, vr, len(value)) + value
        return struct.pack("<HH2sH", group, el, vr, len(value)) + value

    meta = elem(0x00020001, b"OB", b"\0\1") + elem(0x00020010, b"UI", b"1.2.840.10008.1.2\0")
    data = elem(0x00080016, b"UI", b"1.2.3\0")
    offset, values = sources.parse_file_meta(b"\0" * 128 + b"DICM" + meta + data)
    assert offset == 132 + len(meta)
    assert values[0x0010] == b"1.2.840.10008.1.2\0"


def test_contexts_follow_the_files_and_fill_associations_of_128() -> None:
    classes = uids.storage_sop_classes()[:100]
    instances = [
        sources.Instance(c, f"1.2.3.{n}", uids.EXPLICIT_VR_LE) for n, c in enumerate(classes)
    ]
    instances.append(sources.Instance(classes[0], "1.2.3.999", uids.as_uid("1.2.840.10008.1.2.5")))
    groups = propose_contexts(instances, convert=True)
    assert sum(len(g) for g in groups) == 100 * 2 + 1
    assert all(len(g) <= MAX_CONTEXTS for g in groups) and len(groups) == 2
    first = [spec for spec in groups[0] if spec[0] == classes[0]]
    assert first == [
        (classes[0], [uids.EXPLICIT_VR_LE]),
        (classes[0], ["1.2.840.10008.1.2.5"]),
        (classes[0], [uids.EXPLICIT_VR_LE, uids.IMPLICIT_VR_LE]),
    ]
    no_convert = propose_contexts(instances, convert=False)
    assert sum(len(g) for g in no_convert) == 101 and len(no_convert) == 1


def test_file_chunks_are_the_data_set_bytes_in_pdv_multiples(tmp_path: Path) -> None:
    from dicomstore.services.storage_scu import read_size

    size = read_size(16384)
    assert size % (16384 - 6) == 0 and size <= 1 << 20
    path = tmp_path / "x.bin"
    path.write_bytes(bytes(range(256)) * 10_000)
    inst = sources.Instance("1.2", "1.2.3", uids.EXPLICIT_VR_LE, path, offset=10, size=2_559_990)
    chunks = list(sources.file_chunks(sources.open_dataset(inst), size))
    assert b"".join(chunks) == path.read_bytes()[10:]
    assert all(len(c) == size for c in chunks[:-1])


def test_file_chunks_grow_from_the_first_read_to_the_read_size(tmp_path: Path) -> None:
    """The first PDVs go out after a small read; the rest of a large file in large ones."""
    from dicomstore.services import storage_scu

    pdv = 16384 - 6
    path = tmp_path / "x.bin"
    path.write_bytes(bytes(range(256)) * 20_000)  # 5.12 MB
    inst = sources.Instance("1.2", "1.2.3", uids.EXPLICIT_VR_LE, path, offset=0, size=5_120_000)
    chunks = list(storage_scu.file_chunks(sources.open_dataset(inst), 16384, lambda: None))
    assert b"".join(chunks) == path.read_bytes()
    sizes = [len(c) for c in chunks[:-1]]
    first = storage_scu.read_size(16384, storage_scu.FIRST_READ)
    assert sizes[:5] == [first, 2 * first, 4 * first, 8 * first, 16 * first]
    assert all(s % pdv == 0 for s in sizes)
    assert max(sizes) == storage_scu.read_size(16384) == sizes[-1]


def test_exactly_reads_the_scanned_bytes_and_no_further(tmp_path: Path) -> None:
    """The data set ends where the scan said: no read past it (a file that grew keeps
    its tail), the file closed; a file cut short since the scan stops the send."""
    import io

    path = tmp_path / "x.bin"
    path.write_bytes(bytes(range(200)) * 10)  # 2000 bytes
    reads: list[int] = []

    class Counting(io.FileIO):
        def read(self, n: int = -1) -> bytes:
            reads.append(n)
            return super().read(n)

    inst = sources.Instance("1.2", "1.2.3", uids.EXPLICIT_VR_LE, path, offset=0, size=1000)
    f = Counting(path, "rb")
    sent = b"".join(sources.exactly(sources.file_chunks(f, 600), inst))
    assert sent == path.read_bytes()[:1000]
    assert reads == [600, 600] and f.closed
    longer = sources.Instance("1.2", "1.2.3", uids.EXPLICIT_VR_LE, path, offset=0, size=3000)
    with pytest.raises(sources.SourceReadError, match="1000 bytes shorter"):
        list(sources.exactly(sources.file_chunks(open(path, "rb"), 600), longer))  # noqa: SIM115


def test_a_small_file_checked_is_kept_for_its_send_once(tmp_path: Path) -> None:
    """check_file reads a small file's data set whole and gives its bytes (the send
    takes them instead of opening the file again); a larger file's, none."""
    small = [p for p in sendable(compressed=False) if p.stat().st_size <= sources.HEAD_SIZE]
    large = [p for p in sendable(compressed=False) if p.stat().st_size > sources.HEAD_SIZE]
    inst = sources.scan_file(small[0], check=False)
    assert not inst.checked
    assert sources.check_file(inst) == small[0].read_bytes()[inst.offset :]
    assert inst.checked
    big = sources.scan_file(large[0], check=False)
    assert sources.check_file(big) is None and big.checked


def test_a_fifo_socket_or_device_is_skipped_unread(tmp_path: Path) -> None:
    """review38scu #8: a FIFO in a folder hung send (its open waits for a writer), and
    Ctrl-C could not stop it."""
    import os

    fifo = tmp_path / "fifo.dcm"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        with pytest.raises(sources.NotDicom, match="not a regular file"):
            sources.scan_file(path)
