"""A stored copy damaged since it was stored (a bit flipped, a file of another size)
over WADO-RS (archive/checked.py): never given whole. Sent as stored, its last bytes
are held until its digest is checked and the answer is cut off instead (instance,
study multipart, ZIP); of another size, or to be transcoded alone, it is a 500 before
any body. The server logs "archive damage" naming it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from http_testlib import HttpThread, get_or_cut, make_dataset, store, store_implicit

from dicomstore.archive import Archive

STUDY, SERIES = "1.2.826.0.1.3680043.10.40", "1.2.826.0.1.3680043.10.40.1"
DAMAGED = "1.2.40.2"
INSTANCE = f"/studies/{STUDY}/series/{SERIES}/instances/{DAMAGED}"
SINGLE = {"accept": "application/dicom"}
TO_EXPLICIT = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x01  # (in its last pixels)
    path.write_bytes(bytes(data))


def _served(archive: Archive, damage=_flip) -> Iterator[HttpThread]:
    path = archive.path_of(DAMAGED)
    assert path is not None
    damage(path)
    with HttpThread(archive) as web:
        yield web
    archive.close()


@pytest.fixture
def flipped(tmp_path: Path) -> Iterator[HttpThread]:
    archive = Archive(tmp_path / "archive", fsync=False)
    for n in (1, 2, 3):
        ds = make_dataset(f"1.2.40.{n}", study=STUDY, series=SERIES, number=n, frames=2)
        store(archive, ds)
    yield from _served(archive)


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        (f"/studies/{STUDY}", {}),
        (f"/studies/{STUDY}?accept=application/zip", {}),
        (INSTANCE, SINGLE),
        (INSTANCE, {}),
    ],
)
def test_a_flipped_bit_cuts_the_answer_before_its_last_bytes(
    flipped, target, headers, caplog
) -> None:
    with caplog.at_level(logging.WARNING):
        status, body = get_or_cut(flipped.server.port, target, headers)
    assert status == 200 and body is None  # (cut off: never a whole answer)
    assert f"archive damage: instance {DAMAGED}" in caplog.text
    assert "its data set differs from what was stored" in caplog.text
    assert "returned without completing" not in caplog.text  # (said once, as WARNING)


def test_the_intact_instances_still_go_whole(flipped) -> None:
    status, body = get_or_cut(flipped.server.port, INSTANCE.replace(DAMAGED, "1.2.40.1"), SINGLE)
    assert status == 200 and body is not None and b"1.2.40.1" in body


def _grown(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"\0\0")


@pytest.fixture
def grown(tmp_path: Path) -> Iterator[HttpThread]:
    archive = Archive(tmp_path / "archive", fsync=False)
    for n in (1, 2, 3):
        store(archive, make_dataset(f"1.2.40.{n}", study=STUDY, series=SERIES, number=n))
    yield from _served(archive, _grown)


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        (f"/studies/{STUDY}", {}),
        (f"/studies/{STUDY}?accept=application/zip", {}),
        (INSTANCE, SINGLE),
    ],
)
def test_a_file_of_another_size_is_500_before_any_body(grown, target, headers, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        status, body = get_or_cut(grown.server.port, target, headers)
    assert status == 500 and body is not None and b"missing or unreadable" in body
    assert f"archive damage: instance {DAMAGED}" in caplog.text


@pytest.fixture
def implicit_flipped(tmp_path: Path) -> Iterator[HttpThread]:
    """Implicit VR instances (transcoded to Explicit VR when asked), the second flipped."""
    archive = Archive(tmp_path / "archive", fsync=False)
    for n in (1, 2, 3):
        ds = make_dataset(f"1.2.40.{n}", study=STUDY, series=SERIES, number=n, frames=1)
        store_implicit(archive, ds, tmp_path)
    yield from _served(archive)


def test_transcoded_alone_it_is_500(implicit_flipped, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        status, body = get_or_cut(implicit_flipped.server.port, INSTANCE, {"accept": TO_EXPLICIT})
    assert status == 500 and body is not None and b"archive damage" in body
    assert f"archive damage: instance {DAMAGED}" in caplog.text


def test_transcoded_in_a_study_it_cuts_the_answer(implicit_flipped, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        status, body = get_or_cut(
            implicit_flipped.server.port, f"/studies/{STUDY}", {"accept": TO_EXPLICIT}
        )
    assert status == 200 and body is None
    assert f"archive damage: instance {DAMAGED}" in caplog.text


def test_transcoded_it_is_the_version_now_after_a_replace_since_the_search(
    tmp_path: Path,
) -> None:
    """sweep106 F2: a row read by the search, then a replace (the file at its key gone
    with it): transcoded, it was 404 "deleted since the search", where one sent as
    stored follows the replace; it is the version now, transcoded."""
    from dicomstore.archive.reader import ArchiveReader
    from dicomstore.http.transcoding import transcode_or_refuse

    archive = Archive(tmp_path / "archive", fsync=False, on_duplicate="replace")
    first = make_dataset(DAMAGED, study=STUDY, series=SERIES, frames=1)
    store_implicit(archive, first, tmp_path)
    reader = ArchiveReader(archive.root)
    searched = reader.instance(DAMAGED)
    second = make_dataset(DAMAGED, study=STUDY, series=SERIES, frames=1)
    second.PatientName = "Second^Version"
    store_implicit(archive, second, tmp_path)
    assert reader.instance(DAMAGED)["path"] != searched["path"]
    done = transcode_or_refuse(reader, searched, 1 << 30, 1 << 29)
    assert b"Second^Version" in b"".join(done.chunks(1 << 20))
    archive.close()


PARTS = [
    "/frames/1",
    "/frames/2",
    "/frames/1/rendered",
    "/rendered",
    "/thumbnail",
    "/bulkdata/7FE00010",
]


@pytest.mark.parametrize("part", PARTS)
def test_a_part_of_a_damaged_copy_is_500_not_served(flipped, part, caplog) -> None:
    """Frames, rendered images, thumbnails and bulk data read parts of a file: a bit
    flipped in the last frame went out in frame 2 (or a rendered image of it) as it
    was, and frame 1 as if the copy were intact. The copy is read whole through its
    digest first (``ArchiveReader.check_once``)."""
    with caplog.at_level(logging.WARNING):
        status, body = get_or_cut(flipped.server.port, INSTANCE + part, {"accept": "*/*"})
    assert status == 500 and body is not None and b"archive damage" in body, (status, body)
    assert f"archive damage: instance {DAMAGED}" in caplog.text


@pytest.mark.parametrize("target", ["/rendered", "/thumbnail"])
@pytest.mark.parametrize("level", ["study", "series"])
def test_a_study_or_series_shown_by_a_damaged_copy_alone_is_500(
    tmp_path: Path, level, target, caplog
) -> None:
    """review113 L3: a study's or series' rendered image or thumbnail, its copies
    damaged, was 404 "nothing to render", where an instance's is 500."""
    archive = Archive(tmp_path / "archive", fsync=False)
    store(archive, make_dataset(DAMAGED, study=STUDY, series=SERIES, frames=2))
    path = archive.path_of(DAMAGED)
    assert path is not None
    _flip(path)
    url = f"/studies/{STUDY}" + (f"/series/{SERIES}" if level == "series" else "") + target
    with HttpThread(archive) as web, caplog.at_level(logging.WARNING):
        status, body = get_or_cut(web.server.port, url, {"accept": "*/*"})
    archive.close()
    assert status == 500 and body is not None and b"archive damage" in body, (status, body)


@pytest.mark.parametrize("part", PARTS)
def test_a_part_of_an_intact_copy_is_served(flipped, part) -> None:
    intact = INSTANCE.replace(DAMAGED, "1.2.40.1")
    status, body = get_or_cut(flipped.server.port, intact + part, {"accept": "*/*"})
    assert status == 200 and body, (status, body)


def test_a_copy_is_read_whole_once_while_its_file_is_unchanged(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    """A viewer asks for frame after frame: the file is read through its digest at the
    first, not again while its version (inode, size, modification time) is the same;
    a file changed since is read again, and found damaged."""
    from dicomstore.archive.reader import ArchiveReader

    opened: list[str] = []
    whole = ArchiveReader.open_checked

    def counted(self, row, local=None):
        opened.append(row["sop_instance_uid"])
        return whole(self, row, local)

    monkeypatch.setattr(ArchiveReader, "open_checked", counted)
    archive = Archive(tmp_path / "archive", fsync=False)
    store(archive, make_dataset(DAMAGED, study=STUDY, series=SERIES, frames=2))
    with HttpThread(archive) as web:
        for part in PARTS:
            assert get_or_cut(web.server.port, INSTANCE + part, {"accept": "*/*"})[0] == 200
        assert opened == [DAMAGED]
        path = archive.path_of(DAMAGED)
        assert path is not None
        _flip(path)
        with caplog.at_level(logging.WARNING):
            status, _ = get_or_cut(web.server.port, INSTANCE + "/frames/1", {"accept": "*/*"})
        assert status == 500 and opened == [DAMAGED, DAMAGED]
        assert f"archive damage: instance {DAMAGED}" in caplog.text
    archive.close()
