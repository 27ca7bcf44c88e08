"""C-FIND Identifiers of the Patient and Study Root Q/R models (PS3.4 C.4.1, C.6.1, C.6.2).

:func:`parse_identifier` turns a request Identifier into the index's filters
(:mod:`dicomstore.archive.query`, the engine QIDO-RS uses, PS3.4 C.2.2.2) and
the return keys; :func:`response_identifier` fills those keys from one index
row. Rules (the conformance statement says the same):

- Query/Retrieve Level (0008,0052) is required and must be a level of the
  information model: PATIENT, STUDY, SERIES, IMAGE for Patient Root; STUDY,
  SERIES, IMAGE for Study Root (else A900);
- hierarchical queries only (C.4.1.2.1): below the top level the unique keys of
  every level above (Patient ID, Study/Series Instance UID) must be present with
  a single value (else A900: relational queries are not supported); a key of a
  level below the one queried is refused (A900);
- keys the index holds are matched and returned; other keys are returned
  zero-length, and a value in one is not matched: each match then has status
  FF01 (optional keys not supported for matching);
- a value the engine cannot match (a malformed date, say) is C000.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from dicomstore import uids
from dicomstore.archive import query as q
from dicomstore.dimse import status as st

PATIENT_ROOT_FIND = uids.PATIENT_ROOT_QR_FIND
STUDY_ROOT_FIND = uids.STUDY_ROOT_QR_FIND

#: The levels of each information model, top first, as named on the wire.
MODEL_LEVELS: dict[str, tuple[str, ...]] = {
    PATIENT_ROOT_FIND: ("PATIENT", "STUDY", "SERIES", "IMAGE"),
    STUDY_ROOT_FIND: ("STUDY", "SERIES", "IMAGE"),
}
#: Wire level -> index level.
INDEX_LEVEL = {"PATIENT": "patient", "STUDY": "study", "SERIES": "series", "IMAGE": "instance"}
#: The unique key of each level (C.6.1.1, C.6.2.1).
UNIQUE_KEY = {
    "PATIENT": 0x00100020,  # Patient ID
    "STUDY": 0x0020000D,  # Study Instance UID
    "SERIES": 0x0020000E,  # Series Instance UID
    "IMAGE": 0x00080018,  # SOP Instance UID
}
SPECIFIC_CHARACTER_SET = 0x00080005
QUERY_RETRIEVE_LEVEL = 0x00080052
RETRIEVE_AE_TITLE = 0x00080054
INSTANCE_AVAILABILITY = 0x00080056
_DEPTH = {level: n for n, level in enumerate(q.LEVELS)}


class FindFailure(Exception):
    """The request cannot be answered with matches: its final status and why."""

    def __init__(self, status: int, comment: str, offending: int | None = None) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment[:64]  # Error Comment is an LO (PS3.7 C.4.2)
        self.offending = (offending,) if offending is not None else None


@dataclass
class FindQuery:
    """A parsed Identifier: what to search and what to return."""

    level: str  # the wire level (PATIENT ... IMAGE)
    filters: dict[int, str] = field(default_factory=dict)
    #: requested keys in order: (tag, VR); filled from the index or zero-length
    keys: list[tuple[int, str]] = field(default_factory=list)
    #: keys with a value the index cannot match (each match answers FF01)
    unmatched: list[int] = field(default_factory=list)

    @property
    def index_level(self) -> str:
        return INDEX_LEVEL[self.level]

    @property
    def pending_status(self) -> int:
        return st.PENDING_WARNING if self.unmatched else st.PENDING

    def described(self) -> dict[str, str]:
        """The matching keys as ``keyword: value`` (logs and audit)."""
        out = {}
        for tag, value in self.filters.items():
            attr = q.attribute(tag)
            out[attr.keyword if attr else f"{tag:08X}"] = value
        return out


def decode_identifier(data: bytes, transfer_syntax: str) -> Dataset:
    """The Identifier data set in the context's (uncompressed) transfer syntax."""
    ds = read_dataset(
        io.BytesIO(data),
        transfer_syntax == uids.IMPLICIT_VR_LE,
        transfer_syntax != uids.EXPLICIT_VR_BE,
    )
    for _elem in ds:  # decode every element now: a broken one fails here, not later
        pass
    return ds


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(_text(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return str(value).strip()


def _tag_name(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def parse_identifier(identifier: Dataset, sop_class: str) -> FindQuery:
    """The query an Identifier asks for, or :class:`FindFailure` (A900 / C000)."""
    levels = MODEL_LEVELS[sop_class]
    if QUERY_RETRIEVE_LEVEL not in identifier:
        raise FindFailure(
            st.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            "no Query/Retrieve Level (0008,0052)",
            QUERY_RETRIEVE_LEVEL,
        )
    level = _text(identifier[QUERY_RETRIEVE_LEVEL].value).upper()
    if level not in levels:
        raise FindFailure(
            st.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"Query/Retrieve Level {level[:12]!r} not in {'/'.join(levels)}",
            QUERY_RETRIEVE_LEVEL,
        )
    found = FindQuery(level)
    depth = _DEPTH[found.index_level]
    for element in identifier:
        tag = int(element.tag)
        if tag in (SPECIFIC_CHARACTER_SET, QUERY_RETRIEVE_LEVEL) or tag < 0x00080000:
            continue
        value = "" if element.VR == "SQ" else _text(element.value)
        if tag in (RETRIEVE_AE_TITLE, INSTANCE_AVAILABILITY):
            found.keys.append((tag, element.VR))
            continue
        attr = q.attribute(tag)
        if attr is None:  # not in the index: returned zero-length, not matched
            found.keys.append((tag, element.VR))
            if value:
                found.unmatched.append(tag)
            continue
        if _DEPTH[attr.level] > depth:
            raise FindFailure(
                st.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                f"{attr.keyword} is a key below the {level} level",
                tag,
            )
        found.keys.append((tag, attr.vr))
        if value:
            if attr.sql is None:
                found.unmatched.append(tag)
            else:
                found.filters[tag] = value
    for upper in levels[: levels.index(level)]:
        key = UNIQUE_KEY[upper]
        value = found.filters.get(key, "")
        if not value or any(c in value for c in "*?\\,"):
            raise FindFailure(
                st.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                f"{level} query without a single {_tag_name(key)} (relational: not supported)",
                key,
            )
    try:
        q.where(found.index_level, found.filters)
    except q.QueryError as exc:
        raise FindFailure(st.CANNOT_UNDERSTAND, str(exc)) from None
    return found


def _value(query: FindQuery, tag: int, row: dict[str, Any], ae_title: str) -> Any:
    if tag == RETRIEVE_AE_TITLE:
        return ae_title
    if tag == INSTANCE_AVAILABILITY:
        return "ONLINE"
    attr = q.attribute(tag)
    if attr is None:
        return None
    computed = attr.sql is None or attr.keyword in ("ModalitiesInStudy", "SOPClassesInStudy")
    if computed and attr.level != query.index_level:
        return None  # a count or list of another level is not in this row
    value = row.get(attr.key)
    if value is None or value == "":
        return None
    if isinstance(value, list):
        return value
    return str(value)


def response_identifier(query: FindQuery, row: dict[str, Any], ae_title: str) -> Dataset:
    """The Identifier of one pending response: the requested keys from ``row``,
    Query/Retrieve Level, and Specific Character Set ``ISO_IR 192`` when a value
    is not ASCII (strings are held as Unicode in the index)."""
    ds = Dataset()
    ds.add(DataElement(QUERY_RETRIEVE_LEVEL, "CS", query.level))
    non_ascii = False
    for tag, vr in query.keys:
        value = _value(query, tag, row, ae_title)
        if vr == "SQ":
            ds.add(DataElement(tag, "SQ", Sequence()))
            continue
        if vr in ("UN", "OB", "OW") or not vr:
            vr = dictionary_VR(tag) if _in_dictionary(tag) else "UN"
        if isinstance(value, str) and not value.isascii():
            non_ascii = True
        ds.add(DataElement(tag, vr, value))
    if non_ascii:
        ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


def _in_dictionary(tag: int) -> bool:
    try:
        dictionary_VR(tag)
    except KeyError:
        return False
    return True
