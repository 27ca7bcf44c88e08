"""The SCU checks what it sends the way an SCP checks what it receives.

A file cut short (in its Pixel Data, its last element, an element header, an
encapsulated fragment, an undefined-length sequence) is ``corrupt``: reported,
never sent, never retried, and opens no association.  An odd-length deflated
data set (pydicom's ``image_dfl.dcm``), which DCMTK's storescu delivers, is
delivered too, padded as PS3.5 A.5 asks, with a warning in the report.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from tests.conftest import dcmtk, dcmtk_storescp, free_port, serve_command, wait_listening
from tests.services.test_scu_support import TESTFILES, received_by_uid

from dicomstore import uids
from dicomstore.cli import main
from dicomstore.services import sources

CT = get_testdata_file("CT_small.dcm")  # ... Pixel Data, then (FFFC,FFFC) of 126 bytes
MR = get_testdata_file("MR_small.dcm")  # ... Pixel Data last
J2K = get_testdata_file("JPEG2000.dcm")  # encapsulated Pixel Data
DFL = get_testdata_file("image_dfl.dcm")  # Deflated Explicit VR Little Endian, odd length


def _cut(source: str, dest: Path, *, drop: int | None = None, keep: int | None = None) -> Path:
    """A copy of ``source`` without its last ``drop`` bytes, or with its first ``keep``."""
    data = Path(source).read_bytes()
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data[: len(data) - drop] if drop is not None else data[:keep])
    return dest


def _uid(path: str | Path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _report(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@contextmanager
def _serving(tmp_path: Path) -> Iterator[dict]:
    """`dicomstore serve` in a subprocess; afterwards ``["log"]`` holds its log."""
    port, seen = free_port(), {}
    proc = subprocess.Popen(
        serve_command(port, tmp_path / "store", "--fsync", "off", "--log-level", "info"),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_listening(port, proc)
        seen["port"] = port
        yield seen
    finally:
        proc.terminate()
        _, seen["log"] = proc.communicate(timeout=30)


def _send(port: int, *paths: Path | str, report: Path, extra: tuple[str, ...] = ()) -> int:
    args = ["send", "127.0.0.1", str(port), *map(str, paths), "--report", str(report)]
    return main([*args, "--retry-delay", "0.001", "--log-level", "warning", *extra])


def _archived(tmp_path: Path) -> dict[str, Path]:
    store = tmp_path / "store"
    return received_by_uid(store) if store.exists() else {}


# -- `dicomstore send`, as a user runs it ---------------------------------------


def test_files_cut_short_are_corrupt_not_sent_and_open_no_association(
    tmp_path: Path, capsys
) -> None:
    cut = tmp_path / "in"
    files = [
        _cut(CT, cut / "pixels.dcm", drop=1000),  # inside the Pixel Data
        _cut(CT, cut / "last.dcm", drop=100),  # inside (FFFC,FFFC), the last element
        _cut(MR, cut / "odd.dcm", drop=301),  # inside the Pixel Data (then 138 of padding)
        _cut(CT, cut / "header.dcm", keep=39068 + 9),  # inside the header of (FFFC,FFFC)
        _cut(J2K, cut / "fragment.dcm", drop=100),  # inside the first fragment
    ]
    report = tmp_path / "report.jsonl"
    with _serving(tmp_path) as server:
        code = _send(server["port"], *files, report=report)
    out = capsys.readouterr().out
    assert code == 7  # nothing stored
    rows = _report(report)
    assert [r["outcome"] for r in rows] == ["corrupt"] * 5
    assert [r["attempts"] for r in rows] == [0] * 5  # never sent, never retried
    assert all(r["bytes"] == 0 and r["status"] is None for r in rows)
    assert rows[0]["sop_instance_uid"] == _uid(CT)
    assert rows[0]["reason"] == (
        "(7FE0,0010) PixelData at offset 6288: its value of 32768 bytes runs past"
        " the end of the data set, 862 bytes missing"
    )
    assert rows[1]["reason"] == (
        "(FFFC,FFFC) DataSetTrailingPadding at offset 39068: its value of 126 bytes"
        " runs past the end of the data set, 100 bytes missing"
    )
    assert rows[2]["reason"].startswith("(7FE0,0010) PixelData at offset ")
    assert rows[2]["reason"].endswith(", 163 bytes missing")
    assert rows[3]["reason"] == (
        "the data set ends inside the header of (FFFC,FFFC) DataSetTrailingPadding at"
        " offset 39068: 3 of its 12 bytes missing"
    )
    assert rows[4]["reason"].startswith("fragment 1 of (7FE0,0010) PixelData at offset ")
    assert rows[4]["reason"].endswith("92 bytes missing")
    assert "corrupt (not sent): 5" in out and "sent 0 instance(s)" in out
    assert " association " not in server["log"]  # no association was even asked for
    assert _archived(tmp_path) == {}


def test_good_files_go_and_corrupt_ones_do_not(tmp_path: Path) -> None:
    bad = _cut(CT, tmp_path / "in" / "bad.dcm", drop=1000)
    good = [Path(shutil.copy(MR, tmp_path / "in")), Path(shutil.copy(J2K, tmp_path / "in"))]
    report = tmp_path / "report.jsonl"
    with _serving(tmp_path) as server:
        code = _send(server["port"], good[0], bad, good[1], report=report)
    assert code == 1  # some stored, some not
    outcomes = {Path(r["path"]).name: r["outcome"] for r in _report(report)}
    assert outcomes == {"MR_small.dcm": "stored", "bad.dcm": "corrupt", "JPEG2000.dcm": "stored"}
    assert set(_archived(tmp_path)) == {_uid(p) for p in good}
    assert server["log"].count(" contexts accepted") == 1  # (one association)
    assert server["log"].count(" association ended (released)") == 1


def test_all_corrupt_opens_no_association_with_dcmtk_either(tmp_path: Path) -> None:
    files = [_cut(MR, tmp_path / "in" / "a.dcm", drop=10), _cut(J2K, tmp_path / "b.dcm", drop=2)]
    port = free_port()
    report = tmp_path / "report.jsonl"
    with dcmtk_storescp(port, tmp_path / "out", "-v") as proc:
        code = _send(port, *files, report=report)
        proc.terminate()
        log = proc.communicate(timeout=30)[0].decode()
    assert code == 7
    assert [r["outcome"] for r in _report(report)] == ["corrupt", "corrupt"]
    assert "Association Received" not in log
    assert list((tmp_path / "out").iterdir()) == []


def _deflate_stream(path: str) -> bytes:
    """The deflate stream of a deflated file, found by zlib alone (what follows left out)."""
    with open(path, "rb") as f:
        data = f.read()
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    start = sources.scan_file(path).offset
    inflater.decompress(data[start:])
    assert inflater.eof
    return data[start : len(data) - len(inflater.unused_data)]


def test_an_odd_length_deflated_data_set_is_sent_padded_with_a_warning(tmp_path: Path) -> None:
    stream = _deflate_stream(DFL)
    assert len(stream) % 2 == 1  # what makes image_dfl.dcm odd (plus 8 more bytes after it)
    report = tmp_path / "report.jsonl"
    with _serving(tmp_path) as server:
        code = _send(server["port"], DFL, report=report)
    assert code == 0
    (row,) = _report(report)
    assert row["outcome"] == "stored"
    assert row["transfer_syntax"] == uids.DEFLATED_EXPLICIT_VR_LE and not row["converted"]
    assert row["bytes"] == len(stream) + 1
    assert row["file_warning"] == (
        "deflated data set: 8 byte(s) after the end of the deflate stream (a gzip trailer:"
        " CRC-32 and size of the inflated data) left out; odd-length deflate stream"
        f" ({len(stream)} bytes) padded with a NUL byte (PS3.5 A.5)"
    )
    (stored,) = _archived(tmp_path).values()
    with open(stored, "rb") as f:
        f.seek(sources.scan_file(stored).offset)
        assert f.read() == stream + b"\0"  # the file's own deflate stream, then the pad
    original, received = pydicom.dcmread(DFL), pydicom.dcmread(stored)
    assert received.PixelData == original.PixelData
    assert received.SOPInstanceUID == original.SOPInstanceUID


def test_dcmtk_and_we_both_deliver_image_dfl(tmp_path: Path) -> None:
    """DCMTK's storescu re-encodes it (-xd: deflated again); we send its stream padded."""
    port = free_port()
    report = tmp_path / "report.jsonl"
    with dcmtk_storescp(port, tmp_path / "ours", "+xd"):
        assert _send(port, DFL, report=report) == 0
    with dcmtk_storescp(port, tmp_path / "dcmtk", "+xd"):
        proc = subprocess.run(
            [dcmtk("storescu"), "-xd", "-R", "-aec", "X", "127.0.0.1", str(port), DFL],
            capture_output=True,
            timeout=60,
        )
    assert proc.returncode == 0, proc.stderr
    for folder in ("ours", "dcmtk"):
        (received,) = (tmp_path / folder).iterdir()
        dump = subprocess.run([dcmtk("dcmdump"), str(received)], capture_output=True, text=True)
        assert dump.returncode == 0 and "DeflatedLittleEndianExplicit" in dump.stdout, dump
        assert pydicom.dcmread(received).PixelData == pydicom.dcmread(DFL).PixelData


# -- the scan --------------------------------------------------------------------


def test_only_the_truncated_test_files_of_pydicom_are_corrupt() -> None:
    corrupt = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sorted(TESTFILES.rglob("*")):
            try:
                sources.scan_file(path)
            except sources.CorruptFile as exc:
                corrupt[path.name] = str(exc)
            except sources.NotDicom:
                continue
    assert set(corrupt) == {"MR_truncated.dcm", "rtplan_truncated.dcm"}, corrupt
    assert corrupt["rtplan_truncated.dcm"] == (
        "(300A,00B0) BeamSequence at offset 1410: its value of 976 bytes runs past the end"
        " of the data set, 265 bytes missing"
    )


def test_a_cut_deflated_file_is_corrupt(tmp_path: Path) -> None:
    with pytest.raises(sources.CorruptFile, match="the deflate stream is cut short: .*missing"):
        sources.scan_file(_cut(DFL, tmp_path / "a.dcm", drop=2000))
    end = len(_deflate_stream(DFL)) + sources.scan_file(DFL).offset
    with pytest.raises(sources.CorruptFile, match="the deflate stream is cut short"):
        sources.scan_file(_cut(DFL, tmp_path / "b.dcm", keep=end - 2))
    # A sound start (the UIDs can be read), then a block of the invalid type 11 (RFC 1951)
    offset = sources.scan_file(DFL).offset
    inflated = zlib.decompressobj(-zlib.MAX_WBITS).decompress(_deflate_stream(DFL))
    deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    start = deflater.compress(inflated[:2000]) + deflater.flush(zlib.Z_SYNC_FLUSH)
    (tmp_path / "c.dcm").write_bytes(Path(DFL).read_bytes()[:offset] + start + b"\xff" * 20)
    with pytest.raises(sources.CorruptFile, match="cannot be inflated: .*invalid block type"):
        sources.scan_file(tmp_path / "c.dcm")


def test_a_deflated_file_already_padded_is_sent_as_it_is(tmp_path: Path) -> None:
    stream = _deflate_stream(DFL)
    path = tmp_path / "padded.dcm"
    offset = sources.scan_file(DFL).offset
    path.write_bytes(Path(DFL).read_bytes()[:offset] + stream + b"\0")
    inst = sources.scan_file(path)
    assert (inst.size, inst.padding, inst.warning) == (len(stream) + 1, b"", None)


def test_what_the_walk_does_not_understand_is_sent_with_a_warning() -> None:
    """SC_rgb_jpeg.dcm holds implicit VR elements in an explicit VR syntax: the SCP judges."""
    inst = sources.scan_file(TESTFILES / "SC_rgb_jpeg.dcm")
    assert inst.warning is not None and inst.warning.startswith("not checked for truncation")
    assert "(0008,0008) ImageType" in inst.warning


def test_stray_bytes_after_the_last_element_are_corrupt(tmp_path: Path) -> None:
    """A partial element header: DCMTK's storescu refuses such a file too (premature end)."""
    path = tmp_path / "stray.dcm"
    path.write_bytes(Path(MR).read_bytes() + b"\0\0")
    with pytest.raises(sources.CorruptFile, match="6 of its 8 bytes missing"):
        sources.scan_file(path)
