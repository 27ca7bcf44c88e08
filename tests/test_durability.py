"""Nothing acknowledged is lost, nothing half-written is visible (PS3.4 B.1.2:
Success means the instance is stored).  Fault tests, bounded and self-stopping.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid

from dicomstore import uids
from dicomstore.aio.client import associate
from dicomstore.archive import Archive, crashpoints
from dicomstore.cli import main
from dicomstore.errors import AssociationError
from tests.conftest import PEER_ENV, dcmtk, free_port, serve_command, wait_listening

SC = "1.2.840.10008.5.1.4.1.1.7"


def instance(study: str, size: int = 20_000, uid: str | None = None) -> tuple[str, bytes]:
    ds = Dataset()
    ds.SOPClassUID = SC
    ds.SOPInstanceUID = uid or generate_uid()
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = study[:60] + ".1"
    ds.PatientID = "CRASH"
    ds.Modality = "OT"
    ds.add_new(0x00091010, "OB", os.urandom(size))  # private payload, random bytes
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return ds.SOPInstanceUID, fp.getvalue()


def start_server(port: int, storage: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        serve_command(port, storage, "--log-level", "warning"),
        stderr=subprocess.DEVNULL,
    )
    wait_listening(port, proc)
    return proc


def dataset_of(path: Path) -> bytes:
    with path.open("rb") as fp:
        from dicomstore.archive.dicomfile import dataset_offset

        offset = dataset_offset(fp)
        fp.seek(offset)
        return fp.read()


async def _sender(
    port: int, study: str, acked: dict[str, bytes], enough: asyncio.Event, target: int
) -> None:
    try:
        async with await associate(
            "127.0.0.1", port, called_ae="DICOMSTORE", contexts=[(SC, [uids.EXPLICIT_VR_LE])]
        ) as assoc:
            ctx = assoc.context_for(SC)
            while True:
                uid, data = instance(study)
                rsp = await assoc.store_stream(ctx, SC, uid, [data[:7000], data[7000:]])
                if rsp.status == 0:
                    acked[uid] = data
                if len(acked) >= target:
                    enough.set()
    except (AssociationError, ConnectionError, OSError):
        return  # the server died under us: expected


@pytest.mark.parametrize("count", [4, 1], ids=["4-senders", "lone-sender-inline-commit"])
def test_sigkill_while_senders_stream_loses_nothing_acknowledged(tmp_path, count: int) -> None:
    storage = tmp_path / "archive"
    acked: dict[str, bytes] = {}
    rounds = 20 if count > 1 else 10
    for n in range(rounds):
        port = free_port()
        server = start_server(port, storage)

        async def round_(target: int, port: int, server: subprocess.Popen) -> None:
            enough = asyncio.Event()
            study = generate_uid()
            senders = [
                asyncio.create_task(_sender(port, study, acked, enough, target))
                for _ in range(count)
            ]
            await asyncio.wait_for(enough.wait(), 60)
            server.send_signal(signal.SIGKILL)  # mid-stream: the senders are busy
            await asyncio.wait_for(asyncio.gather(*senders), 60)

        asyncio.run(round_(len(acked) + 3 + n % 5, port, server))
        server.wait(30)
    # restart once more: every acknowledged instance is there, intact
    archive = Archive(storage)
    try:
        for uid, data in acked.items():
            path = archive.path_of(uid)
            assert path is not None and path.exists(), f"acknowledged {uid} lost"
            assert dataset_of(path) == data
            assert pydicom.dcmread(path).SOPInstanceUID == uid
        # start-up cleaned temporaries: the killed servers' folders (nodes.py) are gone
        assert list(archive.tmp_dir.iterdir()) == []
        node = archive.tmp_dir.name
        assert {p.name for p in (storage / ".tmp").iterdir()} == {node, f"{node}.lock"}
        assert not [p for p in storage.rglob("*.part") if ".tmp" not in p.parts]
        assert archive.check() == []
    finally:
        archive.close()
    assert len(acked) >= rounds * 3


def test_sender_killed_mid_dataset_leaves_nothing_behind(tmp_path) -> None:
    storage = tmp_path / "archive"
    port = free_port()
    server = start_server(port, storage)
    try:
        uid, head = instance(generate_uid(), size=10)
        big = tmp_path / "big.dcm"
        ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(head), force=True)
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = uids.EXPLICIT_VR_LE
        ds.add_new(0x00091010, "OB", bytes(300 * 1024 * 1024))
        ds.save_as(big, enforce_file_format=True)
        sender = subprocess.Popen(
            [
                dcmtk("storescu"),
                "--max-send-pdu",
                "4096",
                "-aec",
                "DICOMSTORE",
                "127.0.0.1",
                str(port),
                str(big),
            ],
            env=PEER_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        tmpdir = storage / ".tmp"  # (the server's temporaries: in its node's folder)
        # wait until the server is writing the instance, then kill the sender
        while not any(tmpdir.glob("node-*/*")):
            assert sender.poll() is None, "sender finished before we could kill it"
            os.sched_yield()
        sender.kill()
        sender.wait(30)
        # the server notices the dropped connection and removes the temporary
        while any(tmpdir.glob("node-*/*")):
            assert server.poll() is None
            os.sched_yield()
        # and keeps serving
        assert (
            subprocess.run(
                [dcmtk("echoscu"), "-aec", "DICOMSTORE", "127.0.0.1", str(port)], env=PEER_ENV
            ).returncode
            == 0
        )
    finally:
        server.terminate()
        server.wait(30)
    archive = Archive(storage)
    try:
        assert archive.instances() == []
        assert not list(storage.rglob("*.dcm"))
    finally:
        archive.close()


def test_a_server_killed_after_the_commit_of_a_replace_serves_the_new_version(tmp_path) -> None:
    """End to end: ``dicomstore serve --on-duplicate replace`` dies (SIGKILL, its own
    crash point) right after committing a replace that moves an instance to
    another study, before unlinking the old file and answering; ``check`` (no
    server running: it recovers first) is clean and the new version is served."""
    storage = tmp_path / "archive"
    port = free_port()
    env = {**os.environ, crashpoints.ENV: "publish.after-commit:2"}  # the 2nd store
    server = subprocess.Popen(
        serve_command(port, storage, "--on-duplicate", "replace", "--log-level", "warning"),
        stderr=subprocess.DEVNULL,
        env=env,
    )
    uid, v1 = instance(generate_uid())
    _, v2 = instance(generate_uid(), uid=uid)
    statuses: list[int | None] = []

    async def send() -> None:
        try:
            async with await associate(
                "127.0.0.1", port, called_ae="DICOMSTORE", contexts=[(SC, [uids.EXPLICIT_VR_LE])]
            ) as assoc:
                ctx = assoc.context_for(SC)
                for data in (v1, v2):
                    statuses.append((await assoc.store_stream(ctx, SC, uid, [data])).status)
        except (AssociationError, ConnectionError, OSError):
            statuses.append(None)  # the server died under us: expected

    try:
        wait_listening(port, server)
        asyncio.run(asyncio.wait_for(send(), 60))
        assert server.wait(30) == -signal.SIGKILL
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(30)
    assert statuses == [0, None]
    assert main(["check", "--storage", str(storage)]) == 0
    with Archive(storage) as archive:
        assert dataset_of(archive.path_of(uid)) == v2
        assert len([p for p in storage.rglob("*.dcm") if ".tmp" not in p.parts]) == 1
        assert archive.check() == []
