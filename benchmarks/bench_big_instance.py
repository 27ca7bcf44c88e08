"""Peak RSS of `dicomstore serve` receiving one huge instance (issue 3, point 3).

    python benchmarks/bench_big_instance.py --gib 2 [--fsync on|off]

Builds a Secondary Capture data set whose Pixel Data is N GiB of zeros and
streams it (never held in memory) with our SCU to a `dicomstore serve`
subprocess, then prints the server's peak RSS (VmHWM) and throughput, and
checks the stored file's size.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid

from dicomstore import uids
from dicomstore.aio.client import associate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import serve_command, wait_listening  # noqa: E402

SC = "1.2.840.10008.5.1.4.1.1.7"
CHUNK = 4 * 1024 * 1024


def header(pixel_bytes: int) -> tuple[str, bytes]:
    """The data set up to the Pixel Data value, and its SOP Instance UID."""
    ds = Dataset()
    ds.SOPClassUID = SC
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "BIG"
    ds.Modality = "OT"
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1024, 1024, 8, 8, 7
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = pixel_bytes // (1024 * 1024)
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    # (7FE0,0010) OB, explicit VR: tag, VR, 2 reserved bytes, 4-byte length
    pixel_header = b"\xe0\x7f\x10\x00OB\x00\x00" + pixel_bytes.to_bytes(4, "little")
    return ds.SOPInstanceUID, fp.getvalue() + pixel_header


def chunks(head: bytes, pixel_bytes: int):
    yield head
    zeros = bytes(CHUNK)
    left = pixel_bytes
    while left > 0:
        n = min(CHUNK, left)
        yield zeros if n == CHUNK else zeros[:n]
        left -= n


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def send(port: int, pixel_bytes: int) -> tuple[str, int, float]:
    uid, head = header(pixel_bytes)
    async with await associate(
        "127.0.0.1", port, called_ae="DICOMSTORE", contexts=[(SC, [uids.EXPLICIT_VR_LE])]
    ) as assoc:
        start = time.perf_counter()
        rsp = await assoc.store_stream(assoc.context_for(SC), SC, uid, chunks(head, pixel_bytes))
        return uid, rsp.status, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--gib", type=float, default=2.0)
    p.add_argument("--fsync", default="on")
    p.add_argument("--port", type=int, default=11230)
    args = p.parse_args()
    pixel_bytes = int(args.gib * 1024**3) // (1024 * 1024) * (1024 * 1024)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        server = subprocess.Popen(
            serve_command(args.port, tmp, "--fsync", args.fsync, "--log-level", "warning")
        )
        try:
            wait_listening(args.port, server)
            idle = peak_rss_mb(server.pid)
            uid, status, seconds = asyncio.run(send(args.port, pixel_bytes))
            peak = peak_rss_mb(server.pid)
        finally:
            server.terminate()
            server.wait(30)
        stored = list(Path(tmp).rglob(f"{uid}.dcm"))
        size = stored[0].stat().st_size if stored else 0
    mb = pixel_bytes / 1e6
    print(f"instance {pixel_bytes / 1024**3:.2f} GiB status {status:#06x} stored {size} bytes")
    print(f"server peak RSS {peak:.1f} MiB (idle {idle:.1f} MiB); {mb / seconds:.0f} MB/s")


if __name__ == "__main__":
    main()
