"""Helpers shared by the archive tests: data sets built byte by byte, a store loop."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import shutil
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import xxhash

from dicomstore.archive import Archive, Index, StoreOutcome, reserve
from dicomstore.archive.dicomfile import dataset_offset
from dicomstore.archive.identity import MARK
from dicomstore.archive.journal import NAME as JOURNAL
from dicomstore.archive.publish import Publisher

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
_LONG = {b"OB", b"OW", b"SQ", b"UN", b"UT", b"OF", b"OD", b"OL", b"UC", b"UR"}


def element(tag: int, vr: str, value: bytes | str) -> bytes:
    """One Explicit VR Little Endian element (PS3.5 7.1.2), value padded to even length."""
    raw = value.encode("latin-1") if isinstance(value, str) else value
    if len(raw) % 2:
        raw += b"\0" if vr in ("UI", "OB") else b" "
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode()
    if vr.encode() in _LONG:
        return head + b"\0\0" + struct.pack("<L", len(raw)) + raw
    return head + struct.pack("<H", len(raw)) + raw


def dataset(
    sop_uid: str | bytes | None = "1.2.3.4.5.6.7",
    *,
    sop_class: str | bytes | None = CT,
    study: str | bytes | None = "1.2.3.4",
    series: str | bytes | None = "1.2.3.4.5",
    patient_id: str = "PID1",
    patient_name: str = "Doe^Jane",
    modality: str = "CT",
    extra: dict[int, tuple[str, bytes | str]] | None = None,
    pixels: int = 0,
) -> bytes:
    """A small Explicit VR Little Endian data set; ``None`` leaves an attribute out."""
    elems: dict[int, tuple[str, bytes | str]] = {
        0x00080060: ("CS", modality),
        0x00080020: ("DA", "20240102"),
        0x00080050: ("SH", "ACC1"),
        0x00100010: ("PN", patient_name),
        0x00100020: ("LO", patient_id),
        0x00100040: ("CS", "F"),
        0x00081030: ("LO", "Head"),
        0x00200013: ("IS", "7"),
        0x00200011: ("IS", "3"),
    }
    for tag, value in (
        (0x00080016, sop_class),
        (0x00080018, sop_uid),
        (0x0020000D, study),
        (0x0020000E, series),
    ):
        if value is not None:
            elems[tag] = ("UI", value)
    elems.update(extra or {})
    data = b"".join(element(tag, *elems[tag]) for tag in sorted(elems))
    if pixels:
        data += element(0x7FE00010, "OW", bytes(range(256)) * (pixels // 256) + bytes(pixels % 256))
    return data


def store(
    archive: Archive,
    data: bytes,
    *,
    sop_uid: str = "1.2.3.4.5.6.7",
    sop_class: str = CT,
    ts: str = EXPLICIT_LE,
    chunk: int | None = None,
    calling_ae: str = "SCU",
) -> StoreOutcome:
    """begin → write (in ``chunk``-byte fragments) → commit."""
    ingest = archive.begin(
        sop_class_uid=sop_class,
        sop_instance_uid=sop_uid,
        transfer_syntax_uid=ts,
        calling_ae=calling_ae,
        called_ae="ARCHIVE",
    )
    step = chunk or max(len(data), 1)
    view = memoryview(data)
    for start in range(0, len(data), step):
        ingest.write(view[start : start + step])
    return ingest.commit()


def digest_of(data: bytes) -> str:
    """The digest the index records for a data set (XXH3-128, computed here
    independently of ``digests.py``)."""
    return "xxh3:" + xxhash.xxh3_128(data).hexdigest()


def stored_dataset(path: Path) -> bytes:
    """The data set bytes of a stored file (what follows the File Meta Information)."""
    with open(path, "rb") as fp:
        offset = dataset_offset(fp)
        fp.seek(offset)
        return fp.read()


def in_meta(data: bytes, old: bytes, new: bytes) -> bytes:
    """A PS3.10 file's bytes with ``old`` put as ``new`` once in its File Meta
    Information (the digest does not cover it: review104 F2)."""
    start = dataset_offset(io.BytesIO(data))
    assert old in data[:start], "not in the meta"
    return data[:start].replace(old, new, 1) + data[start:]


def dcm_files(root: Path) -> list[Path]:
    """Every file under ``root`` except the index (and its WAL companions), the
    lock files of the nodes (``archive/nodes.py``), the storage's id
    (``archive/identity.py``) and the reserve file (``archive/reserve.py``)."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and not p.name.startswith("index.sqlite")
        and not is_node_lock(root, p)
        and p != root / MARK
        and p != root / reserve.NAME
    )


def is_node_lock(root: Path, path: Path) -> bool:
    """Whether ``path`` is the lock file of a node (an open archive) of ``root``, or
    of a service one node runs for the root (``<root>/.events.lock``...)."""
    from dicomstore.archive import nodes

    if path.parent == root and path.name.startswith(".") and path.name.endswith(nodes.LOCK):
        return True
    return path.parent == root / ".tmp" and path.name.startswith(nodes.PREFIX)


def race(
    archives: list[Archive], payloads: list[bytes], uid: str = "1.2.3.4.5.6.7"
) -> list[StoreOutcome]:
    """``archives[i]`` receives ``payloads[i]`` in a thread of its own; all commit at
    the same moment; the outcomes."""
    barrier = threading.Barrier(len(payloads))
    outcomes: list[Any] = [None] * len(payloads)  # (each an outcome once joined)

    def run(i: int) -> None:
        ingest = archives[i].begin(
            sop_class_uid=CT, sop_instance_uid=uid, transfer_syntax_uid=EXPLICIT_LE
        )
        ingest.write(payloads[i])
        barrier.wait()
        outcomes[i] = ingest.commit()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(payloads))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(outcomes)
    return outcomes


def crash_at_commit(monkeypatch: pytest.MonkeyPatch, number: int = 2) -> type[BaseException]:
    """From COMMIT ``number`` on, the process "dies": nothing of it runs any more
    (then :func:`die`)."""

    class Crash(BaseException):
        pass

    real = Index.commit
    commits = []

    def commit(self: Index, **kw: object) -> None:
        commits.append(1)
        if len(commits) >= number:
            raise Crash
        real(self, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Index, "commit", commit)
    monkeypatch.setattr(Index, "rollback", lambda self: None)
    monkeypatch.setattr(Publisher, "_undo", lambda self, placed, **kw: None)
    return Crash


def die(archive: Archive) -> None:
    """The process of ``archive`` is gone: nothing of it is cleaned up."""
    archive.index._db.close()  # the open transaction is lost
    archive.index.engine.close()  # and its writer's turn (turns.py)
    archive._idle.close()  # (no checkpoint after its death)
    archive._node.close()  # its lock goes with the process (its folder stays)
    journal, archive.storage._journal = archive.storage._journal, None
    if journal is not None and journal._fd >= 0:
        os.close(journal._fd)  # (its file stays as it is: no checkpoint, not removed)
    archive.storage.close()


def settled(archive: Archive) -> bool:
    """Whether nothing of the archive's publishing is left in its folder of
    temporaries, once what its journal holds is flushed where it belongs (as
    the idle checkpoint after ``deferred.CHECKPOINT_AFTER``, or its close, would)."""
    archive._committer.when_idle(archive._publisher._checkpoint)
    return not [p for p in archive.tmp_dir.iterdir() if p.name != JOURNAL]


#: Where ``dataset(uid)``'s instance is filed (its study and series).
FINAL = "1.2.3.4/1.2.3.4.5/{}.dcm"


def uid(n: int) -> str:
    """The ``n``-th SOP Instance UID of a test."""
    return f"1.2.3.4.5.6.{100 + n}"


class Behind(dt.datetime):
    """The clock of a node 30 s behind the host that ran a ``reindex`` (patched as
    ``fields.datetime``, where ``received_now`` reads the clock: review59 M2)."""

    @classmethod
    def now(cls, tz: dt.tzinfo | None = None) -> Behind:
        return super().now(tz) - dt.timedelta(seconds=30)  # type: ignore[return-value]


def count_opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The keys ``FileStorage.open`` is called with from now on (the test's end)."""
    from dicomstore.archive.filestorage import FileStorage

    opens: list[str] = []
    real = FileStorage.open

    def counting(self: FileStorage, key: str) -> BinaryIO:
        opens.append(key)
        return real(self, key)

    monkeypatch.setattr(FileStorage, "open", counting)
    return opens


def damage(index: Path) -> None:
    """The root page of the instance table overwritten (a bad disk, a bad copy): every
    store meets it (a page in the middle was missed once tables were added)."""
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(index)) as db:
        (page,) = db.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'instance'"
        ).fetchone()
        size = db.execute("PRAGMA page_size").fetchone()[0]
    with open(index, "r+b") as f:
        f.seek((page - 1) * size)
        f.write(b"\xff" * size)


@contextlib.contextmanager
def mounted_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``mount -o size=``) at ``folder``, made (needs root and
    mount permission: the test is skipped otherwise); unmounted after."""
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting needs root")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {result.stderr.decode(errors='replace')}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
