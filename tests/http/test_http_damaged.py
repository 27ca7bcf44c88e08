"""A damaged archive over WADO-RS (review35b F10): an instance still indexed whose file
is gone cuts the answer off, with a WARNING naming it, instead of a 200 without it
that the client and the audit take for the whole study. One deleted since the
query is left out, as before."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from http_testlib import HttpThread, get_or_cut, make_dataset, store, store_implicit

from dicomstore.archive import Archive

STUDY, SERIES = "1.2.826.0.1.3680043.10.38", "1.2.826.0.1.3680043.10.38.1"


@pytest.fixture
def damaged(tmp_path: Path) -> Iterator[HttpThread]:
    archive = Archive(tmp_path / "archive", fsync=False)
    for n in (1, 2, 3):
        store(archive, make_dataset(f"1.2.38.{n}", study=STUDY, series=SERIES, number=n))
    yield from _served_without(archive, "1.2.38.2")


def _served_without(archive: Archive, sop: str) -> Iterator[HttpThread]:
    """``archive`` served, the file of ``sop`` gone (its row kept)."""
    path = archive.path_of(sop)
    assert path is not None
    path.unlink()
    with HttpThread(archive) as web:
        yield web
    archive.close()


def _get(web: HttpThread, target: str) -> tuple[int, bytes | None]:
    return get_or_cut(web.server.port, target)


@pytest.mark.parametrize(
    "tail", ["", "?accept=application/zip", "/metadata", "/series/" + SERIES + "/metadata"]
)
def test_a_missing_file_is_500_before_any_body(damaged, tail, caplog) -> None:
    """review77 F5: a study with a missing file was a 200 cut off (a ZIP no client
    opens); every file is opened before the status."""
    with caplog.at_level(logging.WARNING, "dicomstore.http"):
        status, body = _get(damaged, f"/studies/{STUDY}{tail}")
    assert status == 500 and body is not None
    assert b"cannot read instance 1.2.38.2: its file is missing or unreadable" in body
    assert "instance 1.2.38.2 is indexed but its file cannot be read" in caplog.text


@pytest.mark.parametrize("suffix", ["", "?accept=application/zip", "/metadata"])
def test_a_file_missing_after_the_status_cuts_the_answer_off(
    damaged, suffix, caplog, monkeypatch
) -> None:
    """... and one that goes after the status is sent cuts the answer off (review35b
    F10), not a whole-looking 200 without it."""
    from dicomstore.http import wado

    monkeypatch.setattr(wado, "_readable", lambda request, rows: None)
    with caplog.at_level(logging.WARNING, "dicomstore.http"):
        status, body = _get(damaged, f"/studies/{STUDY}{suffix}")
    assert status == 200 and body is None  # (cut: not a whole answer without it)
    assert "instance 1.2.38.2 is indexed but its file cannot be read" in caplog.text
    assert "returned without completing" not in caplog.text  # (uvicorn's ERROR: said once)


@pytest.mark.parametrize("tail", ["", "/metadata"])
def test_the_missing_instance_alone_is_500_before_any_body(damaged, tail) -> None:
    status, body = _get(damaged, f"/studies/{STUDY}/series/{SERIES}/instances/1.2.38.2{tail}")
    assert status == 500 and body is not None and b"missing or unreadable" in body


IMPLICIT_STUDY = "1.2.826.0.1.3680043.10.39"
TO_EXPLICIT = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'


@pytest.fixture
def implicit_gone(tmp_path: Path) -> Iterator[HttpThread]:
    """Three Implicit VR instances (a study retrieve transcodes them), the second's
    file gone, its row kept."""
    archive = Archive(tmp_path / "archive", fsync=False)
    for n in (1, 2, 3):
        ds = make_dataset(
            f"1.2.39.{n}", study=IMPLICIT_STUDY, series=IMPLICIT_STUDY + ".1", number=n
        )
        store_implicit(archive, ds, tmp_path)
    yield from _served_without(archive, "1.2.39.2")


def test_a_missing_file_transcoded_in_a_study_is_told_as_one_sent_as_stored(
    implicit_gone, caplog, monkeypatch
) -> None:
    """review64 L1: transcoded, a file gone (after the status) went to "not transcoded
    ... cannot read" (the transcoder's read hides the errno); it is told as for a file
    sent as stored: still indexed, the answer cut off naming it (review35b F10)."""
    from dicomstore.http import wado

    monkeypatch.setattr(wado, "_readable", lambda request, rows: None)
    with caplog.at_level(logging.WARNING, "dicomstore.http"):
        status, body = _get_with(implicit_gone, f"/studies/{IMPLICIT_STUDY}", TO_EXPLICIT)
    assert status == 200 and body is None
    assert "instance 1.2.39.2 is indexed but its file cannot be read" in caplog.text
    assert "not transcoded" not in caplog.text


def test_a_file_deleted_since_the_query_is_left_out_when_transcoded(
    implicit_gone, monkeypatch
) -> None:
    """... and deleted since the query (its row gone too), it is left out, the answer
    whole, as sent as stored (review64 L1: it was cut off)."""
    from dicomstore.archive.reader import ArchiveReader

    monkeypatch.setattr(ArchiveReader, "indexed", lambda self, uid, path: False)
    status, body = _get_with(implicit_gone, f"/studies/{IMPLICIT_STUDY}", TO_EXPLICIT)
    assert status == 200 and body is not None
    assert body.count(b"1.2.39.1") >= 1 and body.count(b"1.2.39.3") >= 1
    assert b"1.2.39.2" not in body  # (its part left out, not an empty one)


def _get_with(web: HttpThread, target: str, accept: str) -> tuple[int, bytes | None]:
    return get_or_cut(web.server.port, target, {"accept": accept})


@pytest.mark.parametrize(
    "tail", ["/series/" + SERIES + "/instances/1.2.38.7/metadata", "/metadata", ""]
)
def test_an_instance_replaced_since_the_search_is_answered_as_it_is_now(
    tmp_path: Path, monkeypatch, tail
) -> None:
    """review85 F3: the check before the status took an instance replaced since the
    search (--on-duplicate replace: its file is another now) for one deleted: 404."""
    from dicomstore.archive.reader import ArchiveReader
    from dicomstore.http import wado

    archive = Archive(tmp_path / "archive", fsync=False, on_duplicate="replace")
    store(archive, make_dataset("1.2.38.7", study=STUDY, series=SERIES, number=1))
    stale = ArchiveReader(archive.root).search("instance", {"SOPInstanceUID": "1.2.38.7"})
    store(archive, make_dataset("1.2.38.7", study=STUDY, series=SERIES, number=2))
    monkeypatch.setattr(wado, "_rows", lambda request: [dict(r) for r in stale])
    with HttpThread(archive) as web:
        status, body = _get(web, f"/studies/{STUDY}{tail}")
    archive.close()
    assert status == 200 and body is not None and b"1.2.38.7" in body


@pytest.mark.parametrize("tail", ["", "?accept=application/zip", "/metadata"])
def test_a_study_deleted_since_the_search_is_404(tmp_path: Path, monkeypatch, tail) -> None:
    """review85 F5: every instance deleted since the search gave a 200 of nothing (an
    empty multipart, ZIP or JSON array)."""
    from dicomstore.archive.reader import ArchiveReader
    from dicomstore.archive.removal import remove
    from dicomstore.http import wado

    archive = Archive(tmp_path / "archive", fsync=False)
    for n in (1, 2):
        store(archive, make_dataset(f"1.2.38.8{n}", study=STUDY, series=SERIES, number=n))
    stale = ArchiveReader(archive.root).search("instance", {"StudyInstanceUID": STUDY})
    monkeypatch.setattr(wado, "_rows", lambda request: [dict(r) for r in stale])
    archive.close()
    assert remove(archive.root, STUDY, fsync=False).instances == 2
    archive = Archive(tmp_path / "archive", fsync=False)
    with HttpThread(archive) as web:
        status, body = _get(web, f"/studies/{STUDY}{tail}")
    archive.close()
    assert status == 404 and body is not None and b"deleted since the search" in body
