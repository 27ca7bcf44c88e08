"""The archive's per-instance cost: begin → write → commit, no network.

Builds (SOP Class, SOP Instance, transfer syntax, data set bytes) from the
benchmark corpus (``~/.cache/dicombench/corpus/{tiny,ct}``, made by
``../shared/bench/make_corpus.py``), then stores ``--count`` of them into a
fresh archive with ``fsync`` off and on, from 1, 4 and 16 threads committing
concurrently (the Storage SCP commits in worker threads, one per association
or more), each at its own pace or (``--lockstep``) in rounds, all at once.
Prints, per row: wall ms/instance, CPU ms/instance (all threads of the
process), flushes/instance and the mean group-commit batch size.

Flushes are counted as system calls (fsync, fdatasync, syncfs, sync, msync;
not sync_file_range, which only starts writeback), SQLite's included, by
running each row a second time under ``strace -f -c`` when strace is
installed (in parentheses: the mean batch size of that run); without strace
only the archive's own calls are counted (``Archive.stats``), marked ``*``.

usage::

    python benchmarks/bench_archive.py                      # tiny and ct, all rows
    python benchmarks/bench_archive.py --sets tiny --threads 1 --fsync off
    python benchmarks/bench_archive.py --dir /mnt/x --fresh-fs /var/tmp/x.img --reps 3
    python benchmarks/bench_archive.py --series 2     # two series of one study (see load)
    python benchmarks/bench_archive.py --lockstep     # commits in rounds: batches of 1, 4, 16

Each row runs in its own process (fresh archive, fresh caches). Timing
assertions do not belong in tests; this is where the numbers come from.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CORPUS = Path(os.environ.get("BENCH_SCRATCH", Path.home() / ".cache" / "dicombench")) / "corpus"
FLUSH_CALLS = ("fsync", "fdatasync", "syncfs", "sync", "msync")


def load(set_name: str, count: int, *, series: int = 0) -> list[tuple[str, str, str, bytes]]:
    """(SOP Class, SOP Instance, transfer syntax, data set bytes) of ``count`` files.

    ``series`` > 0: the instances are spread over that many series of one study
    (the corpus gives every instance a study and series of its own), by
    rewriting the Study and Series Instance UIDs with pydicom.
    """
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_file_meta_info
    from pydicom.filewriter import write_dataset

    from dicomstore.archive.dicomfile import dataset_offset

    files = sorted((CORPUS / set_name).glob("*.dcm"))[:count]
    if len(files) < count:
        sys.exit(f"{CORPUS / set_name}: {len(files)} files, {count} needed (make_corpus.py)")
    items = []
    for path in files:
        meta = read_file_meta_info(path)
        with open(path, "rb") as fp:
            fp.seek(dataset_offset(fp))
            data = fp.read()
        if series:
            ds = dcmread(path)
            ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.1391.1"
            ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.10.1391.1.{len(items) % series + 1}"
            out = DicomBytesIO()
            out.is_little_endian, out.is_implicit_VR = True, False
            write_dataset(out, ds)
            data = out.getvalue()
        items.append(
            (
                str(meta.MediaStorageSOPClassUID),
                str(meta.MediaStorageSOPInstanceUID),
                str(meta.TransferSyntaxUID),
                data,
            )
        )
    return items


def run_one(args: argparse.Namespace) -> dict[str, object]:
    """Store the instances once; the measurements of this row."""
    from dicomstore.archive import Archive, StoreOutcome

    items = load(args.set, args.count, series=args.series)
    fragment = args.fragment
    base = Path(args.dir)
    base.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench-archive-", dir=base))
    syncfs = {"auto": None, "on": True, "off": False}[args.syncfs]
    archive = Archive(root / "archive", fsync=args.fsync == "on", syncfs=syncfs)
    bad: list[StoreOutcome] = []
    lock = threading.Lock()
    if args.lockstep:  # every thread the same number of rounds
        items = items[: len(items) - len(items) % args.threads]
    shares = [items[i :: args.threads] for i in range(args.threads)]
    barrier = threading.Barrier(args.threads + 1)
    rounds = threading.Barrier(args.threads)

    def worker(share: list[tuple[str, str, str, bytes]]) -> None:
        barrier.wait()
        for sop_class, sop_uid, ts, data in share:
            ingest = archive.begin(
                sop_class_uid=sop_class,
                sop_instance_uid=sop_uid,
                transfer_syntax_uid=ts,
                calling_ae="BENCHSCU",
                called_ae="ARCHIVE",
            )
            view = memoryview(data)
            for start in range(0, len(view), fragment):
                ingest.write(view[start : start + fragment])
            if args.lockstep:
                rounds.wait()  # all commit at once: batches of --threads
            outcome = ingest.commit()
            if not outcome.is_success:
                with lock:
                    bad.append(outcome)

    threads = [threading.Thread(target=worker, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    barrier.wait()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for thread in threads:
        thread.join()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    stats = getattr(archive, "stats", None)
    archive.close()
    shutil.rmtree(root, ignore_errors=True)
    if bad:
        sys.exit(f"{len(bad)} instances not stored, first: {bad[0]}")
    n = len(items)
    row: dict[str, object] = {
        "set": args.set,
        "fsync": args.fsync,
        "threads": args.threads,
        "n": n,
        "ms": 1000 * wall / n,
        "cpu_ms": 1000 * cpu / n,
        "inst_s": n / wall,
    }
    if stats is not None:
        snap = stats.snapshot()
        row["batch"] = snap["instances"] / max(snap["batches"], 1)
        row["own_flushes"] = snap["flushes"] / n
    return row


def count_flushes(argv: list[str]) -> tuple[float, float | None] | None:
    """(flush system calls per instance, SQLite's included; the mean batch size of
    that run) of one row, run under strace (only those calls stop: --seccomp-bpf)."""
    if shutil.which("strace") is None:
        return None
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as out:
        cmd = ["strace", "-f", "-c", "--seccomp-bpf", "-o", out.name]
        cmd += ["-e", "trace=" + ",".join(FLUSH_CALLS)]
        done = subprocess.run(cmd + argv, check=True, capture_output=True, text=True)
        row = json.loads(done.stdout.splitlines()[-1])
        total = 0
        for line in out.read().splitlines():
            parts = line.split()
            if parts and parts[-1] in FLUSH_CALLS:
                total += int(parts[3])
        return total / row["n"], row.get("batch")


class FreshFs:
    """A freshly made journaled ext4 in an image file, loop-mounted at ``mount`` (root
    only), as ``../shared/bench`` does: on a long-used disk, creating files gets
    slower run after run, which would drown what is measured here."""

    def __init__(self, image: str, mount: str, size: str = "8G") -> None:
        self.image, self.mount, self.size = image, mount, size
        self.device: str | None = None

    def __enter__(self) -> FreshFs:
        run = functools.partial(subprocess.run, check=True, capture_output=True, text=True)
        Path(self.image).unlink(missing_ok=True)
        run(["truncate", "-s", self.size, self.image])
        options = "lazy_itable_init=0,lazy_journal_init=0,nodiscard"
        run(["mkfs.ext4", "-F", "-q", "-N", "262144", "-E", options, self.image])
        found = run(["losetup", "--direct-io=on", "--find", "--show", self.image])
        self.device = found.stdout.strip()
        Path(self.mount).mkdir(parents=True, exist_ok=True)
        run(["mount", self.device, self.mount])
        return self

    def __exit__(self, *exc_info: object) -> None:
        subprocess.run(["umount", self.mount], check=False)
        if self.device:
            subprocess.run(["losetup", "-d", self.device], check=False)
        Path(self.image).unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="tiny,ct")
    parser.add_argument("--fsync", default="off,on")
    parser.add_argument("--threads", default="1,4,16")
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument(
        "--series",
        type=int,
        default=0,
        help="spread the instances over N series of one study (0: as in the corpus,"
        " every instance a study and series of its own)",
    )
    parser.add_argument("--fragment", type=int, default=16372, help="bytes per write()")
    parser.add_argument(
        "--dir",
        default=str(CORPUS.parent / "scratch"),
        help="where the archives are made (same disk as a real one)",
    )
    parser.add_argument(
        "--fresh-fs",
        metavar="IMAGE",
        help="make a fresh ext4 in IMAGE for every run, mounted on --dir (needs root)",
    )
    parser.add_argument("--reps", type=int, default=1, help="runs per row (median shown)")
    parser.add_argument(
        "--syncfs",
        choices=("auto", "on", "off"),
        default="auto",
        help="Archive(syncfs=): flush a batch with syncfs, or fsync each file (off)",
    )
    parser.add_argument(
        "--lockstep",
        action="store_true",
        help="the threads commit in rounds, all at once (batches of --threads)",
    )
    parser.add_argument("--no-strace", action="store_true", help="skip the counted pass")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--set", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        args.threads = int(args.threads)
        print(json.dumps(run_one(args)))
        return
    print(
        f"{'set':5} {'fsync':5} {'thr':>3} {'ms/inst':>8} {'CPU ms':>7} {'inst/s':>7} "
        f"{'batch':>6} {'flush/inst (batch)':>18}"
    )
    fresh = (
        functools.partial(FreshFs, args.fresh_fs, args.dir)
        if args.fresh_fs
        else contextlib.nullcontext
    )
    for set_name in args.sets.split(","):
        for fsync in args.fsync.split(","):
            for threads in args.threads.split(","):
                argv = [
                    sys.executable,
                    __file__,
                    "--one",
                    f"--set={set_name}",
                    f"--fsync={fsync}",
                    f"--threads={threads}",
                    f"--count={args.count}",
                    f"--series={args.series}",
                    f"--fragment={args.fragment}",
                    f"--dir={args.dir}",
                    f"--syncfs={args.syncfs}",
                ] + (["--lockstep"] if args.lockstep else [])
                rows = []
                for _ in range(args.reps):
                    with fresh():
                        done = subprocess.run(argv, check=True, capture_output=True, text=True)
                    rows.append(json.loads(done.stdout.splitlines()[-1]))
                row = {
                    key: statistics.median(r[key] for r in rows)
                    for key in ("ms", "cpu_ms", "inst_s", "batch", "own_flushes")
                    if key in rows[0]
                }
                row["n"] = rows[0]["n"]
                counted = None
                if not args.no_strace:
                    with fresh():
                        counted = count_flushes(argv)
                if counted is None:
                    shown = f"{row['own_flushes']:.3f}*" if "own_flushes" in row else "?"
                else:  # (batches differ a little from run to run)
                    flushes, batch_then = counted
                    shown = f"{flushes:.3f}"
                    if batch_then is not None:
                        shown += f" ({batch_then:.1f})"
                batch = f"{row['batch']:.1f}" if "batch" in row else "-"
                print(
                    f"{set_name:5} {fsync:5} {threads:>3} {row['ms']:8.3f} {row['cpu_ms']:7.3f} "
                    f"{row['inst_s']:7.0f} {batch:>6} {shown:>18}",
                    flush=True,
                )
    if not args.no_strace and shutil.which("strace") is None:
        print("* the archive's own flushes only (no strace: SQLite's are not counted)")


if __name__ == "__main__":
    main()
