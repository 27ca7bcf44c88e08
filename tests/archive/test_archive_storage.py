"""The write side of the storage interface (``archive/storage.py``, issue 17 item 3):
the archive's writers take every step on the bytes through the archive's storage,
in the order ``publish.py`` documents, so that a second storage can take them over."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from archive_testlib import CT, EXPLICIT_LE, dataset, settled, store

from dicomstore.archive import OUT_OF_RESOURCES, SUCCESS, Archive
from dicomstore.archive.filestorage import FileStorage
from dicomstore.archive.index import Index
from dicomstore.archive.storage import WritableStorage

_STEPS = (
    "create",
    "write",
    "abort",
    "stage",
    "place",
    "settle",
    "finish",
    "flush_placed",
    "journal",
    "undo",
    "discard",
)


def _steps(archive: Archive, *names: str) -> list[str]:
    """The steps of a store as ``publish.py`` orders them: a new instance flushed
    before it is placed (``stage``, ``settle``), or after its COMMIT (``defers``),
    its trace dropped (``finish``) only after that flush; that flush is one write
    to the journal, and the trace goes at its checkpoint."""
    if not archive._publisher.defers:
        return [n for n in names if n != "flush_placed"]
    steps = [n for n in names if n not in ("stage", "settle")]
    if "flush_placed" in steps:  # (the journal: the trace goes at its checkpoint)
        steps[steps.index("flush_placed")] = "journal"
        return [n for n in steps if n != "finish"]
    if "flush_placed" in steps and "finish" in steps:
        steps.remove("finish")
        steps.insert(steps.index("flush_placed") + 1, "finish")
    return steps


@pytest.fixture
def recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Archive, list]]:
    """An archive whose storage logs each write-side call (name, first argument)."""
    calls: list[tuple[str, Any]] = []
    with Archive(tmp_path / "root", on_duplicate="keep") as archive:
        for name in _STEPS:
            monkeypatch.setattr(archive.storage, name, _logging(calls, name, archive.storage))
        yield archive, calls


def _logging(calls: list, name: str, storage: FileStorage) -> Callable[..., Any]:
    real = getattr(storage, name)

    def step(*args: Any, **kwargs: Any) -> Any:
        calls.append((name, args[1] if name == "place" else None))
        return real(*args, **kwargs)

    return step


def _names(calls: list) -> list[str]:
    names: list[str] = []
    for name, _ in calls:
        if not (names and names[-1] == name == "write"):
            names.append(name)
    return names


def test_file_storage_is_a_writable_storage(tmp_path: Path) -> None:
    assert isinstance(FileStorage(tmp_path), WritableStorage)


def test_a_store_takes_every_step_on_the_bytes_through_the_storage(
    recorded: tuple[Archive, list],
) -> None:
    archive, calls = recorded
    outcome = store(archive, dataset(), chunk=40)
    assert outcome.status == SUCCESS
    assert _names(calls) == _steps(
        archive, "create", "write", "stage", "place", "settle", "finish", "flush_placed"
    )
    assert sum(name == "write" for name, _ in calls) > 2  # the header, then each fragment
    row = archive.get_instance("1.2.3.4.5.6.7")
    assert row is not None
    key = row["path"]
    assert ("place", key) in calls
    assert archive.storage.exists(key)
    assert settled(archive)  # the trace and the temporary are gone


def test_a_duplicate_kept_is_discarded_not_placed(recorded: tuple[Archive, list]) -> None:
    archive, calls = recorded
    assert store(archive, dataset()).status == SUCCESS
    calls.clear()
    assert store(archive, dataset()).status == SUCCESS  # identical: 0000, nothing changes
    assert _names(calls) == _steps(archive, "create", "write", "stage", "discard")
    assert settled(archive)


def test_a_failed_commit_is_undone_by_the_storage(
    recorded: tuple[Archive, list], monkeypatch: pytest.MonkeyPatch
) -> None:
    archive, calls = recorded
    real_commit = Index.commit

    def failing_commit(self: Index, **kw: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(Index, "commit", failing_commit)
    outcome = store(archive, dataset())
    monkeypatch.setattr(Index, "commit", real_commit)
    assert outcome.status == OUT_OF_RESOURCES
    expected = _steps(archive, "create", "write", "stage", "place", "settle", "undo", "discard")
    assert _names(calls) == expected
    assert list(archive.storage.keys()) == []


def test_an_aborted_instance_is_dropped_by_the_storage(recorded: tuple[Archive, list]) -> None:
    archive, calls = recorded
    ingest = archive.begin(
        sop_class_uid=CT, sop_instance_uid="1.2.3.4.5.6.7", transfer_syntax_uid=EXPLICIT_LE
    )
    ingest.write(dataset()[:10])
    ingest.abort()
    assert _names(calls) == ["create", "write", "abort"]
    assert settled(archive)
