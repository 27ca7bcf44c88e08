"""The Native DICOM Model writer of the STOW-RS answer (http/nativexml.py, PS3.19 A.1)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from dicomstore.http.nativexml import native_xml

NS = {"d": "http://dicom.nema.org/PS3.19/models/NativeDICOM"}


def test_values_xml_cannot_hold_are_question_marks_and_markup_is_escaped() -> None:
    """review99 V4: a refused SOP Instance UID holding a control character made the
    whole answer no XML (dcm4che's stowrs could not read it)."""
    text = native_xml(
        {
            "00081198": {
                "vr": "SQ",
                "Value": [
                    {
                        "00081155": {"vr": "UI", "Value": ["1.2\x013<&>"]},
                        "00081197": {"vr": "US", "Value": [0xA900]},
                    }
                ],
            },
            "00081190": {"vr": "UR"},
        }
    )
    root = ET.fromstring(text)
    item = root.find("d:DicomAttribute[@tag='00081198']/d:Item[@number='1']", NS)
    assert item is not None
    uid = item.find("d:DicomAttribute[@tag='00081155']/d:Value", NS)
    assert uid is not None and uid.text == "1.2?3<&>"
    reason = item.find("d:DicomAttribute[@keyword='FailureReason']/d:Value", NS)
    assert reason is not None and reason.text == str(0xA900)
    empty = root.find("d:DicomAttribute[@tag='00081190']", NS)
    assert empty is not None and list(empty) == []  # (no value: no Value element)
    tags = [a.get("tag") for a in root.findall("d:DicomAttribute", NS)]
    assert tags == sorted(tags)
