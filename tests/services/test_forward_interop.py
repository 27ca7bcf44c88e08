"""Forwarding to real peers (issue 16, "Done means"): DCMTK storescp down at first and up
later receives every instance once, byte-identical (--bit-preserving); `dicomstore
serve` killed (SIGKILL) while forwarding loses nothing after a restart."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest
from tests.conftest import dcmtk_storescp, free_port, serve_command, wait_listening
from tests.services.forward_testlib import config, received_counts, serving, status, store, until
from tests.services.retrieve_testlib import destination
from tests.services.test_scu_support import dataset_bytes, sendable, uid_of

from dicomstore.archive.reader import ArchiveReader
from dicomstore.uids import EXPLICIT_VR_LE

#: On both index engines (issue 17).
pytestmark = pytest.mark.usefixtures("index_engine")

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def test_storescp_down_at_first_gets_every_instance_once_byte_identical(tmp_path: Path) -> None:
    root, received = tmp_path / "archive", tmp_path / "received"
    files = sendable(limit=30)  # uncompressed and compressed, in their own syntaxes
    port = free_port()
    uids: set[str] = set()

    async def main() -> None:
        async with serving(root, config(f"STORESCP=127.0.0.1:{port}")) as server:
            uids.update(await store(server.port, files, every=False))  # (some lack UIDs)
            assert len(uids) > 20
            # the first attempts failed (nothing listens): only now does storescp start
            await until(lambda: status(root, "STORESCP")["last_error"] is not None)
            assert status(root, "STORESCP")["sent"] == 0
            extra = ("--bit-preserving", "+xa", "--unique-filenames", "--aetitle", "STORESCP")
            with dcmtk_storescp(port, received, *extra):
                await until(lambda: status(root, "STORESCP")["sent"] == len(uids), 60)

    asyncio.run(main())
    row = status(root, "STORESCP")
    assert (row["pending"], row["failed"], row["skipped"]) == (0, 0, 0)
    counts = received_counts(received)
    assert set(counts) == uids and set(counts.values()) == {1}  # each exactly once
    reader = ArchiveReader(root)
    syntaxes = set()
    for path in received.rglob("*"):
        if path.is_file():
            row = reader.instance(uid_of(path))
            assert dataset_bytes(path) == dataset_bytes(reader.path(row)), path.name
            meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
            assert meta.TransferSyntaxUID == row["transfer_syntax_uid"]  # as stored
            syntaxes.add(meta.TransferSyntaxUID)
    assert JPEG_BASELINE in syntaxes and EXPLICIT_VR_LE in syntaxes


def _serve(port: int, root: Path, dest_port: int) -> subprocess.Popen[bytes]:
    args = serve_command(
        port,
        root,
        "--stable-age",
        "0",
        "--forward",
        f"DEST=127.0.0.1:{dest_port}",
        "--forward-retry-delay",
        "0.05",
        "--forward-retry-max",
        "0.2",
    )
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(port, proc)
    return proc


def test_sigkill_while_forwarding_loses_nothing(tmp_path: Path) -> None:
    """The destination holds the first C-STORE of the batch; the server is killed
    then; after a restart every instance arrives (at least once: the one in
    flight may arrive twice, as with any store-and-forward)."""
    root = tmp_path / "archive"
    files = sendable(compressed=False, limit=6)
    uids = {uid_of(f) for f in files}
    port = free_port()
    with destination("DEST", release=threading.Event()) as dest:
        assert dest.release is not None
        proc = _serve(port, root, dest.port)
        try:
            asyncio.run(store(port, files))
            assert dest.arrived.wait(30)  # forwarding is under way, held by the destination
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        assert status(root, "DEST")["sent"] == 0
        proc = _serve(port, root, dest.port)
        try:
            dest.release.set()
            deadline = time.monotonic() + 60
            while status(root, "DEST")["sent"] < len(uids):  # the queue: a file it writes
                assert proc.poll() is None and time.monotonic() < deadline
                threading.Event().wait(0.02)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    got = [uid for uid, *_ in dest.received]
    assert set(got) == uids and len(got) <= len(uids) + 1
    assert status(root, "DEST")["pending"] == 0
