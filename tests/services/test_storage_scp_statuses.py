"""Each C-STORE status of PS3.4 B.2.3 and PS3.7 C, provoked for real against
our server and archive (issue: Storage SCP, point 4)."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from tests.conftest import PEER_ENV, ServerThread, dcmtk

from dicomstore import uids
from dicomstore.aio.client import ClientAssociation, associate
from dicomstore.archive import Archive
from dicomstore.dimse import NActionRQ, NActionRSP
from dicomstore.dimse import commands as C
from dicomstore.dimse import status as st
from dicomstore.error_comment import error_comment
from dicomstore.services.server import Server, ServerConfig

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"


def make_dataset(sop_class: str = CT, sop_instance: str | None = None) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance or generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "P1"
    ds.PatientName = "Test^Patient"
    ds.Modality = "CT"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def encode(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


async def raw(
    assoc: ClientAssociation,
    context_id: int,
    msg_id: int,
    command: bytes,
    dataset: bytes | None = None,
):
    """Send any command set (and data set) and wait for its response."""
    future = asyncio.get_running_loop().create_future()
    assoc._waiting[msg_id] = future
    assoc.t.queue_message(context_id, command, dataset)
    await assoc.t.drain()
    return await asyncio.wait_for(future, 30)


def run(root: Path, scenario, *, store_aets=None, archive_kwargs=None):
    async def main():
        archive = Archive(root, fsync=False, **(archive_kwargs or {}))
        server = Server(ServerConfig(port=0, store_aets=store_aets), archive)
        await server.start()
        try:
            assoc = await associate(
                "127.0.0.1",
                server.port,
                calling_ae="SENDER",
                contexts=[
                    (CT, [uids.EXPLICIT_VR_LE]),
                    (MR, [uids.EXPLICIT_VR_LE]),
                    (uids.VERIFICATION, [uids.IMPLICIT_VR_LE]),
                ],
            )
            try:
                return await scenario(assoc, archive)
            finally:
                await assoc.release()
        finally:
            await server.close(grace=2)
            archive.close()

    return asyncio.run(main())


async def store(
    assoc: ClientAssociation,
    ds: Dataset,
    *,
    sop_class=None,
    sop_instance=None,
    data: bytes | None = None,
):
    ctx = assoc.context_for(sop_class or ds.SOPClassUID)
    return await assoc.store_stream(
        ctx,
        sop_class or ds.SOPClassUID,
        sop_instance or ds.SOPInstanceUID,
        [data if data is not None else encode(ds)],
    )


def test_success_0000_and_the_file_is_there(tmp_path) -> None:
    ds = make_dataset()

    async def scenario(assoc, archive):
        rsp = await store(assoc, ds)
        return rsp, archive.path_of(ds.SOPInstanceUID)

    rsp, path = run(tmp_path, scenario)
    assert rsp.status == 0x0000
    assert rsp.affected_sop_instance_uid == ds.SOPInstanceUID
    assert pydicom.dcmread(path).SOPInstanceUID == ds.SOPInstanceUID


def test_a900_instance_uid_differs_from_the_command(tmp_path) -> None:
    ds = make_dataset()

    async def scenario(assoc, archive):
        rsp = await store(assoc, ds, sop_instance=generate_uid())
        return rsp, archive.instances()

    rsp, rows = run(tmp_path, scenario)
    assert rsp.status == 0xA900
    assert rsp.error_comment
    assert rsp.offending_element == (0x00080018,)
    assert rows == []


def test_a900_class_uid_differs_from_the_command(tmp_path) -> None:
    ds = make_dataset(sop_class=MR)

    async def scenario(assoc, archive):
        return await store(assoc, ds, sop_class=CT)

    rsp = run(tmp_path, scenario)
    assert rsp.status == 0xA900
    assert rsp.offending_element == (0x00080016,)


def test_c000_garbage_cannot_be_understood(tmp_path) -> None:
    ds = make_dataset()

    async def scenario(assoc, archive):
        rsp = await store(assoc, ds, data=b"\x08\x00\x16\x00UI\xff\xffnot a data set at all")
        return rsp, archive.instances()

    rsp, rows = run(tmp_path, scenario)
    assert (rsp.status & 0xF000) == 0xC000
    assert rsp.error_comment
    assert rows == []
    assert not [p for p in tmp_path.rglob("*.dcm")]


def test_c000_another_patient_after_the_pixel_data(tmp_path) -> None:
    """review76 F1 through C-STORE: an element after the Pixel Data repeating the
    Patient ID (which pydicom would read over the first) is refused, and named."""
    ds = make_dataset()
    ds.BitsAllocated = 8
    ds.PixelData = bytes(64)
    data = encode(ds) + b"\x10\x00\x20\x00LO\x06\x00VICTIM"

    async def scenario(assoc, archive):
        rsp = await store(assoc, ds, data=data)
        return rsp, archive.instances()

    rsp, rows = run(tmp_path, scenario)
    assert rsp.status == 0xC000 and rows == []
    assert rsp.offending_element == (0x00100020,)
    assert rsp.error_comment.startswith("(0010,0020) PatientID out of order")


def test_a700_disk_full(tmp_path, monkeypatch) -> None:
    ds = make_dataset()
    real_write, real_writev = os.write, os.writev

    def full(fd, data):
        if len(data) > 100:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    def full_v(fd, parts):  # (the first fragment goes out with the file's header)
        raise OSError(errno.ENOSPC, "No space left on device")

    async def scenario(assoc, archive):
        monkeypatch.setattr(os, "write", full)
        monkeypatch.setattr(os, "writev", full_v)
        try:
            failed = await store(assoc, ds)
        finally:
            monkeypatch.setattr(os, "write", real_write)
            monkeypatch.setattr(os, "writev", real_writev)
        again = await store(assoc, ds)  # storing resumes once there is space
        return failed, again, archive.instances()

    failed, again, rows = run(tmp_path, scenario)
    assert (failed.status & 0xFF00) == 0xA700
    assert "space" in failed.error_comment.lower()
    assert again.status == 0
    assert len(rows) == 1


def test_0124_calling_ae_not_allowed_to_store(tmp_path) -> None:
    async def scenario(assoc, archive):
        rsp = await store(assoc, make_dataset())
        echo = await assoc.echo()
        return rsp, echo, archive.instances()

    rsp, echo, rows = run(tmp_path, scenario, store_aets=frozenset({"OTHER"}))
    assert rsp.status == 0x0124
    assert "SENDER" in rsp.error_comment
    assert echo.status == 0
    assert rows == []


def test_0122_sop_class_not_on_its_context(tmp_path) -> None:
    ds = make_dataset(sop_class=MR)

    async def scenario(assoc, archive):
        ct_context = assoc.context_for(CT)
        rq = C.encode_command(
            {
                C.AFFECTED_SOP_CLASS_UID: MR,
                C.COMMAND_FIELD: 0x0001,
                C.MESSAGE_ID: 7,
                C.PRIORITY: 0,
                C.COMMAND_DATA_SET_TYPE: 0x0000,
                C.AFFECTED_SOP_INSTANCE_UID: ds.SOPInstanceUID,
            }
        )
        return await raw(assoc, ct_context.id, 7, rq, encode(ds))

    rsp = run(tmp_path, scenario)
    assert rsp.status == 0x0122
    assert rsp.error_comment


def test_0211_unrecognized_operation(tmp_path) -> None:
    async def scenario(assoc, archive):
        ctx = assoc.context_for(uids.VERIFICATION)
        rq = C.encode_command(
            {
                C.AFFECTED_SOP_CLASS_UID: uids.VERIFICATION,
                C.COMMAND_FIELD: 0x0100,  # N-EVENT-REPORT
                C.MESSAGE_ID: 9,
                C.COMMAND_DATA_SET_TYPE: 0x0101,
            }
        )
        rsp = await raw(assoc, ctx.id, 9, rq)
        return rsp, await assoc.echo()

    rsp, echo = run(tmp_path, scenario)
    assert rsp.command_field == 0x8100
    assert rsp.status == 0x0211  # not served, though malformed too (no Affected UIDs)
    assert rsp.error_comment == "N-EVENT-REPORT is not supported here"
    assert echo.status == 0


def test_a_malformed_n_action_is_0212_now_that_it_is_served(tmp_path) -> None:
    async def scenario(assoc, archive):
        ctx = assoc.context_for(uids.VERIFICATION)
        rq = C.encode_command(
            {
                C.COMMAND_FIELD: 0x0130,  # N-ACTION without Requested UIDs
                C.MESSAGE_ID: 9,
                C.COMMAND_DATA_SET_TYPE: 0x0101,
            }
        )
        rsp = await raw(assoc, ctx.id, 9, rq)
        return rsp, await assoc.echo()

    rsp, echo = run(tmp_path, scenario)
    assert (rsp.command_field, rsp.status) == (0x8130, 0x0212)
    assert rsp.error_comment and echo.status == 0


def test_a_well_formed_n_action_on_a_verification_context_is_0122(tmp_path) -> None:
    """Storage Commitment (PS3.4 J.3.2) is served on its own context only: an
    N-ACTION-RQ on another is answered 0122 once its data set is read, and the
    association goes on."""

    async def scenario(assoc, archive):
        ctx = assoc.context_for(uids.VERIFICATION)
        rq = NActionRQ(12, "1.2.840.10008.1.20.1", "1.2.840.10008.1.20.1.1", 1)
        info = Dataset()
        info.TransactionUID = generate_uid()
        rsp = await raw(assoc, ctx.id, 12, rq.encode(), encode(info))
        return rsp, await assoc.echo()

    rsp, echo = run(tmp_path, scenario)
    assert isinstance(rsp, NActionRSP) and rsp.message_id_being_responded_to == 12
    assert (rsp.status, rsp.action_type_id) == (0x0122, None)
    assert "Verification" in rsp.error_comment
    assert echo.status == 0


def test_0212_mistyped_argument(tmp_path, caplog) -> None:
    """Answered by the server itself, and recorded by the store service as any refused
    store (review54 F6: no dicomstore.storage line, audit record or metric)."""
    caplog.set_level(logging.WARNING, logger="dicomstore.storage")
    ds = make_dataset()

    async def scenario(assoc, archive):
        ctx = assoc.context_for(CT)
        rq = C.encode_command(
            {  # no Affected SOP Instance UID
                C.AFFECTED_SOP_CLASS_UID: CT,
                C.COMMAND_FIELD: 0x0001,
                C.MESSAGE_ID: 11,
                C.PRIORITY: 0,
                C.COMMAND_DATA_SET_TYPE: 0x0000,
            }
        )
        rsp = await raw(assoc, ctx.id, 11, rq, encode(ds))
        return rsp, archive.instances(), await store(assoc, ds)

    rsp, rows, after = run(tmp_path, scenario)
    assert rsp.status == 0x0212
    assert rsp.offending_element == (0x00001000,)
    assert rows == []
    assert after.status == 0
    (line,) = [r.getMessage() for r in caplog.records if r.name == "dicomstore.storage"]
    assert "status 0212" in line and "(0000,1000) is missing" in line, line


@pytest.mark.parametrize("policy,status", [("keep", None), ("replace", 0), ("reject", None)])
def test_duplicates_follow_the_policy(tmp_path, policy, status) -> None:
    ds = make_dataset()

    async def scenario(assoc, archive):
        first = await store(assoc, ds)
        ds.PatientName = "Changed^Name"
        second = await store(assoc, ds)
        return first, second, archive.instances()

    first, second, rows = run(tmp_path, scenario, archive_kwargs={"on_duplicate": policy})
    assert first.status == 0
    assert len(rows) == 1
    if policy == "replace":
        assert second.status == 0
        assert rows[0]["patient_name"] == "Changed^Name"
    elif policy == "keep":
        assert st.category(second.status) == "warning"  # what is kept is not what was sent
        assert second.error_comment
        assert rows[0]["patient_name"] == "Test^Patient"
    else:
        assert st.is_failure(second.status)
        assert second.error_comment


def test_b007_class_mismatch_tolerated_by_policy(tmp_path) -> None:
    ds = make_dataset(sop_class=MR)

    async def scenario(assoc, archive):
        rsp = await store(assoc, ds, sop_class=CT)
        return rsp, archive.instances()

    rsp, rows = run(tmp_path, scenario, archive_kwargs={"on_class_mismatch": "tolerate"})
    assert rsp.status == 0xB007
    assert "stored as sent" in rsp.error_comment
    assert rsp.offending_element == (0x00080016,)
    assert [r["sop_instance_uid"] for r in rows] == [ds.SOPInstanceUID]


#: Data Set Trailing Padding (FFFC,FFFC), OB, 16 bytes of value (Explicit VR LE).
TRAILING_PADDING = b"\xfc\xff\xfc\xffOB\0\0" + (16).to_bytes(4, "little") + bytes(16)


def _stored_data_set(path: Path) -> bytes:
    from dicomstore.archive.dicomfile import dataset_offset

    with open(path, "rb") as fp:
        fp.seek(dataset_offset(fp))
        return fp.read()


def test_b006_trailing_padding_discarded_by_policy(tmp_path) -> None:
    ds = make_dataset()
    sent = encode(ds) + TRAILING_PADDING

    async def scenario(assoc, archive):
        rsp = await store(assoc, ds, data=sent)
        path = archive.path_of(ds.SOPInstanceUID)
        return rsp, path, archive.get_instance(ds.SOPInstanceUID), archive.check()

    rsp, path, row, problems = run(
        tmp_path, scenario, archive_kwargs={"trailing_padding": "discard"}
    )
    assert rsp.status == st.ELEMENTS_DISCARDED == 0xB006
    assert rsp.error_comment == "Data Set Trailing Padding (FFFC,FFFC), 28 bytes, discarded"
    assert rsp.offending_element == (0xFFFCFFFC,)
    assert _stored_data_set(path) == encode(ds)  # what was sent, minus the padding
    assert row["file_size"] == path.stat().st_size
    assert problems == []  # the digest describes the stored bytes


def test_trailing_padding_kept_by_default(tmp_path) -> None:
    ds = make_dataset()
    sent = encode(ds) + TRAILING_PADDING

    async def scenario(assoc, archive):
        return await store(assoc, ds, data=sent), archive.path_of(ds.SOPInstanceUID)

    rsp, path = run(tmp_path, scenario)
    assert rsp.status == 0x0000
    assert _stored_data_set(path) == sent  # bit-preserving


def test_instance_uid_mismatch_is_a900_even_when_tolerating(tmp_path) -> None:
    ds = make_dataset()

    async def scenario(assoc, archive):
        return await store(assoc, ds, sop_instance=generate_uid()), archive.instances()

    rsp, rows = run(tmp_path, scenario, archive_kwargs={"on_class_mismatch": "tolerate"})
    assert rsp.status == 0xA900 and rows == []


# --- operators see failures: one log line per C-STORE (issue 10, items 6 and 7) ---------

CT_SMALL = Path(pydicom.data.get_testdata_file("CT_small.dcm"))


def storescu(port: int, path: Path, *args: str) -> subprocess.CompletedProcess:
    """Send ``path`` with DCMTK storescu as calling AE CT1; ``-d`` shows every response."""
    command = [dcmtk("storescu"), "-d", "-aet", "CT1", *args, "127.0.0.1", str(port), str(path)]
    return subprocess.run(command, env=PEER_ENV, capture_output=True, text=True, timeout=60)


def dimse_statuses(sent: subprocess.CompletedProcess) -> list[str]:
    """The statuses of the responses storescu -d received."""
    return re.findall(r"DIMSE Status +: (0x[0-9a-f]{4})", sent.stdout + sent.stderr)


def store_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "dicomstore.storage"]


def test_dcmtk_failure_is_logged_at_warning_success_at_debug(tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="dicomstore.storage")
    uid = str(pydicom.dcmread(CT_SMALL).SOPInstanceUID)
    archive = Archive(tmp_path / "archive", fsync=False, on_duplicate="reject")
    with ServerThread(ServerConfig(port=0), archive) as srv:
        first = storescu(srv.port, CT_SMALL)
        second = storescu(srv.port, CT_SMALL)
    archive.close()
    assert first.returncode == 0, first.stderr
    assert dimse_statuses(first) == ["0x0000"]
    assert dimse_statuses(second) == ["0xc111"]  # what DCMTK received
    stored, refused = store_records(caplog)
    assert stored.levelno == logging.DEBUG
    assert stored.getMessage() == f"C-STORE of {uid} from CT1: status 0000 (success)"
    assert refused.levelno == logging.WARNING
    assert refused.getMessage() == (
        f"C-STORE of {uid} from CT1: status C111 (failure): "
        "Duplicate SOP Instance refused: already stored"
    )
    assert "(0000,0902) LO [Duplicate SOP Instance refused: already stored]" in second.stderr


def test_dcmtk_refused_by_store_aets_is_logged_at_warning(tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="dicomstore.storage")
    uid = str(pydicom.dcmread(CT_SMALL).SOPInstanceUID)
    archive = Archive(tmp_path / "archive", fsync=False)
    with ServerThread(ServerConfig(port=0, store_aets=frozenset({"OTHER"})), archive) as srv:
        sent = storescu(srv.port, CT_SMALL)
    archive.close()
    assert dimse_statuses(sent) == ["0x0124"]
    (refused,) = store_records(caplog)
    assert refused.levelno == logging.WARNING
    assert refused.getMessage() == (
        f"C-STORE of {uid} from CT1: status 0124 (failure): CT1 may not store here"
    )
    assert archive.instances() == []


def test_dcmtk_sees_the_whole_comment_of_a_kept_differing_duplicate(tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="dicomstore.storage")
    changed = pydicom.dcmread(CT_SMALL)
    changed.PatientName = "Other^Name"
    changed.save_as(tmp_path / "changed.dcm")
    archive = Archive(tmp_path / "archive", fsync=False)  # policy keep
    with ServerThread(ServerConfig(port=0), archive) as srv:
        assert storescu(srv.port, CT_SMALL).returncode == 0
        sent = storescu(srv.port, tmp_path / "changed.dcm")
    (row,) = archive.instances()
    archive.close()
    output = sent.stdout + sent.stderr
    assert dimse_statuses(sent) == ["0xb000"]
    (comment,) = re.findall(r"\(0000,0902\) LO \[(.*)\]", output)
    assert comment == "Duplicate with different content: kept the copy already stored"
    assert len(comment) <= 64 and error_comment(comment) == comment  # not cut: whole
    assert row["patient_name"] != "Other^Name"  # it says the truth: the stored copy stays
    _, kept = store_records(caplog)
    assert kept.levelno == logging.WARNING and "status B000 (warning): " + comment in kept.message


def test_long_comment_is_cut_between_words_and_logged_whole(tmp_path, caplog) -> None:
    """0122 names two UIDs: 86 characters; the wire gets whole words, the log all."""
    caplog.set_level(logging.DEBUG, logger="dicomstore.storage")
    ds = make_dataset(sop_class=MR)

    async def scenario(assoc, archive):
        rq = C.encode_command(
            {
                C.AFFECTED_SOP_CLASS_UID: MR,
                C.COMMAND_FIELD: 0x0001,
                C.MESSAGE_ID: 7,
                C.PRIORITY: 0,
                C.COMMAND_DATA_SET_TYPE: 0x0000,
                C.AFFECTED_SOP_INSTANCE_UID: ds.SOPInstanceUID,
            }
        )
        return await raw(assoc, assoc.context_for(CT).id, 7, rq, encode(ds))

    rsp = run(tmp_path, scenario)
    full = f"SOP class {MR} sent on the context of {CT}"
    assert rsp.status == 0x0122
    assert rsp.error_comment == f"SOP class {MR} sent on the context of..."
    (line,) = store_records(caplog)
    assert line.levelno == logging.WARNING
    assert line.getMessage() == (
        f"C-STORE of {ds.SOPInstanceUID} from SENDER: status 0122 (failure): {full}"
    )
