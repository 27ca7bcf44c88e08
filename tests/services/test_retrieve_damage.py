"""A stored copy damaged since it was stored is never given on whole by C-MOVE or C-GET
(archive/checked.py, PS3.4 C.4.2/C.4.3): sent as stored, its last fragment is held
until its digest is checked, and the association aborted instead (DCMTK storescp,
movescu and getscu as the peers: none of them has the damaged instance); to be
converted, it is checked first and fails as a sub-operation, the others sent. The
server logs "archive damage" naming it."""

from __future__ import annotations

import subprocess
import threading
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
from dicomstore.services.destinations import parse_destination
from dicomstore.services.server import ServerConfig

STUDY = "1.2.77.1"
UIDS = [f"1.2.77.1.1.{n}" for n in (1, 2, 3)]
DAMAGED = UIDS[1]


def _study(root: Path, damaged: str) -> Path:
    """An archive at ``root`` of one study of three CT instances, ``damaged`` damaged
    since (a bit flipped in its Pixel Data)."""
    with Archive(root, fsync=False) as archive:
        for uid in UIDS:
            data = dataset(uid, study=STUDY, series="1.2.77.1.1", pixels=300_000)
            assert store(archive, data, sop_uid=uid).status == 0
    path = ArchiveReader(root).path(damaged)
    data = bytearray(path.read_bytes())
    data[-1000] ^= 0x10
    path.write_bytes(bytes(data))
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The study, its second instance damaged."""
    return _study(tmp_path / "archive", DAMAGED)


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


def _destination(requested: list[int], second: threading.Event, release: threading.Event):
    """A pynetdicom Storage SCP DEST that holds its second A-ASSOCIATE-AC until
    ``release`` (``second`` set when it is asked for)."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    ae = AE(ae_title="DEST")
    ae.supported_contexts = AllStoragePresentationContexts

    def on_requested(event) -> None:
        requested.append(1)
        if len(requested) >= 2:
            second.set()
            release.wait(60)

    handlers = [(evt.EVT_REQUESTED, on_requested), (evt.EVT_C_STORE, lambda event: 0)]
    return ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)


def _moving(tmp_path: Path, damaged: str, *, cancel: bool) -> tuple[list, int]:
    """A C-MOVE to DEST by pynetdicom of a study of three instances, ``damaged``'s file
    flipped: (its responses, the associations DEST was asked for); ``cancel``: a
    C-CANCEL as DEST is asked for a second association (which it holds meanwhile)."""
    from pynetdicom import AE

    root = _study(tmp_path / "moved", damaged)
    requested: list[int] = []
    second, release = threading.Event(), threading.Event()
    server = _destination(requested, second, release)
    dest = parse_destination(f"DEST=127.0.0.1:{server.server_address[1]}")
    responses: list = []
    try:
        with ServerThread(ServerConfig(port=0, move_destinations=(dest,)), Archive(root)) as srv:
            ae = AE(ae_title="MOVER")
            ae.add_requested_context(uids.STUDY_ROOT_QR_MOVE)
            ae.dimse_timeout = 20  # (a cancel not acted on: no answer, the test fails)
            assoc = ae.associate("127.0.0.1", srv.port, ae_title="DICOMSTORE")
            assert assoc.is_established

            def cancelling() -> None:
                if second.wait(30):
                    context = assoc._get_valid_context(uids.STUDY_ROOT_QR_MOVE, "", "scu")
                    assoc.send_c_cancel(1, context.context_id)

            if cancel:
                threading.Thread(target=cancelling, daemon=True).start()
            ident = identifier("STUDY", StudyInstanceUID=STUDY)
            for rsp, _ident in assoc.send_c_move(ident, "DEST", uids.STUDY_ROOT_QR_MOVE, msg_id=1):
                responses.append(rsp)
            assoc.release()
    finally:
        release.set()
        server.shutdown()
    return responses, len(requested)


def test_no_association_anew_when_the_damaged_file_is_the_last(tmp_path: Path) -> None:
    """review105 L1: the association was made anew after the last sub-operation too."""
    responses, asked = _moving(tmp_path, UIDS[2], cancel=False)
    assert asked == 1
    final = responses[-1]
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (2, 1)


def test_a_c_cancel_while_the_association_is_made_anew_is_acted_on(tmp_path: Path) -> None:
    """review105 M2: a C-CANCEL read while the destination held the new association's
    A-ASSOCIATE-AC waited for it (up to --acse-timeout), unlike the first start
    (review87 F7): it ends the C-MOVE at once, FE00."""
    responses, asked = _moving(tmp_path, UIDS[1], cancel=True)
    assert asked == 2
    final = responses[-1]
    assert final.Status == 0xFE00, final


def test_a_meta_naming_no_syntax_adopted_by_reindex_is_sent(tmp_path: Path, caplog) -> None:
    """review105 M1: a file whose meta names no transfer syntax (blank), taken in by
    `reindex` (its row's syntax blank too), passes check, commitment and WADO-RS; C-GET
    called it damage, taking the scan's guess of its syntax for what its meta names."""
    root = tmp_path / "archive"
    with Archive(root, fsync=False) as archive:
        for uid in UIDS[:2]:
            data = dataset(uid, study=STUDY, series="1.2.77.1.1")
            assert store(archive, data, sop_uid=uid).status == 0
    path = ArchiveReader(root).path(UIDS[1])
    explicit = b"1.2.840.10008.1.2.1\0"
    path.write_bytes(in_meta(path.read_bytes(), explicit, b" " * len(explicit)))
    for index in root.glob("index.sqlite*"):  # (the index lost: reindex takes the files in)
        index.unlink()
    with Archive(root, fsync=False) as archive:
        archive.reindex()
        assert archive.check() == []
    archive = Archive(root, fsync=False)
    with ServerThread(ServerConfig(port=0), archive) as srv:
        ident = identifier("STUDY", StudyInstanceUID=STUDY)
        storage = {CT: [uids.EXPLICIT_VR_LE, uids.IMPLICIT_VR_LE]}
        got = pynetdicom_get(srv.port, ident, STUDY_ROOT_GET, storage=storage)
    archive.close()
    assert sorted(got.received) == UIDS[:2]
    assert "archive damage" not in caplog.text


def test_a_copy_replaced_at_its_key_since_its_scan_goes_as_it_is_now(
    tmp_path: Path, monkeypatch
) -> None:
    """review105 I1: a sub-operation's scan, then two replaces filing a larger version
    at the same key, then its send: the scan's sizes cut the new data set (sent cut
    short, judged intact). The checked copy tells it is another version: scanned again,
    sent whole as it is now."""
    import asyncio

    from dicomstore.aio.client import associate
    from dicomstore.services import retrieve

    uid = UIDS[0]
    root = tmp_path / "archive"
    with Archive(root, fsync=False, on_duplicate="replace") as archive:
        assert (
            store(archive, dataset(uid, patient_name="First", pixels=3000), sop_uid=uid).status == 0
        )
        reader = ArchiveReader(root)
        row = reader.instance(uid)
        keys = ("sop_instance_uid", "sop_class_uid", "transfer_syntax_uid", "path", "study_uid")
        item = retrieve.Selected(
            *(row[k] for k in keys), reader, digest=row["digest"], file_size=row["file_size"]
        )
        scanned = retrieve.scan_selected(item)  # (the first version's)
        for name, pixels in (("Second", 4000), ("Third", 5000)):
            data = dataset(uid, patient_name=name, pixels=pixels)
            assert store(archive, data, sop_uid=uid).status == 0
    third = stored_dataset(reader.path(uid))
    assert reader.instance(uid)["path"] == row["path"]  # (the third at the first's key)
    scans = [(scanned, item)]
    real = retrieve._scan
    monkeypatch.setattr(retrieve, "_scan", lambda it: scans.pop() if scans else real(it))
    received = Archive(tmp_path / "received", fsync=False)

    async def send() -> object:
        contexts = [(CT, (uids.EXPLICIT_VR_LE,))]
        assoc = await associate("127.0.0.1", srv.port, called_ae="DICOMSTORE", contexts=contexts)
        try:
            return await retrieve.store_selected(assoc, item, service="test", peer="DICOMSTORE")
        finally:
            await assoc.release()

    with ServerThread(ServerConfig(port=0), received) as srv:
        rsp = asyncio.run(send())
    assert getattr(rsp, "status", None) == 0, rsp
    path = received.path_of(uid)
    assert path is not None and stored_dataset(path) == third
    received.close()
