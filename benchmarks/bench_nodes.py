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
import os
import resource
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
CORES = os.cpu_count() or 1


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes and their waited-for children (/proc)."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # (a backend that ended: in its parent's cutime now)
            continue
        ticks += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def postgres_pids(server: PostgresServer) -> list[int]:
    """The postmaster and its backends (whose CPU ends in the postmaster's cutime)."""
    master = int((server.data / "postmaster.pid").read_text().split()[0])
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [master, *map(int, children)]


def run(
    scratch: Path, sets: list[list[Path]], url: str | None, nodes: int, pg: PostgresServer
) -> tuple[float, float, float, float]:
    """Instances per second, from the senders' start to the last one's end, and the
    CPU milliseconds per instance of the nodes, of PostgreSQL and of the senders."""
    storage = Path(tempfile.mkdtemp(prefix="bench-nodes-storage-", dir=scratch))
    servers = [Node(storage, url, "--log-level", "error") for _ in range(nodes)]
    try:
        for server in servers:
            server.start()
        pids = [server.proc.pid for server in servers if server.proc is not None]
        node_cpu, pg_cpu = cpu_seconds(pids), cpu_seconds(postgres_pids(pg))
        senders_cpu = _children_cpu()
        started = time.perf_counter()
        senders = [storescu(servers[i % nodes].port, files) for i, files in enumerate(sets)]
        logs = [sender.communicate(timeout=600)[0] for sender in senders]
        elapsed = time.perf_counter() - started
        node_cpu = cpu_seconds(pids) - node_cpu
        pg_cpu = cpu_seconds(postgres_pids(pg)) - pg_cpu
        senders_cpu = _children_cpu() - senders_cpu  # (the nodes are not waited for yet)
    finally:
        for server in servers:
            server.stop()
    acked = sum(len(acknowledged(log)) for log in logs)
    total = sum(len(files) for files in sets)
    if acked != total:
        raise SystemExit(f"only {acked} of {total} instances acknowledged")
    shutil.rmtree(storage)
    per = 1000 / total
    return total / elapsed, node_cpu * per, pg_cpu * per, senders_cpu * per


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=600, help="per sender (600)")
    parser.add_argument("--pixels", type=int, default=32 * 1024, help="bytes each (32 KiB)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--scratch",
        type=Path,
        default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None,
        help="where the archive's files go (default /dev/shm: on a disk, creating files "
        "slows run after run, and the runs compare CPU, not the disk)",
    )
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
        configs = {
            "one node, SQLite": (False, 1),
            "one node, PostgreSQL": (True, 1),
            "three nodes, PostgreSQL": (True, 3),
        }
        results: dict[str, list[tuple[float, ...]]] = {name: [] for name in configs}
        for _ in range(args.reps):  # (interleaved: the machine's load hits all alike)
            for name, (on_pg, nodes) in configs.items():
                url = server.new_url() if on_pg else None
                scratch = args.scratch or folder
                results[name].append(run(scratch, sets, url, nodes, server))
        print(f"{'':25} {'inst/s':>8}   CPU ms/inst: nodes PostgreSQL senders  all")
        medians: dict[str, float] = {}
        ceilings: dict[str, float] = {}
        for name, runs in results.items():
            rate, node, pg, senders = (statistics.median(r[i] for r in runs) for i in range(4))
            medians[name] = rate
            cpu = node + pg + senders
            print(
                f"{name:25} {rate:8.1f} {node:18.3f} {pg:10.3f} {senders:7.3f} {cpu:5.3f}"
                f"  {[round(r[0]) for r in runs]}"
            )
            ceilings[name] = CORES * 1000 / cpu
        print(
            "CPU-bound ceiling (all processes on this machine's "
            f"{CORES} cores): "
            + ", ".join(f"{name} {rate:.0f}/s" for name, rate in ceilings.items())
        )
        ratio = medians["three nodes, PostgreSQL"] / medians["one node, SQLite"]
        print(f"ratio three nodes on PostgreSQL / one on SQLite {ratio:.2f} (target >= 1.5)")
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
