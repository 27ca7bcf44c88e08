"""The Storage SOP Classes the SCP accepts (PS3.4 B.5) and the UID helpers."""

from __future__ import annotations

import pytest
from pydicom.uid import UID_dictionary
from pynetdicom import sop_class

from dicomstore import uids

#: A sample of PS3.4 Table B.5-1, typed from the standard (not from pydicom).
TABLE_B5_1 = {
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.1.2": "Digital Mammography X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.2.1": "Digital Mammography X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.1.3": "Digital Intra-Oral X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.3.1": "Digital Intra-Oral X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image Storage",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.13.1.3": "Breast Tomosynthesis Image Storage",
    "1.2.840.10008.5.1.4.1.1.13.1.4": "Breast Projection X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.13.1.5": "Breast Projection X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.14.1": "Intravascular OCT Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation Storage",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR Storage",
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF Storage",
    "1.2.840.10008.5.1.4.1.1.128": "Positron Emission Tomography Image Storage",
    "1.2.840.10008.5.1.4.1.1.481.1": "RT Image Storage",
    "1.2.840.10008.5.1.4.1.1.501.2.1": "DICOS Digital X-Ray Image Storage - For Presentation",
}

#: SOP Classes with "Storage" in their names that no C-STORE carries.
NOT_STORAGE = {
    "1.2.840.10008.1.20.1": "Storage Commitment Push Model SOP Class",
    "1.2.840.10008.1.3.10": "Media Storage Directory Storage",
    "1.2.840.10008.1.1": "Verification SOP Class",
    "1.2.840.10008.5.1.4.1.2.2.1": "Study Root Query/Retrieve Information Model - FIND",
}


@pytest.mark.parametrize("uid", sorted(TABLE_B5_1))
def test_table_b5_1_classes_are_storage_classes(uid: str) -> None:
    assert uid in uids.storage_sop_classes(), TABLE_B5_1[uid]


@pytest.mark.parametrize("uid", sorted(NOT_STORAGE))
def test_other_classes_are_not(uid: str) -> None:
    assert uid not in uids.storage_sop_classes(), NOT_STORAGE[uid]


def test_every_storage_class_of_pynetdicom_that_pydicom_names_is_ours() -> None:
    # pynetdicom keeps its own list: an independent oracle (newer classes that
    # pydicom's dictionary does not name yet need --accept-unknown-sop-classes)
    theirs = {uid for uid in sop_class._STORAGE_CLASSES.values() if uid in UID_dictionary}
    assert theirs - set(uids.storage_sop_classes()) == set()


def test_the_explicit_vr_tables_match_pydicom() -> None:
    from pydicom.valuerep import EXPLICIT_VR_LENGTH_16, EXPLICIT_VR_LENGTH_32

    from dicomstore import vr

    assert {str(v).encode() for v in EXPLICIT_VR_LENGTH_32} == vr.LONG_VRS
    assert {str(v).encode() for v in EXPLICIT_VR_LENGTH_16} == vr.SHORT_VRS
    assert vr.VRS[b"OB"] == ("OB", True) and vr.VRS[b"US"] == ("US", False)


def test_new_uid_is_a_uuid_derived_uid() -> None:
    """PS3.5 B.2: "2.25." and the UUID as one integer; valid and unique."""
    made = {uids.new_uid() for _ in range(100)}
    assert len(made) == 100
    assert all(u.startswith("2.25.") and uids.is_valid_uid(u) for u in made)


def test_is_encapsulated_is_pydicoms_answer_for_every_transfer_syntax() -> None:
    from pydicom.uid import UID

    for ts in uids.transfer_syntaxes():
        assert uids.is_encapsulated(ts) is bool(UID(ts).is_encapsulated), ts
    assert uids.is_encapsulated(uids.EXPLICIT_VR_LE) is False
    assert uids.is_encapsulated("1.2.840.10008.1.2.4.50") is True
