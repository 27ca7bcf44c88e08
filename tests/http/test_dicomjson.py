"""DICOM JSON of index rows (PS3.18 F.2): the per-attribute encoders that QIDO-RS
rows use give what :func:`dicomjson.element` gives, for every indexed attribute."""

from __future__ import annotations

import pytest

from dicomstore.archive.attributes import ATTRIBUTES
from dicomstore.http import dicomjson

VALUES = [None, "", [], "A", "A\\B", ["x", "y"], 3, "7", [1, 2], "DOE^J=D^J", 0, "0", "x"]


@pytest.mark.parametrize("keyword", sorted(ATTRIBUTES))
def test_a_rows_encoder_is_element(keyword) -> None:
    attr = ATTRIBUTES[keyword]
    encode = dicomjson._encoder(attr)
    for value in VALUES:
        try:
            want: object = dicomjson.element(attr, value)
        except (ValueError, TypeError, AttributeError) as exc:
            want = type(exc)
        try:
            got: object = encode(value)
        except (ValueError, TypeError, AttributeError) as exc:
            got = type(exc)
        assert got == want, value


def test_a_row_has_its_levels_attributes_in_tag_order() -> None:
    row = {"study_uid": "1.2", "patient_name": "DOE^J", "n_series": 2, "modalities": ["CT"]}
    out = dicomjson.row_to_json(row, ("study",), "http://h/studies/1.2")
    assert list(out) == sorted(out)
    assert out["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "DOE^J"}]}
    assert out["00201206"] == {"vr": "IS", "Value": [2]}
    assert out["00080061"] == {"vr": "CS", "Value": ["CT"]}
    assert out["00081190"] == {"vr": "UR", "Value": ["http://h/studies/1.2"]}
    assert "00081190" not in dicomjson.row_to_json(row, ("study",), None)
