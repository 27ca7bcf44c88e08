"""The doors read stored instances only through the archive's storage (issue 17 item 3).

The same archive is served twice: from its files (``FileStorage``), then from an
in-memory ``Storage`` holding the same bytes by the same keys after every file was
removed from disk. Every WADO-RS, QIDO, browse and retrieval answer must be the
same: a door that built or opened a path of its own would fail (the files are
gone), and one that read the bytes some other way would not be counted in
``MemoryStorage.opened``.
"""

from __future__ import annotations

import io
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from http_testlib import HttpThread, make_dataset, split_multipart, store, store_file
from pydicom.data import get_testdata_file

from dicomstore.archive import Archive
from dicomstore.archive.filestorage import FileStorage
from dicomstore.archive.reader import ArchiveReader
from dicomstore.archive.storage import Storage
from dicomstore.services import sources
from dicomstore.services.retrieve import RetrieveQuery, scan_selected, select_instances

sys.path.insert(0, str(Path(__file__).parent.parent / "archive"))
from storage_testlib import MemoryStorage  # noqa: E402

STUDY = "1.2.826.0.1.3680043.10.77"
SERIES = STUDY + ".1"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    archive = Archive(tmp_path_factory.mktemp("seam") / "archive", fsync=False)
    big = make_dataset("1.2.77.1", study=STUDY, series=SERIES, frames=3, rows=60, columns=50)
    big.add_new(0x00291010, "OB", bytes(range(256)) * 20)  # a private bulk value
    store(archive, big)
    store(archive, make_dataset("1.2.77.2", study=STUDY, series=SERIES, number=2))
    for name in ("rtdose.dcm", "JPEG2000.dcm", "image_dfl.dcm"):
        store_file(archive, get_testdata_file(name))
    archive.close()
    return archive.root


def _urls(reader: ArchiveReader) -> list[str]:
    urls = [
        f"/studies/{STUDY}",
        f"/studies/{STUDY}?accept=application/zip",
        f"/studies/{STUDY}/metadata",
        f"/studies/{STUDY}/instances?includefield=all",
        "/browse/patient.zip?id=PID1",
    ]
    for row in reader.instances():
        at = f"/studies/{row['study_uid']}/series/{row['series_uid']}"
        at += f"/instances/{row['sop_instance_uid']}"
        urls += [at, f"{at}?accept=application/dicom", f"{at}/metadata", f"{at}/frames/1"]
        urls += [f"{at}/bulkdata/7FE00010", f"{at}/bulkdata/00291010"]
        urls += [f"/studies/{row['study_uid']}/instances?includefield=all"]
    return urls


def _answer(client: httpx.Client, url: str) -> tuple[int, Any]:
    r = client.get(url)
    kind = r.headers.get("content-type", "")
    if r.status_code != 200:
        return r.status_code, None
    if kind.startswith("multipart/related"):
        return 200, [(h.get("content-type"), body) for h, body in split_multipart(r.content, kind)]
    if kind == "application/zip":
        with zipfile.ZipFile(io.BytesIO(r.content)) as z:
            return 200, {name: z.read(name) for name in z.namelist()}
    return 200, r.content.replace(str(client.base_url).rstrip("/").encode(), b"BASE")


def _answers(root: Path, storage: Storage | None) -> dict[str, tuple[int, Any]]:
    reader = ArchiveReader(root, storage=storage)
    with HttpThread(root) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        srv.app.state.reader = reader
        return {url: _answer(client, url) for url in _urls(reader)}


def _sent(reader: ArchiveReader) -> dict[str, bytes]:
    """What C-GET / C-MOVE sub-operations send of each instance of the study."""
    sent = {}
    for item in select_instances(reader, RetrieveQuery("PATIENT", {0x00100020: "*"})):
        instance = scan_selected(item)
        chunks = sources.file_chunks(sources.open_dataset(instance), 4096)
        sent[item.sop_instance_uid] = b"".join(sources.exactly(chunks, instance))
    return sent


@pytest.fixture(scope="module")
def served(root: Path) -> Iterator[tuple[dict, dict, dict, dict, MemoryStorage]]:
    files = FileStorage(root)
    from_files = _answers(root, None)
    sent_from_files = _sent(ArchiveReader(root))
    memory = MemoryStorage.copy_of(files)
    assert len(memory.objects) == 5
    for key in list(files.keys("")):  # nothing left to read by a path
        assert files.delete(key)
    assert list(files.keys("")) == []
    yield (
        from_files,
        _answers(root, memory),
        sent_from_files,
        _sent(ArchiveReader(root, storage=memory)),
        memory,
    )


def test_both_storages_implement_the_interface(root: Path) -> None:
    assert isinstance(FileStorage(root), Storage)
    assert isinstance(MemoryStorage(), Storage)


def test_http_doors_answer_the_same_from_a_storage_without_files(served) -> None:
    from_files, from_memory, _, _, memory = served
    assert sum(status == 200 for status, _ in from_files.values()) >= 25
    for url, answer in from_files.items():
        assert from_memory[url] == answer, url
    assert memory.opened  # (and the files were gone: nothing else could be read)


def test_retrieval_sends_the_same_bytes_from_a_storage_without_files(served) -> None:
    _, _, sent_from_files, sent_from_memory, _ = served
    assert len(sent_from_files) == 5
    assert sent_from_memory == sent_from_files
