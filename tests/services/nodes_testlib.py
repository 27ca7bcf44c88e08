"""Several `dicomstore serve` nodes on one archive (issue 17): instances to send, a
node process, DCMTK storescu and what its log acknowledges (tests/services/test_nodes.py,
benchmarks/bench_nodes.py)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import xxhash
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from tests.conftest import PEER_ENV, dcmtk, free_port, serve_command, wait_listening

from dicomstore.archive.dicomfile import dataset_offset

CT = "1.2.840.10008.5.1.4.1.1.2"
PIXELS = 32 * 1024


def write_instances(
    folder: Path, prefix: str, count: int, pixels: int = PIXELS
) -> dict[Path, tuple[str, str]]:
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
        ds.add_new(0x00091010, "OB", bytes([n % 256]) * pixels)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CT
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{n:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        with path.open("rb") as fp:
            fp.seek(dataset_offset(fp))
            # (the digest the index records: BLAKE3 of the data set, computed here)
            made[path] = (ds.SOPInstanceUID, "xxh3:" + xxhash.xxh3_128(fp.read()).hexdigest())
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

    def __init__(self, storage: Path, url: str | None, *extra: str) -> None:
        self.port = free_port()
        self.storage = storage
        self.options = [*(["--index", url] if url else []), *extra]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            serve_command(self.port, self.storage, "--fsync", "off", *self.options),
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
