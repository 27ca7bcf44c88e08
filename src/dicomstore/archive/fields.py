"""The attributes the index keeps, taken from a header.

Patient (PS3.3 C.7.1.1), General Study (C.7.2.1), General Series (C.7.3.1) and
SOP Common / General Image (C.12.1, C.7.6.1). Values that cannot be decoded
or converted become ``None``: the index is a finding aid, never a reason to
refuse an instance. UIDs are taken from the raw bytes (a UI value with a
backslash would otherwise become a multi-value).

:func:`index_fields` reads them from a pydicom ``Dataset``;
:func:`fields_of_elements` from the raw elements of ``scan.scan_header``,
with the same results: a plain value (printable ASCII, one value, the VR of
the dictionary) is decoded directly, as pydicom would decode it, and every
other one is converted by pydicom (imported then: a server that receives plain
headers never loads it).
"""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dicomstore.archive.attributes import ATTRIBUTES
from dicomstore.archive.layout import normalize_uid
from dicomstore.archive.matching import person_name

if TYPE_CHECKING:  # (pydicom loads for what is not plain, not for every instance)
    from pydicom.dataset import Dataset

SOP_CLASS_UID = 0x00080016
SOP_INSTANCE_UID = 0x00080018
STUDY_INSTANCE_UID = 0x0020000D
SERIES_INSTANCE_UID = 0x0020000E
SPECIFIC_CHARACTER_SET = 0x00080005
UID_FIELDS = {
    "sop_class_uid": SOP_CLASS_UID,
    "sop_instance_uid": SOP_INSTANCE_UID,
    "study_uid": STUDY_INSTANCE_UID,
    "series_uid": SERIES_INSTANCE_UID,
}

#: index column -> DICOM keyword, for the text attributes.
TEXT_FIELDS = {
    "patient_name": "PatientName",
    "patient_id": "PatientID",
    "issuer": "IssuerOfPatientID",
    "birth_date": "PatientBirthDate",
    "sex": "PatientSex",
    "study_date": "StudyDate",
    "study_time": "StudyTime",
    "study_description": "StudyDescription",
    "accession_number": "AccessionNumber",
    "referring_physician": "ReferringPhysicianName",
    "study_id": "StudyID",
    "modality": "Modality",
    "body_part": "BodyPartExamined",
    "series_description": "SeriesDescription",
}
#: index column -> DICOM keyword, for the IS attributes.
NUMBER_FIELDS = {"series_number": "SeriesNumber", "instance_number": "InstanceNumber"}


#: Every top-level element the index reads, and the character set that decodes them.
WANTED: frozenset[int] = frozenset(
    [SPECIFIC_CHARACTER_SET, *UID_FIELDS.values()]
    + [ATTRIBUTES[k].tag for k in (*TEXT_FIELDS.values(), *NUMBER_FIELDS.values())]
)
# (column, keyword, tag, VR, pattern of a plain value) for the fast path
_PLAIN = re.compile(rb"[\x20-\x5b\x5d-\x7e]*")  # printable ASCII, no backslash
_PLAIN_PN = re.compile(rb"[\x20-\x3c\x3e-\x5b\x5d-\x7e]*")  # ... and no "=" (PN groups)
_INTEGER = re.compile(rb" *[+-]?[0-9]+ *")
_TEXT = [
    (c, k, a.tag, a.vr, _PLAIN_PN if a.vr == "PN" else _PLAIN)
    for c, k in TEXT_FIELDS.items()
    for a in [ATTRIBUTES[k]]
]
#: The index columns of Person Names (kept without trailing empty components).
_PN_COLUMNS = frozenset(c for c, k in TEXT_FIELDS.items() if ATTRIBUTES[k].vr == "PN")
_NUMBERS = [(c, k, ATTRIBUTES[k].tag, ATTRIBUTES[k].vr) for c, k in NUMBER_FIELDS.items()]


def validating() -> bool:
    """pydicom is set to raise on a value it cannot read (``reading_validation_mode``
    RAISE): then every value goes through pydicom. (Not when pydicom is not loaded
    yet, or still being loaded by another thread, its module without ``settings``
    yet: then nobody has set it.)"""
    config = sys.modules.get("pydicom.config")
    settings = getattr(config, "settings", None)
    if config is None or settings is None:
        return False
    return bool(settings.reading_validation_mode == config.RAISE)


def _multi(value: Any) -> bool:
    from pydicom.multival import MultiValue

    return isinstance(value, MultiValue | list)


#: What a key value too long to have been read (over ``dicomfile.DEFER_SIZE``) is
#: indexed as: no key can stand for it, and ``ingest`` refuses the instance (A900), as
#: two such values would otherwise file two studies, series or patients as one
#: (review98 R4).
class _Unread(str):
    """The one :data:`UNREAD` (told by identity: a value may hold these characters)."""


UNREAD: str = _Unread("<value too long>")

#: The keys that say who the patient is (``schema.patient_key``): UNREAD when unread.
_PATIENT_KEYS = {"patient_id": "PatientID", "issuer": "IssuerOfPatientID"}


def _unread(ds: Dataset, tag: int | str) -> bool:
    """Whether the element ``tag`` is present with a value left unread (deferred)."""
    try:
        elem = ds.get_item(tag, keep_deferred=True)
    except (KeyError, ValueError):
        return False
    return elem is not None and elem.value is None and bool(getattr(elem, "length", 0))


def raw_uid(ds: Dataset, tag: int) -> str | None:
    """A UI value as text without padding; ``None`` when absent or empty, :data:`UNREAD`
    when too long to have been read."""
    if tag not in ds:
        return None
    elem = ds.get_item(tag, keep_deferred=True)
    value = elem.value
    if isinstance(value, bytes):
        text = normalize_uid(value)
    elif value is None:  # empty, or deferred because longer than any UID
        text = UNREAD if getattr(elem, "length", 0) else ""
    elif _multi(value):
        text = "\\".join(str(v) for v in value)
    else:
        text = normalize_uid(str(value))
    return text or None


def _text(ds: Dataset, keyword: str) -> str | None:
    """The value of ``keyword`` as the index keeps it: without the leading and trailing
    spaces PS3.5 6.2 calls insignificant (spaces only: a TAB or a NBSP is a character
    of its own, review80 F3), and where pydicom had to replace bytes it could not
    decode (U+FFFD, which would make two patients one), those bytes escaped instead."""
    try:
        raw = getattr(ds.get_item(keyword), "value", None)  # (bytes, before pydicom's)
        value = ds.get(keyword)
    except Exception:  # undecodable or deferred value
        return None
    if value is None:
        return None
    if _multi(value):
        value = "\\".join(str(v) for v in value)
    text = str(value)
    if "\ufffd" in text and isinstance(raw, bytes) and b"\xef\xbf\xbd" not in raw:
        text = raw.decode("utf-8", "backslashreplace")  # (no real U+FFFD in the bytes)
    return text.strip(" ") or None


def _number(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        if _multi(value):
            value = value[0] if value else None
        return None if value in (None, "") else int(value)
    except Exception:
        return None


def index_fields(ds: Dataset) -> dict[str, Any]:
    """Every attribute column of the index (no file columns) for one data set."""
    fields: dict[str, Any] = {
        "sop_class_uid": raw_uid(ds, SOP_CLASS_UID),
        "sop_instance_uid": raw_uid(ds, SOP_INSTANCE_UID),
        "study_uid": raw_uid(ds, STUDY_INSTANCE_UID),
        "series_uid": raw_uid(ds, SERIES_INSTANCE_UID),
    }
    for column, keyword in TEXT_FIELDS.items():
        fields[column] = _text(ds, keyword)
    for column, keyword in NUMBER_FIELDS.items():
        fields[column] = _number(ds, keyword)
    for column, keyword in _PATIENT_KEYS.items():
        if _unread(ds, keyword):
            fields[column] = UNREAD
    return _person_names(fields)


def fields_of_elements(
    elements: dict[int, tuple[str | None, bytes, int]], implicit: bool
) -> dict[str, Any]:
    """:func:`index_fields` of a data set given by its wanted elements only, as
    ``scan.scan_header`` returns them: tag -> (VR or ``None``, value bytes, offset)."""
    fields: dict[str, Any] = {}
    for column, tag in UID_FIELDS.items():
        element = elements.get(tag)
        fields[column] = None if element is None else (normalize_uid(element[1]) or None)
    fast = not validating()
    slow: list[tuple[str, str, bool]] = []
    for column, keyword, tag, vr, plain in _TEXT:
        element = elements.get(tag)
        if element is None:
            fields[column] = None
        elif fast and element[0] in (None, vr) and plain.fullmatch(element[1]):
            fields[column] = element[1].decode("ascii").strip(" ") or None
        else:
            fields[column] = None  # (keeps the order of the keys)
            slow.append((column, keyword, False))
    for column, keyword, tag, vr in _NUMBERS:
        element = elements.get(tag)
        if element is None:
            fields[column] = None
        elif fast and element[0] in (None, vr) and _INTEGER.fullmatch(element[1]):
            fields[column] = int(element[1])
        elif fast and element[0] in (None, vr) and not element[1].strip(b" \0"):
            fields[column] = None
        else:
            fields[column] = None
            slow.append((column, keyword, True))
    if slow:  # pydicom converts what is not plain, with the Specific Character Set
        from pydicom.dataelem import RawDataElement
        from pydicom.dataset import Dataset
        from pydicom.tag import BaseTag

        ds = Dataset(
            {
                BaseTag(tag): RawDataElement(BaseTag(tag), vr, len(raw), raw, at, implicit, True)
                for tag, (vr, raw, at) in elements.items()
            }
        )
        for column, keyword, number in slow:
            fields[column] = _number(ds, keyword) if number else _text(ds, keyword)
    return _person_names(fields)


def _person_names(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` with each Person Name as the index keeps it (``matching.person_name``)."""
    for column in _PN_COLUMNS:
        if fields[column]:
            fields[column] = person_name(fields[column]) or None
    return fields


def received_now() -> str:
    """A row's ``received_at``: now, UTC, to the microsecond (ISO 8601). Stamped when
    the data set is whole (``ingest.py``) and again when its row is written, in the
    index's write transaction (``publish.py``): a row is visible within moments of its
    stamp, however long it waited for its turn, as the forward queue's recovery and
    the other nodes' arrivals (``services/arrivals.py``) read it (review101 H1)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def nul_free(row: dict[str, Any]) -> str | None:
    """For an index that cannot hold a NUL in text (PostgreSQL): the row's text values
    without their embedded NULs (the index's copy: the file keeps its bytes), or the
    column of a UID holding one, which no index entry can stand for (review50 #8: one
    such instance failed every instance of its batch, A700)."""
    for column, value in row.items():
        if isinstance(value, str) and "\0" in value:
            if column.endswith("_uid"):
                return column
            row[column] = value.replace("\0", "")
    return None


def clean_text(value: Any) -> Any:
    """A string SQLite can store (lone surrogates escaped), other values unchanged."""
    if isinstance(value, str) and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value
