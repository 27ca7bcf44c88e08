"""Storage SCU benchmark: `dicomstore send` beside DCMTK storescu and pynetdicom's storescu.

Run on demand (not part of the tests), loopback only:

    python /work/shared/bench/make_corpus.py /tmp/corpus --sets ct,tiny
    python benchmarks/bench_send.py /tmp/corpus --sets ct,tiny --reps 3
    python benchmarks/bench_send.py /tmp/corpus --receiver dicomstore --senders dicomstore,dcmtk

Every run starts a fresh receiver on an empty output directory: DCMTK
``storescp --bit-preserving`` (the fast receiver; ``--fork`` for the parallel
rows), or with ``--receiver dicomstore`` (``dicomstore-nofsync``: ``--fsync
off``) ``dicomstore serve``, which grants an operations window (PS3.7 D.3.3.3)
that ``dicomstore send`` uses (``--max-ops``, default 16) and storescu does
not: the column "vs storescu x1" then compares each row with one storescu
association into the same receiver. It waits for the listening socket (read
from /proc, no probe connection), runs
the sender(s), and records the wall time, the senders' CPU and peak RSS (from
``wait4``), and the number of Part-10 files received.  One association per
sender, or four in parallel: ``dicomstore send --parallel 4`` in one process,
four DCMTK/pynetdicom processes on a quarter of the files each.  Prints
medians of ``--reps`` runs and each sender's ratio to DCMTK in the same run
set; ``--results FILE`` keeps every run as a JSON line.  ``TCP_NODELAY=1`` is
exported to every process (DCMTK keeps Nagle on otherwise).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dicomstore

DCMTK = Path(os.environ.get("DCMTK_BIN", "/usr/bin"))
ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    hexport = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                if any(line.split()[1].endswith(hexport) and line.split()[3] == "0A" for line in f):
                    return True
        except FileNotFoundError:
            continue
    return False


def count_dicom(folder: Path) -> int:
    n = 0
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                n += f.read(132)[128:132] == b"DICM"
    return n


def split(files: list[Path], parts: int, root: Path) -> list[Path]:
    """``parts`` folders of hard links (copies across file systems), contiguous slices."""
    dirs = []
    size = -(-len(files) // parts)
    for i in range(parts):
        d = root / f"part{i}"
        d.mkdir(parents=True)
        for f in files[i * size : (i + 1) * size]:
            try:
                os.link(f, d / f.name)
            except OSError:
                shutil.copy(f, d / f.name)
        dirs.append(d)
    return dirs


def commands(sender: str, port: int, corpus: Path, parts: list[Path]) -> list[list[str]]:
    """The sender process(es) for one run."""
    py = sys.executable
    if sender == "dicomstore":
        cmd = [py, "-m", "dicomstore.cli.send", "127.0.0.1", str(port), str(corpus)]
        cmd += ["--aet", "SCU", "--aec", "SCP", "--log-level", "warning", "--progress", "off"]
        return [cmd + (["--parallel", str(len(parts))] if len(parts) > 1 else [])]
    targets = parts if len(parts) > 1 else [corpus]
    if sender == "dcmtk":
        return [
            [str(DCMTK / "storescu"), "-aet", "SCU", "-aec", "SCP", "127.0.0.1", str(port)]
            + ["+sd", str(t)]
            for t in targets
        ]
    if sender == "pynetdicom":
        return [
            [py, "-m", "pynetdicom", "storescu", "127.0.0.1", str(port), str(t)]
            + ["-aet", "SCU", "-aec", "SCP", "-q"]
            for t in targets
        ]
    raise ValueError(sender)


def receiver_command(
    receiver: str, port: int, out: Path, parallel: int, workers: int = 1
) -> list[str]:
    """The receiving process: DCMTK storescp, or dicomstore serve (durable or not; with
    ``--workers`` for the parallel rows when ``workers`` > 1)."""
    if receiver == "storescp":
        cmd = [str(DCMTK / "storescp"), "--bit-preserving", "-od", str(out), str(port)]
        return cmd[:1] + ["--fork"] + cmd[1:] if parallel > 1 else cmd
    serve = [sys.executable, "-m", "dicomstore.cli", "serve", "--port", str(port)]
    serve += ["--storage", str(out / "archive"), "--log-level", "warning", "--max-ops", "16"]
    if workers > 1 and parallel > 1:
        serve += ["--workers", str(workers)]
    if receiver == "dicomstore-nofsync":
        return serve + ["--fsync", "off"]
    if receiver == "dicomstore":
        return serve
    raise ValueError(receiver)


def run_once(
    sender: str,
    corpus: Path,
    parts: list[Path],
    out: Path,
    receiver: str = "storescp",
    workers: int = 1,
) -> dict:
    """One run: fresh receiver, sender(s), measurements."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    port = free_port()
    rx = subprocess.Popen(
        receiver_command(receiver, port, out, len(parts), workers),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not listening(port):
            if rx.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{receiver} did not start")
            time.sleep(0.01)
        start = time.perf_counter()
        procs = [
            subprocess.Popen(c, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for c in commands(sender, port, corpus, parts)
        ]
        cpu = rss = 0.0
        codes = []
        for p in procs:
            _pid, status, usage = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            codes.append(p.returncode)
            cpu += usage.ru_utime + usage.ru_stime
            rss = max(rss, usage.ru_maxrss / 1024)
        wall = time.perf_counter() - start
    finally:
        rx.send_signal(signal.SIGINT)  # (dicomstore serve: a clean stop; storescp ends too)
        try:
            rx.wait(20)
        except subprocess.TimeoutExpired:
            rx.kill()
            rx.wait()
    return {"wall": wall, "cpu": cpu, "rss_mb": rss, "received": count_dicom(out), "codes": codes}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus", type=Path, help="folder made by make_corpus.py (ct/, tiny/ ...)")
    ap.add_argument("--sets", default="ct,tiny")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--senders", default="dicomstore,dcmtk,pynetdicom")
    ap.add_argument("--parallel", default="1,4", help="associations: comma list (default 1,4)")
    ap.add_argument(
        "--pynetdicom-reps", type=int, default=1, help="runs for pynetdicom (slow; default 1)"
    )
    ap.add_argument(
        "--receiver",
        choices=("storescp", "dicomstore", "dicomstore-nofsync"),
        default="storescp",
        help="what the senders send to (default storescp --bit-preserving)",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="dicomstore serve --workers N for the parallel rows (default 1: one process)",
    )
    ap.add_argument("--results", type=Path, help="append every run as a JSON line")
    ap.add_argument(
        "--out",
        type=Path,
        help="receiver's output folder (e.g. under /dev/shm to take the disk out)",
    )
    args = ap.parse_args(argv)
    # what `pip install .` does: the sender's start-up reads byte code, not source (an
    # editable install is not compiled, and PYTHONDONTWRITEBYTECODE may be set)
    compileall.compile_dir(Path(dicomstore.__file__).parent, quiet=1)

    senders = args.senders.split(",")
    rows = []
    single: dict[str, float] = {}  # set -> one storescu association's inst/s
    with tempfile.TemporaryDirectory(prefix="bench_send_") as tmp:
        for name in args.sets.split(","):
            corpus = args.corpus / name
            files = sorted(p for p in corpus.iterdir() if p.is_file())
            nbytes = sum(p.stat().st_size for p in files)
            for parallel in map(int, args.parallel.split(",")):
                if parallel == 1:
                    parts = [corpus]
                else:
                    parts = split(files, parallel, Path(tmp) / f"{name}-{parallel}")
                medians: dict[str, dict] = {}
                every: dict[str, list[dict]] = {sender: [] for sender in senders}
                # senders take turns, rep by rep: the machine's drift spreads over all
                for rep in range(max(args.reps, args.pynetdicom_reps)):
                    for sender in senders:
                        reps = args.pynetdicom_reps if sender == "pynetdicom" else args.reps
                        if rep >= reps:
                            continue
                        # each run its own folder, all removed at the end: files deleted
                        # while runs go on made the next receiver's file creations slow
                        # (ext4 skips inodes freed within the last minute one by one:
                        # `recently_deleted`, a third of the receiver's CPU in `perf`)
                        out = args.out or Path(tmp) / f"out-{name}-{parallel}-{rep}-{sender}"
                        r = run_once(sender, corpus, parts, out, args.receiver, args.workers)
                        r.update(
                            set=name,
                            parallel=parallel,
                            sender=sender,
                            rep=rep,
                            receiver=args.receiver,
                        )
                        every[sender].append(r)
                        print(json.dumps(r), file=sys.stderr)
                        if args.results:
                            with open(args.results, "a") as fh:
                                fh.write(json.dumps(r) + "\n")
                for sender, runs in every.items():
                    reps = len(runs)
                    wall = statistics.median(r["wall"] for r in runs)
                    medians[sender] = {
                        "wall": wall,
                        "inst_s": len(files) / wall,
                        "mb_s": nbytes / 1e6 / wall,
                        "cpu": statistics.median(r["cpu"] for r in runs),
                        "rss": max(r["rss_mb"] for r in runs),
                        "ok": all(r["received"] == len(files) for r in runs),
                        "reps": reps,
                    }
                base = medians.get("dcmtk")
                if parallel == 1 and base:
                    single[name] = base["inst_s"]
                for sender, m in medians.items():
                    ratio = m["inst_s"] / base["inst_s"] if base else float("nan")
                    rows.append((name, parallel, sender, m, ratio))
    workers = f", --workers {args.workers} for the parallel rows" if args.workers > 1 else ""
    print(f"receiver: {args.receiver}{workers}")
    print(
        "| set | assocs | sender | runs | wall s | inst/s | MB/s | sender CPU s "
        "| peak RSS MB | all received | vs DCMTK | vs storescu x1 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, parallel, sender, m, ratio in rows:
        one = m["inst_s"] / single[name] if name in single else float("nan")
        print(
            f"| {name} | {parallel} | {sender} | {m['reps']} | {m['wall']:.2f} | "
            f"{m['inst_s']:.0f} | {m['mb_s']:.0f} | {m['cpu']:.2f} | {m['rss']:.0f} | "
            f"{'yes' if m['ok'] else 'NO'} | {ratio:.2f} | {one:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
