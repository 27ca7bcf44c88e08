"""What a store ends with: the C-STORE status to answer (PS3.4 B.2.3, PS3.7 C).

The archive decides the status; the storage service copies it into the
C-STORE-RSP with (0000,0902) Error Comment and (0000,0901) Offending Element.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicomstore import status
from dicomstore.error_comment import error_comment

# The statuses the archive decides, by the names of its own policies; the codes
# and their classes have one home, dicomstore.status (PS3.7 Annex C, PS3.4 B.2.3).
#: Success: the instance is durably stored and indexed (PS3.4 B.2.2).
SUCCESS = status.SUCCESS
#: Warning, Coercion of Data Elements: what is stored differs from what was
#: sent (a duplicate kept under policy "keep" whose bytes differ).
WARNING_COERCION = status.COERCION_OF_DATA_ELEMENTS
#: Warning, Elements Discarded: stored without its Data Set Trailing Padding
#: (FFFC,FFFC) under the trailing-padding policy "discard" (``padding.py``).
WARNING_ELEMENTS_DISCARDED = status.ELEMENTS_DISCARDED
#: Warning, Data Set does not match SOP Class: stored as sent under the
#: "tolerate" class-mismatch policy although (0008,0016) differs from the command.
WARNING_DATASET_MISMATCH = status.DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING
#: Failure, Refused: Out of Resources (A7xx): disk full, quota, any I/O error,
#: index unavailable. The SCU may retry later.
OUT_OF_RESOURCES = status.OUT_OF_RESOURCES
#: Failure, Error: Data Set does not match SOP Class (A9xx): (0008,0016) or
#: (0008,0018) absent from the data set or different from the command; no
#: (0020,000D) or (0020,000E) (PS3.4 B.1.1); a series or study the index files
#: under another study or patient (policy ``on_relational_mismatch="reject"``).
DATASET_MISMATCH = status.DATASET_DOES_NOT_MATCH_SOP_CLASS
#: Failure, Error: Cannot understand (Cxxx): the data set cannot be parsed up
#: to the Pixel Data, or is not encoded as its transfer syntax says.
CANNOT_UNDERSTAND = status.CANNOT_UNDERSTAND
#: Failure: a duplicate SOP Instance refused by policy "reject" (C111).
DUPLICATE_REJECTED = status.DUPLICATE_REJECTED

#: (0008,0016) SOP Class UID and (0008,0018) SOP Instance UID, as offending elements.
SOP_CLASS_UID_TAG = 0x00080016
SOP_INSTANCE_UID_TAG = 0x00080018
#: (0020,000D) Study and (0020,000E) Series Instance UID, (0010,0020) Patient ID
#: and (0010,0021) Issuer of Patient ID, as offending elements.
STUDY_INSTANCE_UID_TAG = 0x0020000D
SERIES_INSTANCE_UID_TAG = 0x0020000E
PATIENT_ID_TAG = 0x00100020
ISSUER_OF_PATIENT_ID_TAG = 0x00100021


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    """The result of one C-STORE: the status to answer and, on success, where it went.

    ``error_comment`` is for logs and, cut to an LO by :attr:`wire_comment`, for
    (0000,0902); ``offending_element`` fills (0000,0901) with tags as
    ``0xGGGGEEEE`` integers; ``path`` is the stored file (also for a kept
    duplicate), ``instance`` its index row as :meth:`Archive.get_instance` returns it.
    """

    status: int
    error_comment: str | None = None
    offending_element: tuple[int, ...] | None = None
    path: Path | None = None
    instance: dict[str, Any] | None = None
    #: True: an instance already stored, kept as it was (a duplicate): nothing changed
    kept: bool = False

    @property
    def is_success(self) -> bool:
        """True for 0000."""
        return self.status == SUCCESS

    @property
    def is_warning(self) -> bool:
        """True for a Warning (PS3.7 Annex C): stored, with a remark."""
        return status.is_warning(self.status)

    @property
    def is_failure(self) -> bool:
        """True when the instance was not stored."""
        return status.is_failure(self.status)

    @property
    def wire_comment(self) -> str | None:
        """``error_comment`` as a valid LO value for (0000,0902) (PS3.5 6.2): at most
        64 printable ASCII characters, no backslash, cut between words
        (:func:`dicomstore.error_comment.error_comment`)."""
        return error_comment(self.error_comment)


def failure(status: int, comment: str, *tags: int) -> StoreOutcome:
    """A failure outcome with an Error Comment and optional Offending Elements."""
    return StoreOutcome(status, comment, tuple(tags) or None)


def describe_os_error(exc: OSError, doing: str) -> str:
    """An Error Comment for an I/O failure (A700)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{os.strerror(exc.errno)} while {doing}"
    return f"{exc.strerror or exc} while {doing}"


def duplicate(
    policy: str,
    existing: dict[str, Any],
    path: Path | None,
    identical: Callable[[], bool],
    warning: tuple[int, str, tuple[int, ...]] | None,
    elsewhere: StoreOutcome | None = None,
    intact: Callable[[], bool] | None = None,
) -> StoreOutcome:
    """The outcome for an instance already stored (``existing``, its file at
    ``path``) under the duplicate policy keep or reject: nothing changes.

    reject: C111 naming the SOP Instance. keep: a stored copy whose file is gone or
    no longer has the indexed size is no copy to keep: A700 saying so (not Success:
    the sender would take the archive to hold what it cannot serve; the operator
    deletes it, as ``check`` lists it, and a resend stores it: review77 F3b). Else a
    copy identical to the stored one (``identical()``: the same data set digest) is
    Success, or keeps the ``warning`` its own checks gave (B006, B007: the stored
    copy went through the same policy); another copy is B000 (coercion: what is
    stored is not what was sent), or ``elsewhere`` when given (filed under another
    patient, study or series: ``relations.instance_elsewhere``; judged after the
    identity, review91 D4: a row indexed by an older normalization refused a copy
    identical to the stored one). A copy is Success or B000 only when the stored file
    still holds the copy indexed (``intact()``: its data set has the indexed digest;
    review98 R2: a file damaged in place kept answering 0000 to the resends of the
    good copy, and Storage Commitment failing it); else A700 as for damage.
    """
    if policy == "reject":
        # (the response names the SOP Instance: the 64 characters say why)
        return failure(
            DUPLICATE_REJECTED,
            "Duplicate SOP Instance refused: already stored",
            SOP_INSTANCE_UID_TAG,
        )
    damage = _damage(path, existing)
    same = damage is None and identical()
    # (B000 too says the archive holds a copy: review99 V3; A900 refuses either way)
    if damage is None and (same or elsewhere is None) and intact is not None and not intact():
        damage = "damaged (its data set is not the one indexed)"
    if damage is not None:  # (not a copy the archive holds: review77 F3b)
        return failure(
            OUT_OF_RESOURCES,
            f"stored copy {damage}: delete it, then send it again (dicomstore check)",
        )
    if same:
        if warning is not None:
            status_, comment, tags = warning
            return StoreOutcome(status_, comment, tags, path, existing, kept=True)
        return StoreOutcome(SUCCESS, path=path, instance=existing, kept=True)
    if elsewhere is not None:
        return elsewhere
    return StoreOutcome(
        WARNING_COERCION,
        "Duplicate with different content: kept the copy already stored",
        None,
        path,
        existing,
        kept=True,
    )


def conflicting(verdict: StoreOutcome, existing: dict[str, Any], row: dict[str, Any]) -> bool:
    """Whether ``verdict`` on the copy ``row`` of the stored ``existing`` (kept, not
    replaced: :func:`duplicate`) refused another data set: B000, told by the digest in
    one transfer syntax (a copy in another that the re-encoding could not judge may be
    the same, review102 M2), or A900, filed under another patient, study, series or
    SOP Class (``relations.instance_elsewhere``: a demographics correction; review91
    D1); then no Storage Commitment of the UID until it is stored again
    (``schema.CONFLICTS``): the sender may hold the only copy of what it sent."""
    if verdict.status == DATASET_MISMATCH:  # (of a duplicate: only ``elsewhere``)
        return True
    same_syntax = existing["transfer_syntax_uid"] == row["transfer_syntax_uid"]
    return verdict.kept and verdict.status == WARNING_COERCION and same_syntax


def _damage(path: Path | None, existing: dict[str, Any]) -> str | None:
    """What is wrong with the stored copy's file at ``path`` that one ``stat`` sees
    (None: nothing, or not a local file): gone, or not the size the index recorded."""
    if path is None:
        return None
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return "gone"
    if size != existing["file_size"]:
        return f"damaged ({size} bytes, {existing['file_size']} indexed)"
    return None
