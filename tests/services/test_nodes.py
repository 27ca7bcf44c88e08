"""Several `dicomstore serve` nodes on one archive (issue 17), at scale: three nodes on
their own ports share one PostgreSQL index and one storage root; three DCMTK storescu
senders, one per node, two of them sending the same instances at the same moment
and the third others; one node killed with SIGKILL midway, restarted on the same
storage, and its sender run again. After: every acknowledged instance is stored once,
byte for byte as sent, and `dicomstore check` is clean."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from tests.conftest import PEER_ENV, dcmtk, free_port, serve_command, wait_listening

from dicomstore.archive.dicomfile import dataset_offset
from dicomstore.archive.maintenance import data_set_digest
from dicomstore.archive.reader import ArchiveReader
from dicomstore.cli import main

CT = "1.2.840.10008.5.1.4.1.1.2"
SHARED = 120  # instances sent by two senders at once (to two nodes)
OWN = 360  # instances of the third sender (still sending when the killed restarts)
PIXELS = 32 * 1024


def write_instances(folder: Path, prefix: str, count: int) -> dict[Path, tuple[str, str]]:
    """``count`` CT files in 4 studies: path -> (SOP Instance UID, data set digest)."""
    folder.mkdir(parents=True)
    made = {}
    for n in range(count):
        study = f"{prefix}.{n % 4}"
        ds = Dataset()
        ds.SOPClassUID = CT
        ds.SOPInstanceUID = f"{study}.1.{n}"
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = f"{study}.1"
        ds.PatientID = f"PID{prefix.rsplit('.', 1)[1]}-{n % 4}"
        ds.PatientName = "Nodes^Test"
        ds.Modality = "CT"
        ds.InstanceNumber = n
        ds.add_new(0x00091010, "OB", bytes([n % 256]) * PIXELS)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CT
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{n:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        with path.open("rb") as fp:
            fp.seek(dataset_offset(fp))
            made[path] = (ds.SOPInstanceUID, hashlib.sha256(fp.read()).hexdigest())
    return made


def acknowledged(log: str) -> set[Path]:
    """The files storescu's ``-v`` log reports a Success (or Warning) response for."""
    acked, current = set(), None
    for line in log.splitlines():
        sending = re.match(r"I: Sending file: (.*)$", line)
        if sending:
            current = Path(sending.group(1))
        elif re.match(r"I: Received Store Response \((Success|Warning)", line) and current:
            acked.add(current)
    return acked


class Node:
    """One `dicomstore serve` process on the shared storage and index."""

    def __init__(self, storage: Path, url: str) -> None:
        self.port = free_port()
        self.storage, self.url = storage, url
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            serve_command(self.port, self.storage, "--fsync", "off", "--index", self.url),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_listening(self.port, self.proc, timeout=30)

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(20)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)


def storescu(port: int, files: list[Path]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [dcmtk("storescu"), "-v", "-aec", "DICOMSTORE", "127.0.0.1", str(port), *map(str, files)],
        env=PEER_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stored_files(storage: Path) -> int:
    return sum(
        1
        for folder, dirs, files in os.walk(storage)
        if ".tmp" not in Path(folder).relative_to(storage).parts
        for name in files
        if name.endswith(".dcm")
    )


def test_three_nodes_one_index_one_storage_one_killed(
    tmp_path: Path, postgres: object, capsys: pytest.CaptureFixture[str]
) -> None:
    url = postgres.new_url()  # type: ignore[attr-defined]
    storage = tmp_path / "storage"
    shared = write_instances(tmp_path / "shared", "1.2.826.0.1.3680043.99.1", SHARED)
    own = write_instances(tmp_path / "own", "1.2.826.0.1.3680043.99.2", OWN)
    source = {**shared, **own}
    nodes = [Node(storage, url) for _ in range(3)]
    acked: set[Path] = set()
    try:
        for node in nodes:
            node.start()
        senders = [
            storescu(nodes[0].port, list(shared)),
            storescu(nodes[1].port, list(shared)),
            storescu(nodes[2].port, list(own)),
        ]
        # midway: a third of the instances stored, kill the first node
        deadline = time.monotonic() + 60
        while stored_files(storage) < SHARED // 3 and senders[0].poll() is None:
            assert time.monotonic() < deadline, "the nodes store nothing"
            time.sleep(0.01)
        nodes[0].kill()
        killed_log = senders[0].communicate(timeout=90)[0]
        assert senders[0].returncode != 0, "the node was killed after its sender finished"
        # it restarts on the same storage while the others receive (its start-up must
        # leave their temporaries alone); its sender sends everything again
        nodes[0].start()
        running_meanwhile = senders[2].poll() is None
        again = storescu(nodes[0].port, list(shared))
        logs = [killed_log, *(s.communicate(timeout=90)[0] for s in (*senders[1:], again))]
        for log in logs:
            acked |= acknowledged(log)
        assert len(acknowledged(killed_log)) < SHARED
        for sender, log in zip((*senders[1:], again), logs[1:], strict=True):
            assert sender.returncode == 0, log
        assert acked == set(source)  # (each of them sent to a node that kept running)
        assert running_meanwhile, "the restart came after the third sender finished"
    finally:
        for node in nodes:
            node.stop()
    reader = ArchiveReader(storage, index=url)
    for path in acked:
        uid, digest = source[path]
        row = reader.instance(uid)
        assert row["digest"] == digest, f"{uid}: indexed digest is not the data set sent"
        assert data_set_digest(storage / row["path"]) == digest
        assert pydicom.dcmread(storage / row["path"]).SOPInstanceUID == uid
    assert len(reader.search("instance", {})) == len({uid for uid, _ in source.values()})
    assert stored_files(storage) == SHARED + OWN  # one file per instance
    assert list((storage / ".tmp").iterdir()) == []  # the killed node's folder settled
    capsys.readouterr()
    assert main(["check", "--storage", str(storage), "--index", url]) == 0
    assert capsys.readouterr().out == "0 problem(s)\n"
