"""The attributes the index keeps, taken from a header read by pydicom.

Patient (PS3.3 C.7.1.1), General Study (C.7.2.1), General Series (C.7.3.1) and
SOP Common / General Image (C.12.1, C.7.6.1). Values that cannot be decoded
or converted become ``None``: the index is a finding aid, never a reason to
refuse an instance. UIDs are taken from the raw bytes (a UI value with a
backslash would otherwise become a multi-value).
"""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicomstore.archive.layout import normalize_uid

SOP_CLASS_UID = 0x00080016
SOP_INSTANCE_UID = 0x00080018
STUDY_INSTANCE_UID = 0x0020000D
SERIES_INSTANCE_UID = 0x0020000E

#: index column -> DICOM keyword, for the text attributes.
TEXT_FIELDS = {
    "patient_name": "PatientName",
    "patient_id": "PatientID",
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


def raw_uid(ds: Dataset, tag: int) -> str | None:
    """A UI value as text without padding; ``None`` when absent or empty."""
    if tag not in ds:
        return None
    elem = ds.get_item(tag, keep_deferred=True)
    value = elem.value
    if isinstance(value, bytes):
        text = normalize_uid(value)
    elif value is None:  # empty, or deferred because longer than any UID
        text = "<value too long>" if getattr(elem, "length", 0) else ""
    elif isinstance(value, MultiValue | list):
        text = "\\".join(str(v) for v in value)
    else:
        text = normalize_uid(str(value))
    return text or None


def _text(ds: Dataset, keyword: str) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:  # undecodable or deferred value
        return None
    if value is None:
        return None
    if isinstance(value, MultiValue | list):
        value = "\\".join(str(v) for v in value)
    text = str(value).strip()
    return text or None


def _number(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        if isinstance(value, MultiValue | list):
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
    return fields
