"""DICOM JSON (PS3.18 Annex F) from index rows and from stored files.

Index rows become the QIDO-RS results of PS3.18 10.6.3.3 (Tables 10.6.3-3/4/5)
with each attribute's VR from :data:`dicomstore.archive.query.ATTRIBUTES`.
Stored files become WADO-RS metadata (10.4.1.1.2) in
:mod:`dicomstore.http.instancejson`, with the threshold and the warning held here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from dicomstore.archive.attributes import ATTRIBUTES, Attribute

log = logging.getLogger("dicomstore.http.dicomjson")

#: Binary values above this many bytes are sent as a BulkDataURI.
BULK_THRESHOLD = 1024

#: Return attributes per level (PS3.18 Tables 10.6.3-3, -4, -5) present in the index,
#: plus the ones the index also keeps.
STUDY_KEYWORDS = (
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ModalitiesInStudy",
    "SOPClassesInStudy",
    "ReferringPhysicianName",
    "StudyDescription",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
SERIES_KEYWORDS = (
    "Modality",
    "SeriesDescription",
    "SeriesInstanceUID",
    "SeriesNumber",
    "BodyPartExamined",
    "NumberOfSeriesRelatedInstances",
)
INSTANCE_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "AvailableTransferSyntaxUID",
)
KEYWORDS = {"study": STUDY_KEYWORDS, "series": SERIES_KEYWORDS, "instance": INSTANCE_KEYWORDS}

RETRIEVE_URL = "00081190"
INSTANCE_AVAILABILITY = "00080056"

#: dicomstore's private block (PS3.5 7.8.1): its Private Creator (0009,0010)
#: reserves (0009,1000-10FF); (0009,1010) DT is when a study was reported
#: stable (issue 16, services/stable_search.py).
PRIVATE_CREATOR = "DICOMSTORE"
PRIVATE_CREATOR_TAG = "00090010"
STABLE_AT_TAG = "00091010"


def tag_key(tag: int) -> str:
    """The JSON key of a tag: eight upper-case hex digits (F.2.1)."""
    return f"{tag:08X}"


def _person_name(text: str) -> dict[str, str]:
    groups = dict(zip(("Alphabetic", "Ideographic", "Phonetic"), text.split("="), strict=False))
    return {k: v for k, v in groups.items() if v}


def element(attr: Attribute, value: Any) -> dict[str, Any]:
    """One DICOM JSON attribute object; an absent or empty value gives only its VR."""
    if value is None or value == "" or value == []:
        return {"vr": attr.vr}
    if isinstance(value, list):
        values = value
    else:
        values = [value] if attr.vr == "IS" else str(value).split("\\")
    out: list[dict[str, str]] | list[int] | list[str]
    if attr.vr == "PN":
        out = [_person_name(v) for v in values]
    elif attr.vr == "IS":
        out = [int(v) for v in values]
    else:
        out = [str(v) for v in values]
    return {"vr": attr.vr, "Value": out}


#: Per level, each attribute's row key, JSON key and attribute (made once).
_FIELDS = {
    level: [(ATTRIBUTES[k].key, tag_key(ATTRIBUTES[k].tag), ATTRIBUTES[k]) for k in keywords]
    for level, keywords in KEYWORDS.items()
}


def row_to_json(
    row: Mapping[str, Any], levels: Iterable[str], retrieve_url: str | None
) -> dict[str, Any]:
    """The search result of one row: the attributes of ``levels`` plus Retrieve URL."""
    out: dict[str, Any] = {}
    for level in levels:
        for key, json_key, attr in _FIELDS[level]:
            if key in row:
                out[json_key] = element(attr, row[key])
    out[INSTANCE_AVAILABILITY] = {"vr": "CS", "Value": ["ONLINE"]}
    if retrieve_url is not None:
        out[RETRIEVE_URL] = {"vr": "UR", "Value": [retrieve_url]}
    return dict(sorted(out.items()))


def stable_elements(stable_at: str | None) -> dict[str, Any]:
    """The private elements of a study stable since ``stable_at`` (ISO 8601): its
    Private Creator and the time as a DT in UTC (PS3.5 6.2); none for None."""
    if not stable_at:
        return {}
    when = datetime.fromisoformat(stable_at).astimezone(UTC)
    return {
        PRIVATE_CREATOR_TAG: {"vr": "LO", "Value": [PRIVATE_CREATOR]},
        STABLE_AT_TAG: {"vr": "DT", "Value": [when.strftime("%Y%m%d%H%M%S.%f+0000")]},
    }


def log_cut(key: str, max_depth: int) -> None:
    """The warning for an instance (at ``key``) whose sequences were cut at ``max_depth``."""
    log.warning(
        "DICOM JSON of %s: sequences nested deeper than %d levels sent without their items",
        key.rpartition("/")[2],
        max_depth,
    )
