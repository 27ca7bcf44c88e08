"""The Query/Retrieve sections of the conformance statement (PS3.2 Annex A):
the FIND, MOVE and GET SCPs (2.2.4 to 2.2.6, PS3.4 C.4) with the statuses each
answers, and the SCUs (2.2.7, 2.2.8).
"""

from __future__ import annotations

from dicomstore import status as st
from dicomstore import uids
from dicomstore.aio.invoker import (
    MAX_RESPONSE_DATASET,
    RESPONSES_BUFFERED,
    RESPONSES_BUFFERED_BYTES,
)
from dicomstore.archive import attributes
from dicomstore.conformance.tables import table
from dicomstore.services.qr_operations import MAX_IDENTIFIER

#: The bound on a request Identifier, in words (beyond it: A700 / A701).
IDENTIFIER_BOUND = f"{MAX_IDENTIFIER >> 20} MiB"

#: C-FIND statuses the Q/R SCP answers, and when (PS3.4 C.4.1.1.4, PS3.7 C.4.1).
FIND_STATUSES: tuple[tuple[int, str], ...] = (
    (st.PENDING, "one match, its Identifier attached"),
    (st.PENDING_WARNING, "one match; a key with a value is not held by the index (not matched)"),
    (st.SUCCESS, "every match was sent"),
    (st.CANCEL, "a C-CANCEL-RQ for it, on its context, arrived before the last match was sent"),
    (
        st.DATASET_DOES_NOT_MATCH_SOP_CLASS,
        "no (0008,0052), a level not in the model, a key of a lower level, or a unique "
        "key of a higher level missing or not a single value (relational query)",
    ),
    (
        st.CANNOT_UNDERSTAND,
        "an unreadable Identifier, a value that cannot be matched "
        "(a malformed date, time or integer; a pattern over 1024 characters), "
        "or an internal error (logged: the operation is answered all the same)",
    ),
    (
        st.OUT_OF_RESOURCES,
        f"the index unavailable; an Identifier over {IDENTIFIER_BOUND}: the rest is discarded"
        " as it arrives (the association goes on)",
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
        "more than 65535 instances (the counts are US), the index unavailable, or an "
        f"Identifier over {IDENTIFIER_BOUND} (the rest discarded as it arrives; the association "
        "goes on)",
    ),
    (
        st.DATASET_DOES_NOT_MATCH_SOP_CLASS,
        "no (0008,0052), a level not in the model, a unique key missing, with a wildcard, "
        "a list where one value is due, or a key of a lower level with a value",
    ),
    (
        st.CANNOT_UNDERSTAND,
        "an unreadable Identifier, or an internal error (logged; with the counts so far)",
    ),
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

#: How a value of each VR is matched (PS3.4 C.2.2.2).
_MATCHING = {
    "UI": "single value, list of UIDs",
    "DA": "single value, range",
    "TM": "single value, range (a time is the span it names: 0800 is 080000-080059.999999)",
    "PN": "single value, wildcard (case-insensitive for ASCII letters; a value of one"
    " component group, no wildcard but a last *, also matches the alphabetic group of a"
    " name with several, and its ideographic or phonetic groups when it has such letters)",
    "IS": "single value",
}


def query_section() -> list[str]:
    """2.2.4: the Query/Retrieve FIND SCP."""
    keys: list[tuple[str, ...]] = [
        (
            a.keyword,
            f"({a.tag >> 16:04X},{a.tag & 0xFFFF:04X})",
            {"instance": "IMAGE"}.get(a.level, a.level.upper()),
            "return only" if a.sql is None else _MATCHING.get(a.vr, "single value, wildcard"),
        )
        for a in attributes.ATTRIBUTES.values()
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
        "(`*`, `?`), range (dates, times), list of UIDs (separated by `\\`; a UID key "
        "holding a `,` is A900), universal (zero-length) "
        "matching (PS3.4 C.2.2.2); an entity whose Required Key (Patient's Name, Study "
        "Date and Time, Accession Number, Study ID, Modality, Series and Instance Number) "
        "is empty matches any value (unknown: C.2.2.1.1). "
        "Hierarchical queries only (C.4.1.2.1): below the "
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
        "C-CANCEL-RQ honoured between matches (those sent already, up to a fetch of "
        "rows, go on). A patient is its Patient ID with its Issuer of Patient ID: one ID "
        "under two issuers is two PATIENT matches, told apart by (0010,0021) when it is "
        "asked for (a C-MOVE or C-GET of that ID alone is C000). Each C-FIND is audited "
        "(`--audit-log`, after PS3.15 A.5.3.10 Query).",
        "",
        "Keys matched and returned (PS3.4 C.6.1.1, C.6.2.1):",
        "",
        *table(("Attribute", "Tag", "Level", "Matching"), keys),
        "",
        "Statuses:",
        "",
        *table(("Status", "When"), [(f"{code:04X}", when) for code, when in FIND_STATUSES]),
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
        *table(("Status", "When"), [(f"{code:04X}", when) for code, when in MOVE_STATUSES]),
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
        *table(("Status", "When"), [(f"{code:04X}", when) for code, when in GET_STATUSES]),
        "",
    ]


def _models(kind: str, patient_root: str, study_root: str) -> list[str]:
    """The table of the Patient and Study Root models of one Q/R operation."""
    return table(
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
        "the final response (FE00). Relational queries are sent as given. A response "
        f"whose Identifier is over {MAX_RESPONSE_DATASET >> 20} MiB aborts the "
        "association (A-ABORT, invalid PDU parameter value) and fails the C-FIND saying "
        "so (also for C-MOVE and C-GET, 2.2.8); while matches of "
        f"{RESPONSES_BUFFERED_BYTES >> 20} MiB or {RESPONSES_BUFFERED} responses wait to "
        "be printed, "
        "the SCU stops reading from the SCP.",
        "",
        "#### 2.2.8 Query/Retrieve MOVE and GET SCU (`dicomstore move`, `dicomstore get`)",
        "",
        "The Identifier is built as for C-FIND (2.2.7). `move` proposes the MOVE model "
        "and names the Move Destination (`--dest`). `get` proposes the GET model and, "
        "with SCP/SCU Role Selection (SCP role only, PS3.7 D.3.3.4), the common Storage "
        "SOP Classes (or those of `--sop-class`): for each class one context with the "
        "uncompressed transfer syntaxes first, then Deflated, JPEG, JPEG-LS, JPEG 2000 "
        "and RLE, and, as far as 128 contexts go, one context per compressed transfer "
        "syntax for the classes in order (by default CT, MR, CR, DX, MG, US, US "
        "multi-frame, SC and XA), so that an SCP that does not transcode can send an "
        "instance in its stored transfer syntax; each C-STORE "
        "sub-operation is stored as received, into PS3.10 files (`-od`) or an archive "
        "(`--storage`, with the checks and statuses of 2.2.2) and answered after it is "
        "stored. Pending responses update the sub-operation counts; the final status, "
        "the counts and the Failed SOP Instance UID List are reported; a final status "
        "other than 0000 (B000, A701, A702, A801, A900, Cxxx, 0122, 0124) is exit code 1. "
        "Ctrl-C sends a C-CANCEL-RQ.",
        "",
    ]
