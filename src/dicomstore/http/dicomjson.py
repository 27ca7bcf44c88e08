"""DICOM JSON (PS3.18 Annex F) from index rows and from stored files.

Index rows become the QIDO-RS results of PS3.18 10.6.3.3 (Tables 10.6.3-3/4/5)
with each attribute's VR from :data:`dicomstore.archive.query.ATTRIBUTES`.
Stored files become WADO-RS metadata (10.4.1.1.2) in
:mod:`dicomstore.http.instancejson`, with the threshold and the warning held here.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from dicomstore.archive.attributes import ATTRIBUTES, Attribute, in_row_of

log = logging.getLogger("dicomstore.http.dicomjson")

#: Binary values above this many bytes are sent as a BulkDataURI.
BULK_THRESHOLD = 1024
#: No value above this many bytes is inlined (review38mem D2: a 400 MiB UT took
#: 1.7 GiB per /metadata): as a BulkDataURI where DICOM JSON allows one for its VR
#: (:data:`BULK_DATA_VRS`), else the attribute's VR alone, logged.
MAX_INLINE = 64 * 1024
#: In a sequence's items, where no BulkDataURI of ours reaches, a value is inlined up
#: to this many bytes (waveform samples, say), else given by its VR alone, logged.
MAX_INLINE_IN_ITEM = 16 << 20
#: The VRs a BulkDataURI may stand for (PS3.18 F.2.7; also UN).
BULK_DATA_VRS = frozenset(
    ("DS", "FL", "FD", "IS", "LT", "OB", "OD", "OF", "OL", "OV", "OW")
    + ("SL", "SS", "ST", "SV", "UC", "UL", "UN", "UR", "US", "UT", "UV")
)


def dictionary_vr(tag: int) -> str:
    """The first VR the dictionary gives a tag (UN if none), as for a deferred value."""
    from pydicom.datadict import dictionary_VR

    try:
        return str(dictionary_VR(tag)).split(" or ")[0]
    except KeyError:
        return "UN"


def too_long(key: str, tag: int, vr: str, length: int) -> dict[str, Any]:
    """The attribute of a value over :data:`MAX_INLINE` that no BulkDataURI may stand for
    (a Patient's Name of 200 MiB in Implicit VR, say): its VR alone, logged."""
    log.warning(
        "%s: (%04X,%04X) %s of %d bytes is given by its VR alone (too long to inline)",
        key,
        tag >> 16,
        tag & 0xFFFF,
        vr,
        length,
    )
    return {"vr": vr}


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
    return _encoder(attr)(value)


@functools.cache
def _encoder(attr: Attribute) -> Callable[[Any], dict[str, Any]]:
    """:func:`element` of ``attr`` as a function of the value alone (made once per
    attribute: rows call it for each of their attributes). A list is the values; a
    text, its values separated by ``\\``; an IS, one integer."""
    vr = attr.vr

    def person_names(value: Any) -> dict[str, Any]:
        if value is None or value == "" or value == []:
            return {"vr": vr}
        values = value if isinstance(value, list) else str(value).split("\\")
        return {"vr": vr, "Value": [_person_name(v) for v in values]}

    def integers(value: Any) -> dict[str, Any]:
        if value is None or value == "" or value == []:
            return {"vr": vr}
        values = value if isinstance(value, list) else [value]
        return {"vr": vr, "Value": [int(v) for v in values]}

    def text(value: Any) -> dict[str, Any]:
        if value is None or value == "" or value == []:
            return {"vr": vr}
        if isinstance(value, list):
            return {"vr": vr, "Value": [str(v) for v in value]}
        return {"vr": vr, "Value": str(value).split("\\")}

    return {"PN": person_names, "IS": integers}.get(vr, text)


#: Per level, each attribute's row key, JSON key and encoder (made once).
_FIELDS = {
    level: [(ATTRIBUTES[k].key, tag_key(ATTRIBUTES[k].tag), _encoder(ATTRIBUTES[k])) for k in keys]
    for level, keys in KEYWORDS.items()
}
#: The attribute of each JSON key.
_ATTRIBUTE_OF = {tag_key(a.tag): a for a in ATTRIBUTES.values()}


_Field = tuple[str, str, Callable[[Any], dict[str, Any]] | None]


@functools.cache
def _fields_of(levels: tuple[str, ...]) -> list[_Field]:
    """The fields of ``levels`` that a row of a search at the last of them holds
    (``attributes.in_row_of``: not another level's counts) and the two every row
    has (encoder None), in the order of their JSON keys: a row's object is made in
    order, never sorted."""
    fields: list[_Field] = [
        field
        for level in levels
        for field in _FIELDS[level]
        if in_row_of(_ATTRIBUTE_OF[field[1]], levels[-1])
    ]
    fields += [("", INSTANCE_AVAILABILITY, None), ("", RETRIEVE_URL, None)]
    return sorted(fields, key=lambda field: field[1])


def row_to_json(
    row: Mapping[str, Any], levels: Iterable[str], retrieve_url: str | None
) -> dict[str, Any]:
    """The search result of one row: the attributes of ``levels`` plus Retrieve URL,
    in the order of their tags (F.2.1)."""
    out: dict[str, Any] = {}
    for key, json_key, encode in _fields_of(tuple(levels)):
        if encode is not None:
            if key in row:
                out[json_key] = encode(row[key])
        elif json_key == INSTANCE_AVAILABILITY:
            out[json_key] = {"vr": "CS", "Value": ["ONLINE"]}
        elif retrieve_url is not None:
            out[json_key] = {"vr": "UR", "Value": [retrieve_url]}
    return out


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
