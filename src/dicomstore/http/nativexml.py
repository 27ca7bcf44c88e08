"""A data set in the DICOM JSON Model (PS3.18 F.2) written in the Native DICOM Model
(PS3.19 A.1): the XML form (``application/dicom+xml``, PS3.18 8.7.3.2) of the
STOW-RS Store Instances Response (10.5.3, Annex I; dcm4che's ``stowrs`` asks for it)
and of WADO-RS metadata (10.4.1.1.2: ``multipart/related;
type="application/dicom+xml"``, one part per instance, required of an origin server
by Table 10.4.4-1).

Each DICOM JSON attribute becomes a ``DicomAttribute`` (``tag``, ``vr``, ``keyword``
from PS3.6 when the tag has one, ``privateCreator`` of a private attribute whose
creator the data set holds): values as ``Value``, names as ``PersonName`` with their
``Alphabetic``/``Ideographic``/``Phonetic`` groups split in components (PS3.5 6.2),
items as ``Item``, a BulkDataURI as ``BulkData uri``, InlineBinary as is (F.2.6-7).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from pydicom.datadict import keyword_for_tag

DICOM_XML = "application/dicom+xml"
_NAMESPACE = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
_HEAD = f'<?xml version="1.0" encoding="UTF-8"?>\n<NativeDicomModel xmlns="{_NAMESPACE}">'
#: The components of a name's group, in PS3.5 6.2's order (PS3.19 A.1.5's elements).
_COMPONENTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")
_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")

#: What XML 1.0 cannot hold, even as a character reference (its 2.2 Char): written "?",
#: as the Warning header writes it (review99 V4: a refused UID holding a control
#: character made the whole answer no XML).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _text(value: Any) -> str:
    return escape(_NOT_XML.sub("?", str(value)))


def native_xml(data_set: dict[str, Any]) -> str:
    """``data_set`` (DICOM JSON, PS3.18 F.2) as a ``NativeDicomModel`` document."""
    return "\n".join(_document(data_set))


def native_xml_of_json(text: bytes) -> bytes:
    """An instance's DICOM JSON object (its text) as a ``NativeDicomModel`` document."""
    return native_xml(json.loads(text)).encode()


def _document(data_set: dict[str, Any]) -> Iterator[str]:
    yield _HEAD
    yield from _attributes(data_set)
    yield "</NativeDicomModel>"


def _keyword(tag: int) -> str:
    try:
        return keyword_for_tag(tag)
    except (ValueError, KeyError):
        return ""


def _creator(tag: int, data_set: dict[str, Any]) -> str | None:
    """The Private Creator of private attribute ``tag`` (PS3.5 7.8.1): the value of
    (gggg,00xx) for (gggg,xxee), when the data set holds it."""
    block = (tag >> 8) & 0xFF
    if not (tag >> 16) & 1 or (tag & 0xFFFF) < 0x1000:
        return None
    reservation = data_set.get(f"{tag >> 16:04X}{block:04X}", {})
    values = reservation.get("Value") or [None]
    return values[0] if isinstance(values[0], str) else None


def _attributes(data_set: dict[str, Any]) -> Iterator[str]:
    keys = {tag.upper(): tag for tag in data_set}
    for tag in sorted(keys):
        attribute = data_set[keys[tag]]
        vr = attribute.get("vr", "UN")
        number = int(tag, 16)
        keyword = _keyword(number)
        named = f" keyword={quoteattr(keyword)}" if keyword else ""
        creator = _creator(number, data_set)
        if creator is not None:
            named += f" privateCreator={quoteattr(_NOT_XML.sub('?', creator))}"
        yield f'<DicomAttribute tag="{tag}" vr="{_text(vr)}"{named}>'
        if "BulkDataURI" in attribute:
            yield f"<BulkData uri={quoteattr(_NOT_XML.sub('?', attribute['BulkDataURI']))}/>"
        elif "InlineBinary" in attribute:
            yield f"<InlineBinary>{_text(attribute['InlineBinary'])}</InlineBinary>"
        for n, value in enumerate(attribute.get("Value", []), 1):
            if vr == "SQ":
                yield f'<Item number="{n}">'
                yield from _attributes(value or {})
                yield "</Item>"
            elif vr == "PN":
                yield _name(n, value)
            elif value is None:
                yield f'<Value number="{n}"/>'
            else:
                yield f'<Value number="{n}">{_text(value)}</Value>'
        yield "</DicomAttribute>"


def _name(n: int, value: Any) -> str:
    """A PN value (F.2.2: an object of its groups, each ``^``-separated) as PS3.19's
    ``PersonName``."""
    out = [f'<PersonName number="{n}">']
    groups = value if isinstance(value, dict) else {}
    for group in _GROUPS:
        text = groups.get(group)
        if not isinstance(text, str):
            continue
        out.append(f"<{group}>")
        for component, part in zip(_COMPONENTS, text.split("^"), strict=False):
            if part:
                out.append(f"<{component}>{_text(part)}</{component}>")
        out.append(f"</{group}>")
    out.append("</PersonName>")
    return "".join(out)
