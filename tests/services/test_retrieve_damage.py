"""A stored copy damaged since it was stored is never given on whole by C-MOVE or C-GET
(archive/checked.py, PS3.4 C.4.2/C.4.3): sent as stored, its last fragment is held
until its digest is checked, and the association aborted instead (DCMTK storescp,
movescu and getscu as the peers: none of them has the damaged instance); to be
converted, it is checked first and fails as a sub-operation, the others sent. The
server logs "archive damage" naming it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from tests.archive.archive_testlib import CT, dataset, in_meta, store, stored_dataset
from tests.conftest import (
    PEER_ENV,
    ServerThread,
    dcmtk,
)
from tests.services.query_testlib import identifier
from tests.services.retrieve_testlib import serving_to_storescp
from tests.services.test_get_scp import STUDY_ROOT_GET, pynetdicom_get

from dicomstore import uids
from dicomstore.archive import Archive
from dicomstore.archive.reader import ArchiveReader
from dicomstore.services.server import ServerConfig

STUDY = "1.2.77.1"
UIDS = [f"1.2.77.1.1.{n}" for n in (1, 2, 3)]
DAMAGED = UIDS[1]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An archive of one study of three CT instances, the second damaged since (a bit
    flipped in its Pixel Data)."""
    root = tmp_path / "archive"
    with Archive(root, fsync=False) as archive:
        for uid in UIDS:
            data = dataset(uid, study=STUDY, series="1.2.77.1.1", pixels=300_000)
            assert store(archive, data, sop_uid=uid).status == 0
    path = ArchiveReader(root).path(DAMAGED)
    data = bytearray(path.read_bytes())
    data[-1000] ^= 0x10
    path.write_bytes(bytes(data))
    return root


def _intact(root: Path) -> dict[str, bytes]:
    reader = ArchiveReader(root)
    return {uid: stored_dataset(reader.path(uid)) for uid in UIDS if uid != DAMAGED}


def _received(folder: Path) -> dict[str, bytes]:
    return {str(dcmread(p).SOPInstanceUID): stored_dataset(p) for p in folder.iterdir()}


@pytest.fixture
def served(root: Path, tmp_path: Path) -> Iterator[tuple[int, Path, Path]]:
    """`dicomstore serve` on ``root``, DCMTK storescp its move destination STORESCP:
    (its port, storescp's folder, the server's log)."""
    received, log = tmp_path / "received", tmp_path / "serve.log"
    with open(log, "wb") as out, serving_to_storescp(root, received, out) as port:
        yield port, received, log


def _dcmtk(tool: str, port: int, *args: str) -> str:
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={STUDY}"]
    done = subprocess.run(
        [dcmtk(tool), "-S", "-v", "-aec", "DICOMSTORE", *args, *keys, "127.0.0.1", str(port)],
        env=PEER_ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout + done.stderr


def test_movescu_to_storescp_never_gives_the_damaged_copy(root: Path, served) -> None:
    port, received, log = served
    said = _dcmtk("movescu", port, "-aem", "STORESCP")
    got = _received(received)
    assert got == _intact(root), said  # the others, byte-identical: not the damaged one
    text = log.read_text()
    assert "C-MOVE ended B000: 2 completed, 1 failed" in text  # (review104 F5: not 1, 2)
    assert f"archive damage: instance {DAMAGED}" in text
    assert "its data set differs from what was stored" in text


def test_getscu_never_gets_the_damaged_copy(root: Path, served, tmp_path: Path) -> None:
    port, _received_by_storescp, log = served
    out = tmp_path / "got"
    out.mkdir()
    said = _dcmtk("getscu", port, "-od", str(out))
    got = _received(out)
    assert DAMAGED not in got, said
    intact = _intact(root)
    assert got == {uid: intact[uid] for uid in got}
    assert UIDS[0] in got
    assert f"archive damage: instance {DAMAGED}" in log.read_text()


def test_a_damaged_copy_to_convert_fails_its_sub_operation_alone(root: Path) -> None:
    """The SCU takes Implicit VR Little Endian only: each instance is converted, the
    damaged one checked first: failed, listed; the others sent, the association on."""
    archive = Archive(root, fsync=False)
    with ServerThread(ServerConfig(port=0), archive) as srv:
        storage = {CT: [uids.IMPLICIT_VR_LE]}
        ident = identifier("STUDY", StudyInstanceUID=STUDY)
        got = pynetdicom_get(srv.port, ident, STUDY_ROOT_GET, storage=storage)
    archive.close()
    assert sorted(got.received) == [UIDS[0], UIDS[2]]
    assert got.final.Status == 0xB000
    assert got.counts() == (2, 1, 0, None)
    assert got.failed_uids() == [DAMAGED]


def test_a_file_meta_naming_another_syntax_fails_that_sub_operation(tmp_path: Path) -> None:
    """review104 F2: the digest does not cover the File Meta Information, whose transfer
    syntax picks the presentation context: one relabelled (JPEG Baseline as JPEG
    Extended, one bit: as JPEG 2000 lossless as lossy) is not sent, though the SCU
    takes both; the others are."""
    from pynetdicom import AE, build_role, evt

    baseline, extended = "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"
    root = tmp_path / "archive"
    with Archive(root, fsync=False) as archive:
        for uid in UIDS:
            data = dataset(uid, study=STUDY, series="1.2.77.1.1")
            assert store(archive, data, sop_uid=uid, ts=baseline).status == 0
    path = ArchiveReader(root).path(DAMAGED)
    path.write_bytes(in_meta(path.read_bytes(), baseline.encode(), extended.encode()))
    received: dict[str, str] = {}

    def on_store(event) -> int:
        received[str(event.request.AffectedSOPInstanceUID)] = str(event.context.transfer_syntax)
        return 0

    ae = AE(ae_title="GETTER")
    ae.add_requested_context(STUDY_ROOT_GET)
    for syntax in (baseline, extended):  # (two contexts: each syntax accepted)
        ae.add_requested_context(CT, syntax)
    archive = Archive(root, fsync=False)
    with ServerThread(ServerConfig(port=0), archive) as srv:
        assoc = ae.associate(
            "127.0.0.1",
            srv.port,
            ae_title="DICOMSTORE",
            ext_neg=[build_role(CT, scp_role=True)],
            evt_handlers=[(evt.EVT_C_STORE, on_store)],
        )
        assert assoc.is_established
        ident = identifier("STUDY", StudyInstanceUID=STUDY)
        final = [rsp for rsp, _ in assoc.send_c_get(ident, STUDY_ROOT_GET)][-1]
        assoc.release()
    archive.close()
    assert received == {UIDS[0]: baseline, UIDS[2]: baseline}
    assert final.NumberOfFailedSuboperations == 1
