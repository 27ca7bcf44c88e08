"""QIDO-RS search latency over a large index (PS3.18 10.6), with SQLite's query plans.

Fills an index with synthetic rows by direct SQL (no files: a search reads only
the index), serves it with the real app on uvicorn, and times searches end to
end over HTTP (keep-alive) and in process. Run on demand:

    python benchmarks/bench_qido.py [--instances 1000000] [--repeat 50] [--keep DIR]
                                    [--index postgresql://USER@HOST:PORT/DB | --postgresql]

``--index URL`` fills and searches a PostgreSQL index instead (issue 17; the rows
go in by COPY);
``--postgresql`` does so on a server of its own (tests/pg_testlib.py: initdb into
a temporary folder, pg_ctl on a free port, stopped at the end).

``--keep DIR`` keeps the filled index there and reuses it on the next run (the
archive's own :class:`Index` opens it first, so indexes it adds are made).

Every other study has a study-complete event in the event log (issue 16), so
results carry the stability element and ``stable=true|false`` is timed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx

from dicomstore.archive import layout
from dicomstore.archive import query as q
from dicomstore.archive.engine import engine_for
from dicomstore.archive.index import Index
from dicomstore.archive.reader import ArchiveReader
from dicomstore.archive.schema import TABLES
from dicomstore.http import HttpServer, build_app
from dicomstore.services import stable_search
from dicomstore.services.stable_log import StableLog, StableStudy

MODALITIES = ("CT", "MR", "US", "CR", "XA", "MG", "PT")
NAMES = ("DOE", "ROE", "SMITH", "JONES", "MILLER", "GARCIA", "MARTIN", "LEE")


def fill(root: Path, instances: int, seed: int = 1, index: str | None = None) -> dict[str, str]:
    """Rows for ``instances`` instances: ~3 per series, ~3 series per study, ~2 studies
    per patient, inserted by SQL into an index the archive's :class:`Index` made (its
    schema and indexes). Returns sample keys to search for."""
    rnd = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    Index(engine_for(root, index), durable=False).close()  # the schema, as the archive makes it
    db: Any
    if index is None:
        db = sqlite3.connect(root / layout.INDEX_FILE)
        db.execute("PRAGMA synchronous=OFF")
    else:
        import psycopg

        db = psycopg.connect(index)
    n_series = max(instances // 3, 1)
    n_studies = -(-n_series // 3)  # every series in a study, three per study
    n_patients = max(n_studies // 2, 1)
    patients = [
        (p + 1, f"PID{p:06d}", "", "", f"{rnd.choice(NAMES)}^{chr(65 + p % 26)}{p}", "19700101",
         "MF"[p % 2])
        for p in range(n_patients)
    ]  # fmt: skip
    studies = []
    for s in range(n_studies):
        day = (
            20150000 + rnd.randrange(10) * 10000 + rnd.randrange(1, 13) * 100 + rnd.randrange(1, 29)
        )
        time_ = f"{rnd.randrange(24):02d}{rnd.randrange(60):02d}00"
        uid = f"1.2.826.0.1.3680043.10.{s}"
        studies.append(
            (s + 1, uid, s % n_patients + 1, str(day), time_, "Study", f"ACC{s:07d}", "Ref^Doc",
             "1")
        )  # fmt: skip
    series = []
    for i in range(n_series):
        study = studies[i // 3]
        modality = rnd.choice(MODALITIES)
        series.append((i + 1, f"{study[1]}.{i % 3 + 1}", study[0], modality, None, i % 3 + 1,
                       "Series"))  # fmt: skip

    def rows() -> Iterator[tuple[object, ...]]:
        columns = TABLES["instance"]  # (by name: a column the schema adds is NULL here)
        for i in range(instances):
            se = series[i % n_series]
            uid = f"{se[1]}.{i // n_series + 1}"
            study_uid = studies[se[2] - 1][1]
            row = {
                "sop_instance_uid": uid, "series_pk": se[0],
                "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2", "instance_number": i // n_series + 1,
                "transfer_syntax_uid": "1.2.840.10008.1.2.1", "file_size": 500_000,
                "digest": "0" * 64, "received_at": "2024-06-01T12:00:00+00:00",
                "calling_ae": "MODALITY", "called_ae": "DICOMSTORE",
                "path": f"{study_uid}/{se[1]}/{uid}.dcm",
            }  # fmt: skip
            if i == 0:  # (a name the schema no longer has: once)
                assert row.keys() <= set(columns), row.keys() - set(columns)
            yield tuple(row.get(column) for column in columns)

    def insert(table: str, values: Iterable[tuple[object, ...]]) -> None:
        columns = TABLES[table]
        if index is not None:
            with (
                db.cursor() as cur,
                cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as cp,
            ):
                for row in values:
                    cp.write_row(row)
            if table != "instance":  # (explicit keys: a server storing into it next)
                key = f"{table}_pk"
                db.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', '{key}'),"
                    f" (SELECT max({key}) FROM {table}))"
                )
            return
        marks = ", ".join("?" for _ in columns)
        db.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", values)

    with db:
        insert("patient", patients)
        insert("study", studies)
        insert("series", series)
        insert("instance", rows())
        if index is not None:
            db.execute("ANALYZE")  # (psycopg's with: commit, then close)
    db.close()
    return {"patient": patients[42 % n_patients][1], "study": studies[4242 % n_studies][1],
            "series": series[(4242 % n_studies) * 3][1]}  # fmt: skip


def report_stable(root: Path, index: str | None = None) -> int:
    """A study-complete event for every other study (all its instances arrived
    before it), written as services/stability.py writes them; the number."""
    log = StableLog(root, fsync=False)
    if log.path.exists():
        return len(log.latest())
    db = ArchiveReader(root, index=index).connect()
    uids = [uid for (uid,) in db.execute("SELECT study_uid FROM study WHERE study_pk % 2 = 0")]
    db.close()
    log.path.parent.mkdir(parents=True, exist_ok=True)
    when = "2024-06-01T12:00:00+00:00"
    with open(log.path, "w", encoding="utf-8") as fp:
        for uid in uids:
            event = StableStudy(uid, None, 9, 3, when, when, "2024-06-01T12:01:00+00:00", "")
            fp.write(json.dumps(event.as_dict()) + "\n")
    return len(uids)


def prepare(root: Path, instances: int, index: str | None = None) -> dict[str, str]:
    """An index of ``instances`` rows at ``root``: reused if one of that size is there
    (``--keep``), else filled anew; then opened once as the archive opens it."""
    keys_file = root / "bench-keys.json"
    if keys_file.exists():
        saved = json.loads(keys_file.read_text())
        if saved.get("instances") == instances:
            Index(engine_for(root, index), durable=False).close()
            return dict(saved["keys"])
        shutil.rmtree(root)
    keys = fill(root, instances, index=index)
    Index(engine_for(root, index), durable=False).close()
    keys_file.write_text(json.dumps({"instances": instances, "keys": keys}))
    return keys


class Served:
    """The app on uvicorn in a thread."""

    def __init__(self, root: Path, index: str | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = HttpServer(build_app(root, index=index), "127.0.0.1", 0)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)
        return f"http://127.0.0.1:{self.server.port}"

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def timed(fn, repeat: int) -> tuple[float, float]:
    """Median and 95th percentile in milliseconds."""
    fn()  # warm
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.95))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument(
        "--keep",
        type=Path,
        help="keep the filled index in this folder and reuse it when run again",
    )
    parser.add_argument("--index", help="a postgresql:// URL: the index there (an empty schema)")
    parser.add_argument(
        "--postgresql", action="store_true", help="on a PostgreSQL server of its own"
    )
    args = parser.parse_args()
    if args.postgresql:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from tests.conftest import free_port
        from tests.pg_testlib import PostgresServer, pg_bin

        bin_dir = pg_bin()
        if bin_dir is None:
            raise SystemExit("PostgreSQL is not installed (Debian package postgresql)")
        server = PostgresServer(bin_dir, free_port())
        server.start()
        try:
            args.index = server.new_url()
            run(args)
        finally:
            server.stop()
    else:
        run(args)


def run(args: argparse.Namespace) -> None:
    """Fill (or reuse), then time the searches."""
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp) / "archive"
        start = time.perf_counter()
        keys = prepare(root, args.instances, args.index)
        reported = report_stable(root, args.index)
        reader = ArchiveReader(root, index=args.index)
        totals = reader.stats()["totals"]
        print(
            f"index: {totals['instances']} instances, {totals['series']} series, "
            f"{totals['studies']} studies, {totals['patients']} patients, "
            f"{reported} reported stable (filled in {time.perf_counter() - start:.1f} s)\n"
        )
        cases = [
            ("study", "/studies", {"StudyDate": "20240101-20240131", "limit": "100"}),
            ("study", "/studies", {"PatientID": keys["patient"]}),
            ("study", "/studies", {"AccessionNumber": "ACC0004242"}),
            ("study", "/studies", {"StudyDate": "20230601-20230630", "ModalitiesInStudy": "MR"}),
            ("study", "/studies", {"PatientName": "doe^a*", "limit": "100"}),
            ("study", "/studies", {"ModalitiesInStudy": "MR", "limit": "100"}),
            ("study", "/studies", {"ModalitiesInStudy": "NM", "limit": "100"}),  # none: worst case
            ("study", "/studies", {"limit": "100"}),
            ("study", "/studies", {"stable": "true", "limit": "100"}),
            ("study", "/studies", {"stable": "false", "limit": "100"}),
            ("study", "/studies", {"StudyDate": "20240101-20240131", "stable": "false"}),
            ("series", f"/studies/{keys['study']}/series", {}),
            ("instance", f"/studies/{keys['study']}/series/{keys['series']}/instances", {}),
        ]
        db = reader.connect()
        with Served(root, args.index) as url, httpx.Client(base_url=url) as client:
            print(f"{'search':78} {'HTTP median':>12} {'p95':>8} {'in-process':>11} {'rows':>5}")
            for level, path, params in cases:
                filters = {k: v for k, v in params.items() if k not in ("limit", "stable")}
                stable = {"true": True, "false": False}.get(params.get("stable", ""))
                fixed = _path_filters(path)
                limit = int(params.get("limit", 10_000))

                def http_call(path=path, params=params):
                    r = client.get(path, params=params)
                    assert r.status_code == 200, r.text
                    return r

                local_filters = {**filters, **fixed}

                def local_call(level=level, filters=local_filters, limit=limit, stable=stable):
                    return stable_search.search(reader, level, filters, stable=stable, limit=limit)

                median, p95 = timed(http_call, args.repeat)
                local, _ = timed(local_call, args.repeat)
                label = path + (
                    "?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else ""
                )
                rows = len(http_call().json())
                print(f"{label[:78]:78} {median:9.2f} ms {p95:5.2f} ms {local:8.2f} ms {rows:5}")
            if args.index is not None:
                db.close()
                return
            print("\nEXPLAIN QUERY PLAN of the study searches:")
            for level, path, params in cases[:5]:
                filters = {k: v for k, v in params.items() if k != "limit"}
                print(f"\n  {path} {filters}")
                for step in q.explain(db, level, filters, limit=100)[:6]:
                    print(f"    {step}")
        db.close()


def _path_filters(path: str) -> dict[str, str]:
    parts = path.strip("/").split("/")
    out = {}
    if len(parts) >= 2 and parts[0] == "studies":
        out["StudyInstanceUID"] = parts[1]
    if len(parts) >= 4 and parts[2] == "series":
        out["SeriesInstanceUID"] = parts[3]
    return out


if __name__ == "__main__":
    main()
