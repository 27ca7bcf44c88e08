"""DICOM JSON of index rows (PS3.18 F.2): each indexed attribute's element, by its VR,
for every form a row's value takes (absent, empty, one, several, a list)."""

from __future__ import annotations

import pytest

from dicomstore.archive.attributes import ATTRIBUTES
from dicomstore.http import dicomjson

#: (value, the element's Value by kind of VR: text, PN, IS); None: no Value at all.
CASES = [
    (None, None, None, None),
    ("", None, None, None),
    ([], None, None, None),
    ("A", ["A"], [{"Alphabetic": "A"}], ValueError),
    ("A\\B", ["A", "B"], [{"Alphabetic": "A"}, {"Alphabetic": "B"}], ValueError),
    (["x", "y"], ["x", "y"], [{"Alphabetic": "x"}, {"Alphabetic": "y"}], ValueError),
    ("DOE^J=D^J", ["DOE^J=D^J"], [{"Alphabetic": "DOE^J", "Ideographic": "D^J"}], ValueError),
    (3, ["3"], [{"Alphabetic": "3"}], [3]),
    ("7", ["7"], [{"Alphabetic": "7"}], [7]),
    ([1, 2], ["1", "2"], AttributeError, [1, 2]),
    (0, ["0"], [{"Alphabetic": "0"}], [0]),
]


@pytest.mark.parametrize("keyword", sorted(ATTRIBUTES))
def test_each_attribute_as_its_vr_wants(keyword) -> None:
    attr = ATTRIBUTES[keyword]
    column = {"PN": 2, "IS": 3}.get(attr.vr, 1)
    for case in CASES:
        value, want = case[0], case[column]
        if isinstance(want, type):
            with pytest.raises(want):
                dicomjson.element(attr, value)
            continue
        expected = {"vr": attr.vr} if want is None else {"vr": attr.vr, "Value": want}
        assert dicomjson.element(attr, value) == expected, value


def test_a_row_has_its_levels_attributes_in_tag_order() -> None:
    row = {"study_uid": "1.2", "patient_name": "DOE^J", "n_series": 2, "modalities": ["CT"]}
    out = dicomjson.row_to_json(row, ("study",), "http://h/studies/1.2")
    assert list(out) == sorted(out)
    assert out["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "DOE^J"}]}
    assert out["00201206"] == {"vr": "IS", "Value": [2]}
    assert out["00080061"] == {"vr": "CS", "Value": ["CT"]}
    assert out["00081190"] == {"vr": "UR", "Value": ["http://h/studies/1.2"]}
    assert "00081190" not in dicomjson.row_to_json(row, ("study",), None)
