"""Status codes, one home for every door: the classes of PS3.7 Annex C and the
C-STORE statuses of PS3.4 B.2.3 (also STOW-RS Failure Reasons, PS3.18 Table I.2-2).

``category`` sorts any 16-bit status into its Status Class (PS3.7 Annex C
introduction): Success 0000; Warning 0001, Bxxx, 0107, 0116; Failure Axxx,
Cxxx, 01xx (except 0107 and 0116), 02xx; Cancel FE00; Pending FF00, FF01.
Codes outside those ranges are not allowed by the standard and are treated as
failures, as PS3.4 B.2.3 asks of an SCU ("other status codes").
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "ATTRIBUTE_LIST_ERROR",
    "ATTRIBUTE_VALUE_OUT_OF_RANGE",
    "CANCEL",
    "CANNOT_UNDERSTAND",
    "CLASS_INSTANCE_CONFLICT",
    "COERCION_OF_DATA_ELEMENTS",
    "DATASET_DOES_NOT_MATCH_SOP_CLASS",
    "DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING",
    "DUPLICATE_INVOCATION",
    "DUPLICATE_REJECTED",
    "DUPLICATE_SOP_INSTANCE",
    "ELEMENTS_DISCARDED",
    "INVALID_ARGUMENT_VALUE",
    "INVALID_ATTRIBUTE_VALUE",
    "INVALID_SOP_INSTANCE",
    "MISSING_ATTRIBUTE",
    "MISSING_ATTRIBUTE_VALUE",
    "MISTYPED_ARGUMENT",
    "MOVE_DESTINATION_UNKNOWN",
    "NOT_AUTHORIZED",
    "NO_SUCH_ACTION_TYPE",
    "NO_SUCH_ARGUMENT",
    "NO_SUCH_ATTRIBUTE",
    "NO_SUCH_EVENT_TYPE",
    "NO_SUCH_SOP_CLASS",
    "NO_SUCH_SOP_INSTANCE",
    "OUT_OF_RESOURCES",
    "OVER_SIZE_LIMIT",
    "PENDING",
    "PENDING_WARNING",
    "PROCESSING_FAILURE",
    "RESOURCE_LIMITATION",
    "SOP_CLASS_NOT_SUPPORTED",
    "SUBOPERATIONS_FAILED",
    "SUBOPERATIONS_WARNING",
    "SUCCESS",
    "TRANSFER_SYNTAX_NOT_SUPPORTED",
    "UNABLE_TO_CALCULATE_MATCHES",
    "UNRECOGNIZED_OPERATION",
    "WARNING",
    "Category",
    "category",
    "describe",
    "is_failure",
    "is_stored",
    "is_success",
    "is_transient",
    "is_warning",
]

Category = Literal["success", "warning", "failure", "pending", "cancel"]

# --- Success (PS3.7 C.1) -----------------------------------------------------
SUCCESS = 0x0000

# --- Warnings (PS3.7 C.4, PS3.4 B.2.3) ---------------------------------------
WARNING = 0x0001
ATTRIBUTE_LIST_ERROR = 0x0107
ATTRIBUTE_VALUE_OUT_OF_RANGE = 0x0116
COERCION_OF_DATA_ELEMENTS = 0xB000
ELEMENTS_DISCARDED = 0xB006
DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING = 0xB007

# --- Failures, C-STORE specific ranges (PS3.4 B.2.3) -------------------------
OUT_OF_RESOURCES = 0xA700  # A7xx
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900  # A9xx
CANNOT_UNDERSTAND = 0xC000  # Cxxx
#: Cxxx sub-code for a duplicate SOP Instance refused by policy ("reject"):
#: PS3.7 C.5 Duplicate SOP Instance (0111) is a general status of N-CREATE, not
#: among those C-STORE may return; a Cxxx is a Failure to every SCU, and 111
#: echoes 0111 for a human reading logs. Its Error Comment says why (an SCU's
#: :func:`describe` does not: another SCP's C111 may mean anything of Cxxx).
DUPLICATE_REJECTED = 0xC111
#: STOW-RS Failure Reason: Referenced Transfer Syntax not supported (PS3.18 I.2).
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122

# --- C-MOVE and C-GET (PS3.4 C.4.2.1.5, C.4.3.1.4) ---------------------------
#: Refused: Out of Resources - Unable to calculate number of matches.
UNABLE_TO_CALCULATE_MATCHES = 0xA701
#: Refused: Out of Resources - Unable to perform sub-operations (all failed).
SUBOPERATIONS_FAILED = 0xA702
#: Refused: Move Destination unknown (C-MOVE only).
MOVE_DESTINATION_UNKNOWN = 0xA801
#: Warning: Sub-operations Complete - One or more Failures or Warnings.
SUBOPERATIONS_WARNING = 0xB000

# --- Failures, general (PS3.7 C.5) -------------------------------------------
NO_SUCH_ATTRIBUTE = 0x0105
INVALID_ATTRIBUTE_VALUE = 0x0106
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
NO_SUCH_SOP_INSTANCE = 0x0112
NO_SUCH_EVENT_TYPE = 0x0113
NO_SUCH_ARGUMENT = 0x0114
INVALID_ARGUMENT_VALUE = 0x0115
INVALID_SOP_INSTANCE = 0x0117
NO_SUCH_SOP_CLASS = 0x0118
CLASS_INSTANCE_CONFLICT = 0x0119
MISSING_ATTRIBUTE = 0x0120
MISSING_ATTRIBUTE_VALUE = 0x0121
SOP_CLASS_NOT_SUPPORTED = 0x0122
NO_SUCH_ACTION_TYPE = 0x0123
NOT_AUTHORIZED = 0x0124
DUPLICATE_INVOCATION = 0x0210
UNRECOGNIZED_OPERATION = 0x0211
MISTYPED_ARGUMENT = 0x0212
RESOURCE_LIMITATION = 0x0213

# --- Cancel and Pending (PS3.7 C.2, C.3) -------------------------------------
CANCEL = 0xFE00
PENDING = 0xFF00
PENDING_WARNING = 0xFF01

_TEXT: dict[int, str] = {
    SUCCESS: "Success",
    WARNING: "Warning",
    ATTRIBUTE_LIST_ERROR: "Warning: attribute list error",
    ATTRIBUTE_VALUE_OUT_OF_RANGE: "Warning: attribute value out of range",
    COERCION_OF_DATA_ELEMENTS: "Warning: coercion of data elements",
    ELEMENTS_DISCARDED: "Warning: elements discarded",
    DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING: "Warning: data set does not match SOP Class",
    NO_SUCH_ATTRIBUTE: "Failure: no such attribute",
    INVALID_ATTRIBUTE_VALUE: "Failure: invalid attribute value",
    PROCESSING_FAILURE: "Failure: processing failure",
    DUPLICATE_SOP_INSTANCE: "Failure: duplicate SOP Instance",
    NO_SUCH_SOP_INSTANCE: "Failure: no such SOP Instance",
    NO_SUCH_EVENT_TYPE: "Failure: no such event type",
    NO_SUCH_ARGUMENT: "Failure: no such argument",
    INVALID_ARGUMENT_VALUE: "Failure: invalid argument value",
    INVALID_SOP_INSTANCE: "Failure: invalid SOP Instance",
    NO_SUCH_SOP_CLASS: "Failure: no such SOP Class",
    CLASS_INSTANCE_CONFLICT: "Failure: class-instance conflict",
    MISSING_ATTRIBUTE: "Failure: missing attribute",
    MISSING_ATTRIBUTE_VALUE: "Failure: missing attribute value",
    SOP_CLASS_NOT_SUPPORTED: "Refused: SOP Class not supported",
    NO_SUCH_ACTION_TYPE: "Failure: no such action type",
    NOT_AUTHORIZED: "Refused: not authorized",
    DUPLICATE_INVOCATION: "Failure: duplicate invocation",
    UNRECOGNIZED_OPERATION: "Failure: unrecognized operation",
    MISTYPED_ARGUMENT: "Failure: mistyped argument",
    RESOURCE_LIMITATION: "Failure: resource limitation",
    TRANSFER_SYNTAX_NOT_SUPPORTED: "Error: transfer syntax not supported",
    UNABLE_TO_CALCULATE_MATCHES: "Refused: unable to calculate number of matches",
    SUBOPERATIONS_FAILED: "Refused: unable to perform sub-operations",
    MOVE_DESTINATION_UNKNOWN: "Refused: move destination unknown",
    CANCEL: "Cancel",
    PENDING: "Pending",
    PENDING_WARNING: "Pending with warnings",
}

# Ranges by high byte (PS3.4 B.2.3 for the C-STORE meanings).
_RANGE_TEXT: dict[int, str] = {
    0xA7: "Refused: out of resources",
    0xA9: "Error: data set does not match SOP Class",
}


def category(status: int) -> Category:
    """The Status Class of ``status`` (PS3.7 Annex C); unknown codes are failures."""
    if status == 0x0000:
        return "success"
    high = status >> 12
    if high == 0xB or status in (0x0001, 0x0107, 0x0116):
        return "warning"
    if status in (0xFF00, 0xFF01):
        return "pending"
    if status == 0xFE00:
        return "cancel"
    return "failure"


def is_success(status: int) -> bool:
    """True for Success (0000)."""
    return status == 0


def is_warning(status: int) -> bool:
    """True for a Warning status (PS3.7 Annex C)."""
    return category(status) == "warning"


def is_failure(status: int) -> bool:
    """True for a Failure status, including codes the standard does not define."""
    return status != 0 and category(status) == "failure"  # (Success: asked per instance)


def is_stored(status: int) -> bool:
    """A C-STORE-RSP status saying the instance is stored: Success or Warning (a C-STORE
    has no Pending nor Cancel status, PS3.4 B.2.3: either means it was not)."""
    return category(status) in ("success", "warning")


#: The Error Comment of our SCPs' A700 for a data set over their size limit (``--max-
#: dataset-size``, STOW-RS's body limit): the same data set is refused again.
OVER_SIZE_LIMIT = "larger than the limit"


def is_transient(status: int, error_comment: str | None = None) -> bool:
    """Worth trying again later: A7xx Out of Resources (PS3.4 B.2.3) or 0213 Resource
    Limitation (PS3.7 C.5), unless the comment says the data set is over a size limit."""
    if status >> 8 != 0xA7 and status != RESOURCE_LIMITATION:
        return False
    return error_comment is None or OVER_SIZE_LIMIT not in error_comment


def describe(status: int) -> str:
    """A short human text for ``status``, e.g. ``"Refused: out of resources"``."""
    text = _TEXT.get(status)
    if text is not None:
        return text
    ranged = _RANGE_TEXT.get(status >> 8)
    if ranged is not None:
        return ranged
    high = status >> 12
    if high == 0xC:
        return "Error: cannot understand"
    if high == 0xB:
        return "Warning"
    if high == 0xA:
        return "Failure"
    if status >> 8 in (0x01, 0x02):
        return "Failure"
    return "Unknown status (treated as failure)"
