"""SOP Class Extended Negotiation for storage (PS3.4 B.3.1): the SCP answers it truthfully."""

from __future__ import annotations

import asyncio

from pynetdicom import AE
from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation
from tests.conftest import NullHandler, ServerThread

from dicomstore import uids
from dicomstore.aio.client import associate
from dicomstore.services.server import Server, ServerConfig
from dicomstore.ul import items as I

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
#: PS3.4 Table B.3-1 as an SCU proposes it: level of support 3 (N/A, SCU only),
#: digital signatures 0 (unspecified), element coercion 2 (N/A, SCU only).
SCU_ONLY = bytes((3, 0, 0, 0, 2, 0))
#: Table B.3-2, our answer: Level 2 (Full), signature level 3, no coercion.
FULL = bytes((2, 0, 3, 0, 0, 0))


def test_our_client_gets_level_2_signature_level_3_no_coercion() -> None:
    async def main():
        server = Server(ServerConfig(port=0), NullHandler(), commit_in_thread=False)
        await server.start()
        try:
            assoc = await associate(
                "127.0.0.1",
                server.port,
                contexts=[(CT, [uids.EXPLICIT_VR_LE]), (uids.VERIFICATION, [uids.IMPLICIT_VR_LE])],
                extended=[
                    I.SOPClassExtended(CT, SCU_ONLY),
                    I.SOPClassExtended(MR, SCU_ONLY),  # no context for it: no answer
                    I.SOPClassExtended(uids.VERIFICATION, b"\x00"),  # not storage
                ],
            )
            answered = dict(assoc.negotiated.extended)
            await assoc.release()
            return answered
        finally:
            await server.close(grace=2)

    assert asyncio.run(main()) == {CT: FULL}


def test_without_the_sub_item_nothing_is_answered() -> None:
    async def main():
        server = Server(ServerConfig(port=0), NullHandler(), commit_in_thread=False)
        await server.start()
        try:
            assoc = await associate(
                "127.0.0.1", server.port, contexts=[(CT, [uids.EXPLICIT_VR_LE])]
            )
            answered = dict(assoc.negotiated.extended)
            await assoc.release()
            return answered
        finally:
            await server.close(grace=2)

    assert asyncio.run(main()) == {}  # PS3.7 D.3.3.5: omitted when not requested


def test_pynetdicom_reads_our_answer() -> None:
    with ServerThread(ServerConfig(port=0), NullHandler()) as server:
        ae = AE(ae_title="PYNETDICOM")
        ae.add_requested_context(CT)
        item = SOPClassExtendedNegotiation()
        item.sop_class_uid = CT
        item.service_class_application_information = SCU_ONLY
        assoc = ae.associate("127.0.0.1", server.port, ae_title="DICOMSTORE", ext_neg=[item])
        try:
            assert assoc.is_established
            assert assoc.acceptor.sop_class_extended == {CT: FULL}
        finally:
            assoc.release()


def test_query_retrieve_and_commitment_classes_get_no_storage_answer(tmp_path) -> None:
    """review46 #1: the FIND/MOVE/GET models got the storage answer (02 00 03 00 00 00),
    which a Q/R SCU reads as relational queries and fuzzy matching supported (PS3.4
    C.5.1.1, C.5.2.1): dcm4che then sent relational queries, answered A900. No answer:
    every option off (PS3.7 D.3.3.5)."""
    from dicomstore.archive import Archive

    qr = [
        uids.STUDY_ROOT_QR_FIND,
        uids.PATIENT_ROOT_QR_FIND,
        uids.STUDY_ROOT_QR_MOVE,
        uids.STUDY_ROOT_QR_GET,
        uids.STORAGE_COMMITMENT_PUSH,
    ]
    archive = Archive(tmp_path / "archive", fsync=False)

    async def main():
        server = Server(ServerConfig(port=0), archive, commit_in_thread=False)
        await server.start()
        try:
            assoc = await associate(
                "127.0.0.1",
                server.port,
                contexts=[(uid, [uids.IMPLICIT_VR_LE]) for uid in [CT, *qr]],
                extended=[I.SOPClassExtended(uid, b"\x01\x01\x01") for uid in qr]
                + [I.SOPClassExtended(CT, SCU_ONLY)],
            )
            accepted = {c.abstract_syntax for c in assoc.negotiated.contexts.values()}
            answered = dict(assoc.negotiated.extended)
            await assoc.release()
            return accepted, answered
        finally:
            await server.close(grace=2)

    try:
        accepted, answered = asyncio.run(main())
    finally:
        archive.close()
    assert set(qr) - {uids.STORAGE_COMMITMENT_PUSH} <= accepted
    assert answered == {CT: FULL}
