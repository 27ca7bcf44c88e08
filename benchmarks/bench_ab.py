"""A/B of the C-STORE hot path: receiver CPU per instance of two or more source trees.

Run on demand (not part of the tests), loopback only:

    python benchmarks/bench_ab.py --corpus ~/.cache/dicombench/corpus/tiny --reps 8 \\
        base=/path/to/old/src head=src

For each rep, each tree in turn: a fresh ``dicomstore serve --fsync off`` (``--fsync on``:
durable, then give a ``--scratch`` on the disk to measure) (that tree on
PYTHONPATH) on an archive in ``--scratch`` (default /dev/shm: tmpfs, so that the file
system's own cost of creating files, which varies run to run and place to place on ext4,
stays out), DCMTK ``storescu +sd +r`` sends the corpus once, and the server's CPU time over
the send is read from ``/proc/PID/task/*/schedstat`` (nanoseconds, not clock ticks). Prints
each tree's median CPU per instance and instances/s, and for each pair the median of the
per-rep ratios (paired: drift of the machine between reps cancels out). DCMTK is not a
receiver here: for ratios against the peers use ``bench_scp.sh`` or
``../shared/bench/dicombench.py``. ``--flushes`` adds the archive's flushes (fsync,
syncfs) per instance, from each server's /metrics (issue 13).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STORESCU = os.environ.get("DCMTK_BIN", "/usr/bin") + "/storescu"


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` so far (schedstat: run time in ns)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/schedstat") as f:
            total += int(f.read().split()[0])
    return total / 1e9


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the server did not listen in time")


def one_run(
    src: str,
    corpus: Path,
    scratch: Path,
    count: int,
    fsync: str = "off",
    options: tuple[str, ...] = (),
    flushes: bool = False,
) -> tuple[float, float, float | None]:
    """(CPU ms per instance, instances/s, archive flushes per instance or None) of one
    server from ``src`` receiving ``corpus``; the flushes read from its /metrics
    (``flushes``: served with --http-port, whose counters cost every store a little)."""
    work = Path(tempfile.mkdtemp(dir=scratch))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": src}
    cmd = [sys.executable, "-m", "dicomstore.cli", "serve", "--port", str(port)]
    cmd += ["--storage", str(work / "ds"), "--fsync", fsync, "--log-level", "error", *options]
    http_port = free_port() if flushes else None
    if http_port is not None:
        cmd += ["--http-port", str(http_port)]
    server = subprocess.Popen(cmd, env=env)
    try:
        wait_listening(port, server)
        time.sleep(0.5)  # (start-up threads settle: not part of what is measured)
        before, started = cpu_seconds(server.pid), time.monotonic()
        send = [STORESCU, "+sd", "+r", "-aec", "DICOMSTORE", "127.0.0.1", str(port), str(corpus)]
        subprocess.run(
            send, env={**os.environ, "TCP_NODELAY": "1"}, check=True, capture_output=True
        )
        wall, cpu = time.monotonic() - started, cpu_seconds(server.pid) - before
        per_instance = None if http_port is None else flushes_per_instance(http_port)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)
    return cpu / count * 1000, count / wall, per_instance


def flushes_per_instance(http_port: int) -> float | None:
    """The archive's flushes over its instances, from /metrics (None: a tree without
    those counters)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=30) as got:
            text = got.read().decode()
    except urllib.error.URLError:  # (an older tree: no /metrics)
        return None
    from prometheus_client.parser import text_string_to_metric_families

    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in ("dicomstore_archive_flushes_total", "dicomstore_archive_instances_total")
    }
    if len(values) < 2 or not values["dicomstore_archive_instances_total"]:
        return None
    return values["dicomstore_archive_flushes_total"] / values["dicomstore_archive_instances_total"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "trees",
        nargs="+",
        help="NAME=SRC[,OPTION...]: a source tree to put on PYTHONPATH, and serve options "
        "of its own (``head-asyncio=src,--loop,asyncio``)",
    )
    ap.add_argument("--corpus", type=Path, required=True, help="a folder of DICOM files")
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--scratch", type=Path, default=Path("/dev/shm"))
    ap.add_argument(
        "--fsync",
        choices=("off", "on"),
        default="off",
        help="the servers' --fsync (on: durable, the default of serve; use a --scratch on disk)",
    )
    ap.add_argument(
        "--flushes",
        action="store_true",
        help="also print the archive's flushes per instance (from /metrics: the servers "
        "then run with --http-port, whose counters add a little CPU to every store)",
    )
    args = ap.parse_args()
    arms = [tuple(t.split("=", 1)) for t in args.trees]
    if any(len(a) != 2 for a in arms):
        ap.error("each tree is NAME=SRC[,OPTION...]")
    count = sum(1 for p in args.corpus.rglob("*") if p.is_file())
    runs: dict[str, list[tuple[float, float, float | None]]] = {name: [] for name, _ in arms}
    for _rep in range(args.reps):
        for name, spec in arms:
            src, *options = spec.split(",")
            run = one_run(
                src, args.corpus, args.scratch, count, args.fsync, tuple(options), args.flushes
            )
            runs[name].append(run)
    print(f"{count} instances, {args.reps} reps, scratch {args.scratch}, --fsync {args.fsync}")
    for name, values in runs.items():
        cpu = statistics.median(v[0] for v in values)
        rate = statistics.median(v[1] for v in values)
        line = f"{name:>12}: {cpu:.3f} ms CPU/instance, {rate:.0f} instances/s (medians)"
        counted = [v[2] for v in values if v[2] is not None]
        if args.flushes:
            if counted:
                line += f", {statistics.median(counted):.2f} flushes/instance"
            else:
                line += ", flushes not counted"
        print(line)
    for (a, _), (b, _) in itertools.combinations(arms, 2):
        ratios = [y[0] / x[0] for x, y in zip(runs[a], runs[b], strict=True)]
        print(
            f"{b}/{a} CPU: {statistics.median(ratios):.3f} (paired runs: "
            f"{' '.join(f'{r:.2f}' for r in ratios)})"
        )


if __name__ == "__main__":
    main()
