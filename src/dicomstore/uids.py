"""UIDs: our implementation identity, the Storage SOP Classes and transfer
syntaxes we negotiate, and the UID grammar check (PS3.5 9.1).

Everything is derived from pydicom's UID dictionary, never typed by hand, read
without importing pydicom (:func:`uid_dictionary`); pydicom itself is imported
when first needed (it takes a quarter of a second and tens of MiB).
"""

from __future__ import annotations

import re
from functools import cache

from dicomstore import __version__
from dicomstore.pydicom_tables import read_table

#: Our Implementation Class UID (PS3.7 D.3.3.2), a UUID-derived UID (PS3.5 B.2).
IMPLEMENTATION_CLASS_UID = "2.25.211090040416656508592017138293904046133"
#: Implementation Version Name (PS3.7 D.3.3.2.2): at most 16 characters.
IMPLEMENTATION_VERSION_NAME = ("DICOMSTORE_" + __version__.replace(".", ""))[:16]

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
#: Compressed transfer syntaxes that are lossless (PS3.5 A.4.2 RLE, A.4.1 JPEG Lossless
#: 14 and 14 SV1, A.4.3 JPEG-LS Lossless, A.4.4 JPEG 2000 Lossless Only, A.4.11 HTJ2K
#: Lossless and Lossless RPCL): decoding them changes no value.
LOSSLESS_COMPRESSED = frozenset(
    {
        "1.2.840.10008.1.2.5",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202",
    }
)
#: Query/Retrieve Information Models - FIND (PS3.4 C.6.1.1.2, C.6.2.1.2).
PATIENT_ROOT_QR_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT_QR_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
#: Query/Retrieve Information Models - MOVE and GET (PS3.4 C.6.1.1.3-4, C.6.2.1.3-4).
PATIENT_ROOT_QR_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
STUDY_ROOT_QR_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
PATIENT_ROOT_QR_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_QR_GET = "1.2.840.10008.5.1.4.1.2.2.3"
#: Storage Commitment Push Model SOP Class and its well-known SOP Instance (PS3.4 J.3.5).
STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_PUSH_INSTANCE = "1.2.840.10008.1.20.1.1"

#: Uncompressed transfer syntaxes, in our default order of preference.
UNCOMPRESSED: tuple[str, ...] = (EXPLICIT_VR_LE, IMPLICIT_VR_LE, EXPLICIT_VR_BE)

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def is_valid_uid(value: str) -> bool:
    """True when ``value`` follows the UID grammar of PS3.5 9.1 (≤ 64 chars)."""
    return 0 < len(value) <= 64 and _UID_RE.fullmatch(value) is not None


#: What no instance, series or study is named by (though PS3.5 9.1 allows only digits
#: and dots, legacy data that breaks its grammar otherwise is kept, as every peer
#: does): a "/" (its Retrieve URL could not be served: review76 F3), a "\\" (a
#: second value), a control character (no URL names it either).
_NOT_IN_UID_RE = re.compile(r"[/\\\x00-\x1f\x7f]")


def uid_unaddressable(value: str) -> str | None:
    """The character that keeps ``value`` from naming an instance, series or study
    (:data:`_NOT_IN_UID_RE`), or None."""
    found = _NOT_IN_UID_RE.search(value)
    return found.group() if found is not None else None


def new_uid() -> str:
    """A new UID derived from a random UUID: ``2.25.`` and the UUID as one integer
    (PS3.5 B.2), unique without a registered root."""
    import uuid  # (here: uuid imports platform, 2 ms of every CLI start)

    return f"2.25.{uuid.uuid4().int}"


@cache
def uid_dictionary() -> dict[str, tuple[str, str, str, str, str]]:
    """pydicom's UID dictionary (UID -> name, type, info, retired, keyword), read
    from its module file without importing pydicom (``pydicom_tables``);
    pydicom.uid's own when that file is not where it was (another version)."""
    tables = read_table("_uid_dict.py", "UID_dictionary")
    if tables is not None:
        return tables[0]
    from pydicom.uid import UID_dictionary

    return UID_dictionary


def uid_name(uid: str) -> str:
    """The dictionary name of a UID, or the UID itself."""
    entry = uid_dictionary().get(uid)
    return entry[0] if entry else uid


@cache
def storage_sop_classes() -> tuple[str, ...]:
    """Every Storage SOP Class pydicom knows (PS3.4 Table B.5-1 and later additions).

    A SOP Class whose keyword names a Storage ("CTImageStorage",
    "DigitalXRayImageStorageForPresentation", "TextSRStorageTrial"; retired
    ones included: old modalities still send them), except Storage Commitment
    (PS3.4 J) and Media Storage Directory Storage (the DICOMDIR, PS3.10 only).
    """
    return tuple(
        uid
        for uid, (_name, kind, _info, _retired, keyword) in uid_dictionary().items()
        if kind == "SOP Class"
        and "Storage" in keyword
        and not keyword.startswith(_NOT_STORAGE_CLASSES)
    )


#: SOP Classes with "Storage" in their keyword that no C-STORE carries.
_NOT_STORAGE_CLASSES = ("StorageCommitment", "MediaStorageDirectoryStorage")


@cache
def transfer_syntaxes() -> tuple[str, ...]:
    """Every transfer syntax pydicom knows, uncompressed ones first."""
    known = [uid for uid, entry in uid_dictionary().items() if entry[1] == "Transfer Syntax"]
    rest = [uid for uid in known if uid not in UNCOMPRESSED]
    return (*UNCOMPRESSED, *rest)


def is_little_endian(ts: str) -> bool:
    """Byte order of a transfer syntax (only Explicit VR Big Endian is big)."""
    return ts != EXPLICIT_VR_BE


def is_implicit_vr(ts: str) -> bool:
    """True for Implicit VR Little Endian only (PS3.5 A.1)."""
    return ts == IMPLICIT_VR_LE


def is_deflated(ts: str) -> bool:
    """True for Deflated Explicit VR Little Endian only (PS3.5 A.5)."""
    return ts == DEFLATED_EXPLICIT_VR_LE


def as_uid(value: str):
    """A pydicom UID object (for its properties: is_compressed, is_deflated ...)."""
    from pydicom.uid import UID

    return UID(value)


@cache
def is_encapsulated(ts: str) -> bool:
    """Whether transfer syntax ``ts`` encapsulates its Pixel Data (PS3.5 A.4): pydicom's
    answer, kept (it costs ~100 us a call: once per file of a folder ``send`` scans)."""
    return bool(as_uid(ts).is_encapsulated)
