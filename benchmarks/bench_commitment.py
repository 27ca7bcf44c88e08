"""Storage Commitment (PS3.4 J.3) of many references: one N-ACTION-RQ from pynetdicom into
``dicomstore serve --fsync off`` (its own process), the time until its N-ACTION-RSP
and the server's peak RSS (VmHWM) before and after; then, in this process, the SCU's
side of the same size: the request written and a report read
(``commitment_info.encode_action_information``, ``read_event_information``). Run on
demand:

    python benchmarks/bench_commitment.py [--references 65535]

To compare with another checkout, put its ``src`` first: ``PYTHONPATH=/other/src``
(the server is started with this Python and that path).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc

from pydicom.dataset import Dataset
from pynetdicom import AE

from dicomstore import uids
from dicomstore.archive.commitment import Reference, Verdict
from dicomstore.services.commitment_info import (
    encode_action_information,
    event_information,
    read_event_information,
)

SC, SC_INSTANCE = uids.STORAGE_COMMITMENT_PUSH, uids.STORAGE_COMMITMENT_PUSH_INSTANCE
CT = "1.2.840.10008.5.1.4.1.1.2"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _peak_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        line = next(line for line in f if line.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


def _wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit("the server did not start")


def server_side(count: int) -> None:
    port, storage = _free_port(), tempfile.mkdtemp(prefix="bench-commitment-")
    cmd = [sys.executable, "-m", "dicomstore", "serve", "--port", str(port)]
    cmd += ["--storage", storage, "--fsync", "off", "--log-level", "error"]
    server = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port, server)
        ds = Dataset()
        ds.TransactionUID = uids.new_uid()
        items = []
        for n in range(count):
            item = Dataset()
            item.ReferencedSOPClassUID = CT
            item.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{n}"
            items.append(item)
        ds.ReferencedSOPSequence = items
        ae = AE(ae_title="BENCH")
        ae.add_requested_context(SC)
        ae.dimse_timeout = ae.acse_timeout = 300
        before = _peak_mb(server.pid)
        assoc = ae.associate("127.0.0.1", port, ae_title="DICOMSTORE")
        start = time.perf_counter()
        status, _ = assoc.send_n_action(ds, 1, SC, SC_INSTANCE)
        took = time.perf_counter() - start
        assoc.release()
        print(
            f"server: N-ACTION of {count} references answered {int(status.Status):04X} after"
            f" {took:.2f} s (pynetdicom's encoding included); server peak RSS"
            f" {before:.0f} MB idle, {_peak_mb(server.pid):.0f} MB after"
        )
    finally:
        server.terminate()
        server.wait()


def scu_side(count: int) -> None:
    refs = [Reference(CT, f"1.2.826.0.1.3680043.8.498.{n}") for n in range(count)]
    start = time.perf_counter()
    request = encode_action_information("1.2.3", refs, uids.EXPLICIT_VR_LE)
    wrote = time.perf_counter() - start
    _, report = event_information("1.2.3", [Verdict(r) for r in refs], "AE", uids.EXPLICIT_VR_LE)
    start = time.perf_counter()
    read_event_information(report, False, True)
    read = time.perf_counter() - start
    tracemalloc.start()  # (again, traced: several times slower)
    read_event_information(report, False, True)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    print(
        f"SCU: request of {count} references written in {wrote:.2f} s ({len(request)} bytes);"
        f" report read in {read:.2f} s, {peak:.0f} MB peak (tracemalloc)"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--references", type=int, default=65535)
    args = ap.parse_args(argv)
    print(f"dicomstore from {os.path.dirname(uids.__file__)}")
    server_side(args.references)
    scu_side(args.references)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
