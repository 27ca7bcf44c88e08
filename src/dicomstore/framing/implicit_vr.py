"""The VR of an element in Implicit VR (PS3.5 A.1), for writing it in Explicit VR.

The data dictionary's (PS3.6, pydicom's): a private element's by its Private Creator
(else UN), a Private Creator LO, a group length UL (PS3.5 7.2, 7.8.1); an ambiguous VR
resolved as PS3.5 says or its data set tells: US or SS by Pixel Representation (but
the LUT descriptors, US: PS3.3 C.11.1.1.1), OB or OW as OW (Pixel, Overlay and
Waveform Data are OW in Implicit VR, PS3.5 A.1; but Waveform Data of 8 Waveform Bits
Allocated is OB, PS3.5 8.3), US or OW as OW. An element before the Pixel
Representation that decides it is taken as US (as DCMTK does).
"""

from __future__ import annotations

import functools

#: LUT descriptors, "US or SS" in PS3.6, whose first and third values are US
#: whatever the Pixel Representation (PS3.3 C.11.1.1.1): read as US.
_LUT_DESCRIPTORS = frozenset({0x00281100, 0x00281101, 0x00281102, 0x00281103, 0x00283002})
_LUT_DESCRIPTORS |= {0x00281111, 0x00281112, 0x00281113}


#: Bytes per number of the binary VRs (PS3.5 7.3: those whose values change with the
#: byte order): a value of another length is none of them.
WIDTH = {"AT": 2, "US": 2, "SS": 2, "OW": 2, "UL": 4, "SL": 4, "FL": 4, "OF": 4, "OL": 4}
WIDTH.update({"FD": 8, "OD": 8, "OV": 8, "SV": 8, "UV": 8})


def written_vr(
    tag: int,
    raw_vr: bytes | None,
    length: int | None,
    creator: str | None,
    context: tuple[int | None, int | None],
    resolve_un: bool,
) -> str:
    """The VR an element is written with in Explicit VR: the one it was read with
    (``raw_vr``, from Explicit VR), else :func:`implicit_vr` (``context``: the Pixel
    Representation and Waveform Bits Allocated of its data set); one of undefined
    length (``length`` ``None``) the dictionary does not know as a sequence is UN.
    With ``resolve_un`` (little endian both ways: a UN's value is then as its VR
    encodes it), a UN of defined length whose tag the dictionary knows (a public
    one, or private of a known creator) is written with that VR when its length
    fits it (PS3.5 6.2.2; review75 F4: a DCMTK peer found no SOP Class in a file
    of UN elements re-encoded as they were, and refused it)."""
    known = implicit_vr(tag, creator, *context) if raw_vr in (None, b"UN") else ""
    if raw_vr is None:
        undefined_unknown = length is None and known != "SQ"
        return "UN" if undefined_unknown and (tag >> 16 & 1 or known == "UN") else known
    if raw_vr != b"UN" or length is None or not resolve_un or known in ("UN", "SQ"):
        return raw_vr.decode("ascii")
    width = 4 if known == "AT" else WIDTH.get(known, 1)  # (AT: swapped by halves)
    return known if length % width == 0 else "UN"


def implicit_vr(
    tag: int, creator: str | None, pixel_representation: int | None, waveform_bits: int | None
) -> str:
    """The VR of ``tag``, of the private block of ``creator`` if private, in a data set
    whose Pixel Representation (0028,0103) is ``pixel_representation`` and Waveform Bits
    Allocated (5400,1004) ``waveform_bits``."""
    group, element = tag >> 16, tag & 0xFFFF
    if element == 0:
        return "UL"  # a group length (PS3.5 7.2)
    if group % 2:
        if 0x10 <= element <= 0xFF:
            return "LO"  # a Private Creator (PS3.5 7.8.1)
        return _private_vr(tag, creator) if creator else "UN"
    vr = _public_vr(tag)
    if " or " not in vr:
        return vr
    if vr == "US or SS":
        if tag in _LUT_DESCRIPTORS:
            return "US"
        return "SS" if pixel_representation == 1 else "US"
    if vr == "OB or OW" and group == 0x5400 and waveform_bits == 8:
        return "OB"  # Waveform Data, its padding and channel values of 8 bits (PS3.5 8.3)
    return "OW"  # OB or OW (PS3.5 A.1: OW in Implicit VR), US or OW and US or SS or OW


@functools.lru_cache(maxsize=4096)
def _public_vr(tag: int) -> str:
    from pydicom.datadict import dictionary_VR

    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


@functools.lru_cache(maxsize=4096)
def _private_vr(tag: int, creator: str) -> str:
    from pydicom.datadict import private_dictionary_VR

    try:
        vr = str(private_dictionary_VR(tag, creator))
    except KeyError:
        return "UN"
    return vr if " or " not in vr and len(vr) == 2 else "UN"
