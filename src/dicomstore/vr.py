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
