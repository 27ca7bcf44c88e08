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
from dicomstore.archive import query as q
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
    (st.UNRECOGNIZED_OPERATION, "a DIMSE command other than C-ECHO, C-STORE and C-FIND"),
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
        *_table(
            ("SOP Class", "UID", "Levels"),
            [
                (
                    "Patient Root Q/R Information Model - FIND",
                    f"`{uids.PATIENT_ROOT_QR_FIND}`",
                    "PATIENT, STUDY, SERIES, IMAGE",
                ),
                (
                    "Study Root Q/R Information Model - FIND",
                    f"`{uids.STUDY_ROOT_QR_FIND}`",
                    "STUDY, SERIES, IMAGE",
                ),
            ],
        ),
        "",
        "Accepted with Explicit VR Little Endian, Implicit VR Little Endian or Explicit "
        "VR Big Endian, when the server stores into an archive. Matches come from the "
        "archive index, through the same engine as QIDO-RS: single value, wildcard "
        "(`*`, `?`), range (dates, times), list of UIDs, universal (zero-length) "
        "matching (PS3.4 C.2.2.2). Hierarchical queries only (C.4.1.2.1): below the "
        "top level, the unique keys of the levels above (Patient ID, Study and Series "
        "Instance UID) must be given with a single value; keys of the levels above are "
        "also matched and returned; relational queries and extended negotiation are "
        "not supported. Keys the index does not hold are returned zero-length; a value "
        "in one is not matched and each match then has status FF01. Retrieve AE Title "
        "(0008,0054) is the server's AE title, Instance Availability (0008,0056) "
        "ONLINE. One pending response per match, streamed as the index yields them; "
        "C-CANCEL-RQ honoured between matches. Each C-FIND is audited (`--audit-log`, "
        "after PS3.15 A.5.3.10 Query). C-MOVE and C-GET are not supported yet.",
        "",
        "Keys matched and returned (PS3.4 C.6.1.1, C.6.2.1):",
        "",
        *_table(("Attribute", "Tag", "Level", "Matching"), keys),
        "",
        "Statuses:",
        "",
        *_table(("Status", "When"), [(f"{code:04X}", when) for code, when in FIND_STATUSES]),
        "",
        "#### 2.2.5 Query/Retrieve FIND SCU (`dicomstore find`)",
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
        "#### 2.2.6 Query/Retrieve MOVE and GET SCU (`dicomstore move`, `dicomstore get`)",
        "",
        "The Identifier is built as for C-FIND (2.2.5). `move` proposes the MOVE model "
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


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


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
                    "Query/Retrieve - FIND: Patient Root, Study Root (2.2.4, 2.2.5)",
                    "Yes (`dicomstore find`)",
                    "Yes (`dicomstore serve`)",
                ),
                (
                    "Query/Retrieve - MOVE, GET: Patient Root, Study Root (2.2.6)",
                    "Yes (`dicomstore move`, `dicomstore get`)",
                    "No",
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
        "`DICOMSTORE`), is a Verification, Storage and Q/R FIND SCP: every instance it "
        "receives is written as a PS3.10 file into its archive (`--storage`) and indexed before "
        "it is acknowledged. `dicomstore send` (Storage SCU) sends files, folders or "
        "data sets to any Storage SCP; `dicomstore echo` is a Verification SCU; "
        "`dicomstore find` a Q/R FIND SCU (2.2.5). Workstations find what was stored "
        "with C-FIND (2.2.4).",
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
        "Verification and the FIND models of 2.2.4; other abstract syntaxes are "
        "refused (*abstract syntax not supported*) unless "
        "`--accept-unknown-sop-classes`. The transfer syntax chosen "
        "is the first of Appendix B (or of `--transfer-syntax`, in that order) that the "
        "requester proposes; with `--transfer-syntax-order proposed`, the first the "
        "requester proposes that is in that list. A specialized SOP Class is accepted "
        "through a related general SOP Class it names in SOP Class Common Extended "
        "Negotiation (PS3.7 D.3.3.6). SCP/SCU Role Selection: the requester may be SCU "
        "only.",
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
        *_query_section(),
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
        "(`--max-failed-admissions`), the rights `echo`, `store` and `find` per peer "
        "and user; an audit trail of associations, stored instances and C-FIND "
        "queries in JSON lines (`--audit-log`).",
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
