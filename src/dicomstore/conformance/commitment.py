"""The Storage Commitment section of the conformance statement (PS3.2 Annex A,
2.2.9): the Push Model SCP and SCU (PS3.4 J.3), the N-ACTION statuses and the
Failure Reasons.
"""

from __future__ import annotations

from dicomstore import status as st
from dicomstore import uids
from dicomstore.archive import commitment as sc
from dicomstore.conformance.tables import table
from dicomstore.services import commitment_info

#: N-ACTION statuses of the Storage Commitment SCP, and when (PS3.4 J.3.2, PS3.7 C.5).
COMMITMENT_STATUSES: tuple[tuple[int, str], ...] = (
    (st.SUCCESS, "the request is recorded durably (journal fsynced); the report follows"),
    (
        st.INVALID_ATTRIBUTE_VALUE,
        "the Transaction UID or a referenced UID is not a UID (or not VR UI: UN is refused), "
        "the Referenced SOP Sequence is no sequence",
    ),
    (st.NO_SUCH_SOP_INSTANCE, "a Requested SOP Instance other than the well-known one"),
    (
        st.PROCESSING_FAILURE,
        "the journal cannot be written (disk full, permissions): nothing was promised",
    ),
    (
        st.INVALID_ARGUMENT_VALUE,
        "no Action Information; it does not frame (cut short, an element past its item or "
        "sequence: the Error Comment gives the offset) or gives an attribute twice; or a "
        "Transaction UID already pending",
    ),
    (st.MISSING_ATTRIBUTE, "Transaction UID or Referenced SOP Sequence (or an item's UID) absent"),
    (st.MISSING_ATTRIBUTE_VALUE, "one of those present but empty"),
    (st.SOP_CLASS_NOT_SUPPORTED, "an N-ACTION on a context that is not Storage Commitment"),
    (st.NO_SUCH_ACTION_TYPE, "an Action Type ID other than 1"),
    (st.NOT_AUTHORIZED, "the caller lacks the `commit` right (policy file)"),
    (st.DUPLICATE_INVOCATION, "the Message ID of an operation in progress on the association"),
    (st.MISTYPED_ARGUMENT, "a command with a missing or mistyped field"),
    (
        st.RESOURCE_LIMITATION,
        f"more than `--max-commitment-references` ({commitment_info.MAX_REFERENCES}) "
        f"references, or `--max-pending-commitments` ({commitment_info.MAX_PENDING}) "
        "requests not yet reported (or more than half of either bound for one calling AE "
        "title)",
    ),
)

#: Failure Reasons (0008,1197) of the Failed SOP Sequence (PS3.4 J.3.3.1.1, C.14.1.1).
FAILURE_REASONS: tuple[tuple[int, str], ...] = (
    (
        sc.PROCESSING_FAILURE,
        "the file differs from what was stored (size or data set digest), or cannot be read;"
        " another data set was sent under its SOP Instance UID since it was stored and not"
        " stored (answered B000 or A900, the stored copy kept)",
    ),
    (sc.NO_SUCH_OBJECT_INSTANCE, "not in the index, or its file is gone"),
    (sc.CLASS_INSTANCE_CONFLICT, "held under another SOP Class"),
)


def commitment_section() -> list[str]:
    """2.2.9: Storage Commitment Push Model, SCP and SCU."""
    return [
        "#### 2.2.9 Storage Commitment Push Model SCP (`dicomstore serve`) and SCU "
        "(`dicomstore send --commit`)",
        "",
        *table(
            ("SOP Class", "UID", "Well-known SOP Instance"),
            [
                (
                    "Storage Commitment Push Model",
                    f"`{uids.STORAGE_COMMITMENT_PUSH}`",
                    f"`{uids.STORAGE_COMMITMENT_PUSH_INSTANCE}`",
                )
            ],
        ),
        "",
        "SCP, accepted with the uncompressed transfer syntaxes when the server stores "
        "into an archive (the requester as SCU). N-ACTION (Action Type ID 1): the "
        "Transaction UID and the Referenced SOP Sequence are checked, then the request "
        "is written to a journal in the archive (`.commitments/`, fsynced) before "
        "N-ACTION-RSP 0000; Storage Media File-Set ID/UID are not supported (ignored). "
        "Each referenced instance is then verified in a worker thread: held in the "
        "index under the referenced SOP Class, its file present with the size and the "
        "data set digest recorded when it was stored, and no other data set sent "
        "under its SOP Instance UID since (a duplicate with different content "
        "answered B000 with the stored copy kept, `--on-duplicate keep`, or a copy "
        "refused A900 because it is filed under another patient, study, series or SOP "
        "Class than the stored one, that copy kept, is 0110 "
        "until the UID is stored again); Level 2 storage, kept until deleted by an "
        "operator: `dicomstore "
        "delete`; retrievable with C-MOVE and C-GET, 2.2.5, 2.2.6). The "
        "N-EVENT-REPORT-RQ (Event Type ID 1 all committed, 2 failures exist) carries "
        "the Transaction UID, our AE title as Retrieve AE Title, the Referenced SOP "
        "Sequence of the committed instances and the Failed SOP Sequence with a "
        "Failure Reason each. It is sent on the association of the request while that "
        "is open, otherwise on a new association to the address configured for the "
        "requester's AE title (`--commitment-scu AET=HOST:PORT`, the policy file's "
        "`[commitment_scus]`), proposing the SOP class (Explicit VR Little Endian, "
        "Implicit VR Little Endian, Explicit VR Big Endian) with SCP/SCU Role Selection "
        "SCU 0, SCP 1 (PS3.7 D.3.3.4); the report is sent even when the acceptor does "
        "not return the role item. Only an N-EVENT-REPORT-RSP removes the request from "
        "the journal (0211 or 0213: sent again, on a new association or later); until "
        "then the node that accepted it retries with backoff (5 s doubling to 10 min), "
        "and once that node ends the next node to start on the storage reports it. "
        "Each request and report is audited (`--audit-log`).",
        "",
        "N-ACTION statuses (each failure with an Error Comment):",
        "",
        *table(("Status", "When"), [(f"{code:04X}", when) for code, when in COMMITMENT_STATUSES]),
        "",
        "Failure Reasons:",
        "",
        *table(
            ("Failure Reason", "When"), [(f"{code:04X}", when) for code, when in FAILURE_REASONS]
        ),
        "",
        "SCU (`dicomstore send --commit`): proposes the SOP class (as SCU) on each "
        "association it stores on, and once an association has sent what it could, "
        "requests commitment of the instances stored so far (a new Transaction UID "
        "each time; those stored on associations that broke: on an association of "
        "its own), then waits `--commit-timeout` (60 s) for the N-EVENT-REPORT on "
        "that association; with `--commit-listen PORT` it releases after the "
        "N-ACTION-RSP and accepts the SCP's association on PORT, granting the SCP "
        "role it proposes. Each report is answered 0000 (0115 for a Transaction UID "
        "not awaited, 0211 for another request). Instances in the Failed SOP Sequence, "
        "or in neither sequence, or without a report, are reported as not committed "
        "(exit code 8).",
        "",
    ]
