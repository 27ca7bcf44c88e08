"""A damaged archive over WADO-RS (review35b F10): an instance still indexed whose file
is gone cuts the answer off, with a WARNING naming it, instead of a 200 without it
that the client and the audit take for the whole study. One deleted since the
query is left out, as before."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from http_testlib import HttpThread, get_or_cut, make_dataset, store

from dicomstore.archive import Archive

STUDY, SERIES = "1.2.826.0.1.3680043.10.38", "1.2.826.0.1.3680043.10.38.1"


@pytest.fixture
def damaged(tmp_path: Path) -> Iterator[HttpThread]:
    archive = Archive(tmp_path / "archive", fsync=False)
    for n in (1, 2, 3):
        store(archive, make_dataset(f"1.2.38.{n}", study=STUDY, series=SERIES, number=n))
    path = archive.path_of("1.2.38.2")
    assert path is not None
    path.unlink()
    with HttpThread(archive) as web:
        yield web
    archive.close()


def _get(web: HttpThread, target: str) -> tuple[int, bytes | None]:
    return get_or_cut(web.server.port, target)


@pytest.mark.parametrize("suffix", ["", "?accept=application/zip"])
def test_a_missing_file_cuts_the_answer_off(damaged, suffix, caplog) -> None:
    with caplog.at_level(logging.WARNING, "dicomstore.http"):
        status, body = _get(damaged, f"/studies/{STUDY}{suffix}")
    assert status == 200 and body is None  # (cut: not a whole answer without it)
    assert "instance 1.2.38.2 is indexed but its file cannot be read" in caplog.text
    assert "returned without completing" not in caplog.text  # (uvicorn's ERROR: said once)


@pytest.mark.parametrize(
    "tail", ["/metadata", "/series/" + SERIES + "/metadata"], ids=["study", "series"]
)
def test_metadata_with_a_missing_file_is_cut_off(damaged, tail, caplog) -> None:
    """review35c: the metadata answered a whole-looking 200 of two of three."""
    with caplog.at_level(logging.WARNING, "dicomstore.http"):
        status, body = _get(damaged, f"/studies/{STUDY}{tail}")
    assert status == 200 and body is None
    assert "instance 1.2.38.2 is indexed but its file cannot be read" in caplog.text
    assert "returned without completing" not in caplog.text  # (uvicorn's ERROR: said once)


@pytest.mark.parametrize("tail", ["", "/metadata"])
def test_the_missing_instance_alone_is_500_before_any_body(damaged, tail) -> None:
    status, body = _get(damaged, f"/studies/{STUDY}/series/{SERIES}/instances/1.2.38.2{tail}")
    assert status == 500 and body is not None and b"missing or unreadable" in body
