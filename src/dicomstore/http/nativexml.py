"""A data set in the DICOM JSON Model written in the Native DICOM Model (PS3.19 A.1):
the XML form of a response (``application/dicom+xml``, PS3.18 8.7.3.3), here the
STOW-RS Store Instances Response (PS3.18 10.5.3, Annex I), which dcm4che's
``stowrs`` asks for by default.

Values are text, numbers, or nested items (SQ); bulk data is not written here.
"""

from __future__ import annotations

import re
from typing import Any
from xml.sax.saxutils import escape, quoteattr

DICOM_XML = "application/dicom+xml"
_NAMESPACE = "http://dicom.nema.org/PS3.19/models/NativeDICOM"

#: Keywords of the attributes the responses written here hold (PS3.6).
KEYWORDS = {
    "00081150": "ReferencedSOPClassUID",
    "00081155": "ReferencedSOPInstanceUID",
    "00081190": "RetrieveURL",
    "00081196": "WarningReason",
    "00081197": "FailureReason",
    "00081198": "FailedSOPSequence",
    "00081199": "ReferencedSOPSequence",
    "0008119A": "OtherFailuresSequence",
}


#: What XML 1.0 cannot hold, even as a character reference (its 2.2 Char): written "?",
#: as the Warning header writes it (review99 V4: a refused UID holding a control
#: character made the whole answer no XML).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _text(value: Any) -> str:
    return escape(_NOT_XML.sub("?", str(value)))


def native_xml(data_set: dict[str, Any]) -> str:
    """``data_set`` (DICOM JSON, PS3.18 F.2) as a ``NativeDicomModel`` document."""
    out = ['<?xml version="1.0" encoding="UTF-8"?>', f'<NativeDicomModel xmlns="{_NAMESPACE}">']
    _attributes(data_set, out)
    out.append("</NativeDicomModel>")
    return "\n".join(out)


def _attributes(data_set: dict[str, Any], out: list[str]) -> None:
    for tag in sorted(data_set):
        attribute = data_set[tag]
        vr = attribute["vr"]
        keyword = KEYWORDS.get(tag.upper())
        named = f" keyword={quoteattr(keyword)}" if keyword else ""
        out.append(f'<DicomAttribute tag="{tag.upper()}" vr="{vr}"{named}>')
        for number, value in enumerate(attribute.get("Value", []), 1):
            if vr == "SQ":
                out.append(f'<Item number="{number}">')
                _attributes(value, out)
                out.append("</Item>")
            else:
                out.append(f'<Value number="{number}">{_text(value)}</Value>')
        out.append("</DicomAttribute>")
