"""The DICOM Conformance Statement of this dicomstore (PS3.2), made from the code.

``dicomstore conformance`` prints it (Markdown). The SOP Class and transfer
syntax tables, the identifying UIDs and the defaults come from the same
sources the server negotiates with (:mod:`dicomstore.uids`, the CLI's
defaults), so the statement cannot drift from the behaviour; the prose
follows the structure of PS3.2 Annex A (networking, media, character sets,
security) for the parts that apply.
"""

from __future__ import annotations

from dicomstore import __version__, uids
from dicomstore import status as st
from dicomstore.archive import commitment as sc
from dicomstore.archive import query as q
from dicomstore.services import commitment_info, commitment_reports
from dicomstore.services.storage_scp import STORAGE_EXTENDED_ANSWER
from dicomstore.ul.negotiation import DEFAULT_MAX_PDU
from dicomstore.ul.pdu import APPLICATION_CONTEXT_NAME

#: C-STORE statuses the SCP answers, and when (PS3.4 B.2.3, PS3.7 C.4.2).
SCP_STATUSES: tuple[tuple[int, str], ...] = (
    (st.SUCCESS, "stored durably (file flushed, renamed into place, index committed)"),
    (
        st.COERCION_OF_DATA_ELEMENTS,
        "`--on-duplicate keep`: the SOP Instance was stored before with other bytes; "
        "the stored copy is kept",
    ),
    (
        st.ELEMENTS_DISCARDED,
        "`--trailing-padding discard`: the Data Set Trailing Padding was not stored",
    ),
    (
        st.DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING,
        "`--on-class-mismatch tolerate`: (0008,0016) differs from the command; stored",
    ),
    (
        st.OUT_OF_RESOURCES,
        "out of resources: disk full, quota, index unavailable, below `--min-free`, "
        "larger than `--max-instance-size` (a deflated data set: inflated, and 256 MiB "
        "without that option)",
    ),
    (
        st.DATASET_DOES_NOT_MATCH_SOP_CLASS,
        "(0008,0016) or (0008,0018) missing from the data set or different from the command; "
        "(0020,000D) or (0020,000E) missing or empty; `--on-relational-mismatch reject`: the "
        "Series UID is filed under another study, or the Study UID under another patient "
        "(Patient ID + Issuer)",
    ),
    (
        st.CANNOT_UNDERSTAND,
        "the data set cannot be parsed up to the Pixel Data, or is not encoded as the "
        "context's transfer syntax says (explicit/implicit VR, byte order, deflate stream)",
    ),
    (st.DUPLICATE_REJECTED, "`--on-duplicate reject`: the SOP Instance is stored already"),
    (st.SOP_CLASS_NOT_SUPPORTED, "the command's SOP Class is not its presentation context's"),
    (st.NOT_AUTHORIZED, "the calling AE title may not store (`--store-aet`, policy file)"),
    (st.DUPLICATE_INVOCATION, "a Message ID still in progress on the association"),
    (
        st.UNRECOGNIZED_OPERATION,
        "a DIMSE command other than C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET and C-CANCEL",
    ),
    (st.MISTYPED_ARGUMENT, "a command element missing or malformed"),
)

#: C-FIND statuses the Q/R SCP answers, and when (PS3.4 C.4.1.1.4, PS3.7 C.4.1).
FIND_STATUSES: tuple[tuple[int, str], ...] = (
    (st.PENDING, "one match, its Identifier attached"),
    (st.PENDING_WARNING, "one match; a key with a value is not held by the index (not matched)"),
    (st.SUCCESS, "every match was sent"),
    (st.CANCEL, "a C-CANCEL-RQ for it arrived before the last match was sent"),
    (
        st.DATASET_DOES_NOT_MATCH_SOP_CLASS,
        "no (0008,0052), a level not in the model, a key of a lower level, or a unique "
        "key of a higher level missing or not a single value (relational query)",
    ),
    (
        st.CANNOT_UNDERSTAND,
        "an unreadable Identifier, a value that cannot be matched "
        "(a malformed date, time or integer), the index unavailable",
    ),
    (st.SOP_CLASS_NOT_SUPPORTED, "a C-FIND on a context that is not a FIND model"),
    (st.NOT_AUTHORIZED, "the caller lacks the `find` right (policy file)"),
    (st.DUPLICATE_INVOCATION, "its Message ID is still being answered"),
)

#: C-MOVE statuses the Q/R SCP answers, and when (PS3.4 C.4.2.1.5, PS3.7 C.4.2).
MOVE_STATUSES: tuple[tuple[int, str], ...] = (
    (st.PENDING, "after each C-STORE sub-operation but the last, with the four counts"),
    (st.SUCCESS, "every sub-operation completed (or nothing matched)"),
    (
        st.SUBOPERATIONS_WARNING,
        "one or more sub-operations failed or warned; the Failed SOP Instance UID List "
        "(0008,0058) names the failed ones",
    ),
    (
        st.SUBOPERATIONS_FAILED,
        "every sub-operation failed (the destination refused the association, could not "
        "be reached, left, or refused each instance); the Failed SOP Instance UID List",
    ),
    (st.CANCEL, "a C-CANCEL-RQ arrived: no sub-operation after the one in flight"),
    (st.MOVE_DESTINATION_UNKNOWN, "the Move Destination is not a configured destination"),
    (
        st.UNABLE_TO_CALCULATE_MATCHES,
        "more than 65535 instances (the counts are US), or the index unavailable",
    ),
    (
        st.DATASET_DOES_NOT_MATCH_SOP_CLASS,
        "no (0008,0052), a level not in the model, a unique key missing, with a wildcard, "
        "a list where one value is due, or a key of a lower level with a value",
    ),
    (st.CANNOT_UNDERSTAND, "an unreadable Identifier"),
    (st.SOP_CLASS_NOT_SUPPORTED, "a C-MOVE on a context that is not a MOVE model"),
    (
        st.NOT_AUTHORIZED,
        "the caller lacks the `move` right, or may not name this destination (`move_to`)",
    ),
    (st.DUPLICATE_INVOCATION, "its Message ID is still being answered"),
)

#: C-GET statuses the Q/R SCP answers, and when (PS3.4 C.4.3.1.4, PS3.7 C.4.3): as
#: C-MOVE's (no destination, so no A801), but for where sub-operations fail.
_AS_MOVE = dict(MOVE_STATUSES)
GET_STATUSES: tuple[tuple[int, str], ...] = (
    *((code, _AS_MOVE[code]) for code in (st.PENDING, st.SUCCESS)),
    (
        st.SUBOPERATIONS_WARNING,
        "one or more sub-operations failed (no context on which the requester is SCP "
        "for the SOP class, a failure status) or warned; the Failed SOP Instance UID List",
    ),
    (
        st.SUBOPERATIONS_FAILED,
        "every sub-operation failed (no context at all on which the requester is SCP, "
        "the association ended, or a failure status for each); the Failed SOP Instance "
        "UID List",
    ),
    *(
        (code, _AS_MOVE[code])
        for code in (st.CANCEL, st.UNABLE_TO_CALCULATE_MATCHES, st.DATASET_DOES_NOT_MATCH_SOP_CLASS)
    ),
    (st.CANNOT_UNDERSTAND, _AS_MOVE[st.CANNOT_UNDERSTAND]),
    (st.SOP_CLASS_NOT_SUPPORTED, "a C-GET on a context that is not a GET model"),
    (st.NOT_AUTHORIZED, "the caller lacks the `get` right (policy file)"),
    (st.DUPLICATE_INVOCATION, _AS_MOVE[st.DUPLICATE_INVOCATION]),
)

#: N-ACTION statuses of the Storage Commitment SCP, and when (PS3.4 J.3.2, PS3.7 C.5).
COMMITMENT_STATUSES: tuple[tuple[int, str], ...] = (
    (st.SUCCESS, "the request is recorded durably (journal fsynced); the report follows"),
    (st.INVALID_ATTRIBUTE_VALUE, "the Transaction UID or a referenced UID is not a UID"),
    (st.NO_SUCH_SOP_INSTANCE, "a Requested SOP Instance other than the well-known one"),
    (
        st.PROCESSING_FAILURE,
        "the journal cannot be written (disk full, permissions): nothing was promised",
    ),
    (
        st.INVALID_ARGUMENT_VALUE,
        "no Action Information, unreadable, or a Transaction UID already pending",
    ),
    (st.MISSING_ATTRIBUTE, "Transaction UID or Referenced SOP Sequence (or an item's UID) absent"),
    (st.MISSING_ATTRIBUTE_VALUE, "one of those present but empty"),
    (st.SOP_CLASS_NOT_SUPPORTED, "an N-ACTION on a context that is not Storage Commitment"),
    (st.NO_SUCH_ACTION_TYPE, "an Action Type ID other than 1"),
    (st.NOT_AUTHORIZED, "the caller lacks the `commit` right (policy file)"),
    (st.DUPLICATE_INVOCATION, "the Message ID of a request still in progress"),
    (st.MISTYPED_ARGUMENT, "a command with a missing or mistyped field"),
    (
        st.RESOURCE_LIMITATION,
        f"more than `--max-commitment-references` ({commitment_info.MAX_REFERENCES}) "
        f"references, or `--max-pending-commitments` ({commitment_reports.MAX_PENDING}) "
        "requests not yet reported",
    ),
)

#: Failure Reasons (0008,1197) of the Failed SOP Sequence (PS3.4 J.3.3.1.1, C.14.1.1).
FAILURE_REASONS: tuple[tuple[int, str], ...] = (
    (
        sc.PROCESSING_FAILURE,
        "the file differs from what was stored (size or data set digest), or cannot be read",
    ),
    (sc.NO_SUCH_OBJECT_INSTANCE, "not in the index, or its file is gone"),
    (sc.CLASS_INSTANCE_CONFLICT, "held under another SOP Class"),
)

#: How a value of each VR is matched (PS3.4 C.2.2.2).
_MATCHING = {
    "UI": "single value, list of UIDs",
    "DA": "single value, range",
    "TM": "single value, range",
    "PN": "single value, wildcard (case-insensitive)",
    "IS": "single value",
}


def _query_section() -> list[str]:
    """2.2.4: the Query/Retrieve FIND SCP."""
    keys: list[tuple[str, ...]] = [
        (
            a.keyword,
            f"({a.tag >> 16:04X},{a.tag & 0xFFFF:04X})",
            {"instance": "IMAGE"}.get(a.level, a.level.upper()),
            "return only" if a.sql is None else _MATCHING.get(a.vr, "single value, wildcard"),
        )
        for a in q.ATTRIBUTES.values()
        if a.tag >= 0x00080000
    ]
    return [
        "#### 2.2.4 Query/Retrieve FIND SCP (`dicomstore serve`)",
        "",
        *_models("FIND", uids.PATIENT_ROOT_QR_FIND, uids.STUDY_ROOT_QR_FIND),
        "",
        "Accepted with Explicit VR Little Endian, Implicit VR Little Endian or Explicit "
        "VR Big Endian, when the server stores into an archive. Matches come from the "
        "archive index, through the same engine as QIDO-RS: single value, wildcard "
        "(`*`, `?`), range (dates, times), list of UIDs, universal (zero-length) "
        "matching (PS3.4 C.2.2.2). Hierarchical queries only (C.4.1.2.1): below the "
        "top level, the unique keys of the levels above (Patient ID, Study and Series "
        "Instance UID) must be given with a single value; keys of the levels above are "
        "also matched and returned; relational queries and extended negotiation are "
        "not supported. Keys the index does not hold are read from the stored header "
        "of one instance of each match (at IMAGE level the instance's own; above it "
        "only attributes of the Patient, Study and Series modules of that level or "
        "higher), else returned zero-length; a value in one is not matched and each "
        "match then has status FF01. Retrieve AE Title "
        "(0008,0054) is the server's AE title, Instance Availability (0008,0056) "
        "ONLINE. One pending response per match, streamed as the index yields them; "
        "C-CANCEL-RQ honoured between matches. Each C-FIND is audited (`--audit-log`, "
        "after PS3.15 A.5.3.10 Query).",
        "",
        "Keys matched and returned (PS3.4 C.6.1.1, C.6.2.1):",
        "",
        *_table(("Attribute", "Tag", "Level", "Matching"), keys),
        "",
        "Statuses:",
        "",
        *_table(("Status", "When"), [(f"{code:04X}", when) for code, when in FIND_STATUSES]),
        "",
        *_move_section(),
        *_get_section(),
        *_scu_section(),
    ]


def _move_section() -> list[str]:
    """2.2.5: the Query/Retrieve MOVE SCP."""
    return [
        "#### 2.2.5 Query/Retrieve MOVE SCP (`dicomstore serve`)",
        "",
        *_models("MOVE", uids.PATIENT_ROOT_QR_MOVE, uids.STUDY_ROOT_QR_MOVE),
        "",
        "Accepted with the uncompressed transfer syntaxes, when the server stores into "
        "an archive. The Identifier holds the Query/Retrieve Level and the unique keys "
        "(PS3.4 C.4.2.2.1): one value for each level above, one UID or a list of UIDs "
        "at STUDY, SERIES and IMAGE level, one Patient ID at PATIENT level; other "
        "attributes are ignored; hierarchical retrieval only. Move Destinations are "
        "AE titles configured with `--move-destination AET=HOST:PORT` or in the policy "
        "file's `[destinations]`. The C-STORE sub-operations run on one association to "
        "the destination, requested with our AE title (`--aet`) as calling AE title: "
        "per SOP Class, one context per transfer syntax the instances are stored in "
        "(each alone), then Explicit and Implicit VR Little Endian for conversion; each "
        "instance is sent in the transfer syntax it is stored in, byte for byte, when "
        "the destination accepts it, else decoded and re-encoded uncompressed. Each "
        "C-STORE-RQ carries Move Originator AE Title and Message ID, and the C-MOVE's "
        "priority. C-CANCEL-RQ is honoured between sub-operations. Each C-MOVE is "
        "audited (`--audit-log`, after PS3.15 A.5.3.7 DICOM Instances Transferred).",
        "",
        "Statuses:",
        "",
        *_table(("Status", "When"), [(f"{code:04X}", when) for code, when in MOVE_STATUSES]),
        "",
    ]


def _get_section() -> list[str]:
    """2.2.6: the Query/Retrieve GET SCP."""
    return [
        "#### 2.2.6 Query/Retrieve GET SCP (`dicomstore serve`)",
        "",
        *_models("GET", uids.PATIENT_ROOT_QR_GET, uids.STUDY_ROOT_QR_GET),
        "",
        "Accepted with the uncompressed transfer syntaxes, when the server stores into "
        "an archive. The Identifier, the selection of instances, the counts and "
        "C-CANCEL are as for C-MOVE (2.2.5). The C-STORE sub-operations go out on the "
        "same association (PS3.4 C.4.3.3.1), on the Storage SOP Class contexts for which "
        "the requester asked, and was granted, the SCP role by SCP/SCU Role Selection "
        "(PS3.7 D.3.3.4; 2.2.2): each instance in the transfer syntax it is stored in, "
        "byte for byte, streamed from its file, when such a context has it, else "
        "decoded and re-encoded into the context's uncompressed transfer syntax. An "
        "instance of a SOP class with no such context is a failed sub-operation. Our "
        "C-STORE-RQs carry their own Message IDs and the C-GET's priority, one at a "
        "time. Each C-GET is audited (`--audit-log`, after PS3.15 A.5.3.7 DICOM "
        "Instances Transferred).",
        "",
        "Statuses:",
        "",
        *_table(("Status", "When"), [(f"{code:04X}", when) for code, when in GET_STATUSES]),
        "",
    ]


def _commitment_section() -> list[str]:
    """2.2.9: Storage Commitment Push Model, SCP and SCU."""
    return [
        "#### 2.2.9 Storage Commitment Push Model SCP (`dicomstore serve`) and SCU "
        "(`dicomstore send --commit`)",
        "",
        *_table(
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
        "data set digest recorded when it was stored (the bytes acknowledged at "
        "C-STORE, Level 2 storage, kept until deleted by an operator: `dicomstore "
        "delete`; retrievable with C-MOVE and C-GET, 2.2.5, 2.2.6). The "
        "N-EVENT-REPORT-RQ (Event Type ID 1 all committed, 2 failures exist) carries "
        "the Transaction UID, our AE title as Retrieve AE Title, the Referenced SOP "
        "Sequence of the committed instances and the Failed SOP Sequence with a "
        "Failure Reason each. It is sent on the association of the request while that "
        "is open, otherwise on a new association to the address configured for the "
        "requester's AE title (`--commitment-scu AET=HOST:PORT`, the policy file's "
        "`[commitment_scus]`), proposing the SOP class with SCP/SCU Role Selection "
        "SCU 0, SCP 1 (PS3.7 D.3.3.4); the report is sent even when the acceptor does "
        "not return the role item. Only an N-EVENT-REPORT-RSP removes the request from "
        "the journal (0211 or 0213: sent again, on a new association or later); until "
        "then it is retried with backoff (5 s doubling to 10 min) and at every start. "
        "Each request and report is audited (`--audit-log`).",
        "",
        "N-ACTION statuses (each failure with an Error Comment):",
        "",
        *_table(("Status", "When"), [(f"{code:04X}", when) for code, when in COMMITMENT_STATUSES]),
        "",
        "Failure Reasons:",
        "",
        *_table(
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


def _models(kind: str, patient_root: str, study_root: str) -> list[str]:
    """The table of the Patient and Study Root models of one Q/R operation."""
    return _table(
        ("SOP Class", "UID", "Levels"),
        [
            (
                f"Patient Root Q/R Information Model - {kind}",
                f"`{patient_root}`",
                "PATIENT, STUDY, SERIES, IMAGE",
            ),
            (
                f"Study Root Q/R Information Model - {kind}",
                f"`{study_root}`",
                "STUDY, SERIES, IMAGE",
            ),
        ],
    )


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def _scu_section() -> list[str]:
    """2.2.7 and 2.2.8: the Query/Retrieve SCUs."""
    return [
        "#### 2.2.7 Query/Retrieve FIND SCU (`dicomstore find`)",
        "",
        "Proposes the model asked for (`-P` Patient Root, `-S` Study Root, the default) "
        "with Explicit and Implicit VR Little Endian, and sends one C-FIND-RQ whose "
        "Identifier holds Query/Retrieve Level (`-L`, default STUDY), the level's unique "
        "key as a return key, and the keys given (`-k KEY[=VALUE]`, by keyword or tag), "
        "values as written (wildcards, ranges and lists are the SCP's to match), with "
        "Specific Character Set ISO_IR 192 (UTF-8) unless a `SpecificCharacterSet` key "
        "is given. Each pending response (FF00, FF01) is a match, printed as it comes; "
        "0000 ends it; a failure status (A700, A900, Cxxx, 0122, 0124 ...) is reported "
        "with its Error Comment (exit code 1). Ctrl-C sends a C-CANCEL-RQ and waits for "
        "the final response (FE00). Relational queries are sent as given.",
        "",
        "#### 2.2.8 Query/Retrieve MOVE and GET SCU (`dicomstore move`, `dicomstore get`)",
        "",
        "The Identifier is built as for C-FIND (2.2.7). `move` proposes the MOVE model "
        "and names the Move Destination (`--dest`). `get` proposes the GET model and, "
        "with SCP/SCU Role Selection (SCP role only, PS3.7 D.3.3.4), the common Storage "
        "SOP Classes (or those of `--sop-class`) with the uncompressed transfer syntaxes "
        "first, then Deflated, JPEG, JPEG-LS, JPEG 2000 and RLE; each C-STORE "
        "sub-operation is stored as received, into PS3.10 files (`-od`) or an archive "
        "(`--storage`, with the checks and statuses of 2.2.2) and answered after it is "
        "stored. Pending responses update the sub-operation counts; the final status, "
        "the counts and the Failed SOP Instance UID List are reported; a final status "
        "other than 0000 (B000, A701, A702, A801, A900, Cxxx, 0122, 0124) is exit code 1. "
        "Ctrl-C sends a C-CANCEL-RQ.",
        "",
    ]


def statement() -> str:
    """The whole conformance statement, as Markdown."""
    classes = uids.storage_sop_classes()
    syntaxes = uids.transfer_syntaxes()
    level, _, signatures, _, coercion, _ = STORAGE_EXTENDED_ANSWER
    lines = [
        f"# DICOM Conformance Statement: dicomstore {__version__}",
        "",
        "Generated by `dicomstore conformance` from the code that negotiates (PS3.2).",
        "",
        "## 1 Overview",
        "",
        *_table(
            ("Network service", "User of service (SCU)", "Provider of service (SCP)"),
            [
                ("Verification", "Yes (`dicomstore echo`)", "Yes (`dicomstore serve`)"),
                (
                    f"Storage: {len(classes)} Storage SOP Classes (Appendix A)",
                    "Yes (`dicomstore send`)",
                    "Yes (`dicomstore serve`)",
                ),
                (
                    "Query/Retrieve - FIND: Patient Root, Study Root (2.2.4, 2.2.7)",
                    "Yes (`dicomstore find`)",
                    "Yes (`dicomstore serve`)",
                ),
                (
                    "Query/Retrieve - MOVE: Patient Root, Study Root (2.2.5, 2.2.8)",
                    "Yes (`dicomstore move`)",
                    "Yes (`dicomstore serve`)",
                ),
                (
                    "Query/Retrieve - GET: Patient Root, Study Root (2.2.6, 2.2.8)",
                    "Yes (`dicomstore get`)",
                    "Yes (`dicomstore serve`)",
                ),
                (
                    "Storage Commitment Push Model (2.2.9)",
                    "Yes (`dicomstore send --commit`)",
                    "Yes (`dicomstore serve`)",
                ),
            ],
        ),
        "",
        "No media services. Stored instances are also reachable over DICOMweb "
        "(PS3.18: QIDO-RS, WADO-RS, STOW-RS) when `serve --http-port` is given.",
        "",
        "## 2 Networking",
        "",
        "### 2.1 Implementation model",
        "",
        "One Application Entity, `dicomstore serve` (AE title `--aet`, default "
        "`DICOMSTORE`), is a Verification, Storage, Q/R FIND, MOVE and GET and Storage "
        "Commitment SCP: every instance it "
        "receives is written as a PS3.10 file into its archive (`--storage`) and indexed before "
        "it is acknowledged. `dicomstore send` (Storage SCU) sends files, folders or "
        "data sets to any Storage SCP; `dicomstore echo` is a Verification SCU; "
        "`dicomstore find`, `dicomstore move` and `dicomstore get` are Q/R SCUs "
        "(2.2.7, 2.2.8). Workstations find what was stored with C-FIND (2.2.4) and have "
        "it sent to a Storage SCP with C-MOVE (2.2.5), or fetch it with C-GET (2.2.6) on "
        "the same association; the server then acts as a Storage SCU. Senders ask it "
        "to commit to what it holds with Storage Commitment (2.2.9). With "
        "`--forward` rules it also forwards what it stores to other Storage SCPs as a "
        "Storage SCU (2.2.3).",
        "",
        "### 2.2 AE specifications",
        "",
        "#### 2.2.1 Association policies (both roles)",
        "",
        *_table(
            ("Item", "Value"),
            [
                ("Application Context Name", f"`{APPLICATION_CONTEXT_NAME}`"),
                ("Implementation Class UID", f"`{uids.IMPLEMENTATION_CLASS_UID}`"),
                ("Implementation Version Name", f"`{uids.IMPLEMENTATION_VERSION_NAME}`"),
                (
                    "Maximum PDU length received",
                    f"{DEFAULT_MAX_PDU} bytes (`--max-pdu`; 0: unlimited)",
                ),
                (
                    "Asynchronous operations window",
                    "SCP: grants up to `--max-ops` (16) invoked, 1 performed; SCU: "
                    "proposes `--max-ops` (16), uses what is granted",
                ),
                (
                    "Simultaneous associations (SCP)",
                    "`--max-associations` (50); beyond: rejected transient, temporary congestion",
                ),
                (
                    "User Identity Negotiation (SCP)",
                    "types 1 (username), 2 (username and passcode, scrypt) and 5 (JWT) "
                    "with a `--config` policy; 3 and 4 refused",
                ),
            ],
        ),
        "",
        "#### 2.2.2 Storage and Verification SCP (`dicomstore serve`)",
        "",
        "Association acceptance: any calling AE title unless restricted "
        "(`--allow-calling-aet`, `--require-called-aet`, `--max-per-calling-aet`, "
        "`--max-per-address`, a `--config` policy file). Rejections: *calling AE title "
        "not recognized* or *called AE title not recognized* (permanent), *no reason* "
        "(permanent, failed user identity), *temporary congestion* or *local limit "
        "exceeded* (transient). Only associations whose request was complete count "
        "against the limits; a request must be complete within ARTIM of the connection "
        "(`--artim-timeout`, not restarted by bytes), each PDU within `--operation-timeout` "
        "of its first byte (else A-ABORT, service-provider source, reason not specified).",
        "",
        "Presentation context acceptance: every Storage SOP Class of Appendix A, "
        "Verification, the FIND, MOVE and GET models of 2.2.4 to 2.2.6 and Storage "
        "Commitment (2.2.9); other abstract "
        "syntaxes are "
        "refused (*abstract syntax not supported*) unless "
        "`--accept-unknown-sop-classes`. The transfer syntax chosen "
        "is the first of Appendix B (or of `--transfer-syntax`, in that order) that the "
        "requester proposes; with `--transfer-syntax-order proposed`, the first the "
        "requester proposes that is in that list. A specialized SOP Class is accepted "
        "through a related general SOP Class it names in SOP Class Common Extended "
        "Negotiation (PS3.7 D.3.3.6). SCP/SCU Role Selection (PS3.7 D.3.3.4): each role "
        "item is answered, a role proposed is granted or turned down, one not proposed is "
        "never granted; the requester may always be SCU; it may be SCP of a Storage SOP "
        "Class only on an association that also accepts a GET model of 2.2.6 (we are then "
        "its Storage SCU for the C-GET sub-operations), never of Verification, a Q/R "
        "model or Storage Commitment. A context left with no role for the requester is "
        "refused (*user rejection*).",
        "",
        "SOP Class Extended Negotiation (PS3.4 B.3.1), answered when proposed: "
        f"Level of Support {level} (Full: every element, private ones too, is kept), "
        f"Level of Digital Signature Support {signatures} (data sets are stored "
        "bit-preserving; Data Set Trailing Padding, the only thing a policy may "
        f"remove, is outside every signature), Element Coercion {coercion} (none).",
        "",
        "C-STORE: the data set is stored exactly as received, behind File Meta "
        "Information naming the command's SOP Class and Instance, the context's "
        "transfer syntax and the calling AE title as Source Application Entity Title. "
        "Success is answered only once the file is flushed, renamed into place and "
        "its index row committed (`--fsync off` relaxes this). Statuses (each failure "
        "and warning with an Error Comment, and the Offending Element where one "
        "applies):",
        "",
        *_table(("Status", "When"), [(f"{code:04X}", when) for code, when in SCP_STATUSES]),
        "",
        "C-ECHO: 0000 on a Verification presentation context; 0122 on any other "
        "context, or when it names another SOP Class (PS3.7 9.1.5.1.4). A message on a "
        "presentation context that was not accepted is not answered: the association "
        "is aborted (A-ABORT, service provider, invalid PDU parameter value).",
        "",
        "Duplicates (`--on-duplicate`): `keep` (default; 0000 if identical, B000 if "
        "not), `replace` (0000) or `reject` (C111).",
        "",
        "Hierarchy (PS3.4 B.1.1; `--on-relational-mismatch`): an instance without "
        "Study or Series Instance UID is refused (A900). `reject` (default): an "
        "instance whose Series Instance UID is stored under another study, or whose "
        "Study Instance UID is stored under another patient (Patient ID + Issuer of "
        "Patient ID), is refused (A900, Offending Elements named); `accept`: stored "
        "and indexed under its own study and patient. An empty Patient ID is a "
        "patient of its own study, never merged across studies.",
        "",
        "#### 2.2.3 Storage SCU (`dicomstore send`)",
        "",
        "Proposes, per SOP Class found in the files, one presentation context per "
        "transfer syntax they use (each alone, so the SCP accepting it gets the file's "
        "own bytes), plus Explicit and Implicit VR Little Endian when converting "
        "(`--convert`); at most 128 contexts per association, more associations when "
        "needed (`--parallel` at once). Success and Warning statuses (B000, B006, "
        "B007...) count as stored; Failures are reported per instance; transient "
        "failures (refused connection, transient rejection, A-ABORT, DIMSE timeout, "
        "A7xx, 0213) are retried (`--retries`, `--retry-delay`). `--report` writes one "
        "JSON line per instance, `--resume` skips those already stored.",
        "",
        "Forwarding (`serve --forward AET=HOST:PORT`, calling AE title `--aet`): each "
        "stored instance (or each stable study) matching a rule is queued durably and "
        "sent in batches of up to 100 on one association per destination, proposing "
        "each instance's stored transfer syntax alone, then Explicit and Implicit VR "
        "Little Endian (converted only when its own syntax is refused). Transient "
        "failures (refused connection, rejection, A-ABORT, no response within 300 s, "
        "A7xx, 0213) are retried with exponential backoff (`--forward-retry-delay`, "
        "`--forward-retry-max`, jitter); any other Failure status, or no accepted "
        "context, fails the instance for good. Delivery is at least once.",
        "",
        *_query_section(),
        *_commitment_section(),
        "### 2.3 Network interfaces",
        "",
        "TCP/IP, IPv4 and IPv6 (`--host`, `--port`, default 127.0.0.1:11112). TLS 1.2 "
        "or newer with forward-secret AEAD cipher suites (PS3.15 B.9, BCP 195) with "
        "`--tls-cert`/`--tls-key`; client certificates required with "
        "`--tls-require-client-cert`.",
        "",
        "## 3 Media interchange",
        "",
        "None (stored files are PS3.10 files, exportable with `dicomstore export`).",
        "",
        "## 4 Character sets",
        "",
        "Every Specific Character Set is accepted and stored unchanged; the index "
        "decodes names with it (pydicom). C-FIND Identifiers are decoded with theirs; "
        "a response whose values are not all ASCII has Specific Character Set "
        "ISO_IR 192 (UTF-8), else none.",
        "",
        "## 5 Security",
        "",
        "TLS (2.3); caller restrictions and user identity through a policy file "
        "(`--config`), with refusals per address throttled "
        "(`--max-failed-admissions`), the rights `echo`, `store`, `find`, `move`, `get` "
        "and `commit` per peer and user, and per peer the Move Destinations it may name "
        "(`move_to`); an audit trail of associations, stored instances, C-FIND "
        "queries, C-MOVE and C-GET transfers and Storage Commitment requests and "
        "reports in JSON lines (`--audit-log`).",
        "",
        "DICOMweb (PS3.18, `--http-port`) listens on 127.0.0.1 unless `--http-host` "
        "names another address (a warning is logged when it is reachable beyond "
        "loopback without credentials). Without a policy file it asks for none. "
        "With one, the same file decides: HTTP Basic against the `[users]` "
        "passcodes or a Bearer JSON Web Token verified as `[jwt]` says; per user "
        "the rights `read` (QIDO-RS, WADO-RS, browse), `store` (STOW-RS, which "
        "stores through the same service as C-STORE, as that user) and `delete` "
        "(no endpoint yet); anonymous requests only what `http_anonymous_may` "
        "grants. Missing or failed credentials get 401 with `WWW-Authenticate`, "
        "a missing right 403. HTTPS with `--http-tls-cert`/`--http-tls-key` (TLS "
        "1.2 or newer, as 2.3); CORS only for `--http-cors-origin` origins; one "
        "access log line per request; audit records of STOW-RS stores and of "
        "instances read and searched (after PS3.15 A.5.3.6 DICOM Instances Accessed, "
        "A.5.3.7 DICOM Instances Transferred and A.5.3.10 Query).",
        "",
        "Resource bounds: a connection holds an association slot only once its "
        "request is complete, within ARTIM of connecting; each PDU must arrive "
        "within `--operation-timeout` of its first byte; the server stops reading "
        "from a peer that does not read its answers; receive buffers start at 4 "
        "KiB; a deflated data set is counted as it inflates (A700 beyond "
        "`--max-instance-size`, or 256 MiB). HTTP requests are bounded (body, "
        "multipart parts, search parameters, rendered sequence depth): 413 or 400 "
        "with the reason, never a 5xx for bad input.",
        "",
        "## Appendix A: Storage SOP Classes (SCP and SCU)",
        "",
        *_table(("SOP Class", "UID"), [(uids.uid_name(uid), f"`{uid}`") for uid in classes]),
        "",
        "## Appendix B: Transfer syntaxes accepted by the SCP, in order of preference",
        "",
        *_table(("Transfer syntax", "UID"), [(uids.uid_name(ts), f"`{ts}`") for ts in syntaxes]),
        "",
    ]
    return "\n".join(lines)
