"""Several nodes (issue 17): aggregate C-STORE ingest of one `dicomstore serve` on
SQLite against three nodes sharing one PostgreSQL index and one storage root, all
with ``--fsync off``, fed by three DCMTK storescu senders (different instances;
on one node the three send to it, on three nodes one each). The issue's target:
three nodes >= 1.5x one. PostgreSQL is the tests' own (initdb, pg_ctl: Debian's
``postgresql``), so are the instances.

usage: PYTHONPATH=src python3 benchmarks/bench_nodes.py [--instances N] [--reps R]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import free_port  # noqa: E402
from tests.pg_testlib import PostgresServer, pg_bin  # noqa: E402
from tests.services.nodes_testlib import Node, acknowledged, storescu, write_instances  # noqa: E402

SENDERS = 3


def run(folder: Path, sets: list[list[Path]], url: str | None, nodes: int) -> float:
    """Instances per second, from the senders' start to the last one's end."""
    storage = folder / "storage"
    servers = [Node(storage, url, "--log-level", "error") for _ in range(nodes)]
    try:
        for server in servers:
            server.start()
        started = time.perf_counter()
        senders = [storescu(servers[i % nodes].port, files) for i, files in enumerate(sets)]
        logs = [sender.communicate(timeout=600)[0] for sender in senders]
        elapsed = time.perf_counter() - started
    finally:
        for server in servers:
            server.stop()
    acked = sum(len(acknowledged(log)) for log in logs)
    total = sum(len(files) for files in sets)
    if acked != total:
        raise SystemExit(f"only {acked} of {total} instances acknowledged")
    shutil.rmtree(storage)
    return total / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=600, help="per sender (600)")
    parser.add_argument("--pixels", type=int, default=32 * 1024, help="bytes each (32 KiB)")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    bin_dir = pg_bin()
    if bin_dir is None:
        raise SystemExit("PostgreSQL is not installed (Debian package postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="bench-nodes-"))
    server = PostgresServer(bin_dir, free_port())
    try:
        server.start()
        sets = [
            list(
                write_instances(
                    folder / f"src{i}", f"1.2.826.0.1.3680043.98.{i}", args.instances, args.pixels
                )
            )
            for i in range(SENDERS)
        ]
        one, three = [], []
        for _ in range(args.reps):  # (interleaved: the machine's load hits both alike)
            one.append(run(folder, sets, None, 1))
            three.append(run(folder, sets, server.new_url(), 3))
        a, b = statistics.median(one), statistics.median(three)
        print(f"one node, SQLite:        {a:8.1f} instances/s  {[round(x) for x in one]}")
        print(f"three nodes, PostgreSQL: {b:8.1f} instances/s  {[round(x) for x in three]}")
        print(f"ratio {b / a:.2f} (target >= 1.5)")
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
