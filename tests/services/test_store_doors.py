"""Every door gets every guarantee (services/storage.py): C-STORE and STOW-RS on one
server store through the one store service, so each honours --max-instance-size,
--min-free, --store-aet and the policy file's store permission, writes an audit
line and fires on_stored, the same way. Each case runs through both doors."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from tests.conftest import ServerThread

sys.path.insert(0, str(Path(__file__).parent.parent / "http"))
from http_testlib import HttpThread, make_dataset, multipart_body, part10  # noqa: E402

from dicomstore import uids  # noqa: E402
from dicomstore.archive import Archive  # noqa: E402
from dicomstore.audit import AuditLog  # noqa: E402
from dicomstore.policy import ECHO, STORE, Peer, Policy  # noqa: E402
from dicomstore.services.scu_send import send  # noqa: E402
from dicomstore.services.server import ServerConfig  # noqa: E402
from dicomstore.services.storage import StoredEvent  # noqa: E402

#: On both index engines (issue 17).
pytestmark = pytest.mark.usefixtures("index_engine")

STUDY = "1.2.826.0.1.3680043.10.11"
DOORS = ("C-STORE", "STOW-RS")


@dataclass
class Site:
    """One server: its DICOM port, its DICOMweb URL, the archive, what it heard."""

    dicom: ServerThread
    web: str
    archive: Archive
    audit_path: Path
    audit_log: AuditLog | None = None
    events: list[StoredEvent] = field(default_factory=list)
    announced: threading.Event = field(default_factory=threading.Event)

    def audit(self) -> list[dict]:
        assert self.audit_log is not None
        self.audit_log.flush()
        lines = self.audit_path.read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["event"] == "instance"]


@pytest.fixture
def site(tmp_path: Path, request) -> Iterator[Site]:
    options = dict(getattr(request, "param", {}))
    gatekeeper = options.pop("gatekeeper", None)
    archive = Archive(tmp_path / "archive", fsync=False)
    audit = AuditLog(tmp_path / "audit.jsonl")
    events: list[StoredEvent] = []
    announced = threading.Event()

    async def on_stored(event: StoredEvent) -> None:  # (on the loop of the door's server)
        events.append(event)
        announced.set()

    config = ServerConfig(port=0, ae_title="DICOMSTORE", **options)
    kwargs = {"on_stored": on_stored, "gatekeeper": gatekeeper, "audit": audit}
    with (
        ServerThread(config, archive, **kwargs) as dicom,
        HttpThread(archive, store=dicom.server.store) as web,
    ):
        yield Site(dicom, web.url, archive, tmp_path / "audit.jsonl", audit, events, announced)
    audit.close()
    archive.close()


def store(site: Site, door: str, sop: str, *, pixels: int = 0) -> int:
    """Store one instance through ``door``; the status the door answered."""
    ds = make_dataset(sop, study=STUDY, series=STUDY + ".1", frames=1 if pixels else 0,
                      rows=pixels or 4, columns=pixels or 3)  # fmt: skip
    if door == "C-STORE":
        path = site.archive.root.parent / f"{sop}.dcm"
        path.write_bytes(part10(ds))
        results = asyncio.run(
            send("127.0.0.1", site.dicom.port, [path], called_ae="DICOMSTORE", retries=0)
        )
        (result,) = results
        return result.status
    body, content_type = multipart_body([part10(ds)])
    r = httpx.post(f"{site.web}/studies", content=body, headers={"content-type": content_type})
    reply = r.json()
    if "00081199" in reply:
        return reply["00081199"]["Value"][0].get("00081196", {"Value": [0]})["Value"][0]
    return reply["00081198"]["Value"][0]["00081197"]["Value"][0]


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize("site", [{"max_instance_bytes": 2000}], indirect=True)
def test_max_instance_size(site: Site, door: str) -> None:
    assert store(site, door, "1.2.11.1", pixels=64) == 0xA700  # 8 KiB of pixels
    assert store(site, door, "1.2.11.2") == 0x0000
    assert [r["sop_instance_uid"] for r in site.archive.instances()] == ["1.2.11.2"]
    assert [(r["status"], r["service"]) for r in site.audit()] == [("A700", door), ("0000", door)]


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize("site", [{"min_free_bytes": 1 << 62}], indirect=True)
def test_min_free(site: Site, door: str) -> None:
    assert store(site, door, "1.2.11.3") == 0xA700
    assert site.archive.instances() == []
    assert "--min-free " in site.audit()[0]["error_comment"]


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize("site", [{"store_aets": frozenset({"NOBODY"})}], indirect=True)
def test_store_aet(site: Site, door: str) -> None:
    assert store(site, door, "1.2.11.4") == 0x0124
    assert site.archive.instances() == [] and site.events == []
    assert site.audit()[0]["status"] == "0124"


ECHO_ONLY = Policy(
    peers=[Peer("DICOMSTORE", may=frozenset({ECHO})), Peer("STOW-RS", may=frozenset({ECHO}))],
)
STORE_OK = Policy(
    peers=[Peer("DICOMSTORE", may=frozenset({STORE})), Peer("STOW-RS", may=frozenset({STORE}))],
)


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize("site", [{"gatekeeper": ECHO_ONLY}], indirect=True)
def test_policy_may_not_store(site: Site, door: str) -> None:
    assert store(site, door, "1.2.11.5") == 0x0124
    assert site.archive.instances() == []


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize("site", [{"gatekeeper": STORE_OK}], indirect=True)
def test_policy_may_store_audit_and_event(site: Site, door: str) -> None:
    assert store(site, door, "1.2.11.6") == 0x0000
    (record,) = site.audit()
    assert record["service"] == door and record["status"] == "0000"
    assert record["calling_ae"] == ("DICOMSTORE" if door == "C-STORE" else "STOW-RS")
    assert record["study_instance_uid"] == STUDY and record["digest"]
    assert record["address"] == "127.0.0.1"
    assert site.announced.wait(10)
    assert [(e.sop_instance_uid, e.service) for e in site.events] == [("1.2.11.6", door)]


def test_stow_unknown_caller_is_refused_by_a_closed_policy(tmp_path: Path) -> None:
    """``allow_unknown = false`` and no peer STOW-RS: the HTTP caller may not store."""
    closed = Policy(peers=[Peer("MODALITY")])
    archive = Archive(tmp_path / "archive", fsync=False)
    with (
        ServerThread(ServerConfig(port=0), archive, gatekeeper=closed) as dicom,
        HttpThread(archive, store=dicom.server.store) as web,
    ):
        site = Site(dicom, web.url, archive, tmp_path / "none")
        assert store(site, "STOW-RS", "1.2.11.7") == 0x0124
    assert archive.instances() == []
    archive.close()


@pytest.mark.parametrize("site", [{"transfer_syntaxes": (uids.IMPLICIT_VR_LE,)}], indirect=True)
def test_stow_stores_only_the_transfer_syntaxes_c_store_accepts(site: Site) -> None:
    """review54 F4: with the server's syntaxes narrowed (--transfer-syntax), STOW-RS
    stored any syntax pydicom knows: C122 now (PS3.18 I.2-2), judged by the store
    service against the list the C-STORE negotiation uses, logged and audited."""
    assert store(site, "STOW-RS", "1.2.11.8") == 0xC122  # (an Explicit VR LE part)
    assert site.archive.instances() == []
    assert [r["status"] for r in site.audit()] == ["C122"]


def test_a_stow_door_built_over_a_served_archive_stores_through_the_server(
    tmp_path: Path,
) -> None:
    """review54 F5: `build_app(archive)` beside a `Server` over that archive (no
    store=) made a bare store service: STOW-RS stored past the server's limits,
    with no event, audit or metrics. A door over a served archive uses its service."""
    archive = Archive(tmp_path / "archive", fsync=False)
    config = ServerConfig(port=0, max_instance_bytes=2000)
    with ServerThread(config, archive) as dicom, HttpThread(archive) as web:
        site = Site(dicom, web.url, archive, tmp_path / "none")
        assert store(site, "STOW-RS", "1.2.11.9", pixels=64) == 0xA700
        assert store(site, "STOW-RS", "1.2.11.10") == 0x0000
    assert [r["sop_instance_uid"] for r in archive.instances()] == ["1.2.11.10"]
    archive.close()


def test_a_part_stow_refuses_itself_is_audited_with_its_data_set_bytes(site: Site) -> None:
    """review118 F2: a part STOW-RS refused itself (another study than the URL's) was
    audited with every byte of the part (preamble, File Meta), a stored one with its
    data set's, as C-STORE counts: one record, one measure, whichever door."""
    ds = make_dataset("1.2.11.9", study=STUDY, series=STUDY + ".1")
    body, content_type = multipart_body([part10(ds)])
    headers = {"content-type": content_type}
    refused = httpx.post(f"{site.web}/studies/1.2.3.999", content=body, headers=headers)
    assert refused.status_code == 409
    assert f"instance of study {STUDY}, not of 1.2.3.999" in refused.headers["warning"]
    assert store(site, "C-STORE", "1.2.11.9") == 0x0000
    assert httpx.post(f"{site.web}/studies", content=body, headers=headers).status_code == 200
    records = site.audit()
    assert [r["status"] for r in records] == ["A900", "0000", "0000"]
    assert len({r["bytes"] for r in records}) == 1 and records[0]["bytes"] > 0, records
