"""begin → write → commit/abort: statuses, failures that leave nothing, durability."""

from __future__ import annotations

import errno
import os
import sqlite3
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from archive_testlib import (
    CT,
    EXPLICIT_LE,
    IMPLICIT_LE,
    MR,
    dataset,
    dcm_files,
    digest_of,
    element,
    mounted_tmpfs,
    settled,
    store,
)
from pydicom import dcmread

from dicomstore.archive import (
    CANNOT_UNDERSTAND,
    DATASET_MISMATCH,
    OUT_OF_RESOURCES,
    SUCCESS,
    Archive,
    Index,
    StoreHandler,
    StoreOutcome,
    StoreSink,
    ingest,
    layout,
)
from dicomstore.archive.engine import engine_for
from dicomstore.errors import LocalProtocolError
from dicomstore.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME


@pytest.fixture
def archive(tmp_path: Path) -> Archive:
    with Archive(tmp_path / "root") as archive:
        yield archive


def assert_nothing_stored(archive: Archive) -> None:
    assert dcm_files(archive.root) == []
    assert archive.instances() == []


def test_archive_is_a_store_handler(archive: Archive) -> None:
    assert isinstance(archive, StoreHandler)
    ingest = archive.begin(sop_class_uid=CT, sop_instance_uid="1.2", transfer_syntax_uid="1.2")
    assert isinstance(ingest, StoreSink)
    ingest.abort()


def test_success_writes_meta_then_the_data_set(archive: Archive) -> None:
    data = dataset(pixels=1000)
    outcome = store(archive, data, chunk=100, calling_ae="MODALITY")
    assert outcome.status == SUCCESS
    assert outcome.error_comment is None
    assert outcome.path == archive.root / "1.2.3.4" / "1.2.3.4.5" / "1.2.3.4.5.6.7.dcm"
    raw = outcome.path.read_bytes()
    assert raw[:128] == bytes(128) and raw[128:132] == b"DICM"
    assert raw.endswith(data)
    meta = dcmread(outcome.path).file_meta
    assert meta.MediaStorageSOPClassUID == CT
    assert meta.MediaStorageSOPInstanceUID == "1.2.3.4.5.6.7"
    assert meta.TransferSyntaxUID == EXPLICIT_LE
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert meta.ImplementationVersionName == IMPLEMENTATION_VERSION_NAME
    assert meta.SourceApplicationEntityTitle == "MODALITY"
    assert meta.ReceivingApplicationEntityTitle == "ARCHIVE"
    row = outcome.instance
    assert row["patient_name"] == "Doe^Jane" and row["modality"] == "CT"
    assert row["instance_number"] == 7 and row["series_number"] == 3
    assert row["calling_ae"] == "MODALITY" and row["file_size"] == len(raw)
    assert row["path"] == "1.2.3.4/1.2.3.4.5/1.2.3.4.5.6.7.dcm"
    assert settled(archive)


def test_header_is_on_disk_with_the_first_fragment(archive: Archive) -> None:
    ingest = archive.begin(
        sop_class_uid=CT, sop_instance_uid="1.2.3", transfer_syntax_uid=EXPLICIT_LE
    )
    (temp,) = archive.tmp_dir.iterdir()
    assert temp.read_bytes() == b""  # (the header goes out with the first fragment)
    ingest.write(b"\x08\x00")
    assert temp.read_bytes()[128:132] == b"DICM" and temp.read_bytes().endswith(b"\x08\x00")
    ingest.abort()
    empty = archive.begin(
        sop_class_uid=CT, sop_instance_uid="1.2.4", transfer_syntax_uid=EXPLICIT_LE
    )
    outcome = empty.commit()  # no data set at all: C000
    assert outcome.status != SUCCESS and "empty" in (outcome.error_comment or "")


def _count_writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, object]]:
    """Every os.write (its length) and os.writev (its parts) from now on."""
    calls: list[tuple[str, object]] = []
    real_write, real_writev = os.write, os.writev

    def write(fd: int, data: bytes) -> int:
        calls.append(("write", len(data)))
        return real_write(fd, data)

    def writev(fd: int, parts: list[memoryview]) -> int:
        calls.append(("writev", list(parts)))
        return real_writev(fd, parts)

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "writev", writev)
    return calls


def test_one_system_call_per_fragment(archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    """The header goes out with the first fragment (one writev), every other fragment
    in one write."""
    calls = _count_writes(monkeypatch)
    data = dataset(pixels=5000)
    ingest = archive.begin(
        sop_class_uid=CT, sop_instance_uid="1.2.3.4.5.6.7", transfer_syntax_uid=EXPLICIT_LE
    )
    assert calls == []
    fragments = [data[i : i + 1024] for i in range(0, len(data), 1024)]
    for fragment in fragments:
        ingest.write(fragment)
    (kind, parts), *rest = calls
    header, first = parts  # type: ignore[misc]
    assert kind == "writev" and header.nbytes > 132 and bytes(first) == fragments[0]
    assert rest == [("write", len(f)) for f in fragments[1:]]
    monkeypatch.undo()
    assert ingest.commit().status == SUCCESS
    with open(archive.path_of("1.2.3.4.5.6.7"), "rb") as f:  # type: ignore[arg-type]
        assert f.read()[header.nbytes :] == data


def test_the_first_fragment_is_not_copied_to_join_the_header(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_writes(monkeypatch)
    data = dataset(pixels=100_000)
    ingest = archive.begin(
        sop_class_uid=CT, sop_instance_uid="1.2.3.4.5.6.7", transfer_syntax_uid=EXPLICIT_LE
    )
    ingest.write(data)
    ((kind, (_header, fragment)),) = calls  # type: ignore[misc]
    assert kind == "writev" and fragment.obj is data  # (the caller's own bytes)
    monkeypatch.undo()
    assert ingest.commit().status == SUCCESS


def test_caller_may_reuse_its_buffer(archive: Archive) -> None:
    data = dataset(pixels=300)
    buffer = bytearray(100)
    ingest = archive.begin(
        sop_class_uid=CT, sop_instance_uid="1.2.3.4.5.6.7", transfer_syntax_uid=EXPLICIT_LE
    )
    for start in range(0, len(data), 100):
        piece = data[start : start + 100]
        buffer[: len(piece)] = piece
        ingest.write(memoryview(buffer)[: len(piece)])
        buffer[:] = bytes(100)  # overwritten at once, as a receive buffer would be
    outcome = ingest.commit()
    assert outcome.status == SUCCESS
    assert outcome.path.read_bytes().endswith(data)


def test_digest_is_of_the_data_set_bytes(archive: Archive) -> None:

    data = dataset()
    outcome = store(archive, data, chunk=7)
    assert outcome.instance["digest"] == digest_of(data)


@pytest.mark.parametrize(
    ("kwargs", "command", "tags"),
    [
        ({"sop_uid": "1.2.3.4.5.6.8"}, {}, (0x00080018,)),
        ({"sop_class": MR}, {}, (0x00080016,)),
        ({"sop_uid": None}, {}, (0x00080018,)),
        ({"sop_class": None}, {}, (0x00080016,)),
        ({"sop_class": None, "sop_uid": None}, {}, (0x00080016, 0x00080018)),
        ({"sop_uid": ""}, {}, (0x00080018,)),
        ({}, {"sop_uid": "9.9"}, (0x00080018,)),
    ],
)
def test_identity_mismatch_is_a900(
    archive: Archive, kwargs: dict, command: dict, tags: tuple[int, ...]
) -> None:
    outcome = store(archive, dataset(**kwargs), **command)
    assert outcome.status == DATASET_MISMATCH
    assert outcome.offending_element == tags
    assert "SOP" in outcome.error_comment
    assert_nothing_stored(archive)


def _implicit(elements: dict[int, bytes]) -> bytes:
    """An Implicit VR Little Endian data set (PS3.5 7.1.3): lengths of 32 bits."""
    out = b""
    for tag, value in sorted(elements.items()):
        value += b"\0" if len(value) % 2 else b""
        out += struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value
    return out


@pytest.mark.parametrize(
    ("tag", "name"),
    [
        (0x0020000D, "Study Instance UID"),
        (0x0020000E, "Series Instance UID"),
        (0x00100020, "Patient ID"),
        (0x00100021, "Issuer of Patient ID"),
    ],
)
def test_a_key_too_long_to_be_read_is_a900_not_one_placeholder(
    archive: Archive, tag: int, name: str
) -> None:
    # review98 R4: two different values over 1 MiB were both indexed as one placeholder:
    # two studies (series, patients) filed as one, each answered 0000
    for n, fill in enumerate((b"1", b"2")):
        elements = {
            0x00080016: CT.encode(),
            0x00080018: f"1.2.3.{n}".encode(),
            0x00100020: b"PID1",
            0x0020000D: b"1.2.3",
            0x0020000E: b"1.2.3.4",
        }
        elements[tag] = (b"1." if tag >> 16 == 0x20 else b"X") + fill * (1 << 20)
        outcome = store(archive, _implicit(elements), sop_uid=f"1.2.3.{n}", ts=IMPLICIT_LE)
        assert outcome.status == DATASET_MISMATCH, outcome
        assert outcome.offending_element == (tag,)
        assert f"{name} longer than 1048576 bytes" in outcome.error_comment
    assert_nothing_stored(archive)


def test_a_value_that_reads_like_the_placeholder_is_stored(archive: Archive) -> None:
    """review99 V6: a Patient ID whose characters are those of the placeholder of a
    value too long to be read was refused as one."""
    outcome = store(archive, dataset(patient_id="<value too long>"))
    assert outcome.status == SUCCESS, outcome
    assert archive.instances()[0]["patient_id"] == "<value too long>"


def test_padding_of_command_uids_is_not_a_mismatch(archive: Archive) -> None:
    outcome = store(archive, dataset(), sop_uid="1.2.3.4.5.6.7\0", sop_class=CT + "\0")
    assert outcome.status == SUCCESS


@pytest.mark.parametrize(
    "data",
    [
        b"this is not a DICOM data set, only text " * 20,
        bytes(100),
        b"\xff" * 64,
        bytes(range(256)) * 4,
        b"\x08\x00",  # half an element header
        dataset()[:-3],  # last value cut short
        dataset()[:13],  # cut inside the second element's header
        dataset(pixels=2000)[:-10],  # Pixel Data cut short
        dataset(pixels=2000)[: len(dataset()) + 6],  # Pixel Data header cut short
        dataset() + b"\x10\x00",  # stray bytes at the end
        dataset() + element(0x00020010, "UI", EXPLICIT_LE),  # file meta in the data set
        b"",  # no data set at all
    ],
    ids=lambda d: f"{len(d)}B",
)
def test_garbage_is_c000(archive: Archive, data: bytes) -> None:
    outcome = store(archive, data, chunk=50)
    assert outcome.status == CANNOT_UNDERSTAND, outcome
    assert outcome.error_comment and not outcome.error_comment.startswith("cannot understand")
    assert_nothing_stored(archive)
    assert settled(archive)


def test_undelimited_sequence_is_c000(archive: Archive) -> None:
    item = (
        b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
        + element(0x00080100, "SH", "X")
        + (b"\xfe\xff\x0d\xe0" + bytes(4))
    )
    sequence = b"\x08\x00\x15\x11SQ\0\0\xff\xff\xff\xff" + item  # no delimiter
    outcome = store(archive, dataset() + sequence)
    assert outcome.status == CANNOT_UNDERSTAND
    delimited = sequence + b"\xfe\xff\xdd\xe0" + bytes(4)
    assert store(archive, dataset() + delimited).status == SUCCESS


def test_abort_leaves_nothing(archive: Archive) -> None:
    ingest = archive.begin(
        sop_class_uid=CT, sop_instance_uid="1.2.3.4.5.6.7", transfer_syntax_uid=EXPLICIT_LE
    )
    ingest.write(dataset()[:40])
    ingest.abort()
    ingest.abort()  # idempotent
    assert settled(archive)
    assert_nothing_stored(archive)
    with pytest.raises(LocalProtocolError):
        ingest.write(b"more")
    with pytest.raises(LocalProtocolError):
        ingest.commit()


def test_context_manager_aborts_unless_committed(archive: Archive) -> None:
    with archive.begin(sop_class_uid=CT, sop_instance_uid="1.2", transfer_syntax_uid="1.2"):
        pass
    assert settled(archive)


def test_misuse_after_commit_raises(archive: Archive) -> None:
    ingest = archive.begin(
        sop_class_uid=CT, sop_instance_uid="1.2.3.4.5.6.7", transfer_syntax_uid=EXPLICIT_LE
    )
    ingest.write(dataset())
    assert ingest.commit().status == SUCCESS
    with pytest.raises(LocalProtocolError):
        ingest.write(b"x")
    with pytest.raises(LocalProtocolError):
        ingest.commit()
    ingest.abort()  # harmless after commit
    assert len(archive.instances()) == 1


def test_crash_leftovers_removed_at_start(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with Archive(root) as archive:
        crashed = archive.begin(
            sop_class_uid=CT, sop_instance_uid="1.2.3.4.5.6.7", transfer_syntax_uid=EXPLICIT_LE
        )
        crashed.write(dataset()[:50])
        (archive.tmp_dir / "old.bak").write_bytes(b"x")
        assert len(list(archive.tmp_dir.iterdir())) == 2
    with Archive(root) as again:
        assert list(again.tmp_dir.iterdir()) == []
        assert store(again, dataset()).status == SUCCESS
    crashed.abort()


# -- out of resources ------------------------------------------------------------------


def _enospc(*args: object, **kwargs: object) -> int:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_enospc_while_writing_is_a700(archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    data = dataset(pixels=4000)
    ingest = archive.begin(
        sop_class_uid=CT, sop_instance_uid="1.2.3.4.5.6.7", transfer_syntax_uid=EXPLICIT_LE
    )
    ingest.write(data[:1000])
    with monkeypatch.context() as patch:
        patch.setattr(os, "write", _enospc)
        ingest.write(data[1000:2000])
    assert settled(archive)  # space given back at once
    ingest.write(data[2000:])  # later fragments are dropped quietly
    outcome = ingest.commit()
    assert outcome.status == OUT_OF_RESOURCES
    assert "No space left on device" in outcome.error_comment
    assert outcome.path is None
    assert_nothing_stored(archive)


def test_enospc_while_writing_meta_is_a700(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The meta goes out with the first fragment: ENOSPC then is A700 at commit, and
    later fragments are not written."""
    ingest = archive.begin(
        sop_class_uid=CT, sop_instance_uid="1.2.3.4.5.6.7", transfer_syntax_uid=EXPLICIT_LE
    )
    data = dataset()
    with monkeypatch.context() as patch:
        patch.setattr(os, "write", _enospc)
        patch.setattr(os, "writev", _enospc)
        ingest.write(data[:100])
    written = _count_writes(monkeypatch)
    ingest.write(data[100:])
    monkeypatch.undo()
    assert written == []
    outcome = ingest.commit()
    assert outcome.status == OUT_OF_RESOURCES
    assert "No space left" in (outcome.error_comment or "")
    assert settled(archive)
    assert_nothing_stored(archive)


@pytest.mark.parametrize("call", ["fsync", "link", "mkdir", "rename"])
def test_io_errors_while_committing_are_a700(
    archive: Archive, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    """Durable, a new instance is renamed into place (a link is its trace, best
    effort: it fails only the backup link a classic store makes), and flushed
    before it is placed, or after its COMMIT with one syncfs, then fsyncs."""
    monkeypatch.setattr(os, call, _enospc)
    if call == "fsync":
        monkeypatch.setattr(layout, "syncfs", _enospc)
    outcome = store(archive, dataset())
    monkeypatch.undo()
    if call == "link" and archive._publisher.defers:  # (no trace: stored all the same)
        assert outcome.status == SUCCESS
        assert archive.check() == [] and settled(archive)
        return
    assert outcome.status == OUT_OF_RESOURCES
    assert outcome.error_comment.startswith(os.strerror(errno.ENOSPC)), outcome.error_comment
    assert settled(archive)
    assert_nothing_stored(archive)
    assert store(archive, dataset()).status == SUCCESS  # and the archive still works


@pytest.mark.sqlite_index
def test_index_locked_is_a700_and_leaves_no_file(tmp_path: Path) -> None:
    with Archive(tmp_path / "root", lock_timeout=0.01) as archive:
        other = sqlite3.connect(archive.root / "index.sqlite", isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        outcome = store(archive, dataset())
        assert outcome.status == OUT_OF_RESOURCES
        assert "index" in outcome.error_comment
        assert settled(archive)
        other.execute("ROLLBACK")
        other.close()
        assert_nothing_stored(archive)
        assert store(archive, dataset()).status == SUCCESS


def test_index_held_by_another_writer_is_a700_and_leaves_no_file(tmp_path: Path) -> None:
    """Either engine: another writer (a ``delete`` in another process) holds the
    index's write lock for longer than ``lock_timeout``."""
    with Archive(tmp_path / "root", lock_timeout=0.01) as archive:
        other = Index(engine_for(archive.root), timeout=0.01)
        with other.lock:
            other.begin()
            outcome = store(archive, dataset())
            other.rollback()
        other.close()
        assert outcome.status == OUT_OF_RESOURCES
        assert "index" in outcome.error_comment
        assert settled(archive)
        assert_nothing_stored(archive)
        assert store(archive, dataset()).status == SUCCESS


def test_index_commit_failure_undoes_the_rename(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_commit(self: Index, **kw: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(Index, "commit", failing_commit)
    outcome = store(archive, dataset())
    monkeypatch.undo()
    assert outcome.status == OUT_OF_RESOURCES
    assert_nothing_stored(archive)
    assert not (archive.root / "1.2.3.4").exists()  # folders made for it are gone too


def test_index_commit_failure_on_replace_restores_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Archive(tmp_path / "root", on_duplicate="replace") as archive:
        first = store(archive, dataset(patient_name="First"))

        def failing_commit(self: Index, **kw: object) -> None:
            raise sqlite3.OperationalError("database is locked")

        monkeypatch.setattr(Index, "commit", failing_commit)
        outcome = store(archive, dataset(patient_name="Second"))
        monkeypatch.undo()
        assert outcome.status == OUT_OF_RESOURCES
        assert first.path.read_bytes().endswith(dataset(patient_name="First"))
        assert archive.get_instance("1.2.3.4.5.6.7")["patient_name"] == "First"
        assert archive.check() == []
        assert settled(archive)


def test_rename_failure_on_replace_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replace is renamed into place (a new instance is linked): ENOSPC there is
    A700, and the first version stays what the index serves."""
    with Archive(tmp_path / "root", on_duplicate="replace") as archive:
        first = store(archive, dataset(patient_name="First"))
        monkeypatch.setattr(os, "rename", _enospc)
        outcome = store(archive, dataset(patient_name="Second"))
        monkeypatch.undo()
        assert outcome.status == OUT_OF_RESOURCES
        assert "No space left on device" in outcome.error_comment
        assert first.path.read_bytes().endswith(dataset(patient_name="First"))
        assert archive.get_instance("1.2.3.4.5.6.7")["patient_name"] == "First"
        assert archive.check() == []
        assert settled(archive)
        assert store(archive, dataset(patient_name="Second")).status == SUCCESS


# -- durability ------------------------------------------------------------------------


@pytest.mark.sqlite_index
def test_fsync_calls_per_instance(archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    assert store(archive, dataset()).status == SUCCESS
    first = len(synced)
    synced.clear()
    assert store(archive, dataset("1.2.3.4.5.6.8"), sop_uid="1.2.3.4.5.6.8").status == SUCCESS
    # a new series: file + root + study folder + series folder, or with syncfs the file
    # and one syncfs for all the new folders; a known series: file + series folder.
    # Committed before the flush (SQLite with syncfs): one write to the journal each,
    # no fsync but those that made the journal at the first (its zeros, its folder
    # and the folder's parent: ``journal.py``)
    if archive._publisher.defers:
        assert (first, len(synced)) == (3, 0)
        assert archive.stats.flushes == 2
    else:
        assert (first, len(synced)) == ((1, 2) if layout.SYNCFS_AVAILABLE else (4, 2))
    mode = sqlite3.connect(archive.root / "index.sqlite").execute("PRAGMA journal_mode")
    assert mode.fetchone() == ("wal",)


def test_no_fsync_when_disabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    with Archive(tmp_path / "root", fsync=False) as archive:
        assert store(archive, dataset()).status == SUCCESS
    assert synced == []


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (needs root and mount permission; skipped otherwise)."""
    with mounted_tmpfs(tmp_path / "tiny", "1m") as mount:
        yield mount


def test_real_disk_full_is_a700(tiny_fs: Path) -> None:
    with Archive(tiny_fs / "root") as archive:
        outcome = store(archive, dataset(pixels=2 << 20), chunk=16378)
        assert outcome.status == OUT_OF_RESOURCES
        assert "No space left on device" in outcome.error_comment
        assert_nothing_stored(archive)
        assert settled(archive)
        small = store(archive, dataset(pixels=1000))  # the space was given back
        assert small.status == SUCCESS
        assert archive.check() == []


# -- encodings and comments -------------------------------------------------------------


def test_deflated_data_set_cut_short_is_c000(archive: Archive) -> None:
    import zlib

    deflater = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    deflated = deflater.compress(dataset(pixels=3000)) + deflater.flush()
    ts = "1.2.840.10008.1.2.1.99"
    assert store(archive, deflated[:-20], ts=ts).status == CANNOT_UNDERSTAND
    assert_nothing_stored(archive)
    outcome = store(archive, deflated, ts=ts)
    assert outcome.status == SUCCESS
    assert outcome.path.read_bytes().endswith(deflated)  # stored deflated, as received


def test_private_transfer_syntax_is_read_as_explicit_little_endian(archive: Archive) -> None:
    outcome = store(archive, dataset(pixels=100), ts="1.2.3.999.1")
    assert outcome.status == SUCCESS
    assert outcome.instance["transfer_syntax_uid"] == "1.2.3.999.1"


def test_wire_comment_is_a_valid_lo() -> None:
    outcome = StoreOutcome(DATASET_MISMATCH, "UID '1.2\\3' differs: é\n " + "x" * 100)
    comment = outcome.wire_comment
    assert len(comment) <= 64 and "\\" not in comment
    assert all(" " <= c <= "~" for c in comment)
    assert comment.startswith("UID '1.2?3' differs: ??")
    assert comment == "UID '1.2?3' differs: ??..."  # cut between words
    assert StoreOutcome(SUCCESS).wire_comment is None


@pytest.mark.parametrize("fsync", [True, False])
def test_a_large_instance_is_handed_to_the_disk_as_it_arrives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync: bool
) -> None:
    """Durable, every WRITEBACK_EVERY bytes start their writeback (sync_file_range), so
    that the flush at the end waits for the last few MiB only; not without fsync."""
    started: list[int] = []
    monkeypatch.setattr(layout, "start_writeback", lambda fd: started.append(os.fstat(fd).st_size))
    data = dataset(pixels=2 * ingest.WRITEBACK_EVERY + 1000)
    with Archive(tmp_path / "root", fsync=fsync) as archive:
        outcome = store(archive, data, chunk=1 << 20)
        assert outcome.status == SUCCESS
    if fsync:
        assert len(started) == 2  # at 8 and 16 MiB (a batch of one: no writeback of its own)
        assert all(size >= ingest.WRITEBACK_EVERY for size in started)
    else:
        assert started == []


def test_sequences_nested_too_deeply_for_the_header_reader_say_so(tmp_path) -> None:
    """review53 #8: undefined-length sequences some hundred levels deep were C000 with
    'maximum recursion depth exceeded' as the Error Comment (Python's words)."""
    import struct

    sq = struct.pack("<HH2sHL", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF)
    item = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
    ends = struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    data = dataset("1.2.3.4.5.6.7") + (sq + item) * 400 + ends * 400
    with Archive(tmp_path / "a", fsync=False) as archive:
        out = store(archive, data)
        assert out.status == 0xC000
        assert out.error_comment == ("sequences nested too deeply to be read (some hundred levels)")
        assert archive.instances() == []
