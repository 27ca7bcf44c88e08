"""C-FIND response Identifiers (PS3.4 C.4.1.1.3.2, PS3.5 7.1): our encoder of index values,
with pydicom encoding the keys read from a stored header (any VR, sequences), gives the
bytes pydicom gives for the same data set, in each uncompressed transfer syntax, with
Specific Character Set ISO_IR 192 when a value is not ASCII (issue 15)."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from dicomstore import uids
from dicomstore.services.conversion import encode_dataset
from dicomstore.services.query_identifier import (
    STUDY_ROOT_FIND,
    encode_elements,
    parse_identifier,
    response_elements,
)

SYNTAXES = [uids.IMPLICIT_VR_LE, uids.EXPLICIT_VR_LE, uids.EXPLICIT_VR_BE]
EXPLICIT = uids.EXPLICIT_VR_LE


def header(name: str) -> Dataset:
    """A stored instance's header as pydicom decodes it."""
    ds = Dataset()
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Rows = 512  # US: swapped in big endian
    ds.PixelSpacing = ["0.5", "0.5"]
    ds.OperatorsName = name
    item = Dataset()
    item.CodeValue = "T-D3000"
    item.CodingSchemeDesignator = "SRT"
    item.CodeMeaning = name
    ds.AnatomicRegionSequence = [item]
    return ds


def request() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.SOPInstanceUID = ""
    ds.ImageType = ""
    ds.Rows = None
    ds.PixelSpacing = ""
    ds.OperatorsName = ""
    ds.AnatomicRegionSequence = []
    ds.PatientComments = ""  # not in the header: returned zero-length
    return ds


@pytest.mark.parametrize("ts", SYNTAXES)
@pytest.mark.parametrize("name", ["Smith^Jo", "Müller^Jörg"])
def test_header_keys_are_encoded_as_pydicom_encodes_them(ts: str, name: str) -> None:
    query = parse_identifier(request(), STUDY_ROOT_FIND)
    stored = header(name)
    row = {"study_uid": "1.2.3", "series_uid": "1.2.3.4", "sop_instance_uid": "1.2.3.4.5"}
    data = encode_elements(response_elements(query, row, "DICOMSTORE", stored), ts)

    expected = Dataset()
    if not name.isascii():
        expected.SpecificCharacterSet = "ISO_IR 192"
    expected.QueryRetrieveLevel = "IMAGE"
    expected.StudyInstanceUID = "1.2.3"
    expected.SeriesInstanceUID = "1.2.3.4"
    expected.SOPInstanceUID = "1.2.3.4.5"
    for keyword in ("ImageType", "Rows", "PixelSpacing", "OperatorsName"):
        setattr(expected, keyword, stored[keyword].value)
    expected.AnatomicRegionSequence = stored.AnatomicRegionSequence
    expected.PatientComments = ""
    assert data == encode_dataset(expected, ts)


def test_without_a_header_its_keys_are_zero_length() -> None:
    query = parse_identifier(request(), STUDY_ROOT_FIND)
    elements = response_elements(query, {"sop_instance_uid": "1.2.3.4.5"}, "DICOMSTORE")
    values = {tag: value for tag, _vr, value in elements}
    assert values[0x00080008] == b"" and values[0x00082218] == b""  # (sequence: empty)
    assert 0x00080005 not in values


@pytest.mark.parametrize("ts", SYNTAXES)
def test_keys_of_an_ambiguous_vr_are_well_formed(ts: str) -> None:
    """review68 #1: Pixel Data ("OB or OW"), LUT Data ("US or OW") as return keys were
    written "OB"/"US" with a 16-bit length: pynetdicom could not decode the Identifier."""
    ds = request()
    ds.PixelData = None
    ds.LUTData = None
    query = parse_identifier(ds, STUDY_ROOT_FIND)
    row = {"study_uid": "1.2.3", "series_uid": "1.2.3.4", "sop_instance_uid": "1.2.3.4.5"}
    elements = response_elements(query, row, "DICOMSTORE")
    vrs = {tag: vr for tag, vr, _ in elements}
    assert (vrs[0x7FE00010], vrs[0x00283006]) == ("OB", "US")
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset

    data = encode_elements(elements, ts)
    fp = DicomBytesIO(data)
    decoded = read_dataset(fp, ts == uids.IMPLICIT_VR_LE, ts != uids.EXPLICIT_VR_BE)
    assert decoded[0x7FE00010].value in (b"", None) and decoded.SOPInstanceUID == "1.2.3.4.5"
    assert 0x00283006 in decoded


def test_a_vr_that_is_not_two_letters_is_never_written() -> None:
    from dicomstore.framing.headers import encode_header

    with pytest.raises(ValueError, match="not a VR"):
        encode_header(0x7FE00010, b"OB or OW", 0)


def test_a_patient_id_with_a_comma_is_one_value_not_a_list() -> None:
    """review36a #11: a Patient ID (LO) may hold a comma; the hierarchical check took it
    for a list (A900 'relational: not supported'). A backslash still makes a list."""
    from dicomstore.services.query_identifier import FindFailure, parse_identifier

    def query(patient_id: str) -> Dataset:
        ds = Dataset()
        ds.QueryRetrieveLevel, ds.PatientID, ds.StudyInstanceUID = "STUDY", patient_id, ""
        return ds

    model = uids.PATIENT_ROOT_QR_FIND
    assert parse_identifier(query("MRN,0042"), model).filters[0x00100020] == "MRN,0042"
    with pytest.raises(FindFailure, match="relational") as refused:
        parse_identifier(query("MRN\\0042"), model)
    # (review100 W2: cut at 64 characters where it said what was missing)
    assert refused.value.comment == "STUDY query needs one PatientID (no relational query)"


def test_a_uid_key_with_a_comma_is_refused() -> None:
    """review36a #11: ',' separates lists in QIDO-RS, not in DIMSE (PS3.5 6.4: '\\'); a
    C-FIND naming "<uid>,<uid>" matched both. A backslash list still matches."""
    from dicomstore.services.query_identifier import FindFailure

    ds = Dataset()
    ds.QueryRetrieveLevel, ds.StudyInstanceUID = "STUDY", "1.2.3,1.2.4"
    with pytest.raises(FindFailure) as failure:
        parse_identifier(ds, STUDY_ROOT_FIND)
    assert failure.value.status == 0xA900 and failure.value.offending == (0x0020000D,)
    assert "holds a ','" in failure.value.comment and len(failure.value.comment) <= 64
    ds.StudyInstanceUID = ["1.2.3", "1.2.4"]
    assert parse_identifier(ds, STUDY_ROOT_FIND).filters[0x0020000D] == "1.2.3\\1.2.4"


@pytest.mark.parametrize("level", ["STUDY", "SERIES"])
def test_study_root_returns_the_patients_header_keys(level: str) -> None:
    """review46 #3: in the Study Root model the patient's attributes are the study's
    (PS3.4 Table C.6-5); read from the header they came back zero-length at STUDY and
    SERIES level, where Patient Root gave them."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    ds.StudyInstanceUID = "1.2.3" if level == "SERIES" else ""
    ds.PatientComments = ""
    ds.PatientBirthTime = ""
    stored = Dataset()
    stored.PatientComments = "allergic to iodine"
    stored.PatientBirthTime = "101500"
    query = parse_identifier(ds, STUDY_ROOT_FIND)
    row = {"study_uid": "1.2.3", "series_uid": "1.2.3.4"}
    data = encode_elements(response_elements(query, row, "DICOMSTORE", stored), EXPLICIT)
    assert b"allergic to iodine" in data and b"101500" in data


def test_a_sequence_after_a_non_ascii_value_is_sent_in_utf8() -> None:
    """review46 #2: a stored Latin-1 header: once a value before it was found not ASCII,
    a sequence's items were never decoded, and pydicom wrote their Latin-1 bytes into
    a response that says ISO_IR 192."""
    import io

    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset
    from pydicom.filewriter import write_dataset

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.InstitutionName = "Klinik Süd"
    item = Dataset()
    item.CodeMeaning = "Prozedur ä"
    ds.ProcedureCodeSequence = [item, item]
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    stored = read_dataset(io.BytesIO(fp.getvalue()), False, True)  # (raw: converted when used)
    assert "Prozedur ä".encode("latin-1") in fp.getvalue()

    request = Dataset()
    request.QueryRetrieveLevel = "STUDY"
    request.StudyInstanceUID = ""
    request.InstitutionName = ""
    request.ProcedureCodeSequence = []
    query = parse_identifier(request, STUDY_ROOT_FIND)
    elements = response_elements(query, {"study_uid": "1.2.3"}, "DICOMSTORE", stored)
    data = encode_elements(elements, EXPLICIT)
    assert b"ISO_IR 192" in data
    assert data.count("Prozedur ä".encode()) == 2 and "ä".encode("latin-1") not in data


def test_an_identifier_of_too_many_keys_is_refused_c000() -> None:
    """review68 #1 (High): 116,000 empty return keys, each looked up in a list of
    them for every match and written in every pending response, held the server
    minutes. At most MAX_KEYS keys; the keys read from a header are a set."""
    from dicomstore.services.query_identifier import MAX_KEYS, FindFailure

    ds = request()
    query = parse_identifier(ds, STUDY_ROOT_FIND)
    assert isinstance(query.from_header, set)
    for n in range(MAX_KEYS):
        ds.add_new(0x00110000 | (n + 0x1000), "LO", "")
    with pytest.raises(FindFailure, match=f"at most {MAX_KEYS} keys") as refused:
        parse_identifier(ds, STUDY_ROOT_FIND)
    assert refused.value.status == 0xC000


def test_content_is_not_returned_by_c_find() -> None:
    """review81 F4: a caller with only the find right read an encapsulated PDF and an
    SR's report text as IMAGE-level return keys. Content comes back zero-length (a key
    not supported, PS3.4 C.4.1.1.3.2); attributes to find by are read as before."""
    ds = request()
    ds.Manufacturer = ""
    ds.add_new(0x00420011, "OB", b"")  # Encapsulated Document
    ds.add_new(0x0040A730, "SQ", [])  # Content Sequence
    ds.add_new(0x54000100, "SQ", [])  # Waveform Sequence
    ds.add_new(0x60003000, "OW", b"")  # Overlay Data
    ds.add_new(0x00291010, "LO", "")  # private
    query = parse_identifier(ds, STUDY_ROOT_FIND)
    assert 0x00080070 in query.from_header
    assert not query.from_header & {0x00420011, 0x0040A730, 0x54000100, 0x60003000, 0x00291010}
    stored = header("Smith^Jo")
    stored.Manufacturer = "ACME"
    stored.add_new(0x00420011, "OB", b"%PDF-1.4 CONFIDENTIAL")
    item = Dataset()
    item.TextValue = "Impression: malignant"
    stored.add_new(0x0040A730, "SQ", [item])
    elements = response_elements(query, {"study_uid": "1.2.3"}, "DICOMSTORE", stored)
    data = encode_elements(elements, EXPLICIT)
    assert b"ACME" in data and b"CONFIDENTIAL" not in data and b"malignant" not in data
