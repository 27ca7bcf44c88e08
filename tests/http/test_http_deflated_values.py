"""A stored Deflated Explicit VR Little Endian instance (PS3.5 A.5) with a large value
before its Pixel Data (review53 #3): every reader (bulk data, frames, rendered,
thumbnail, metadata, the browse page) leaves that value unread in the inflated copy, and
bulk data streams it from there, in memory far below its size."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from http_testlib import HttpThread, dataset_bytes, make_dataset
from test_http_deflated import PEAK, SERIES, SOP, STUDY, _ingest, _served_peak

from dicomstore import uids
from dicomstore.archive import Archive

MiB = 1 << 20
INSTANCE = f"/studies/{STUDY}/series/{SERIES}/instances/{SOP}"
#: the private value's size: twice :data:`PEAK`, so that one copy of it fails the test
VALUE = 2 * PEAK
BLOCK = bytes(range(256)) * 4096  # 1 MiB


def _deflated_with_a_large_value() -> bytes:
    """The data set: (0009,0010) private creator, (0009,1010) OB of :data:`VALUE` bytes,
    the rest, 16-bit pixels; deflated chunk by chunk (the value never whole here)."""
    ds = make_dataset(SOP, study=STUDY, series=SERIES, frames=2, rows=16, columns=12)
    low, high = ds[:0x00090000], ds[0x00090000:]
    creator = b"\x09\x00\x10\x00LO\x08\x00DSTORE53"
    value_header = b"\x09\x00\x10\x10OB\x00\x00" + VALUE.to_bytes(4, "little")
    z = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunks = [dataset_bytes(low), creator, value_header]
    chunks += [BLOCK] * (VALUE // len(BLOCK)) + [dataset_bytes(high)]
    return b"".join(z.compress(c) for c in chunks) + z.flush()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    root: Path = tmp_path_factory.mktemp("deflated_values") / "archive"
    archive = Archive(root, fsync=False)
    ds = make_dataset(SOP, study=STUDY, series=SERIES, frames=2, rows=16, columns=12)
    _ingest(archive, ds, uids.DEFLATED_EXPLICIT_VR_LE, _deflated_with_a_large_value())
    with HttpThread(archive) as srv, httpx.Client(base_url=srv.url, timeout=120) as c:
        yield c
    archive.close()


@pytest.mark.parametrize(
    "path",
    [
        f"{INSTANCE}/bulkdata/00091010",
        f"{INSTANCE}/frames/1",
        f"{INSTANCE}/rendered",
        f"/studies/{STUDY}/thumbnail",
        f"{INSTANCE}/metadata",
        f"/browse/instance?uid={SOP}",
    ],
)
def test_a_large_value_of_a_deflated_instance_is_not_held(client, path: str) -> None:
    status, peak = _served_peak(client, path)
    assert status == 200, path
    assert peak < PEAK, f"{path}: peak {peak / MiB:.1f} MiB"


def test_its_bulk_data_is_the_value_streamed_from_the_inflated_copy(client) -> None:
    with client.stream("GET", f"{INSTANCE}/bulkdata/00091010") as r:
        assert r.status_code == 200
        body = b"".join(r.iter_bytes())
    start = body.index(b"\r\n\r\n") + 4
    assert body[start : start + len(BLOCK)] == BLOCK
    assert body[start + VALUE - len(BLOCK) : start + VALUE] == BLOCK
    assert body[start + VALUE :].startswith(b"\r\n--")


def test_the_browse_page_shows_it_by_its_length(client) -> None:
    page = client.get(f"/browse/instance?uid={SOP}")
    assert page.status_code == 200
    assert f"({VALUE} bytes, not shown)" in page.text
    assert "Doe^Jane" in page.text
