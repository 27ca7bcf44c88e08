"""The Storage SCU against real SCPs (PS3.4 B.2.1): DCMTK, pynetdicom and our own server.

Every instance reported stored must have arrived with its data set
byte-identical to the file's data set (when it was not converted).
"""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path

import pydicom
import pytest
from tests.conftest import ServerThread, dcmtk_storescp, free_port, pynetdicom_storescp
from tests.services.test_scu_support import (
    dataset_bytes,
    received_by_uid,
    sendable,
    summary_of,
    uid_of,
)
from tests.services.test_storage_scp_interop import has_study_and_series

from dicomstore import uids
from dicomstore.aio.client import associate
from dicomstore.aio.invoker import Invoker
from dicomstore.services.scu_send import send
from dicomstore.services.server import ServerConfig
from dicomstore.services.storage_scu import send_c_store


def _send(port: int, paths, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return asyncio.run(send("127.0.0.1", port, paths, retry_delay=0.01, **kwargs))


def test_every_test_file_reaches_dcmtk_bit_preserving_byte_identical(tmp_path: Path) -> None:
    files = sendable(tmp_path / "in")
    port = free_port()
    with dcmtk_storescp(port, tmp_path / "out", "--bit-preserving", "+xa"):
        results = _send(port, files, parallel=2)
    assert summary_of(results) == {"stored": len(files)}, [
        (r.path, r.reason) for r in results if not r.stored
    ]
    assert not any(r.converted for r in results)
    got = received_by_uid(tmp_path / "out")
    for path in files:
        assert dataset_bytes(got[uid_of(path)]) == dataset_bytes(path), path.name


def test_pynetdicom_storescp_gets_every_file_it_can_store(tmp_path: Path) -> None:
    """pynetdicom's storescp decodes and re-writes each data set with pydicom:
    its files match ours element by element, byte by byte where pydicom keeps
    the encoding; a file it cannot re-write comes back as a failure status."""
    files = sendable(tmp_path / "in")
    port = free_port()
    with pynetdicom_storescp(port, tmp_path / "out"):
        results = _send(port, files, retries=0)
    got = received_by_uid(tmp_path / "out")
    identical = 0
    for path, r in zip(files, results, strict=True):
        assert r.path == str(path)
        if not r.stored:
            # SC_rgb_jpeg.dcm says Explicit VR but is Implicit: pydicom cannot re-write it.
            assert r.outcome == "failed" and r.status is not None and r.status >> 8 == 0xA7
            continue
        received = got[uid_of(path)]
        if dataset_bytes(received) == dataset_bytes(path):
            identical += 1
        else:
            a = pydicom.dcmread(received, force=True)
            b = pydicom.dcmread(path, force=True)
            # it drops group lengths (write_like_original=False): compare the rest
            assert [e.tag for e in a if e.tag.element] == [e.tag for e in b if e.tag.element]
            assert a.get("PixelData") == b.get("PixelData"), path.name
    assert sum(r.stored for r in results) >= len(files) - 2
    assert identical >= len(files) // 2, identical


def test_our_server_archives_what_we_send_byte_identical(tmp_path: Path) -> None:
    from dicomstore.archive import Archive

    files = sendable(tmp_path / "in")
    # pydicom's test files reuse one Study Instance UID for three patients (4MR1,
    # 8NM1, 13US1): byte identity is tested here, the relational policy elsewhere
    archive = Archive(tmp_path / "archive", fsync=False, on_relational_mismatch="accept")
    with ServerThread(ServerConfig(port=0, max_ops=8), archive) as server:
        results = _send(server.port, files, parallel=2, max_ops=8)
    # refused: some JPEG-LS files have no Study Instance UID (A900, PS3.4 B.1.1);
    # SC_rgb_jpeg.dcm's data set is Implicit VR behind a JPEG Baseline meta (C000,
    # archive/encoding.py: its stored meta would lie); every other file is stored
    orphans = [p for p in files if not has_study_and_series(p)]
    refused = {Path(r.path).name: r for r in results if not r.stored}
    assert {name: r.status for name, r in refused.items()} == {
        **{p.name: 0xA900 for p in orphans},
        "SC_rgb_jpeg.dcm": 0xC000,
    }
    assert refused["SC_rgb_jpeg.dcm"].error_comment == (
        "data set is Implicit VR, context is Explicit VR LE (compressed)"
    )
    assert summary_of(results) == {"stored": len(files) - len(refused), "failed": len(refused)}
    for path in files:
        stored = archive.path_of(uid_of(path))
        if path.name in refused:
            assert stored is None
            continue
        assert stored is not None, path.name
        assert dataset_bytes(stored) == dataset_bytes(path), path.name
    archive.close()


def test_pipelining_uses_the_granted_window(tmp_path: Path, monkeypatch) -> None:
    """Several C-STOREs outstanding on one association (PS3.7 D.3.3.3)."""
    from dicomstore.archive import Archive

    files = sendable(tmp_path / "in", compressed=False)
    in_flight = peak = 0
    original = Invoker.store_stream  # (ClientAssociation's C-STOREs go through its Invoker)

    async def counting(self, *args, **kwargs):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            return await original(self, *args, **kwargs)
        finally:
            in_flight -= 1

    monkeypatch.setattr(Invoker, "store_stream", counting)
    archive = Archive(tmp_path / "archive", fsync=False)
    with ServerThread(ServerConfig(port=0, max_ops=4), archive) as server:
        results = _send(server.port, files, max_ops=16)
    archive.close()
    assert all(r.outcome == "stored" for r in results)
    assert peak == 4  # the server's grant, not our proposal


def test_send_c_store_takes_a_dataset_and_a_path(tmp_path: Path) -> None:
    from dicomstore.archive import Archive

    path = sendable(compressed=False)[0]
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    archive = Archive(tmp_path / "archive", fsync=False)

    async def main(port: int) -> tuple[int, int]:
        contexts = [(ds.SOPClassUID, [uids.EXPLICIT_VR_LE, uids.IMPLICIT_VR_LE])]
        assoc = await associate("127.0.0.1", port, contexts=contexts)
        try:
            a = await send_c_store(assoc, ds)
            b = await send_c_store(assoc, path)
        finally:
            await assoc.release()
        return a.status, b.status

    with ServerThread(ServerConfig(port=0), archive) as server:
        assert asyncio.run(main(server.port)) == (0, 0)
    stored = pydicom.dcmread(archive.path_of("1.2.826.0.1.3680043.8.498.1"))
    assert stored.PatientName == ds.PatientName
    archive.close()


def test_many_sop_classes_take_several_associations(tmp_path: Path) -> None:
    """More than 128 contexts: more associations, transparently (PS3.8 9.3.2.2)."""
    from dicomstore.archive import Archive

    datasets = []
    for n, sop_class in enumerate(uids.storage_sop_classes()[:70]):
        ds = pydicom.Dataset()
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{1000 + n}"
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.7"
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.8"
        ds.PatientID = "SCU"
        datasets.append(ds)
    archive = Archive(tmp_path / "archive", fsync=False)
    with ServerThread(ServerConfig(port=0), archive) as server:
        results = _send(server.port, datasets)
    statuses = {r.outcome for r in results}
    assert statuses <= {"stored", "warning"} and len(results) == 70
    for ds in datasets:
        assert archive.path_of(ds.SOPInstanceUID) is not None
    archive.close()


@pytest.mark.parametrize("window", [1, 8])
def test_a_big_instance_streams_byte_identical_through_small_pdus(
    tmp_path: Path, window: int
) -> None:
    """A 24 MB instance through DCMTK's 16 KiB PDUs: ~1500 PDVs, same bytes."""
    src = sendable(compressed=False)
    ds = pydicom.dcmread(next(p for p in src if p.name == "CT_small.dcm"))
    ds.PixelData = bytes(range(256)) * (24 * 4096)
    ds.Rows, ds.Columns = 3072, 4096
    path = tmp_path / "big.dcm"
    ds.save_as(path, enforce_file_format=True)
    port = free_port()
    with dcmtk_storescp(port, tmp_path / "out", "--bit-preserving"):
        results = _send(port, [path], max_ops=window)
    assert [r.outcome for r in results] == ["stored"]
    got = received_by_uid(tmp_path / "out")[str(ds.SOPInstanceUID)]
    assert dataset_bytes(got) == dataset_bytes(path)
