"""End to end with real peers: DCMTK storescu stores by C-STORE, the PyPI client
dicomweb-client finds (QIDO-RS), fetches (WADO-RS) and stores (STOW-RS), and what
comes back is byte-identical to what the archive holds. The SCP and the HTTP server
share one loop and one Archive, as ``dicomstore serve --http-port`` runs them."""

from __future__ import annotations

import asyncio
import io
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from http_testlib import split_multipart
from pydicom.data import get_testdata_file
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from tests.conftest import PEER_ENV, ServerThread, dcmtk

from dicomstore.archive import Archive
from dicomstore.archive.dicomfile import dataset_offset
from dicomstore.http import HttpServer, build_app
from dicomstore.query import StoredEvents
from dicomstore.services.server import ServerConfig

FILES = ("CT_small.dcm", "MR_small.dcm")


@pytest.fixture
def doors(tmp_path: Path) -> Iterator[tuple[ServerThread, str, Archive, StoredEvents]]:
    archive = Archive(tmp_path / "archive", fsync=False)
    events = StoredEvents()
    with ServerThread(ServerConfig(port=0), archive, on_stored=events.publish) as scp:
        app = build_app(archive)
        http = HttpServer(app, "127.0.0.1", 0)
        scp.call(http.start())  # on the SCP's own loop
        url = f"http://127.0.0.1:{http.port}"
        # dicomweb-client sends "Host: 127.0.0.1" without the port for some requests:
        # the public URL makes Retrieve URLs and BulkDataURIs right all the same
        app.state.base_url = url + "/"
        try:
            yield scp, url, archive, events
        finally:
            scp.call(http.close())
    archive.close()


def data_set(raw: bytes) -> bytes:
    """The data set of PS3.10 bytes (after the File Meta Information)."""
    return raw[dataset_offset(io.BytesIO(raw)) :]


def test_cstore_then_dicomweb_find_fetch_store(doors, tmp_path: Path) -> None:
    scp, url, archive, events = doors
    folder = tmp_path / "send"
    folder.mkdir()
    sent = {}
    for name in FILES:
        shutil.copyfile(get_testdata_file(name), folder / name)
        sent[name] = pydicom.dcmread(folder / name)
    subscription = scp.call(_subscribe(events))

    # 1. C-STORE with DCMTK
    result = subprocess.run(
        [
            dcmtk("storescu"),
            "-aec",
            "DICOMSTORE",
            "127.0.0.1",
            str(scp.port),
            *map(str, sorted(folder.iterdir())),
        ],
        env=PEER_ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    got = {scp.call(asyncio.wait_for(subscription.get(), 30)).sop_instance_uid for _ in FILES}
    assert got == {str(ds.SOPInstanceUID) for ds in sent.values()}  # events, after durability

    # 2. QIDO-RS with dicomweb-client
    client = DICOMwebClient(url=url)
    ct = sent["CT_small.dcm"]
    studies = client.search_for_studies(search_filters={"PatientID": ct.PatientID})
    assert [s["0020000D"]["Value"][0] for s in studies] == [ct.StudyInstanceUID]
    assert studies[0]["00201208"]["Value"] == [1]
    (found,) = client.search_for_instances(
        study_instance_uid=ct.StudyInstanceUID, search_filters={"Modality": "CT"}
    )
    sop = found["00080018"]["Value"][0]
    assert sop == ct.SOPInstanceUID

    # 3. WADO-RS with dicomweb-client: the same data set; raw: the stored bytes exactly
    fetched = client.retrieve_instance(ct.StudyInstanceUID, ct.SeriesInstanceUID, sop)
    assert fetched.PixelData == ct.PixelData
    # DCMTK drops the Data Set Trailing Padding (FFFC,FFFC) as it sends; all else is equal
    kept = (0x0002, 0xFFFC)
    assert [e for e in fetched if e.tag.group not in kept] == [
        e for e in ct if e.tag.group not in kept
    ]
    frames = client.retrieve_instance_frames(ct.StudyInstanceUID, ct.SeriesInstanceUID, sop, [1])
    assert frames == [ct.PixelData]
    raw = _wado_raw(url, ct)
    assert raw == archive.path_of(sop).read_bytes()
    metadata = client.retrieve_instance_metadata(ct.StudyInstanceUID, ct.SeriesInstanceUID, sop)
    assert metadata["7FE00010"]["BulkDataURI"].startswith(url)
    assert client.retrieve_bulkdata(metadata["7FE00010"]["BulkDataURI"]) == [ct.PixelData]

    # 4. STOW-RS with dicomweb-client, then fetch it back byte-identical
    new = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    new.SOPInstanceUID = new.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.10.8.1"
    response = client.store_instances([new])
    (ref,) = response.ReferencedSOPSequence
    assert ref.ReferencedSOPInstanceUID == new.SOPInstanceUID
    assert "FailedSOPSequence" not in response
    wire = DicomBytesIO()
    wire.is_little_endian, wire.is_implicit_VR = True, False
    write_dataset(wire, new)  # what dicomweb-client sent as the data set
    raw = _wado_raw(url, new)
    assert data_set(raw) == wire.getvalue()
    assert raw == archive.path_of(new.SOPInstanceUID).read_bytes()
    back = client.retrieve_instance(new.StudyInstanceUID, new.SeriesInstanceUID, new.SOPInstanceUID)
    assert back.SOPInstanceUID == new.SOPInstanceUID and back.PixelData == new.PixelData
    assert archive.check() == []


async def _subscribe(events: StoredEvents):
    return events.subscribe()


def _wado_raw(url: str, ds: pydicom.Dataset) -> bytes:
    series = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    path = f"{series}/instances/{ds.SOPInstanceUID}"
    r = httpx.get(url + path)
    assert r.status_code == 200
    (part,) = split_multipart(r.content, r.headers["content-type"])
    return part[1]
