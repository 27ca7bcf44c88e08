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


def test_names_binaries_private_attributes_and_empty_values() -> None:
    """What WADO-RS metadata holds beyond the STOW-RS answer (review116 M3): a PN as
    its groups' components, BulkData and InlineBinary, a private attribute's creator,
    an empty value among others (PS3.19 A.1.5)."""
    text = native_xml(
        {
            "00100010": {
                "vr": "PN",
                "Value": [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎"}, None],
            },
            "00200032": {"vr": "DS", "Value": [1.5, None, -2]},
            "00291010": {"vr": "OB", "BulkDataURI": "http://h/x/bulkdata/00291010?a=1&b=2"},
            "00290010": {"vr": "LO", "Value": ["ACME 1.0"]},
            "00291100": {"vr": "OB", "InlineBinary": "AAEC"},
            "00400275": {"vr": "SQ", "Value": [{"00400007": {"vr": "LO", "Value": ["x"]}}]},
        }
    )
    root = ET.fromstring(text)

    def attribute(tag: str) -> ET.Element:
        found = root.find(f"d:DicomAttribute[@tag='{tag}']", NS)
        assert found is not None
        return found

    names = attribute("00100010").findall("d:PersonName", NS)
    assert [n.get("number") for n in names] == ["1", "2"] and list(names[1]) == []
    given = names[0].find("d:Ideographic/d:GivenName", NS)
    assert given is not None and given.text == "太郎"
    assert names[0].find("d:Alphabetic/d:FamilyName", NS).text == "Yamada"  # type: ignore[union-attr]
    values = attribute("00200032").findall("d:Value", NS)
    assert [(v.get("number"), v.text) for v in values] == [("1", "1.5"), ("2", None), ("3", "-2")]
    bulk = attribute("00291010")
    assert bulk.get("privateCreator") == "ACME 1.0" and bulk.get("keyword") is None
    assert bulk.find("d:BulkData", NS).get("uri") == "http://h/x/bulkdata/00291010?a=1&b=2"  # type: ignore[union-attr]
    assert attribute("00291100").find("d:InlineBinary", NS).text == "AAEC"  # type: ignore[union-attr]
    assert attribute("00290010").get("privateCreator") is None
    item = attribute("00400275").find("d:Item[@number='1']/d:DicomAttribute/d:Value", NS)
    assert item is not None and item.text == "x"
    assert attribute("00400275").get("keyword") == "RequestAttributesSequence"
