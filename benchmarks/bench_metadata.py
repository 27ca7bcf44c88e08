"""WADO-RS metadata of one series (PS3.18 10.4.1.1.2): cold (metadata cache empty:
every instance read and encoded, as before the cache; the cache is written after
the answer, and waited for before the next round) and warm (from the cache).

Stores ``--instances`` copies of pydicom's CT_small.dcm (new UIDs, one series) through
the archive's ingest, serves them with the real app on uvicorn and times
``GET /studies/{study}/series/{series}/metadata`` over HTTP; warm, both uncoded and
gzipped (``Accept-Encoding: gzip``, as browsers ask: http/content_coding.py). Run on demand:

    python benchmarks/bench_metadata.py [--instances 400] [--repeat 10]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pydicom
from pydicom.data import get_testdata_file

from dicomstore.archive import Archive
from dicomstore.archive.metacache import CACHE_FILE

sys.path.insert(0, str(Path(__file__).parent))
from bench_qido import Served  # noqa: E402

STUDY = "1.2.826.0.1.3680043.10.99"
SERIES = STUDY + ".1"


def fill(root: Path, instances: int) -> None:
    """``instances`` CT instances of one series, stored as C-STORE stores them."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    archive = Archive(root, fsync=False)
    for n in range(1, instances + 1):
        ds = template.copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, SERIES
        ds.SOPInstanceUID = f"{SERIES}.{n}"
        ds.InstanceNumber = n
        buffer = DicomBytesIO()
        buffer.is_little_endian, buffer.is_implicit_VR = True, False
        write_dataset(buffer, ds)
        ingest = archive.begin(
            sop_class_uid=ds.SOPClassUID,
            sop_instance_uid=ds.SOPInstanceUID,
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            calling_ae="BENCH",
        )
        ingest.write(buffer.getvalue())
        assert not ingest.commit().is_failure
    archive.close()


def empty_cache(root: Path) -> None:
    """Every entry of the metadata cache gone (the server's connection sees it)."""
    if (root / CACHE_FILE).exists():
        db = sqlite3.connect(root / CACHE_FILE)
        with db:
            db.execute("DELETE FROM entry")
        db.close()


def wait_cached(root: Path, instances: int) -> None:
    """Until the cold answer's values are in the cache (written once it was sent)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        db = sqlite3.connect(root / CACHE_FILE)
        try:
            (count,) = db.execute("SELECT COUNT(*) FROM entry").fetchone()
        except sqlite3.OperationalError:  # (not made yet)
            count = 0
        finally:
            db.close()
        if count >= instances:
            return
        time.sleep(0.01)
    raise SystemExit("the metadata cache was not written within 30 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "archive"
        fill(root, args.instances)
        path = f"/studies/{STUDY}/series/{SERIES}/metadata"
        cold: list[float] = []
        warm: dict[str, list[float]] = {"identity": [], "gzip": []}
        sent: dict[str, int] = {}
        with Served(root) as url, httpx.Client(base_url=url, timeout=120) as client:
            for _ in range(max(args.repeat // 3, 1)):
                empty_cache(root)
                start = time.perf_counter()
                r = client.get(path, headers={"accept-encoding": "identity"})
                cold.append((time.perf_counter() - start) * 1000)
                assert r.status_code == 200 and len(r.json()) == args.instances
                wait_cached(root, args.instances)
            for coding, times in warm.items():
                for _ in range(args.repeat):
                    start = time.perf_counter()
                    r = client.get(path, headers={"accept-encoding": coding})
                    times.append((time.perf_counter() - start) * 1000)
                    assert r.status_code == 200
                sent[coding] = r.num_bytes_downloaded
        size = (root / CACHE_FILE).stat().st_size
        n = args.instances
        print(f"series of {n} instances (CT_small.dcm), {len(r.content)} bytes of JSON")
        print(f"cold (cache empty: read and encode):   median {statistics.median(cold):8.1f} ms")
        for coding, times in warm.items():
            label = f"warm (from the cache), {coding}:"
            print(f"{label:<41}median {statistics.median(times):8.1f} ms, {sent[coding]} bytes")
        print(f"cache file: {size / 1024:.0f} KiB ({size / n:.0f} bytes per instance)")


if __name__ == "__main__":
    main()
