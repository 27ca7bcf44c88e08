"""Load test (issue: hardening): N concurrent DCMTK storescu associations x M
instances each into `dicomstore serve`; nothing lost, memory flat.

    python benchmarks/load_test.py --senders 50 --instances 200 [--fsync on|off]

Each storescu invents fresh SOP Instance UIDs (+II) for the same M small files,
so every instance is distinct.  Afterwards: the archive holds exactly N x M
instances, every storescu exited 0 and reported no failure, `check` (size and
digest of every file against the index) finds no problem, and the server's
RSS, sampled every 0.2 s, is reported (start, peak, end).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import PEER_ENV, free_port, serve_command, wait_listening  # noqa: E402

CORPUS = Path(os.environ.get("BENCH_CORPUS", Path.home() / ".cache/dicombench/corpus"))


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--senders", type=int, default=50)
    p.add_argument("--instances", type=int, default=200)
    p.add_argument("--fsync", default="on")
    args = p.parse_args()
    tiny = sorted((CORPUS / "tiny").iterdir())[: args.instances]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        for f in tiny:
            shutil.copy(f, src / f.name)
        storage = Path(tmp) / "archive"
        port = free_port()
        server = subprocess.Popen(
            serve_command(
                str(port),
                str(storage),
                "--fsync",
                args.fsync,
                "--max-associations",
                str(args.senders + 5),
                "--log-level",
                "warning",
            )
        )
        samples: list[float] = []
        done = threading.Event()
        try:
            wait_listening(port, server)

            def sample() -> None:
                while not done.wait(0.2):
                    samples.append(rss_mb(server.pid))

            threading.Thread(target=sample, daemon=True).start()
            start_rss = rss_mb(server.pid)
            t0 = time.monotonic()
            senders = [
                subprocess.Popen(
                    [
                        "/usr/bin/storescu",
                        "+II",
                        "-aec",
                        "DICOMSTORE",
                        "+sd",
                        "127.0.0.1",
                        str(port),
                        str(src),
                    ],
                    env=PEER_ENV,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for _ in range(args.senders)
            ]
            outputs = [s.communicate(timeout=3600)[1] for s in senders]
            wall = time.monotonic() - t0
            done.set()
            end_rss = rss_mb(server.pid)
        finally:
            server.terminate()
            server.wait(60)
        codes = [s.returncode for s in senders]
        failures = sum(out.count("Store Failed") + out.count("E: ") for out in outputs)
        check = subprocess.run(
            [sys.executable, "-m", "dicomstore.cli", "check", "--storage", str(storage)],
            capture_output=True,
            text=True,
        )
        files = sum(1 for _ in storage.rglob("*.dcm"))
    expected = args.senders * args.instances
    print(
        f"{args.senders} senders x {args.instances} instances, fsync {args.fsync}: "
        f"{wall:.1f} s, {expected / wall:.0f} instances/s"
    )
    print(f"storescu exit codes all 0: {set(codes) == {0}}; error lines: {failures}")
    print(f"files stored: {files} of {expected}; check: {check.stdout.strip().splitlines()[-1]}")
    print(
        f"server RSS MB: start {start_rss:.0f}, peak {max(samples or [0]):.0f}, end {end_rss:.0f}"
    )
    ok = files == expected and set(codes) == {0} and check.returncode == 0
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
