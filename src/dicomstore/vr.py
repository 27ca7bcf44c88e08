"""Value Representations of Explicit VR encodings: which have a 4-byte length (PS3.5 7.1.2).

An explicit VR element header is tag, VR, then a 2-byte length (8 bytes) or,
for the VRs of Table 7.1-1 below, 2 reserved bytes and a 4-byte length (12
bytes). Typed from the standard here, without pydicom, so that code walking
element headers (the SCU's file scan, STOW, the archive) needs no pydicom
import; a test checks them against pydicom's own sets.
"""

from __future__ import annotations

#: VRs with a 2-byte reserved field and a 4-byte Value Length (PS3.5 Table 7.1-1).
LONG_VRS: frozenset[bytes] = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
#: VRs with a 2-byte Value Length (PS3.5 Table 7.1-2).
SHORT_VRS: frozenset[bytes] = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split()
)
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
