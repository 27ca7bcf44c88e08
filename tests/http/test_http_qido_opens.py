"""QIDO-RS attributes the index does not hold, read from one stored instance's header
(``sample_path``), open that file once: the transfer syntax from the file meta read
in that opening (it was opened twice, once for its file meta, then for its header)."""

from __future__ import annotations

import zlib

import httpx
import pytest
from http_testlib import HttpThread, dataset_bytes, make_dataset, store
from tests.archive.archive_testlib import count_opens

from dicomstore import uids
from dicomstore.archive import Archive


def _store_deflated(archive: Archive, ds) -> None:  # type: ignore[no-untyped-def]
    z = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = z.compress(dataset_bytes(ds)) + z.flush()
    ingest = archive.begin(
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid=ds.SOPInstanceUID,
        transfer_syntax_uid=uids.DEFLATED_EXPLICIT_VR_LE,
        calling_ae="MODALITY",
        called_ae="DICOMSTORE",
    )
    ingest.write(data)
    assert not ingest.commit().is_failure


@pytest.mark.parametrize("deflate", [False, True], ids=["explicit", "deflated"])
def test_a_study_attribute_from_a_header_opens_the_file_once(
    tmp_path, monkeypatch, deflate
) -> None:
    archive = Archive(tmp_path / "archive", fsync=False)
    ds = make_dataset("1.2.9.8.1", study="1.2.9.8", series="1.2.9.8.1", patient_id="PID8")
    ds.PatientAge = "054Y"
    (_store_deflated if deflate else store)(archive, ds)
    opens = count_opens(monkeypatch)
    with HttpThread(archive) as srv, httpx.Client(base_url=srv.url) as http:
        r = http.get("/studies", params={"PatientID": "PID8", "includefield": "PatientAge"})
    archive.close()
    assert r.status_code == 200, r.text
    (study,) = r.json()
    assert study["00101010"] == {"vr": "AS", "Value": ["054Y"]}
    assert len(opens) == 1, opens
