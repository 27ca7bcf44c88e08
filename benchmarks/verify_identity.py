"""Byte identity on the benchmark corpora (issues 3 and 4, "Done means").

    python benchmarks/verify_identity.py scp ct tiny big  # DCMTK, pynetdicom -> serve
    python benchmarks/verify_identity.py scu ct tiny big   # dicomstore send -> DCMTK storescp -B

For each set, every received data set is compared with the data set bytes of
the file that was sent (everything after the File Meta Information).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pydicom  # noqa: E402
from tests.conftest import PEER_ENV, free_port, serve_command, wait_listening  # noqa: E402
from tests.services.test_storage_scp_interop import dataset_bytes  # noqa: E402

CORPUS = Path(os.environ.get("BENCH_CORPUS", Path.home() / ".cache/dicombench/corpus"))


def compare(src: Path, received: list[Path]) -> tuple[int, int, int]:
    by_uid = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in src.iterdir()}
    same = [
        dataset_bytes(f)
        == dataset_bytes(by_uid[pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID])
        for f in received
    ]
    return len(by_uid), sum(same), len(same) - sum(same)


def scp(name: str) -> None:
    src = CORPUS / name
    senders = {
        "DCMTK storescu": ["/usr/bin/storescu", "+sd", "-aec", "DICOMSTORE"],
        "pynetdicom storescu": [sys.executable, "-m", "pynetdicom", "storescu"],
    }
    for label, cmd in senders.items():
        with tempfile.TemporaryDirectory() as out:
            port = free_port()
            server = subprocess.Popen(serve_command(port, out, "--log-level", "error"))
            try:
                wait_listening(port, server)
                args = [*cmd, "127.0.0.1", str(port), str(src)]
                if label.startswith("pynetdicom"):
                    args += ["-aec", "DICOMSTORE"]
                rc = subprocess.run(args, env=PEER_ENV, capture_output=True).returncode
            finally:
                server.terminate()
                server.wait(60)
            total, same, differ = compare(src, list(Path(out).rglob("*.dcm")))
            print(
                f"{label} -> dicomstore serve, {name}: rc={rc}, stored {same + differ} of "
                f"{total}, identical {same}, different {differ}"
            )


def scu(name: str) -> None:
    src = CORPUS / name
    with tempfile.TemporaryDirectory() as out:
        port = free_port()
        receiver = subprocess.Popen(
            ["/usr/bin/storescp", "--bit-preserving", "+xa", "-od", out, str(port)], env=PEER_ENV
        )
        try:
            wait_listening(port, receiver)
            rc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "dicomstore.cli",
                    "send",
                    "127.0.0.1",
                    str(port),
                    str(src),
                    "--aec",
                    "X",
                    "--log-level",
                    "error",
                ],
                capture_output=True,
            ).returncode
        finally:
            receiver.terminate()
            receiver.wait(60)
        total, same, differ = compare(src, list(Path(out).iterdir()))
        print(
            f"dicomstore send -> storescp -B, {name}: rc={rc}, received {same + differ} of "
            f"{total}, identical {same}, different {differ}"
        )


if __name__ == "__main__":
    role, *sets = sys.argv[1:]
    for name in sets:
        (scp if role == "scp" else scu)(name)
