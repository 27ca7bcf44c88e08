"""C-FIND at STUDY level over 100,000 indexed instances (issue 15: < 100 ms), our SCU and
DCMTK findscu against `dicomstore serve`.

Fills an index through the archive's own :class:`Index` (``put_many`` in batches, no
files: a C-FIND reads only the index): 2,000 studies x 5 series x 10 instances, 400
patients of five studies each, study dates over ten years. Serves it with
`dicomstore serve` in its own process and times typical Study Root queries from the
C-FIND-RQ sent to the final response received:

- ours: on one open association, the time around ``dicomstore.find`` (request out,
  every match decoded, final 0000 in);
- findscu: one process per query; the time between its "Sending Find Request" and
  "Received Final Find Response" log lines (microsecond timestamps from a log4cplus
  pattern), so process start and association set-up are not counted.

Median (and slowest) of ``--repeat`` runs after one warm-up. Run on demand:

    python benchmarks/bench_cfind.py [--repeat 20] [--keep DIR] [--profile]

``--keep DIR`` keeps the filled archive and reuses it; ``--profile`` also runs the
SCP's side of each query in process under cProfile (the query engine and the
response encoding, without the network) and prints the top functions.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import dicomstore
from dicomstore.archive import layout
from dicomstore.archive import query as q
from dicomstore.archive.index import Index
from dicomstore.archive.reader import ArchiveReader
from dicomstore.services.qr_operations import decode_identifier
from dicomstore.services.query_identifier import (
    encode_elements,
    parse_identifier,
    response_elements,
)
from dicomstore.services.query_scu import identifier_keys

STUDIES, SERIES_PER_STUDY, INSTANCES_PER_SERIES, STUDIES_PER_PATIENT = 2000, 5, 10, 5
MODALITIES = ("CT", "MR", "US", "CR", "XA", "MG", "PT")
NAMES = ("DOE", "ROE", "SMITH", "JONES", "MILLER", "GARCIA", "MARTIN", "LEE")
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ROOT_UID = "1.2.826.0.1.3680043.10.15"
#: The return keys a workstation's study list asks for.
STUDY_LIST = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyDescription",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
FINDSCU = os.environ.get("FINDSCU", "/usr/bin/findscu")
LOG_CONFIG = """log4cplus.rootLogger = INFO, console
log4cplus.appender.console = log4cplus::ConsoleAppender
log4cplus.appender.console.layout = log4cplus::PatternLayout
log4cplus.appender.console.layout.ConversionPattern = %D{%H:%M:%S.%Q} %m%n
"""


def fill(root: Path, seed: int = 15) -> int:
    """The synthetic rows, through ``Index.put_many`` in one transaction; their count."""
    rnd = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    index = Index(root / layout.INDEX_FILE, durable=False)
    rows: list[dict[str, Any]] = []
    count = 0
    with index.lock:
        index.begin()
        for s in range(STUDIES):
            p = s // STUDIES_PER_PATIENT
            study_uid = f"{ROOT_UID}.{s + 1}"
            year, month, day = 2015 + rnd.randrange(10), rnd.randrange(1, 13), rnd.randrange(1, 29)
            study = {
                "patient_id": f"PID{p:06d}",
                "issuer": "",
                "patient_name": f"{NAMES[p % len(NAMES)]}^{chr(65 + p % 26)}{p}",
                "birth_date": f"{1930 + p % 80}0101",
                "sex": "MF"[p % 2],
                "study_uid": study_uid,
                "study_date": f"{year}{month:02d}{day:02d}",
                "study_time": f"{rnd.randrange(24):02d}{rnd.randrange(60):02d}00",
                "study_description": "Study",
                "accession_number": f"ACC{s:07d}",
                "referring_physician": "Ref^Doc",
                "study_id": "1",
            }
            for se in range(SERIES_PER_STUDY):
                series_uid = f"{study_uid}.{se + 1}"
                series = {
                    "series_uid": series_uid,
                    "modality": rnd.choice(MODALITIES),
                    "body_part": None,
                    "series_number": se + 1,
                    "series_description": "Series",
                }
                for i in range(INSTANCES_PER_SERIES):
                    sop = f"{series_uid}.{i + 1}"
                    rows.append(
                        {
                            **study,
                            **series,
                            "sop_instance_uid": sop,
                            "sop_class_uid": CT_IMAGE,
                            "instance_number": i + 1,
                            "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                            "file_size": 500_000,
                            "digest": "0" * 64,
                            "received_at": "2024-06-01T12:00:00+00:00",
                            "calling_ae": "MODALITY",
                            "called_ae": "DICOMSTORE",
                            "path": f"{study_uid}/{series_uid}/{sop}.dcm",
                        }
                    )
            if len(rows) >= 5000:
                index.put_many(rows)
                count += len(rows)
                rows.clear()
        index.put_many(rows)
        count += len(rows)
        index.commit()
    index.close()
    return count


def queries(root: Path) -> list[tuple[str, dict[str, str]]]:
    """(label, matching keys) of the typical queries, with values found in the index."""
    reader = ArchiveReader(root)
    with closing(reader.connect()) as db:
        (patient,) = db.execute(
            "SELECT patient_id FROM patient ORDER BY patient_pk LIMIT 1 OFFSET 42"
        ).fetchone()
        (study,) = db.execute(
            "SELECT study_uid FROM study ORDER BY study_pk LIMIT 1 OFFSET 1234"
        ).fetchone()
    return [
        ("PatientName wildcard (SMITH*)", {"PatientName": "SMITH*"}),
        ("StudyDate range (one month)", {"StudyDate": "20230601-20230630"}),
        ("one StudyInstanceUID", {"StudyInstanceUID": study}),
        ("all studies of a patient", {"PatientID": patient}),
        ("every study (2,000 matches)", {}),
    ]  # fmt: skip


def identifier(keys: dict[str, str]) -> dict[str, str]:
    return {"StudyInstanceUID": "", **{k: "" for k in STUDY_LIST}, **keys}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def served(root: Path):
    """`dicomstore serve` on ``root`` in its own process; its port."""
    port = free_port()
    command = [sys.executable, "-m", "dicomstore.cli", "serve", "--port", str(port)]
    command += ["--storage", str(root), "--fsync", "off", "--log-level", "warning"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("dicomstore serve did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(30)


async def ours(port: int, keys: dict[str, str], repeat: int) -> tuple[list[float], int]:
    """Milliseconds of each C-FIND on one association; the matches of the last."""
    samples: list[float] = []
    async with dicomstore.connect(
        "127.0.0.1", port, called_ae="DICOMSTORE", contexts=dicomstore.find_contexts("study")
    ) as assoc:
        for n in range(repeat + 1):  # the first is a warm-up
            start = time.perf_counter()
            matches = [ds async for ds in dicomstore.find(assoc, identifier(keys), level="STUDY")]
            if n:
                samples.append((time.perf_counter() - start) * 1000)
    return samples, len(matches)


#: log4cplus's %D{%H:%M:%S.%Q}: hours, minutes, seconds, milliseconds, microseconds
_STAMP = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3})\.(\d{3}) (.*)$")


def findscu(
    port: int, keys: dict[str, str], repeat: int, log_config: Path
) -> tuple[list[float], int]:
    """Milliseconds from findscu's C-FIND-RQ to its final response, per process run."""
    args = [
        FINDSCU,
        "-S",
        "-aec",
        "DICOMSTORE",
        "-lc",
        str(log_config),
        "-k",
        "QueryRetrieveLevel=STUDY",
    ]
    for key, value in identifier(keys).items():
        args += ["-k", f"{key}={value}" if value else key]
    args += ["127.0.0.1", str(port)]
    env = {**os.environ, "TCP_NODELAY": "1"}
    samples: list[float] = []
    matches = 0
    for n in range(repeat + 1):
        out = subprocess.run(args, env=env, capture_output=True, check=True)
        log = (out.stdout + out.stderr).decode("utf-8", "replace")
        sent = final = None
        matches = 0
        for line in log.splitlines():
            m = _STAMP.match(line)
            if not m:
                continue
            h, mi, sec, ms, us, text = m.groups()
            seconds = int(h) * 3600 + int(mi) * 60 + int(sec) + int(ms) / 1e3 + int(us) / 1e6
            if text.startswith("Sending Find Request"):
                sent = seconds
            elif text.startswith("Received Final Find Response"):
                final = seconds
            elif text.startswith("Find Response:"):
                matches += 1
        if sent is None or final is None:
            raise RuntimeError("findscu's log has no request or final response:\n" + log)
        if n:
            samples.append((final - sent) * 1000)
    return samples, matches


def profile(root: Path, keys: dict[str, str]) -> str:
    """The SCP's work for one query in process (parse, index, encode), under cProfile."""
    ts = "1.2.840.10008.1.2.1"
    data = encode_elements(identifier_keys(identifier(keys), "STUDY"), ts)
    reader = ArchiveReader(root)
    profiler = cProfile.Profile()
    profiler.enable()
    query = parse_identifier(decode_identifier(data, ts), dicomstore.find_contexts("study")[0][0])
    with closing(reader.connect()) as db:
        rows = q.iter_search(db, query.index_level, query.filters, computed=query.row_keys)
        for row in rows:
            encode_elements(response_elements(query, row, "DICOMSTORE"), ts)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(12)
    return out.getvalue()


def engine_ms(root: Path, keys: dict[str, str], repeat: int) -> float:
    """Median milliseconds of the index search alone (in process, no DIMSE)."""
    ts = "1.2.840.10008.1.2.1"
    data = encode_elements(identifier_keys(identifier(keys), "STUDY"), ts)
    query = parse_identifier(decode_identifier(data, ts), dicomstore.find_contexts("study")[0][0])
    reader = ArchiveReader(root)
    samples = []
    with closing(reader.connect()) as db:
        for _ in range(repeat + 1):
            start = time.perf_counter()
            for _row in q.iter_search(
                db, query.index_level, query.filters, computed=query.row_keys
            ):
                pass
            samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--keep", type=Path, help="keep the filled archive here, reuse it")
    parser.add_argument("--profile", action="store_true", help="cProfile the SCP's side")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp) / "archive"
        expected = STUDIES * SERIES_PER_STUDY * INSTANCES_PER_SERIES
        if (root / layout.INDEX_FILE).exists():
            totals = ArchiveReader(root).stats()["totals"]
            if totals["instances"] != expected:
                shutil.rmtree(root)
        if not (root / layout.INDEX_FILE).exists():
            start = time.perf_counter()
            fill(root)
            print(f"filled in {time.perf_counter() - start:.1f} s")
        totals = ArchiveReader(root).stats()["totals"]
        print(
            f"index: {totals['instances']} instances, {totals['series']} series, "
            f"{totals['studies']} studies, {totals['patients']} patients; "
            f"{datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} CPUs\n"
        )
        log_config = Path(tmp) / "findscu-log.cfg"
        log_config.write_text(LOG_CONFIG)
        cases = queries(root)
        print(
            f"Study Root C-FIND, STUDY level, {len(STUDY_LIST) + 1} return keys; "
            f"ms from C-FIND-RQ sent to final response (median / max of {args.repeat})"
        )
        print(f"{'query':32} {'matches':>7} {'ours':>16} {'findscu':>16} {'engine':>8}")
        with served(root) as port:
            for label, keys in cases:
                mine, n = asyncio.run(ours(port, keys, args.repeat))
                theirs, m = findscu(port, keys, args.repeat, log_config)
                assert n == m, (label, n, m)
                engine = engine_ms(root, keys, args.repeat)
                print(
                    f"{label:32} {n:7} {statistics.median(mine):7.1f} / {max(mine):6.1f}"
                    f" {statistics.median(theirs):7.1f} / {max(theirs):6.1f} {engine:8.1f}"
                )  # fmt: skip
        if args.profile:
            for label, keys in cases:
                print(f"\n== {label}\n{profile(root, keys)}")


if __name__ == "__main__":
    main()
