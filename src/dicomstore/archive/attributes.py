"""The attributes a search can match and return (PS3.4 C.6.1 keys, PS3.18 Tables
10.6.3-3/4/5): each with its keyword, tag, VR, level, the key of a result row and
the column it is matched on in the index; found by keyword or tag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Attribute:
    """A DICOM attribute the index can return and (if ``sql``) match."""

    keyword: str
    tag: int
    vr: str
    level: str
    key: str  # key of a result row
    sql: str | None  # column expression for matching; None: computed, not matchable


ALIAS = {"patient": "p", "study": "st", "series": "se", "instance": "i"}
#: keyword, tag, VR, level, row key; matched on the column of the same name unless
#: the sixth item gives another expression or None (computed, not matchable).
_TABLE_OF_ATTRIBUTES: tuple[tuple[Any, ...], ...] = (
    ("PatientName", 0x00100010, "PN", "patient", "patient_name"),
    ("PatientID", 0x00100020, "LO", "patient", "patient_id"),
    ("IssuerOfPatientID", 0x00100021, "LO", "patient", "issuer"),
    ("PatientBirthDate", 0x00100030, "DA", "patient", "birth_date"),
    ("PatientSex", 0x00100040, "CS", "patient", "sex"),
    ("NumberOfPatientRelatedStudies", 0x00201200, "IS", "patient", "n_studies", None),
    ("NumberOfPatientRelatedSeries", 0x00201202, "IS", "patient", "n_series", None),
    ("NumberOfPatientRelatedInstances", 0x00201204, "IS", "patient", "n_instances", None),
    ("StudyInstanceUID", 0x0020000D, "UI", "study", "study_uid"),
    ("StudyDate", 0x00080020, "DA", "study", "study_date"),
    ("StudyTime", 0x00080030, "TM", "study", "study_time"),
    ("AccessionNumber", 0x00080050, "SH", "study", "accession_number"),
    ("ReferringPhysicianName", 0x00080090, "PN", "study", "referring_physician"),
    ("StudyDescription", 0x00081030, "LO", "study", "study_description"),
    ("StudyID", 0x00200010, "SH", "study", "study_id"),
    ("ModalitiesInStudy", 0x00080061, "CS", "study", "modalities", "b.modality"),
    ("SOPClassesInStudy", 0x00080062, "UI", "study", "sop_classes", "c.sop_class_uid"),
    ("NumberOfStudyRelatedSeries", 0x00201206, "IS", "study", "n_series", None),
    ("NumberOfStudyRelatedInstances", 0x00201208, "IS", "study", "n_instances", None),
    ("SeriesInstanceUID", 0x0020000E, "UI", "series", "series_uid"),
    ("Modality", 0x00080060, "CS", "series", "modality"),
    ("SeriesDescription", 0x0008103E, "LO", "series", "series_description"),
    ("SeriesNumber", 0x00200011, "IS", "series", "series_number"),
    ("BodyPartExamined", 0x00180015, "CS", "series", "body_part"),
    ("NumberOfSeriesRelatedInstances", 0x00201209, "IS", "series", "n_instances", None),
    ("SOPClassUID", 0x00080016, "UI", "instance", "sop_class_uid"),
    ("SOPInstanceUID", 0x00080018, "UI", "instance", "sop_instance_uid"),
    ("InstanceNumber", 0x00200013, "IS", "instance", "instance_number"),
    ("AvailableTransferSyntaxUID", 0x00083002, "UI", "instance", "transfer_syntax_uid"),
    ("SourceApplicationEntityTitle", 0x00020016, "AE", "instance", "calling_ae"),
)
ATTRIBUTES: dict[str, Attribute] = {
    t[0]: Attribute(t[0], t[1], t[2], t[3], t[4], t[5] if len(t) > 5 else f"{ALIAS[t[3]]}.{t[4]}")
    for t in _TABLE_OF_ATTRIBUTES
}
BY_TAG: dict[int, Attribute] = {a.tag: a for a in ATTRIBUTES.values()}


def computed(attr: Attribute) -> bool:
    """A count or list of the entity of ``attr``'s level, made for its row: not matched
    (no ``sql``), or matched on the rows of a level below (Modalities in Study on the
    series' Modality)."""
    return attr.sql is None or not attr.sql.startswith(f"{ALIAS[attr.level]}.")


def in_row_of(attr: Attribute, level: str) -> bool:
    """Whether a result row of a search at ``level`` holds ``attr``'s value: every
    attribute of its level or above but a count or list of another level's entity,
    which the row has of its own (a series row's ``n_instances`` is the series',
    not its study's or patient's: PS3.4 C.3.2, C.6.1.1; review111 F1). Such a key
    is returned empty by C-FIND; QIDO-RS reads a study's and a series' from their
    own rows."""
    return not computed(attr) or attr.level == level


_TAG_RE = re.compile(r"\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?")


def parse_tag(name: str) -> int | None:
    """``GGGGEEEE`` or ``(GGGG,EEEE)`` as an int, else ``None``."""
    m = _TAG_RE.fullmatch(name.strip())
    return int(m[1] + m[2], 16) if m else None


def attribute(name: str | int) -> Attribute | None:
    """The attribute named by a keyword, a tag string or a tag number."""
    if isinstance(name, int):
        return BY_TAG.get(name)
    found = ATTRIBUTES.get(name)
    if found is not None:
        return found
    tag = parse_tag(name)
    return None if tag is None else BY_TAG.get(tag)
