"""What C-FIND does not read from a stored header: an instance's content (PS3.4 C.4.1.1.3.2).

The ``find`` right is for finding instances, not for reading them (review81 F4):
C-GET, C-MOVE and WADO-RS give content, each under its own right.
"""

from __future__ import annotations

from pydicom.datadict import dictionary_VR

from dicomstore.vr import BINARY_VRS

#: Attributes that are an instance's content, not attributes to find it by: a document,
#: a report's content tree, waveforms, an icon image.
_CONTENT_TAGS = frozenset({0x00420011, 0x0040A730, 0x54000100, 0x00880200})


def is_content(tag: int) -> bool:
    """Whether C-FIND returns the return key ``tag`` zero-length rather than read it
    from a stored header (review81 F4: a caller with only the find right read a whole
    encapsulated PDF and an SR's report text): the content of :data:`_CONTENT_TAGS`,
    a value of a binary VR (pixels, overlays, waveform data), a private or unknown
    element. Content is for C-GET, C-MOVE and WADO-RS, which need their own right;
    PS3.4 C.4.1.1.3.2 lets an SCP return a key it does not support zero-length."""
    if tag in _CONTENT_TAGS or tag >> 16 & 1:
        return True
    try:
        vrs = dictionary_VR(tag).split(" or ")  # ("OB or OW" for the Pixel Data)
    except KeyError:
        return True
    return not vrs[0] or any(vr in BINARY_VRS for vr in vrs)
