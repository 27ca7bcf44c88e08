"""Value Representations of Explicit VR encodings: which have a 4-byte length (PS3.5 7.1.2).

An explicit VR element header is tag, VR, then a 2-byte length (8 bytes) or,
for the VRs of Table 7.1-1 below, 2 reserved bytes and a 4-byte length (12
bytes). Typed from the standard here, without pydicom, so that code walking
element headers (the SCU's file scan, STOW, the archive) needs no pydicom
import; a test checks them against pydicom's own sets.
"""

from __future__ import annotations

from functools import cache

from dicomstore.pydicom_tables import read_table

#: VRs with a 2-byte reserved field and a 4-byte Value Length (PS3.5 Table 7.1-1).
LONG_VRS: frozenset[bytes] = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
#: VRs with a 2-byte Value Length (PS3.5 Table 7.1-2).
SHORT_VRS: frozenset[bytes] = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split()
)
#: VRs of character strings, padded to an even length with a space (UI: a NUL; the
#: binary VRs: a NUL byte), PS3.5 6.2.
PADDED_WITH_SPACE: frozenset[str] = frozenset(
    "AE AS CS DA DS DT IS LO LT PN SH ST TM UC UR UT".split()  # noqa: SIM905 - a table
)
#: VRs whose values are bytes, not text or numbers (PS3.5 6.2): bulk data for
#: DICOMweb, an instance's content for C-FIND.
BINARY_VRS: frozenset[str] = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
#: Every explicit VR, as its two bytes -> (the VR, has a 4-byte length).
VRS: dict[bytes, tuple[str, bool]] = {
    vr: (vr.decode("ascii"), vr in LONG_VRS) for vr in sorted(LONG_VRS | SHORT_VRS)
}


def ae_title_problem(title: str) -> str | None:
    """Why ``title`` is no AE title (PS3.5 Table 6.2-1, AE: at most 16 characters of
    the default repertoire, no backslash, no control characters; leading and
    trailing spaces are not significant and do not count); ``None`` if it is one."""
    text = title.strip(" ")
    if not text:
        return "empty"
    if len(text) > 16:
        return f"{len(text)} characters, at most 16"
    if not text.isascii() or not text.isprintable() or "\\" in text:
        return "only printable ASCII without backslash"
    return None


def dictionary_sq(tag: int) -> bool | None:
    """Whether pydicom's reader takes an element ``tag`` of undefined length in an
    implicit VR data set for a sequence (PS3.5 7.5, 6.2.2; its
    ``_dictionary_vr_fast``): True when the data dictionary (or, for an even group,
    a repeating group of it) says SQ, False for another VR (its value is then read
    up to a Sequence Delimitation Item), ``None`` for a tag it does not know
    (private, or new): a sequence if its value starts with an item."""
    sq, known, repeaters = _dictionary_vrs()
    if tag in known:
        return tag in sq
    if not (tag >> 16) & 1:
        for value, mask, is_sq in repeaters:
            if (tag ^ value) & mask == 0:
                return is_sq
    return None


@cache
def _dictionary_vrs() -> tuple[frozenset[int], frozenset[int], tuple[tuple[int, int, bool], ...]]:
    """(SQ tags, every tag, repeating groups as (value, mask, is SQ)) of pydicom's
    data dictionary, read from its file (``pydicom_tables``; else pydicom's own)."""
    tables = read_table("_dicom_dict.py", "DicomDictionary", "RepeatersDictionary")
    if tables is None:
        from pydicom._dicom_dict import DicomDictionary, RepeatersDictionary

        tables = DicomDictionary, RepeatersDictionary
    entries, repeating = tables
    repeaters = tuple(
        (
            int(pattern.replace("x", "0"), 16),
            int("".join("0" if c == "x" else "F" for c in pattern), 16),
            entry[0] == "SQ",
        )
        for pattern, entry in repeating.items()
    )
    sq = frozenset(tag for tag, entry in entries.items() if entry[0] == "SQ")
    return sq, frozenset(entries), repeaters
