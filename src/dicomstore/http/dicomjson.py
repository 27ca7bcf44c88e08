"""DICOM JSON (PS3.18 Annex F) from index rows and from stored files.

Index rows become the QIDO-RS results of PS3.18 10.6.3.3 (Tables 10.6.3-3/4/5)
with each attribute's VR from :data:`dicomstore.archive.query.ATTRIBUTES`.
Stored files become WADO-RS metadata (10.4.1.1.2) through pydicom's
``DataElement.to_json_dict``, with a ``BulkDataURI`` (F.2.6) for Pixel Data and
every top-level binary value larger than :data:`BULK_THRESHOLD`, read without
loading those values.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement

from dicomstore.archive.query import ATTRIBUTES, Attribute
from dicomstore.archive.stored import read_stored

log = logging.getLogger("dicomstore.http.dicomjson")

#: Binary values above this many bytes are sent as a BulkDataURI.
BULK_THRESHOLD = 1024
_BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})

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


def row_to_json(
    row: Mapping[str, Any], levels: Iterable[str], retrieve_url: str | None
) -> dict[str, Any]:
    """The search result of one row: the attributes of ``levels`` plus Retrieve URL."""
    out: dict[str, Any] = {}
    for level in levels:
        for keyword in KEYWORDS[level]:
            attr = ATTRIBUTES[keyword]
            if attr.key in row:
                out[tag_key(attr.tag)] = element(attr, row[attr.key])
    out[INSTANCE_AVAILABILITY] = {"vr": "CS", "Value": ["ONLINE"]}
    if retrieve_url is not None:
        out[RETRIEVE_URL] = {"vr": "UR", "Value": [retrieve_url]}
    return dict(sorted(out.items()))


def _dictionary_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag)).split(" or ")[0]
    except KeyError:
        return "UN"


def _element_json(elem: DataElement, depth: int, max_depth: int, cut: list[int]) -> dict[str, Any]:
    """One attribute; a sequence's items only ``max_depth`` levels down (F.2.2): below,
    the sequence is given by its VR alone (DICOM JSON cannot say "not shown") and its
    tag added to ``cut``."""
    if elem.VR != "SQ":
        return elem.to_json_dict(None, 1 << 62)
    if depth + 1 >= max_depth:
        cut.append(int(elem.tag))
        return {"vr": "SQ"}
    items = [
        {tag_key(e.tag): _element_json(e, depth + 1, max_depth, cut) for e in item}
        for item in elem.value
    ]
    return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}


def log_cut(path: Path, max_depth: int) -> None:
    """The warning for an instance whose sequences were cut at ``max_depth``."""
    log.warning(
        "DICOM JSON of %s: sequences nested deeper than %d levels sent without their items",
        path.name,
        max_depth,
    )


def read_metadata(
    path: Path,
    transfer_syntax_uid: str,
    bulk_uri: Callable[[int], str],
    tags: Iterable[int] | None = None,
    *,
    max_depth: int,
    cut: list[int] | None = None,
) -> dict[str, Any]:
    """DICOM JSON of a stored instance (file meta excluded): Pixel Data and top-level
    binary values over :data:`BULK_THRESHOLD` as BulkDataURI; only ``tags`` if given;
    nested sequences down to ``max_depth`` levels (the tags of those cut added to
    ``cut``, and a warning logged)."""
    stored = read_stored(path, transfer_syntax_uid, defer_size=BULK_THRESHOLD)
    ds = stored.dataset
    wanted = None if tags is None else set(tags)
    out: dict[str, Any] = {}
    cut = [] if cut is None else cut
    for tag in list(ds.keys()):
        if wanted is not None and int(tag) not in wanted:
            continue
        raw = ds.get_item(tag, keep_deferred=True)
        if isinstance(raw, RawDataElement) and raw.value is None and raw.length > BULK_THRESHOLD:
            vr = str(raw.VR) if raw.VR is not None else _dictionary_vr(int(tag))
            if vr in _BULK_VRS:  # left unread: never loaded to be sent as a URI
                out[tag_key(tag)] = {"vr": vr, "BulkDataURI": bulk_uri(int(tag))}
                continue
        try:
            elem = ds[tag]
            big = elem.VR in _BULK_VRS and len(elem.value or b"") > BULK_THRESHOLD
            if big:
                out[tag_key(tag)] = {"vr": elem.VR, "BulkDataURI": bulk_uri(int(tag))}
            else:
                out[tag_key(tag)] = _element_json(elem, 0, max_depth, cut)
        except Exception:  # noqa: BLE001 - a value pydicom cannot decode: VR only
            out[tag_key(tag)] = {"vr": str(raw.VR or _dictionary_vr(int(tag)))}
    if cut:
        log_cut(path, max_depth)
    pixels = stored.pixels
    if pixels is not None and (wanted is None or pixels.tag in wanted):
        out[tag_key(pixels.tag)] = {"vr": pixels.vr, "BulkDataURI": bulk_uri(pixels.tag)}
    return dict(sorted(out.items()))
