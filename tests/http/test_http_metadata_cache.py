"""WADO-RS metadata through the metadata cache (``http/metadata.py``, ``archive/metacache.py``):
byte for byte what the encoder gives, cold and warm, whatever the request's host; never
an answer of an instance as it was before a replace or a change on disk; deleted
instances forgotten; a damaged cache made anew; the cache written once the answer is sent."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from dicomjson_reference import read_metadata
from http_testlib import CT, HttpThread, make_dataset, store, store_file
from pydicom.data import get_charset_files, get_testdata_file
from test_http_depth import STUDY as DEEP_STUDY
from test_http_depth import store_nested

from dicomstore.archive import Archive
from dicomstore.archive.layout import resolve
from dicomstore.archive.metacache import CACHE_FILE, MetadataCache
from dicomstore.archive.reader import ArchiveReader
from dicomstore.archive.removal import remove
from dicomstore.http import metadata
from dicomstore.http.common import url_of
from dicomstore.http.heldvalues import Held
from dicomstore.http.limits import DEFAULT
from dicomstore.http.security import HttpSecurity

STUDY = "1.2.826.0.1.3680043.10.9"
SERIES = STUDY + ".1"
#: pydicom test files with what the encoder must get right: PN, AT, IS/DS, sequences
#: (nested, UN), private tags, big endian, implicit VR, deflate, encapsulated pixels,
#: overlays, waveforms, SR, bad VRs; and every character set file (ISO 2022 Japanese,
#: Korean, Greek, Arabic, Hebrew, UTF-8, GB18030...).
FILES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "rtplan.dcm",
    "rtdose.dcm",
    "JPEG2000.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
    "image_dfl.dcm",
    "waveform_ecg.dcm",
    "SC_rgb_rle.dcm",
    "test-SR.dcm",
    "reportsi.dcm",
    "examples_overlay.dcm",
    "liver_1frame.dcm",
    "badVR.dcm",
)

#: On both index engines (issue 17).
pytestmark = pytest.mark.usefixtures("index_engine")
#: stored as data sets (without file meta, or without the UIDs the archive needs)
DATASET_FILES = [
    *(get_testdata_file(name) for name in ("UN_sequence.dcm", "empty_charset_LEI.dcm")),
    *sorted(get_charset_files("chr*.dcm")),
]


def store_as_dataset(archive: Archive, path: str, n: int) -> dict:
    """A test file (some without file meta or UIDs) stored as its data set, with the
    UIDs the archive needs."""
    ds = pydicom.dcmread(path, force=True)
    ds.SOPClassUID = ds.get("SOPClassUID", CT)
    ds.SOPInstanceUID = f"{STUDY}.77.{n}"
    ds.StudyInstanceUID = ds.get("StudyInstanceUID", f"{STUDY}.77")
    ds.SeriesInstanceUID = f"{STUDY}.77.{n}.1"
    return store(archive, ds).instance


def generated(n: int) -> object:
    """An instance of the generated series: PN groups, AT, IS/DS lists, a sequence,
    private tags (a short and a bulk value), pixels."""
    ds = make_dataset(f"{SERIES}.{n}", study=STUDY, series=SERIES, number=n, frames=1)
    ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.add_new(0x00209165, "AT", [0x00100010, 0x00200013])  # Dimension Index Pointer
    ds.add_new(0x00280030, "DS", ["0.5", "1.25e2"])
    ds.add_new(0x00181310, "US", [0, 4, 3, 0])
    ds.add_new(0x00291010, "OB", bytes(range(256)) * 8)  # private, over the bulk threshold
    ds.add_new(0x00290010, "LO", "PRIVATE CREATOR")
    ds.add_new(0x00291011, "UN", b"\x01\x02\x03\x04")
    item = make_dataset(f"{SERIES}.{n}.9", study=STUDY, series=SERIES)
    ds.add_new(0x00081140, "SQ", [item])
    return ds


class Settled:
    """An httpx client whose GET of metadata returns once what the answer held for the
    metadata cache is written (wado.metadata: ``Held.write``, after the answer is
    sent, on a thread of the server's): each 200 is one write."""

    def __init__(self, client: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
        self.client, self.base_url = client, client.base_url
        self.writes, self.done = 0, threading.Condition()
        write = Held.write

        def counted(held: Held, *args: Any) -> None:
            try:
                write(held, *args)
            finally:
                with self.done:
                    self.writes += 1
                    self.done.notify_all()

        monkeypatch.setattr(Held, "write", counted)

    def get(self, path: str, **options: Any) -> httpx.Response:
        with self.done:
            before = self.writes
        r = self.client.get(path, **options)
        if r.status_code == 200:
            with self.done:
                assert self.done.wait_for(lambda: self.writes > before, timeout=30)
        return r


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Settled, Archive]]:
    archive = Archive(tmp_path / "archive", fsync=False, on_duplicate="replace")
    security = HttpSecurity(allowed_hosts=("first.example", "other.example"))
    with (
        HttpThread(archive, security=security) as srv,
        httpx.Client(base_url=srv.url, timeout=60) as client,
    ):
        yield Settled(client, monkeypatch), archive
    archive.close()


def expected(archive: Archive, path: str, base: str) -> bytes:
    """The body the encoder gives without any cache (as wado.metadata did before)."""
    reader = ArchiveReader(archive.root)
    parts = path.strip("/").split("/")
    names = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    filters = dict(zip(names, parts[1::2], strict=False))
    items = []
    for row in reader.search("instance", filters):
        url = url_of(base, row["study_uid"], row["series_uid"], row["sop_instance_uid"])
        item = read_metadata(
            resolve(archive.root, row["path"]),
            row["transfer_syntax_uid"],
            lambda tag, url=url: f"{url}/bulkdata/{tag:08X}",
            max_depth=DEFAULT.max_sequence_depth,
        )
        items.append(json.dumps(item, ensure_ascii=False).encode())
    return b"[" + b",".join(items) + b"]"


def cached_rows(archive: Archive) -> dict[str, str]:
    db = sqlite3.connect(archive.root / CACHE_FILE)
    try:
        return dict(db.execute("SELECT sop_instance_uid, key FROM entry"))
    finally:
        db.close()


def test_cold_and_warm_answers_are_the_encoders_byte_for_byte(served) -> None:
    client, archive = served
    for n in range(1, 6):
        store(archive, generated(n))
    paths = [f"/studies/{STUDY}/series/{SERIES}/metadata"]
    rows = [store_file(archive, get_testdata_file(name)).instance for name in FILES]
    rows += [store_as_dataset(archive, p, n) for n, p in enumerate(DATASET_FILES)]
    assert len(DATASET_FILES) >= 17
    for row in rows:
        paths.append(f"/studies/{row['study_uid']}/series/{row['series_uid']}/metadata")
    for path in paths:
        for host in ("first.example", "other.example:8042", "first.example"):
            r = client.get(path, headers={"host": host})
            assert r.status_code == 200, (path, r.text)
            # a Host without a port gets the port we listen on (the client's own)
            seen = host if ":" in host else f"{host}:{client.base_url.port}"
            assert r.content == expected(archive, path, f"http://{seen}/"), (path, host)
    stored = {row["sop_instance_uid"] for row in rows}  # some files share a UID: replaced
    assert len(cached_rows(archive)) == 5 + len(stored)
    bulk = client.get(paths[0]).json()[0]["00291010"]  # a private bulk value, as before
    assert bulk["BulkDataURI"].endswith(f"/instances/{SERIES}.1/bulkdata/00291010")


def test_a_replaced_instance_is_never_answered_from_its_old_entry(served) -> None:
    client, archive = served
    path = f"/studies/{STUDY}/series/{SERIES}/metadata"
    store(archive, make_dataset(f"{SERIES}.1", study=STUDY, series=SERIES, patient_name="Old^X"))
    assert client.get(path).json()[0]["00100010"]["Value"] == [{"Alphabetic": "Old^X"}]
    before = cached_rows(archive)
    store(archive, make_dataset(f"{SERIES}.1", study=STUDY, series=SERIES, patient_name="New^Y"))
    assert client.get(path).json()[0]["00100010"]["Value"] == [{"Alphabetic": "New^Y"}]
    assert cached_rows(archive) != before  # the entry was made anew, under its new key


def test_a_file_changed_behind_the_archive_is_read_again(served) -> None:
    client, archive = served
    path = f"/studies/{STUDY}/series/{SERIES}/metadata"
    store(archive, make_dataset(f"{SERIES}.1", study=STUDY, series=SERIES, patient_name="Aaa^B"))
    assert client.get(path).json()[0]["00100010"]["Value"] == [{"Alphabetic": "Aaa^B"}]
    (row,) = ArchiveReader(archive.root).instances(StudyInstanceUID=STUDY)
    file = resolve(archive.root, row["path"])
    file.write_bytes(file.read_bytes().replace(b"Aaa^B", b"Zzz^B"))  # same size, same digest row
    assert client.get(path).json()[0]["00100010"]["Value"] == [{"Alphabetic": "Zzz^B"}]


def test_deleted_instances_are_forgotten(served) -> None:
    client, archive = served
    for n in (1, 2):
        store(archive, make_dataset(f"{SERIES}.{n}", study=STUDY, series=SERIES, number=n))
    assert len(client.get(f"/studies/{STUDY}/metadata").json()) == 2
    assert set(cached_rows(archive)) == {f"{SERIES}.1", f"{SERIES}.2"}
    remove(archive.root, f"{SERIES}.1", fsync=False)
    assert set(cached_rows(archive)) == {f"{SERIES}.2"}
    remove(archive.root, STUDY, fsync=False)
    assert cached_rows(archive) == {}


def test_a_damaged_cache_is_made_anew(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "archive", fsync=False)
    store(archive, make_dataset(f"{SERIES}.1", study=STUDY, series=SERIES))
    (archive.root / CACHE_FILE).parent.mkdir()
    (archive.root / CACHE_FILE).write_bytes(b"not a database at all" * 100)
    cache = MetadataCache(archive.root)
    assert cache.get_many({"x": "y"}) == {}
    cache.put_many([("x", "y", b"value")])
    assert cache.get_many({"x": "y"}) == {"x": b"value"}
    assert cache.get_many({"x": "another key"}) == {}  # a key that differs: a miss
    cache.close()
    archive.close()


def test_the_depth_cut_is_kept_and_logged_when_answered_from_the_cache(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = Archive(tmp_path / "archive", fsync=False)
    store_nested(archive, 300)
    with HttpThread(archive) as srv, httpx.Client(base_url=srv.url, timeout=60) as plain:
        client = Settled(plain, monkeypatch)
        path = f"/studies/{DEEP_STUDY}/metadata"
        want = expected(archive, path, f"{srv.url}/")
        for _ in range(2):  # cold, then from the cache
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="dicomstore.http.dicomjson"):
                r = client.get(path)
            assert r.content == want
            assert "sequences nested deeper than" in caplog.text
    assert len(cached_rows(archive)) == 1
    archive.close()


def test_past_its_bound_the_cache_drops_the_least_recently_used_and_answers_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``metadata_cache_entries`` (``serve --metadata-cache-entries``): never more rows
    than that; those used longest ago go first; every answer stays the encoder's."""
    archive = Archive(tmp_path / "archive", fsync=False)
    for n in range(1, 7):
        store(archive, generated(n))
    series = f"/studies/{STUDY}/series/{SERIES}"
    uid = [f"{SERIES}.{n}" for n in range(1, 7)]
    with (
        HttpThread(archive, metadata_cache_entries=3) as srv,
        httpx.Client(base_url=srv.url, timeout=60) as plain,
    ):
        client, base = Settled(plain, monkeypatch), f"{srv.url}/"

        def answer(path: str) -> bytes:
            r = client.get(path)
            assert r.status_code == 200, r.text
            assert r.content == expected(archive, path, base), path
            return r.content

        for _ in range(2):  # cold, then past the bound again: each time the same answer
            answer(f"{series}/metadata")
            assert len(cached_rows(archive)) == 3
        for n in (1, 2, 3):
            answer(f"{series}/instances/{uid[n - 1]}/metadata")
        assert set(cached_rows(archive)) == set(uid[:3])  # the last three used
        answer(f"{series}/instances/{uid[0]}/metadata")  # a hit: the last to go now
        answer(f"{series}/instances/{uid[3]}/metadata")  # in: 2, used longest ago, out
        assert set(cached_rows(archive)) == {uid[0], uid[2], uid[3]}
    archive.close()


def test_an_entry_bound_below_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one"):
        MetadataCache(tmp_path, max_entries=0)


@pytest.mark.parametrize("chunk", [1, metadata.CHUNK])
def test_the_answer_is_sent_in_chunks_of_whole_instances(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    """Instances are gathered into chunks of about ``CHUNK`` bytes (each chunk of a
    sync body is a hop to a thread): the same answer in few chunks or many."""
    archive = Archive(tmp_path / "archive", fsync=False)
    for n in range(1, 6):
        store(archive, generated(n))
    reader = ArchiveReader(archive.root)
    rows = reader.instances(SeriesInstanceUID=SERIES)
    monkeypatch.setattr(metadata, "CHUNK", chunk)
    cache = MetadataCache(archive.root)
    for _ in range(2):  # cold, then from the cache
        chunks = list(metadata.stream_metadata(rows, reader.storage, "http://h/", 50, cache))
        assert len(chunks) == (6 if chunk == 1 else 1)  # (each instance, then "]"; or all)
        items = json.loads(b"".join(chunks))
        assert [i["00080018"]["Value"][0] for i in items] == [r["sop_instance_uid"] for r in rows]
    cache.close()
    archive.close()


def test_the_cache_is_written_once_the_answer_is_sent(tmp_path: Path) -> None:
    """A cold answer does not wait for the cache's write (a quarter of a cold
    400-instance series' time, benchmarks/bench_metadata.py): held until it is sent."""
    archive = Archive(tmp_path / "archive", fsync=False)
    for n in range(1, 4):
        store(archive, generated(n))
    path = f"/studies/{STUDY}/series/{SERIES}/metadata"
    with HttpThread(archive) as srv, httpx.Client(base_url=srv.url, timeout=20) as client:
        cache = srv.app.state.metadata_cache
        put, go, written = cache.put_many, threading.Event(), threading.Event()

        def held_back(entries: Any) -> None:
            go.wait(30)
            put(entries)
            written.set()

        cache.put_many = held_back
        # (written while answering, the answer would wait for go: a timeout, a failure)
        r = client.get(path)
        assert r.status_code == 200 and len(r.json()) == 3
        go.set()
        assert written.wait(30)
        assert set(cached_rows(archive)) == {f"{SERIES}.{n}" for n in range(1, 4)}
    archive.close()


def test_an_instance_deleted_while_answering_is_left_out_without_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Its file gone between the stat and the read, its row gone too: expected, an INFO
    line (stress66: a WARNING per answer in flight), as one gone before the stat."""
    archive = Archive(tmp_path / "archive", fsync=False)
    for n in range(1, 4):
        store(archive, generated(n))
    reader = ArchiveReader(archive.root)
    rows = reader.instances(SeriesInstanceUID=SERIES)
    encode = metadata.encode

    def gone_second(storage, key, *args, **kwargs):
        if key == rows[1]["path"]:
            raise FileNotFoundError(2, "No such file or directory")
        return encode(storage, key, *args, **kwargs)

    monkeypatch.setattr(metadata, "encode", gone_second)
    cache = MetadataCache(archive.root)
    body = metadata.stream_metadata(
        rows, reader.storage, "http://h/", 50, cache, indexed=lambda uid, path: False
    )
    with caplog.at_level(logging.INFO, logger="dicomstore.http.metadata"):
        items = json.loads(b"".join(body))
    assert [i["00080018"]["Value"][0] for i in items] == [f"{SERIES}.1", f"{SERIES}.3"]
    assert f"metadata of {SERIES}.2 left out: deleted since the query" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    cache.close()
    archive.close()


def test_a_write_is_one_transaction(tmp_path: Path) -> None:
    """review66 I8: in autocommit mode ``with db`` begins none: each INSERT of a
    batch was its own commit (3-8 times slower); a failed write leaves nothing."""
    cache = MetadataCache(tmp_path)
    cache.put_many([("1", "k", b"v")])  # (opened)
    assert cache._db is not None
    said: list[str] = []
    cache._db.set_trace_callback(said.append)
    cache.put_many([(str(n), "k", b"v") for n in range(2, 5)])
    cache.drop(["2", "3"])
    assert [s for s in said if s in ("BEGIN IMMEDIATE", "COMMIT")] == [
        "BEGIN IMMEDIATE",
        "COMMIT",
    ] * 2
    assert sum(s.startswith("INSERT") for s in said) == 3
    assert set(cache.get_many({n: "k" for n in "1234"})) == {"1", "4"}
    cache.close()


def test_an_instance_replaced_while_answering_is_given_as_it_is_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its file gone between the stat and the read, not indexed there: the row the
    index has now is read (review66 L5: it was left out, as if deleted)."""
    archive = Archive(tmp_path / "archive", fsync=False)
    for n in range(1, 4):
        store(archive, generated(n))
    reader = ArchiveReader(archive.root)
    rows = reader.instances(SeriesInstanceUID=SERIES)
    encode, gone = metadata.encode, [rows[1]["path"]]

    def gone_once(storage, key, *args, **kwargs):
        if key in gone:
            gone.remove(key)  # (the old version's file; the new one is read)
            raise FileNotFoundError(2, "No such file or directory")
        return encode(storage, key, *args, **kwargs)

    monkeypatch.setattr(metadata, "encode", gone_once)
    cache = MetadataCache(archive.root)
    body = metadata.stream_metadata(
        rows,
        reader.storage,
        "http://h/",
        50,
        cache,
        indexed=lambda uid, path: False,
        follow=lambda row: dict(row),  # (stands for the new version's row)
    )
    items = json.loads(b"".join(body))
    assert [i["00080018"]["Value"][0] for i in items] == [f"{SERIES}.{n}" for n in (1, 2, 3)]
    cache.close()
    archive.close()


def test_a_commit_that_fails_leaves_the_cache_usable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review69 L1: a COMMIT answered SQLITE_BUSY left the transaction open, and every
    later write on that connection failed ("cannot start a transaction within a
    transaction")."""
    from dicomstore.archive import metacache

    class Busy:
        """A connection whose first COMMIT fails, leaving the transaction open."""

        def __init__(self, db: sqlite3.Connection) -> None:
            self.db, self.failed = db, False

        def execute(self, sql: str, *args: Any) -> Any:
            if sql == "COMMIT" and not self.failed:
                self.failed = True
                raise sqlite3.OperationalError("database is locked")
            return self.db.execute(sql, *args)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.db, name)

    opened = metacache._open
    monkeypatch.setattr(metacache, "_open", lambda path: Busy(opened(path)))
    cache = MetadataCache(tmp_path)
    cache.put_many([("1", "k", b"v")])  # (its COMMIT fails: not written)
    cache.put_many([("2", "k", b"v")])
    assert set(cache.get_many({"1": "k", "2": "k"})) == {"2"}
    cache.close()
