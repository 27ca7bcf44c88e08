"""Storage Commitment's data sets (PS3.4 J.3): the Action Information of an
N-ACTION-RQ read (Table J.3-1, :func:`parse_action_information`, :class:`Refused`
saying what is wrong) and the Event Information of the N-EVENT-REPORT-RQ made
(Table J.3-2, :func:`event_information`), with the SOP Class, its well-known
instance and the Action and Event Type IDs both roles use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dicomstore import uids
from dicomstore.archive.commitment import Reference, Verdict
from dicomstore.dimse import status as st
from dicomstore.error_comment import error_comment

if TYPE_CHECKING:  # (imported where used: a sender or the CLI loads no pydicom)
    from pydicom.dataset import Dataset

SOP_CLASS = uids.STORAGE_COMMITMENT_PUSH
SOP_INSTANCE = uids.STORAGE_COMMITMENT_PUSH_INSTANCE
#: Action Type ID of "Request Storage Commitment" (PS3.4 J.3.2.1)
REQUEST_COMMITMENT = 1
#: Event Type IDs (PS3.4 J.3.3.1): all committed / failures exist
ALL_COMMITTED, FAILURES_EXIST = 1, 2
#: Most references in one request (each is a file to read and hash).
MAX_REFERENCES = 65535
#: Most requests accepted and not yet reported (``commitment_reports.py``).
MAX_PENDING = 1000

TRANSACTION_UID = 0x00081195
REFERENCED_SOP_SEQUENCE = 0x00081199
REFERENCED_SOP_CLASS_UID = 0x00081150
REFERENCED_SOP_INSTANCE_UID = 0x00081155


class Refused(Exception):
    """An N-ACTION answered with a failure ``status`` and an Error Comment."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = error_comment(comment) or ""


def _uid_value(ds: Dataset, tag: int, name: str) -> str:
    """A required UID attribute (Type 1): 0120 absent, 0121 empty, 0106 not a UID."""
    if tag not in ds:
        raise Refused(st.MISSING_ATTRIBUTE, f"{name} missing")
    value = ds[tag].value
    if value is None or value == "":
        raise Refused(st.MISSING_ATTRIBUTE_VALUE, f"{name} empty")
    text = str(value).rstrip("\0 ")
    if not isinstance(value, str) or not uids.is_valid_uid(text):
        raise Refused(st.INVALID_ATTRIBUTE_VALUE, f"{name} is not a UID")
    return text


def parse_action_information(
    ds: Dataset, max_references: int = MAX_REFERENCES
) -> tuple[str, list[Reference]]:
    """The Transaction UID and the references of a Storage Commitment Request
    (PS3.4 Table J.3-1); :class:`Refused` says what is wrong."""
    from pydicom.sequence import Sequence

    transaction = _uid_value(ds, TRANSACTION_UID, "Transaction UID")
    if REFERENCED_SOP_SEQUENCE not in ds:
        raise Refused(st.MISSING_ATTRIBUTE, "Referenced SOP Sequence missing")
    items = ds[REFERENCED_SOP_SEQUENCE].value
    if not isinstance(items, Sequence):
        raise Refused(st.INVALID_ATTRIBUTE_VALUE, "Referenced SOP Sequence is no sequence")
    if not items:
        raise Refused(st.MISSING_ATTRIBUTE_VALUE, "Referenced SOP Sequence empty")
    if len(items) > max_references:
        raise Refused(st.RESOURCE_LIMITATION, f"more than {max_references} references")
    refs = []
    for n, item in enumerate(items, 1):
        refs.append(
            Reference(
                _uid_value(item, REFERENCED_SOP_CLASS_UID, f"item {n}: SOP Class UID"),
                _uid_value(item, REFERENCED_SOP_INSTANCE_UID, f"item {n}: SOP Instance UID"),
            )
        )
    return transaction, refs


def event_information(
    transaction_uid: str, verdicts: list[Verdict], retrieve_ae: str | None = None
) -> tuple[int, Dataset]:
    """The Event Type ID and Event Information of a Storage Commitment Result
    (PS3.4 J.3.3, Table J.3-2): the committed references (with ``retrieve_ae``),
    and, when any failed, the Failed SOP Sequence with each Failure Reason."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.TransactionUID = transaction_uid
    if retrieve_ae:
        ds.RetrieveAETitle = retrieve_ae
    committed = [v.reference for v in verdicts if v.committed]
    failed = [v for v in verdicts if not v.committed]
    if committed:
        ds.ReferencedSOPSequence = [_item(ref) for ref in committed]
    if failed:
        items = []
        for verdict in failed:
            item = _item(verdict.reference)
            item.FailureReason = verdict.failure_reason
            items.append(item)
        ds.FailedSOPSequence = items
    return (FAILURES_EXIST if failed else ALL_COMMITTED), ds


def _item(ref: Reference) -> Dataset:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    return item
