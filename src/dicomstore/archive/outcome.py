"""What a store ends with: the C-STORE status to answer (PS3.4 B.2.3, PS3.7 C).

The archive decides the status; the storage service copies it into the
C-STORE-RSP with (0000,0902) Error Comment and (0000,0901) Offending Element.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicomstore.error_comment import error_comment

#: Success: the instance is durably stored and indexed (PS3.4 B.2.2).
SUCCESS = 0x0000
#: Warning, Coercion of Data Elements (PS3.4 B.2.3 Table B.2-1): what is stored
#: differs from what was sent. Used for a duplicate kept under policy "keep"
#: when the received bytes differ from the stored ones.
WARNING_COERCION = 0xB000
#: Warning, Elements Discarded (PS3.4 B.2.3): stored without its Data Set
#: Trailing Padding (FFFC,FFFC) under the trailing-padding policy "discard"
#: (``padding.py``).
WARNING_ELEMENTS_DISCARDED = 0xB006
#: Warning, Data Set does not match SOP Class (PS3.4 B.2.3): stored as sent under
#: the "tolerate" class-mismatch policy although (0008,0016) differs from the command.
WARNING_DATASET_MISMATCH = 0xB007
#: Failure, Refused: Out of Resources (A7xx): disk full, quota, any I/O error,
#: index unavailable. The SCU may retry later.
OUT_OF_RESOURCES = 0xA700
#: Failure, Error: Data Set does not match SOP Class (A9xx): (0008,0016) or
#: (0008,0018) absent from the data set or different from the command; no
#: (0020,000D) or (0020,000E) (PS3.4 B.1.1); a series or study the index files
#: under another study or patient (policy ``on_relational_mismatch="reject"``).
DATASET_MISMATCH = 0xA900
#: Failure, Error: Cannot understand (Cxxx): the data set cannot be parsed up
#: to the Pixel Data.
CANNOT_UNDERSTAND = 0xC000
#: Failure, Cxxx sub-code for a duplicate SOP Instance refused by policy
#: "reject". PS3.7 C.5 "Duplicate SOP Instance" (0111) is a general status of
#: N-CREATE, not among the statuses C-STORE may return, so an SCU need not
#: recognise it; a Cxxx code is a Failure to every SCU, and the sub-code 111
#: echoes 0111 for a human reading logs.
DUPLICATE_REJECTED = 0xC111

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

    @property
    def is_success(self) -> bool:
        """True for 0000."""
        return self.status == SUCCESS

    @property
    def is_warning(self) -> bool:
        """True for the warnings of PS3.4 B.2.3 (Bxxx)."""
        return (self.status & 0xF000) == 0xB000

    @property
    def is_failure(self) -> bool:
        """True when the instance was not stored."""
        return not (self.is_success or self.is_warning)

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
        return f"out of resources: {os.strerror(exc.errno)} while {doing}"
    return f"out of resources: {exc.strerror or exc} while {doing}"
