"""A stored Deflated Explicit VR Little Endian instance (PS3.5 A.5) served by WADO-RS and
the browse page: answers equal to those of the same instance stored Explicit VR Little
Endian (metadata, bulk data, frames, rendered; the instance itself as stored), read from
a temporary inflated copy in bounded memory (``inflation.inflated_temporary``), and a
deflate bomb past the store limit answered 413 with the limit named, logged, nothing
crashed."""

from __future__ import annotations

import gc
import logging
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from http_testlib import HttpThread, dataset_bytes, make_dataset
from pydicom.dataset import Dataset

from dicomstore import uids
from dicomstore.archive import Archive
from dicomstore.services.storage import StoreLimits, StoreService

MiB = 1 << 20
STUDY = "1.2.826.0.1.3680043.10.55"
SERIES = STUDY + ".1"
SOP = SERIES + ".1"
INSTANCE = f"/studies/{STUDY}/series/{SERIES}/instances/{SOP}"
#: tracemalloc's peak while a large deflated instance is served: far below its size
PEAK = 16 * MiB


def _deflate(chunks: Iterator[bytes]) -> bytes:
    """A raw deflate stream (PS3.5 A.5: no zlib header) of the chunks."""
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return b"".join(z.compress(c) for c in chunks) + z.flush()


def _ingest(archive: Archive, ds: Dataset, syntax: str, data: bytes) -> None:
    """Store ``data`` (the data set in ``syntax``) through the archive's ingest, as a
    C-STORE does (without the store service's limits: stored under a larger one)."""
    ingest = archive.begin(
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid=ds.SOPInstanceUID,
        transfer_syntax_uid=syntax,
        calling_ae="MODALITY",
        called_ae="DICOMSTORE",
    )
    for start in range(0, len(data), MiB):
        ingest.write(data[start : start + MiB])
    outcome = ingest.commit()
    assert not outcome.is_failure, outcome


def _image() -> Dataset:
    ds = make_dataset(SOP, study=STUDY, series=SERIES, frames=3, rows=16, columns=12)
    ds.PixelData = (bytes(range(256)) * 5)[: len(ds.PixelData)]
    ds.WindowCenter, ds.WindowWidth = 128, 256
    return ds


def _large(mib: int) -> tuple[Dataset, bytes]:
    """An instance of ``mib`` MiB of 16-bit pixels in 8 MiB frames, and its data set
    deflated (made chunk by chunk: a few hundred KiB)."""
    ds = make_dataset(SOP, study=STUDY, series=SERIES, frames=1, rows=1, columns=1)
    del ds.PixelData
    ds.Rows = ds.Columns = 2048
    ds.NumberOfFrames = mib // 8
    pixel_header = b"\xe0\x7f\x10\x00OW\x00\x00" + (mib * MiB).to_bytes(4, "little")
    block = bytes(range(256)) * (MiB // 256)
    return ds, _deflate(iter([dataset_bytes(ds), pixel_header, *([block] * mib)]))


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """Clients of two archives holding the same instance: Explicit VR LE, deflated."""
    ds = _image()
    plain, deflated = (Archive(tmp_path / name, fsync=False) for name in ("plain", "deflated"))
    _ingest(plain, ds, uids.EXPLICIT_VR_LE, dataset_bytes(ds))
    _ingest(deflated, ds, uids.DEFLATED_EXPLICIT_VR_LE, _deflate(iter([dataset_bytes(ds)])))
    with (
        HttpThread(plain) as a,
        HttpThread(deflated) as b,
        httpx.Client(base_url=a.url, timeout=60) as ca,
        httpx.Client(base_url=b.url, timeout=60) as cb,
    ):
        yield ca, cb
    plain.close()
    deflated.close()


def _base(r: httpx.Response, url: str) -> bytes:
    return r.content.replace(url.encode(), b"BASE")


def test_a_deflated_instance_is_served_as_the_same_instance_explicit(two) -> None:
    plain, deflated = two
    for path in (
        f"{INSTANCE}/metadata",
        f"/studies/{STUDY}/metadata",
        f"{INSTANCE}/bulkdata/7FE00010",
        f"{INSTANCE}/frames/2",
        f"{INSTANCE}/frames/3,1",
        f"{INSTANCE}/rendered",
        f"{INSTANCE}/frames/2/rendered?window=100,50",
        f"/studies/{STUDY}/thumbnail",
    ):
        a, b = plain.get(path), deflated.get(path)
        assert a.status_code == 200 and b.status_code == 200, (path, a.text, b.text)
        if "metadata" in path:
            assert a.json() != [] and _base(a, str(plain.base_url)) == _base(
                b, str(deflated.base_url)
            ), path
        else:  # (multipart boundaries are random: compare the parts)
            assert _parts(a) == _parts(b), path
    (item,) = deflated.get(f"{INSTANCE}/metadata").json()
    assert item["7FE00010"]["BulkDataURI"].endswith("/bulkdata/7FE00010")
    # the instance itself as stored (transfer-syntax=*): deflated, byte for byte
    got = deflated.get(INSTANCE, headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert got.status_code == 200
    assert uids.DEFLATED_EXPLICIT_VR_LE in got.headers["content-type"]
    data = got.content[got.content.index(b"DICM") :]
    assert data.endswith(_deflate(iter([dataset_bytes(_image())])))
    # by default (PS3.18 8.7.8.2): inflated, Explicit VR Little Endian, the same data set
    got = deflated.get(INSTANCE, headers={"Accept": "application/dicom"})
    assert got.headers["content-type"].endswith(f"={uids.EXPLICIT_VR_LE}")
    assert got.content.endswith(dataset_bytes(_image()))


def _parts(r: httpx.Response) -> bytes:
    """The body without its multipart boundaries (or the body)."""
    kind = r.headers["content-type"]
    if "boundary=" not in kind:
        return r.content
    boundary = kind.split("boundary=")[1].split(";")[0].strip('"').encode()
    return r.content.replace(boundary, b"B")


def _served_peak(client: httpx.Client, path: str) -> tuple[int, int]:
    """(status, tracemalloc's peak) of GET ``path``, the body read and dropped."""
    gc.collect()
    tracemalloc.start()
    try:
        with client.stream("GET", path) as r:
            size = sum(len(chunk) for chunk in r.iter_bytes())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size > 0
    return r.status_code, peak


def test_a_large_deflated_instance_is_served_in_bounded_memory(tmp_path: Path) -> None:
    ds, deflated = _large(64)
    assert len(deflated) < 2 * MiB
    archive = Archive(tmp_path / "archive", fsync=False)
    _ingest(archive, ds, uids.DEFLATED_EXPLICIT_VR_LE, deflated)
    with HttpThread(archive) as srv, httpx.Client(base_url=srv.url, timeout=120) as client:
        for path in (
            f"{INSTANCE}/metadata",
            f"{INSTANCE}/bulkdata/7FE00010",
            f"{INSTANCE}/frames/8",
            f"/browse/instance?uid={SOP}",
        ):
            status, peak = _served_peak(client, path)
            assert status == 200, path
            assert peak < PEAK, f"{path}: peak {peak / MiB:.1f} MiB"
        frame = client.get(f"{INSTANCE}/frames/8")
        assert bytes(range(256)) * 16 in frame.content
    archive.close()
    # no inflated copy left behind
    assert not [p for p in (tmp_path / "archive" / ".tmp").rglob("*") if p.is_file()]


def test_a_deflate_bomb_past_the_limit_is_413_with_a_reason(tmp_path: Path, caplog) -> None:
    ds, bomb = _large(64)
    archive = Archive(tmp_path / "archive", fsync=False)
    _ingest(archive, ds, uids.DEFLATED_EXPLICIT_VR_LE, bomb)  # stored under a larger limit
    store = StoreService(archive, limits=StoreLimits(max_inflated_bytes=16 * MiB))
    caplog.set_level(logging.INFO)
    with (
        HttpThread(archive, store=store) as srv,
        httpx.Client(base_url=srv.url, timeout=60) as client,
    ):
        for path in (
            f"{INSTANCE}/metadata",
            f"{INSTANCE}/bulkdata/7FE00010",
            f"{INSTANCE}/frames/1",
            f"{INSTANCE}/rendered",
        ):
            gc.collect()
            tracemalloc.start()
            try:
                r = client.get(path)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert r.status_code == 413, (path, r.text)
            assert f"inflates to over {16 * MiB} bytes, the limit" in r.text, path
            assert peak < PEAK, f"{path}: peak {peak / MiB:.1f} MiB"
        # of a series: left out (logged); the page of the instance says why
        assert client.get(f"/studies/{STUDY}/series/{SERIES}/metadata").json() == []
        page = client.get(f"/browse/instance?uid={SOP}")
        assert page.status_code == 200 and "inflates to over" in page.text
        assert client.get("/healthz").status_code == 200  # nothing crashed
    archive.close()
    text = caplog.text
    assert "refused (413)" in text and "inflates to over" in text
    assert f"metadata of {SOP} left out" in text
