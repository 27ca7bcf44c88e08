"""What WADO-RS metadata holds for the metadata cache until the answer is sent
(http/heldvalues.py): bounded for the process, let go when an answer ends early,
written with its instances looked up again after (a delete meanwhile leaves no
row), never after the cache is closed, never raising after the answer."""

from __future__ import annotations

import gc
import json
import logging
from pathlib import Path

import pytest
from http_testlib import store
from test_http_metadata_cache import SERIES, cached_rows, generated

from dicomstore.archive import Archive
from dicomstore.archive.metacache import MetadataCache
from dicomstore.archive.reader import ArchiveReader
from dicomstore.archive.removal import remove
from dicomstore.http import heldvalues, metadata
from dicomstore.http.heldvalues import Held

#: On both index engines (issue 17).
pytestmark = pytest.mark.usefixtures("index_engine")


@pytest.fixture
def series(tmp_path: Path):
    archive = Archive(tmp_path / "archive", fsync=False)
    for n in range(1, 6):
        store(archive, generated(n))
    reader = ArchiveReader(archive.root)
    cache = MetadataCache(archive.root)
    yield archive, reader, reader.instances(SeriesInstanceUID=SERIES), cache
    cache.close()
    archive.close()


def _answer(reader, rows, cache, held, **options) -> list[dict]:
    body = metadata.stream_metadata(
        rows, reader.storage, "http://h/", 50, cache, held=held, still=reader.instance_rows,
        **options,
    )  # fmt: skip
    return json.loads(b"".join(body))


def test_what_an_answer_made_is_held_then_written(series) -> None:
    """Counted in the bound until written (review66 M2: it was let go as the write
    began, and a write waiting on the cache held its values uncounted)."""
    archive, reader, rows, cache = series
    held, before = Held(), Held.total()  # (the bound is the process's: what others hold)
    assert len(_answer(reader, rows, cache, held)) == 5
    holding = Held.total() - before
    assert cached_rows(archive) == {} and holding > 0
    put, seen = cache.put_many, []

    def counting(entries) -> None:
        seen.append(Held.total() - before)
        put(entries)

    cache.put_many = counting
    held.write(cache, reader.instance_rows)
    assert seen == [holding]
    assert len(cached_rows(archive)) == 5 and Held.total() == before


@pytest.mark.parametrize("bound", ["none", "part"])
def test_past_the_bound_of_the_process_values_are_written_as_they_are_made(
    series, monkeypatch: pytest.MonkeyPatch, bound: str
) -> None:
    """The bound is of every answer together: what another holds counts."""
    archive, reader, rows, cache = series
    monkeypatch.setattr(metadata, "BATCH", 2)
    other, before = Held(), Held.total()
    if bound == "none":
        monkeypatch.setattr(heldvalues, "HOLD", 0)
    else:  # (room for the first batch of two left, another answer holding the rest)
        dry = Held()
        _answer(reader, rows, cache, dry)
        first_two = sum(len(value) for _, _, value in dry.drop()[:2])
        assert other.add([("x", "k", b"v" * 100)])
        monkeypatch.setattr(heldvalues, "HOLD", before + 100 + first_two)
    held = Held()
    assert len(_answer(reader, rows, cache, held)) == 5
    written = len(cached_rows(archive))
    assert written == (5 if bound == "none" else 3)
    held.write(cache, reader.instance_rows)
    assert len(cached_rows(archive)) == 5
    other.drop()
    assert Held.total() == before


def test_an_answer_that_ends_early_lets_go_of_what_it_held(series) -> None:
    """A HEAD, a client gone: nothing written, nothing left counted."""
    _, reader, rows, cache = series
    held, before = Held(), Held.total()
    body = metadata.stream_metadata(rows, reader.storage, "http://h/", 50, cache, held=held)
    next(body)  # (the whole answer is one chunk here, "]" with it: never resumed after)
    body.close()
    assert Held.total() == before and held.drop() == []


def test_a_holder_never_written_is_let_go_when_collected(series) -> None:
    _, reader, rows, cache = series
    held, before = Held(), Held.total()
    _answer(reader, rows, cache, held)
    assert Held.total() > before
    del held
    gc.collect()
    assert Held.total() == before


def test_what_was_deleted_while_answering_is_dropped_after_the_write(series) -> None:
    """``dicomstore delete`` removes its rows from the index, then forgets their cache
    rows: a write after that looks the index up again and drops what it wrote for
    them (before, a lookup before the write could race with the delete)."""
    archive, reader, rows, cache = series
    held = Held()
    _answer(reader, rows, cache, held)
    remove(archive.root, f"{SERIES}.2", fsync=False)
    held.write(cache, reader.instance_rows)
    assert set(cached_rows(archive)) == {f"{SERIES}.{n}" for n in (1, 3, 4, 5)}


def test_an_index_that_cannot_be_read_after_the_write_drops_it(
    series, caplog: pytest.LogCaptureFixture
) -> None:
    archive, reader, rows, cache = series
    held = Held()
    _answer(reader, rows, cache, held)

    def locked(uids: list[str]) -> set[str]:
        raise OSError(11, "database is locked")

    held.write(cache, locked)  # (after the answer: never raises)
    assert cached_rows(archive) == {}
    assert "5 entries dropped, the index not read: [Errno 11] database is locked" in caplog.text
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_nothing_is_written_after_the_cache_is_closed(series) -> None:
    """A late write (an answer's, after the server's stop): no database opened again."""
    archive, reader, rows, cache = series
    held = Held()
    _answer(reader, rows, cache, held)
    cache.close()
    held.write(cache, reader.instance_rows)
    assert cache._db is None
    assert cached_rows(archive) == {}


def test_a_delete_right_after_the_lookup_leaves_no_row(series) -> None:
    """The race of a lookup before the write (review65 #2): the index still held the
    instance, the delete removed it and forgot its (absent) row, the write put it
    back for good. Written first, the delete's forget finds it."""
    archive, reader, rows, cache = series
    held = Held()
    _answer(reader, rows, cache, held)

    def racing(uids: list[str]):
        now = reader.instance_rows(uids)
        remove(archive.root, f"{SERIES}.2", fsync=False)  # (lands right after the lookup)
        return now

    held.write(cache, racing)
    assert set(cached_rows(archive)) == {f"{SERIES}.{n}" for n in (1, 3, 4, 5)}


def test_a_deleted_instance_written_just_before_the_close_is_dropped_after_it(series) -> None:
    """review66 L4: the server stopped between the write and the lookup: the drop,
    on a closed cache, did nothing and the deleted instance's row stayed."""
    archive, reader, rows, cache = series
    held = Held()
    _answer(reader, rows, cache, held)
    remove(archive.root, f"{SERIES}.2", fsync=False)  # (its forget: no row yet)

    def closing(uids: list[str]):
        cache.close()  # (the server's stop, meanwhile)
        return reader.instance_rows(uids)

    held.write(cache, closing)
    assert set(cached_rows(archive)) == {f"{SERIES}.{n}" for n in (1, 3, 4, 5)}
