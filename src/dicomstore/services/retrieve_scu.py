"""C-MOVE and C-GET SCU: Patient Root and Study Root Q/R - MOVE and GET (PS3.4 C.4.2.2,
C.4.3.2).

    async with dicomstore.connect(host, port, called_ae="PACS",
                                  contexts=dicomstore.move_contexts()) as assoc:
        result = await dicomstore.move(assoc, {"StudyInstanceUID": "1.2.3"},
                                       destination="WORKSTATION", level="STUDY").run()
        print(result.completed, result.failed, result.failed_uids)

One C-MOVE-RQ or C-GET-RQ with an Identifier built as for C-FIND
(:func:`~dicomstore.services.query_scu.identifier_keys`); each pending response
(FF00) updates the counts of Remaining, Completed, Failed and Warning
sub-operations (``on_progress``); the final response ends it with its status
(0000; B000 when some failed; A701, A702, A801, A900, C000, 0122, 0124 ...),
its counts and the Failed SOP Instance UID List of its Identifier (PS3.4
C.4.2.1.5). :meth:`Retrieve.cancel` sends a C-CANCEL-RQ (FE00 then).

A C-GET's sub-operations come back on the same association (PS3.4 C.4.3.1.3):
the association proposes Storage SOP Classes with SCP/SCU Role Selection (we
SCP, PS3.7 D.3.3.4, :func:`get_contexts`) and :func:`receive_into` hands every
C-STORE-RQ the peer sends to a :class:`~dicomstore.services.storage.StoreService`
through the Storage SCP the server uses (an archive: its index, its checks) or
to a folder of files (:class:`~dicomstore.services.folder_store.FolderStore`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pydicom.uid as pu
from pydicom.dataset import Dataset

from dicomstore import uids
from dicomstore.aio.client import ClientAssociation, ContextSpec
from dicomstore.aio.performer import Incoming, Refused, refusal
from dicomstore.dimse import CGetRQ, CMoveRQ, CStoreRQ, RetrieveRSP
from dicomstore.dimse import status as st
from dicomstore.dimse.commands import AFFECTED_SOP_INSTANCE_UID
from dicomstore.dimse.decoding import InvalidRequest
from dicomstore.errors import AssociationAborted, AssociationError
from dicomstore.services.qr_operations import Tally, decode_identifier
from dicomstore.services.query_scu import SYNTAXES, Key, encode_query, identifier_keys
from dicomstore.services.storage import StoreService
from dicomstore.services.storage_scp import StorageSCP
from dicomstore.ul import items as I

MOVE_MODELS = {"patient": uids.PATIENT_ROOT_QR_MOVE, "study": uids.STUDY_ROOT_QR_MOVE}
GET_MODELS = {"patient": uids.PATIENT_ROOT_QR_GET, "study": uids.STUDY_ROOT_QR_GET}
#: Failed SOP Instance UID List (0008,0058) of a final response's Identifier.
FAILED_UIDS = 0x00080058
#: Storage SOP Classes a C-GET proposes by default: the common image, structured report,
#: presentation state and RT ones; those most often stored compressed first (they get
#: the contexts of one compressed syntax each, :func:`get_contexts`, before the others).
GET_STORAGE_CLASSES: tuple[str, ...] = tuple(
    str(getattr(pu, name))
    for name in [
        "CTImageStorage",
        "MRImageStorage",
        "ComputedRadiographyImageStorage",
        "DigitalXRayImageStorageForPresentation",
        "DigitalMammographyXRayImageStorageForPresentation",
        "UltrasoundImageStorage",
        "UltrasoundMultiFrameImageStorage",
        "SecondaryCaptureImageStorage",
        "XRayAngiographicImageStorage",
        "EnhancedCTImageStorage",
        "LegacyConvertedEnhancedCTImageStorage",
        "EnhancedMRImageStorage",
        "LegacyConvertedEnhancedMRImageStorage",
        "MRSpectroscopyStorage",
        "DigitalXRayImageStorageForProcessing",
        "DigitalMammographyXRayImageStorageForProcessing",
        "BreastTomosynthesisImageStorage",
        "EnhancedUSVolumeStorage",
        "MultiFrameGrayscaleByteSecondaryCaptureImageStorage",
        "MultiFrameGrayscaleWordSecondaryCaptureImageStorage",
        "MultiFrameTrueColorSecondaryCaptureImageStorage",
        "NuclearMedicineImageStorage",
        "PositronEmissionTomographyImageStorage",
        "EnhancedPETImageStorage",
        "EnhancedXAImageStorage",
        "XRayRadiofluoroscopicImageStorage",
        "XRay3DAngiographicImageStorage",
        "RTImageStorage",
        "RTDoseStorage",
        "RTStructureSetStorage",
        "RTPlanStorage",
        "RTIonPlanStorage",
        "SegmentationStorage",
        "SpatialRegistrationStorage",
        "BasicTextSRStorage",
        "EnhancedSRStorage",
        "ComprehensiveSRStorage",
        "KeyObjectSelectionDocumentStorage",
        "XRayRadiationDoseSRStorage",
        "GrayscaleSoftcopyPresentationStateStorage",
        "EncapsulatedPDFStorage",
        "VLPhotographicImageStorage",
        "VLEndoscopicImageStorage",
        "VLMicroscopicImageStorage",
        "VLWholeSlideMicroscopyImageStorage",
        "OphthalmicPhotography8BitImageStorage",
        "RawDataStorage",
    ]
)


#: Compressed transfer syntaxes a C-GET proposes, each in a context of its own per
#: Storage SOP Class as far as the 128 contexts go (:func:`get_contexts`), the most
#: used first.
GET_COMPRESSED_SYNTAXES: tuple[str, ...] = tuple(
    str(getattr(pu, name))
    for name in (
        "JPEGLosslessSV1",
        "JPEGBaseline8Bit",
        "JPEG2000Lossless",
        "JPEG2000",
        "JPEGLSLossless",
        "RLELossless",
        "JPEGExtended12Bit",
        "JPEGLossless",
        "JPEGLSNearLossless",
    )
)
#: Transfer syntaxes a C-GET proposes in the first context of each Storage SOP Class:
#: uncompressed first, then Deflated and the compressed ones (DCMTK refuses a context
#: of more than 25 or so).
GET_TRANSFER_SYNTAXES: tuple[str, ...] = (
    *uids.UNCOMPRESSED,
    str(pu.DeflatedExplicitVRLittleEndian),
    *GET_COMPRESSED_SYNTAXES,
)
#: Presentation contexts one association may propose (PS3.8 9.3.2.2: odd IDs 1-255).
MAX_CONTEXTS = 128


@dataclass
class Received(Tally):
    """How we answered a C-GET's C-STORE sub-operations (PS3.4 C.4.3.3): our own count,
    beside the one the SCP reports."""

    def to_json(self) -> dict[str, Any]:
        return {
            "completed": self.completed,
            "failed": self.failed,
            "warning": self.warning,
            "failed_sop_instance_uids": self.failed_uids,
        }


@dataclass
class RetrieveResult:
    """How a C-MOVE or C-GET ended (PS3.4 C.4.2.1.5, C.4.3.1.4)."""

    status: int | None = None
    error_comment: str | None = None
    remaining: int | None = None
    completed: int = 0
    failed: int = 0
    warning: int = 0
    #: Failed SOP Instance UID List (0008,0058) of the final response
    failed_uids: list[str] = field(default_factory=list)
    offending_element: tuple[int, ...] | None = None
    #: a C-GET's: how we answered its sub-operations (:func:`receive_into`)
    received: Received | None = None

    @property
    def contradicted(self) -> bool:
        """A final 0000 that its own counts, or our answers, say is not (review38scu #1)."""
        here = self.received
        ours = here is not None and bool(here.failed or here.warning)
        return self.status == st.SUCCESS and bool(self.failed or self.warning or ours)

    @property
    def ok(self) -> bool:
        """Every sub-operation completed: 0000, and no failure or warning counted by the
        SCP or, for a C-GET, answered by us."""
        return self.status == st.SUCCESS and not self.contradicted

    def to_json(self) -> dict[str, Any]:
        """The result as one JSON object (``--json``)."""
        found: dict[str, Any] = {
            "status": None if self.status is None else f"{self.status:04X}",
            "status_text": None if self.status is None else describe(self.status),
            "error_comment": self.error_comment,
            "completed": self.completed,
            "failed": self.failed,
            "warning": self.warning,
            "remaining": self.remaining,
            "failed_sop_instance_uids": self.failed_uids,
            "ok": self.ok,
        }
        if self.received is not None:
            found["received"] = self.received.to_json()
        return found


def describe(status: int) -> str:
    """A C-MOVE / C-GET status in the words of PS3.4 Tables C.4-2 and C.4-3 (Cxxx:
    "Failed: Unable to process", not C-STORE's "cannot understand": review48 L1)."""
    if status not in _TEXT and status >> 12 == 0xC:
        return "Failed: unable to process"
    return _TEXT.get(status, st.describe(status))


_TEXT = {
    st.SUCCESS: "Success: sub-operations complete, no failures",
    st.SUBOPERATIONS_WARNING: "Warning: sub-operations complete, one or more failures",
    st.SUBOPERATIONS_FAILED: "Refused: out of resources, unable to perform sub-operations",
    st.UNABLE_TO_CALCULATE_MATCHES: "Refused: out of resources, unable to calculate matches",
    st.MOVE_DESTINATION_UNKNOWN: "Refused: move destination unknown",
    st.DATASET_DOES_NOT_MATCH_SOP_CLASS: "Error: Identifier does not match SOP Class",
    st.CANCEL: "Cancel: sub-operations terminated",
}


def _model(models: Mapping[str, str], model: str) -> str:
    uid = models.get(model.lower(), model)
    if uid not in models.values():
        raise ValueError(f"not a Q/R information model: {model!r}")
    return uid


def move_contexts(*models: str) -> list[ContextSpec]:
    """Presentation contexts for C-MOVE in these models (default: both)."""
    return [(_model(MOVE_MODELS, m), SYNTAXES) for m in (models or ("study", "patient"))]


def get_contexts(
    *models: str, sop_classes: Iterable[str] = GET_STORAGE_CLASSES, most: int = MAX_CONTEXTS
) -> tuple[list[ContextSpec], list[I.RoleSelection]]:
    """Presentation contexts for C-GET in these models (default: Study Root) and for
    the Storage SOP Classes to receive, with the SCP role for those (PS3.7 D.3.3.4):
    for ``associate(contexts=, roles=)``, ``most`` of them (less than 128 leaves room
    for others on the association).

    The acceptor picks one transfer syntax per context (PS3.8 9.3.2.2), most often an
    uncompressed one, and an SCP that does not transcode can send an instance only on
    a context of its stored syntax. So each class has one context of
    :data:`GET_TRANSFER_SYNTAXES` (uncompressed first), then, as far as the 128
    contexts go, one context per :data:`GET_COMPRESSED_SYNTAXES` for the classes in
    their order (every class of a short ``--sop-class`` list; the first nine of the
    default ones)."""
    specs: list[ContextSpec] = [(_model(GET_MODELS, m), SYNTAXES) for m in (models or ("study",))]
    classes = list(dict.fromkeys(sop_classes))[: most - len(specs)]
    specs += [(sop_class, GET_TRANSFER_SYNTAXES) for sop_class in classes]
    for sop_class in classes:
        room = most - len(specs)
        specs += [(sop_class, (ts,)) for ts in GET_COMPRESSED_SYNTAXES[:room]]
    roles = [I.RoleSelection(sop_class, scu_role=False, scp_role=True) for sop_class in classes]
    return specs, roles


class _Storing:
    """One C-STORE sub-operation of a C-GET, through the Storage SCP."""

    def __init__(self, scp: StorageSCP, context_id: int, rq: CStoreRQ, received: Received) -> None:
        self.scp = scp
        self.rq = rq
        self.received = received
        self.receiving = scp.begin(context_id, rq)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.receiving.write(data)

    async def finish(self) -> Any:
        rsp = await self.scp.finish(self.receiving)
        self.received.count(rsp.status, self.rq.affected_sop_instance_uid)
        return rsp

    def abort(self) -> None:
        self.receiving.abort()


def receive_into(assoc: ClientAssociation, service: StoreService) -> Received:
    """Store every C-STORE-RQ the peer sends on ``assoc`` (a C-GET's sub-operations)
    through ``service``, as the peer's AE title (whom ``service``'s ``store_aets``
    must name, as for every door); answer anything else 0211. How we answered them
    (give it to :func:`get`: its result then counts them too)."""
    assert assoc.negotiated is not None
    address = str(assoc.t.peer[0]) if assoc.t.peer else ""
    scp = StorageSCP(service, assoc.negotiated, address=address, we_requested=True)
    received = Received()

    def on_request(context_id: int, message: Any) -> Incoming:
        if isinstance(message, CStoreRQ):
            return _Storing(scp, context_id, message, received)
        if isinstance(message, InvalidRequest) and message.command_field == CStoreRQ.command_field:
            # a sub-operation too, answered 0212 (one declaring no data set ...)
            uid = message.fields.get(AFFECTED_SOP_INSTANCE_UID)
            received.count(refusal(message).status, uid if isinstance(uid, str) else "")
        return Refused(message)

    assoc.performer.on_request = on_request
    return received


class Retrieve:
    """One C-MOVE or C-GET (see the module notes): ``await retrieve.run()``, once."""

    def __init__(
        self,
        assoc: ClientAssociation,
        rq: CMoveRQ | CGetRQ,
        query: Dataset | list[Key],
    ) -> None:
        self.assoc = assoc
        self.rq = rq
        self.query = query
        self.result = RetrieveResult()
        self._responses: Any = None
        self._cancel_sent = False

    async def cancel(self) -> None:
        """Send a C-CANCEL-RQ (once); :meth:`run` then ends with the final response."""
        if self._responses is None or self.result.status is not None or self._cancel_sent:
            return
        self._cancel_sent = True
        await self.assoc.cancel(self._responses)

    async def run(
        self, on_progress: Callable[[RetrieveResult], None] | None = None
    ) -> RetrieveResult:
        """Send the request, follow its pending responses (``on_progress`` with the
        counts so far), and return the result of the final one."""
        sop_class = self.rq.affected_sop_class_uid
        ctx = self.assoc.context_for(sop_class)
        if ctx is None:
            raise AssociationError(f"the peer did not accept {uids.uid_name(sop_class)}")
        ts = ctx.transfer_syntax
        data = encode_query(self.query, ts)
        self._responses = responses = await self.assoc.invoke(ctx.id, self.rq, data)
        result = self.result
        try:
            async for rsp, identifier in responses:
                if not isinstance(rsp, RetrieveRSP) or rsp.command_field != (
                    self.rq.response_type.command_field
                ):
                    await self.assoc.abort()
                    field = getattr(rsp, "command_field", 0)
                    raise AssociationAborted(  # (its name, not a repr: review38scu #15)
                        f"the peer answered a retrieve with a {type(rsp).__name__}"
                        f" (command field {field:#06x})"
                    )
                counts = rsp.sub_operations
                result.remaining = counts.remaining
                result.completed = counts.completed if counts.completed is not None else 0
                result.failed = counts.failed if counts.failed is not None else 0
                result.warning = counts.warning if counts.warning is not None else 0
                if rsp.status in (st.PENDING, st.PENDING_WARNING):
                    if on_progress is not None:
                        on_progress(result)
                    continue
                result.status, result.error_comment = rsp.status, rsp.error_comment
                result.offending_element = rsp.offending_element
                if identifier is not None:
                    result.failed_uids = _failed_uids(identifier, ts)
                elif rsp.failed_in_command:  # (Orthanc: in the command set)
                    result.failed_uids = rsp.failed_in_command.split("\\")
        finally:
            responses.close()
        await self.assoc.answered()  # (a C-GET: our last C-STORE-RSP is out)
        return result


def _failed_uids(identifier: bytes, ts: str) -> list[str]:
    try:
        ds = decode_identifier(identifier, ts)
        value = ds[FAILED_UIDS].value if FAILED_UIDS in ds else None
    except Exception:  # noqa: BLE001 - the counts say it; the list is a courtesy
        return []
    if not value:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _keys(query: Dataset | Mapping[str | int, Any] | list[Key], level: str | None) -> Any:
    return query if isinstance(query, Dataset | list) else identifier_keys(query, level)


def move(
    assoc: ClientAssociation,
    query: Dataset | Mapping[str | int, Any] | list[Key],
    destination: str,
    *,
    level: str | None = None,
    model: str = "study",
    priority: int = 0,
) -> Retrieve:
    """A C-MOVE of what ``query`` names to the AE ``destination`` (PS3.4 C.4.2.2): keys
    as for :func:`~dicomstore.services.query_scu.find`; propose :func:`move_contexts`."""
    rq = CMoveRQ(
        assoc.next_message_id(),
        _model(MOVE_MODELS, model),
        priority,
        move_destination=destination,
    )
    return Retrieve(assoc, rq, _keys(query, level))


def get(
    assoc: ClientAssociation,
    query: Dataset | Mapping[str | int, Any] | list[Key],
    *,
    level: str | None = None,
    model: str = "study",
    priority: int = 0,
    received: Received | None = None,
) -> Retrieve:
    """A C-GET of what ``query`` names (PS3.4 C.4.3.2), received on ``assoc`` by what
    :func:`receive_into` set up (``received``: what it returned); propose
    :func:`get_contexts`."""
    rq = CGetRQ(assoc.next_message_id(), _model(GET_MODELS, model), priority)
    retrieve = Retrieve(assoc, rq, _keys(query, level))
    retrieve.result.received = received
    return retrieve
