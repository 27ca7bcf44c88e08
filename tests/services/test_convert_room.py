"""A conversion's copy keeps the archive's --min-free (inflation.keep_free, review103
F3): C-GET and C-MOVE sub-operations to convert fail (sent as stored they go on),
WADO-RS transcoding is 503 with Retry-After, as a store would be refused A700; the
server sets the floor on its archive's .tmp while it runs, and takes it away after."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from tests.archive.archive_testlib import dataset, store
from tests.conftest import ServerThread
from tests.services.query_testlib import identifier
from tests.services.test_get_scp import STUDY_ROOT_GET, pynetdicom_get

sys.path.insert(0, str(Path(__file__).parent.parent / "http"))
from http_testlib import HttpThread, get_or_cut, make_dataset, store_implicit  # noqa: E402

from dicomstore import inflation, uids  # noqa: E402
from dicomstore.archive import Archive  # noqa: E402
from dicomstore.services.server import ServerConfig  # noqa: E402

CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY = "1.2.78.1"
ALWAYS = 1 << 62  # (more than any disk has free)


def test_a_temporary_file_below_the_floor_is_refused(tmp_path: Path) -> None:
    floored, other = tmp_path / "floored", tmp_path / "other"
    floored.mkdir()
    other.mkdir()
    free = shutil.disk_usage(floored).free
    inflation.keep_free(floored, ALWAYS)
    try:
        with pytest.raises(inflation.NoRoom, match="--min-free .*: only .* free"):
            inflation.temporary_file(str(floored))
        inflation.temporary_file(str(other)).close()  # (another folder: no floor)
    finally:
        inflation.keep_free(floored, ALWAYS, keep=False)
    inflation.temporary_file(str(floored)).close()
    room = max(free - (64 << 30), 1)  # (room for less than 64 GiB)
    inflation.keep_free(floored, room)
    try:
        inflation.temporary_file(str(floored), 1 << 20).close()
        with pytest.raises(inflation.NoRoom, match="65 GiB needed"):
            inflation.temporary_file(str(floored), 65 << 30)
    finally:
        inflation.keep_free(floored, room, keep=False)
    assert inflation._FLOORS == {}


def test_two_servers_on_one_folder_keep_each_its_floor(tmp_path: Path) -> None:
    """review105 L2: the second server's floor replaced the first's, and the first to
    stop took the floor away from the other."""
    inflation.keep_free(tmp_path, ALWAYS)
    inflation.keep_free(tmp_path, 1)
    try:
        inflation.keep_free(tmp_path, 1, keep=False)  # (one stops)
        with pytest.raises(inflation.NoRoom):  # (the other's floor stays)
            inflation.temporary_file(str(tmp_path))
    finally:
        inflation.keep_free(tmp_path, ALWAYS, keep=False)
    inflation.temporary_file(str(tmp_path)).close()
    assert inflation._FLOORS == {}


def test_c_get_sub_operations_to_convert_fail_below_min_free(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    with Archive(root, fsync=False) as archive:
        for n in (1, 2):
            uid = f"{STUDY}.1.{n}"
            assert (
                store(archive, dataset(uid, study=STUDY, series=f"{STUDY}.1"), sop_uid=uid).status
                == 0
            )
    archive = Archive(root, fsync=False)
    ident = identifier("STUDY", StudyInstanceUID=STUDY)
    config = ServerConfig(port=0, min_free_bytes=ALWAYS)
    with ServerThread(config, archive) as srv:
        implicit = pynetdicom_get(
            srv.port, ident, STUDY_ROOT_GET, storage={CT: [uids.IMPLICIT_VR_LE]}
        )
        as_stored = pynetdicom_get(
            srv.port, ident, STUDY_ROOT_GET, storage={CT: [uids.EXPLICIT_VR_LE]}
        )
    assert inflation._FLOORS == {}  # (taken away with the server)
    archive.close()
    assert implicit.received == {} and implicit.final.Status == 0xA702
    assert implicit.counts() == (0, 2, 0, None)
    assert sorted(as_stored.received) == [f"{STUDY}.1.1", f"{STUDY}.1.2"]
    assert as_stored.final.Status == 0x0000


def test_wado_rs_transcoding_below_the_floor_is_503(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "archive", fsync=False)
    sop, series = "1.2.78.2.1", "1.2.78.2"
    store_implicit(archive, make_dataset(sop, study="1.2.78", series=series), tmp_path)
    scratch = archive.storage.scratch()
    assert scratch is not None
    inflation.keep_free(scratch, ALWAYS)
    try:
        with HttpThread(archive) as web:
            target = f"/studies/1.2.78/series/{series}/instances/{sop}"
            status, body = get_or_cut(web.server.port, target, {"accept": "application/dicom"})
            assert status == 503 and body is not None and b"--min-free" in body
            star = {"accept": "application/dicom; transfer-syntax=*"}  # (as stored: served)
            assert get_or_cut(web.server.port, target, star)[0] == 200
    finally:
        inflation.keep_free(scratch, ALWAYS, keep=False)
        archive.close()
