"""Operations: /metrics moves after a C-STORE and a STOW-RS, /healthz and /readyz,
with the server configured by its TOML file and the environment, logging JSON;
and what the policy file asks of each endpoint."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom.data import get_testdata_file

from tests.conftest import PEER_ENV, dcmtk, free_port, wait_listening

sys.path.insert(0, str(Path(__file__).parent / "http"))
from http_testlib import HttpThread, make_dataset, multipart_body, part10  # noqa: E402
from test_http_security import basic, policy_text  # noqa: E402

from dicomstore.archive import Archive  # noqa: E402
from dicomstore.http.security import HttpSecurity  # noqa: E402
from dicomstore.policy import Policy  # noqa: E402
from dicomstore.services.metrics import ServerMetrics  # noqa: E402
from dicomstore.services.storage import StoreLimits, StoreService  # noqa: E402

STUDY = "1.2.826.0.1.3680043.10.91"
CT = "1.2.840.10008.5.1.4.1.1.2"


def scrape(url: str, **kw) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``url``/metrics by (name, sorted labels)."""
    reply = httpx.get(f"{url}/metrics", timeout=30, **kw)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain; version=")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(reply.text)
        for s in family.samples
    }


def sample(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def storescu(port: int, calling: str, path: str) -> subprocess.CompletedProcess:
    command = [dcmtk("storescu"), "-aet", calling, "-aec", "DICOMSTORE", "127.0.0.1", str(port)]
    return subprocess.run([*command, path], capture_output=True, text=True, env=PEER_ENV)


def test_metrics_move_after_a_c_store_and_a_stow(tmp_path: Path) -> None:
    port, http_port = free_port(), free_port()
    config = tmp_path / "server.toml"
    config.write_text(
        f"""storage = "store"
http-port = {http_port}
fsync = "off"
allow-calling-aet = ["STORESCU"]
log-format = "json"
"""
    )
    env = {**os.environ, "DICOMSTORE_PORT": str(port), "DICOMSTORE_SERVER_CONFIG": str(config)}
    command = [sys.executable, "-m", "dicomstore.cli", "serve"]
    elsewhere = tmp_path / "elsewhere"  # relative paths in the file: from the file's folder
    elsewhere.mkdir()
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env, cwd=elsewhere)
    url = f"http://127.0.0.1:{http_port}"
    try:
        wait_listening(http_port, proc)
        wait_listening(port, proc)
        assert httpx.get(f"{url}/healthz").text == "ok\n"
        ready = httpx.get(f"{url}/readyz")
        assert (ready.status_code, ready.text) == (200, "ready\n")
        before = scrape(url)
        assert sample(before, "dicomstore_instances_stored_total", service="C-STORE") == 0
        assert sample(before, "dicomstore_associations_open") == 0
        assert sample(before, "dicomstore_ready") == 1  # (judged at the scrape)
        assert sample(before, "dicomstore_archive_free_bytes") > 0

        ct = get_testdata_file("CT_small.dcm")
        assert storescu(port, "STORESCU", ct).returncode == 0
        refused = storescu(port, "INTRUDER", ct)  # not in the file's allow-calling-aet
        assert refused.returncode != 0
        body, content_type = multipart_body([part10(make_dataset(STUDY + ".1.1", study=STUDY))])
        stow = httpx.post(f"{url}/studies", content=body, headers={"Content-Type": content_type})
        assert stow.status_code == 200, stow.text

        after = scrape(url)
        for door in ("C-STORE", "STOW-RS"):
            assert sample(after, "dicomstore_instances_stored_total", service=door) == 1
            assert sample(after, "dicomstore_stored_bytes_total", service=door) > 0
            assert sample(after, "dicomstore_store_status_total", service=door, status="0000") == 1
            assert sample(after, "dicomstore_store_duration_seconds_count", service=door) == 1
        assert sample(after, "dicomstore_associations_total", outcome="released") == 1
        assert sample(after, "dicomstore_associations_total", outcome="rejected") == 1
        get_ok = {"method": "GET", "status": "200"}
        assert sample(after, "dicomstore_http_requests_total", **get_ok) == (
            sample(before, "dicomstore_http_requests_total", **get_ok) + 1  # the first scrape
        )
        assert sample(after, "dicomstore_http_requests_total", method="POST", status="200") == 1
        # the archive's group commit: both instances published, flushes counted (none:
        # fsync off), as the benchmarks read them (flushes per instance)
        assert sample(after, "dicomstore_archive_instances_total") == 2
        assert sample(after, "dicomstore_archive_batches_total") == 2
        assert sample(after, "dicomstore_archive_flushes_total") == 0
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in err.splitlines()]  # --log-format json from the file
    assert {"time", "level", "logger", "message"} <= set(records[0])
    assert any(r["message"].startswith("storing into ") for r in records)
    assert (tmp_path / "store" / "index.sqlite").is_file()
    assert list(elsewhere.iterdir()) == []


@pytest.fixture
def archive(tmp_path: Path):
    archive = Archive(tmp_path / "archive", fsync=False)
    yield archive
    archive.close()


def test_with_a_policy_health_is_open_and_metrics_need_read(tmp_path: Path, archive) -> None:
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(policy_text())
    security = HttpSecurity(policy=Policy.load(policy_file))
    with (
        HttpThread(archive, security=security, metrics=ServerMetrics()) as web,
        httpx.Client(base_url=web.url, timeout=30) as client,
    ):
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        for method in ("FOO", "BAR1", "X" * 40):  # counted as one "other", not three
            assert client.request(method, "/studies").status_code == 401
        refused = client.get("/metrics")
        assert refused.status_code == 401 and "WWW-Authenticate" in refused.headers
        reply = client.get("/metrics", headers=basic("reader", "reader-pw"))
        assert reply.status_code == 200
        counted = reply.text
    assert 'dicomstore_http_requests_total{method="GET",status="401"} 1.0' in counted
    assert 'dicomstore_http_requests_total{method="GET",status="200"} 2.0' in counted
    assert 'dicomstore_http_requests_total{method="other",status="401"} 3.0' in counted
    assert "FOO" not in counted


def test_readyz_names_what_is_not_ready(tmp_path: Path, archive, caplog) -> None:
    problems = ["DICOM is not listening"]
    with (
        HttpThread(archive, ready=lambda: problems) as web,
        httpx.Client(base_url=web.url, timeout=30) as client,
    ):
        reply = client.get("/readyz")
        assert (reply.status_code, reply.text) == (503, "DICOM is not listening\n")
        problems.clear()
        assert client.get("/readyz").status_code == 200
        assert client.get("/metrics").status_code == 404  # built without metrics
        (archive.root / "index.sqlite").rename(archive.root / "moved.sqlite")
        with caplog.at_level("WARNING", logger="dicomstore.http.operations"):
            for _ in range(2):
                reply = client.get("/readyz")
                assert reply.status_code == 503
                # open to anyone: the cause is the log's (review38web #9), once while it lasts
                assert reply.text == (
                    "the archive index is not readable (the server's log says why)\n"
                    "the archive index file was removed while the server ran (see the log)\n"
                )
        logged = [r.getMessage() for r in caplog.records if r.name == "dicomstore.http.operations"]
        assert len(logged) == 1, logged
        assert logged[0].startswith("/readyz: the archive index is not readable: ")


def test_association_outcomes_are_counted_by_their_first_word() -> None:
    metrics = ServerMetrics()
    sink = metrics.audit(None)
    for outcome in ("released", "aborted: idle", "rejected: 50 associations already", "odd"):
        sink.association({"outcome": outcome})
    text = metrics.exposition().decode()
    for word in ("released", "aborted", "rejected", "closed"):
        assert f'dicomstore_associations_total{{outcome="{word}"}} 1.0' in text


def test_the_archives_flushes_per_instance_are_counted(tmp_path: Path) -> None:
    """``dicomstore_archive_flushes_total`` / ``..._instances_total``: the flushes per
    instance the benchmarks print (issue 13); durable, a lone instance takes one."""
    from prometheus_client import generate_latest

    from dicomstore.archive.dicomfile import dataset_offset

    metrics = ServerMetrics()
    with Archive(tmp_path / "root") as archive:  # (durable: fsync on)
        metrics.watch_archive(archive)
        ct = Path(get_testdata_file("CT_small.dcm"))
        for _ in range(2):  # (the second: a duplicate, kept, published all the same)
            with archive.begin(
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                sop_instance_uid="1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
            ) as ingest:
                with ct.open("rb") as f:
                    f.seek(dataset_offset(f))
                    ingest.write(f.read())
                ingest.commit()
        samples = {
            s.name: s.value
            for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())
            for s in family.samples
        }
        stats = archive.stats.snapshot()
    assert samples["dicomstore_archive_instances_total"] == stats["instances"] == 2
    assert samples["dicomstore_archive_flushes_total"] == stats["flushes"] >= 1
    assert samples["dicomstore_archive_batches_total"] == stats["batches"] == 2


def test_readyz_is_503_below_min_free_and_the_gauges_say_it(tmp_path: Path, archive) -> None:
    """review58 M2: C-STORE got A700 below --min-free while /readyz said ready; no
    metric told the free space or the readiness."""
    floor = 1 << 62  # (more than any disk has)
    metrics = ServerMetrics()
    store = StoreService(archive, limits=StoreLimits(0, floor))
    with (
        HttpThread(archive, store=store, metrics=metrics) as web,
        httpx.Client(base_url=web.url, timeout=30) as client,
    ):
        reply = client.get("/readyz")
        assert reply.status_code == 503
        assert re.fullmatch(
            r"--min-free 4194304 TiB: only [0-9.]+ [KMGT]?i?B free\n",
            reply.text,
        ), reply.text
        samples = scrape(web.url)
        assert sample(samples, "dicomstore_ready") == 0
        assert 0 < sample(samples, "dicomstore_archive_free_bytes") < floor
        # the same judgement as a store's (StoreService.short_of_space): refused too
        storing = store.begin(
            store.admit("C-STORE", "SCU", "DICOMSTORE", "127.0.0.1"),
            sop_class_uid=CT,
            sop_instance_uid="1.2.3",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
        )
        assert storing.result is not None and storing.result.status == 0xA700
        assert re.fullmatch(  # (review87 F3: the limit named)
            r"--min-free 4194304 TiB: only [0-9.]+ [KMGT]?i?B free",
            storing.result.comment or "",
        )
        # STOW-RS: 503 with Retry-After (a full disk is transient: review87 F2), not 409
        body, content_type = multipart_body([part10(make_dataset(STUDY + ".9.1", study=STUDY))])
        reply = client.post("/studies", content=body, headers={"content-type": content_type})
        assert reply.status_code == 503 and reply.headers["retry-after"] == "60", reply.text
        assert "A700" in reply.headers["warning"] and "--min-free" in reply.headers["warning"]
    with (
        HttpThread(archive, store=StoreService(archive), metrics=ServerMetrics()) as web,
        httpx.Client(base_url=web.url, timeout=30) as client,
    ):
        assert client.get("/readyz").text == "ready\n"
        assert sample(scrape(web.url), "dicomstore_ready") == 1


def test_readyz_is_503_when_the_archive_cannot_store(tmp_path: Path, archive, monkeypatch) -> None:
    """A read-only (or full) file system fails the probe of the temporary folder; an
    index a store found damaged stays not ready (``Archive.cannot_store``)."""
    from dicomstore.archive import layout

    def read_only(folder: Path) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    with (
        HttpThread(archive) as web,
        httpx.Client(base_url=web.url, timeout=30) as client,
    ):
        assert client.get("/readyz").status_code == 200
        with monkeypatch.context() as patch:
            patch.setattr(layout, "probe_writable", read_only)
            reply = client.get("/readyz")
            assert (reply.status_code, reply.text) == (
                503,
                "the archive's temporary folder cannot be written: Read-only file system\n",
            )
        assert client.get("/readyz").status_code == 200
        archive.health.failed(sqlite3.DatabaseError("database disk image is malformed"))
        assert client.get("/readyz").status_code == 200  # (not SQLite's damage code)
        damaged = sqlite3.DatabaseError("database disk image is malformed")
        damaged.sqlite_errorcode = sqlite3.SQLITE_CORRUPT  # (as a store meets it)
        archive.health.failed(damaged)
        reply = client.get("/readyz")
        assert (reply.status_code, reply.text) == (
            503,
            "the archive index is damaged (see the log)\n",
        )


def test_readiness_is_bounded_in_time_and_runs_one_check_at_a_time() -> None:
    """A hung file system (or index) answers "not ready" within the timeout, and
    polls meanwhile start no other check (one thread stuck, not one per poll)."""
    from dicomstore.services.readiness import STILL, Readiness

    release, calls = threading.Event(), []

    def hangs() -> list[str]:
        calls.append(1)
        release.wait(30)
        return []

    readiness = Readiness([hangs], timeout=0.01)
    seen: list[list[str]] = []
    readiness.observers.append(seen.append)

    async def polls() -> None:
        assert await readiness.problems() == [STILL]
        job = readiness._job
        assert await readiness.problems() == [STILL]  # (past its timeout: at once)
        assert calls == [1]
        release.set()
        assert job is not None and await asyncio.wrap_future(job) == []  # (the check ends)
        readiness.timeout = 30
        assert await readiness.problems() == []

    asyncio.run(polls())
    assert calls == [1, 1]
    assert seen == [[STILL], [STILL], []]


def test_failed_writes_of_the_audit_log_are_counted(tmp_path: Path, monkeypatch) -> None:
    from dicomstore.audit import AuditLog

    log = AuditLog(tmp_path / "audit.jsonl", retry_seconds=0.01)
    real, failures = log._write_batch, [OSError(errno.ENOSPC, "No space left on device")]

    failed = threading.Event()

    def write_batch(lines: list[bytes]) -> None:
        if failures:
            failed.set()
            raise failures.pop()
        real(lines)

    log._write_batch = write_batch  # type: ignore[method-assign]
    metrics = ServerMetrics()
    sink = metrics.audit(log)
    sink.association({"outcome": "released"})
    assert failed.wait(30)
    assert log.flush(timeout=30)
    log.close()
    text = metrics.exposition().decode()
    assert "dicomstore_audit_write_errors_total 1.0" in text


def test_overlapping_polls_share_the_running_check() -> None:
    """review59 M1: a poll that came while a check ran answered "did not answer" at
    once (503, ``dicomstore_ready`` 0) on a healthy node; it waits for that check."""
    from dicomstore.services.readiness import Readiness

    entered, go, calls = threading.Event(), threading.Event(), []

    def slow() -> list[str]:
        calls.append(1)
        entered.set()
        go.wait(30)
        return []

    readiness = Readiness([slow], timeout=30)

    async def polls() -> list[list[str]]:
        first = asyncio.create_task(readiness.problems())
        await asyncio.to_thread(entered.wait, 30)  # (the check runs)
        second = asyncio.create_task(readiness.problems())
        await asyncio.sleep(0)  # (the second has joined it: it waits, or it answered)
        go.set()
        return [await first, await second]

    assert asyncio.run(polls()) == [[], []]
    assert calls == [1]


def test_a_scrape_overlapping_a_probe_is_ready_too(tmp_path: Path, archive, monkeypatch) -> None:
    """review59 M1 over HTTP: ``/readyz`` and a ``/metrics`` scrape at once both say
    ready, judged by one run of the checks."""
    go, calls = threading.Event(), []

    def door() -> list[str]:
        calls.append(1)
        go.wait(30)  # (until both have joined this run)
        return []

    with HttpThread(archive, ready=door, metrics=ServerMetrics()) as web:
        readiness = web.app.state.readiness
        readiness.timeout = 30
        join, joined = readiness._join, []

        def counted() -> object:
            found = join()
            joined.append(1)
            if len(joined) == 2:
                go.set()
            return found

        monkeypatch.setattr(readiness, "_join", counted)
        answers: dict[str, httpx.Response] = {}

        def get(path: str) -> None:
            answers[path] = httpx.get(f"{web.url}{path}", timeout=60)

        threads = [threading.Thread(target=get, args=(p,)) for p in ("/readyz", "/metrics")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert (answers["/readyz"].status_code, answers["/readyz"].text) == (200, "ready\n")
    assert answers["/metrics"].status_code == 200
    assert "\ndicomstore_ready 1.0\n" in answers["/metrics"].text
    assert calls == [1]
