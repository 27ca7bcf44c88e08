"""The element header walk (:mod:`dicomstore.framing`) on real files cut anywhere.

Independent of the code under test, pydicom's own reader says where each
top-level element starts: a cut there leaves a shorter data set that frames;
a cut anywhere else must be found. The SCP's trailing-padding search
(:mod:`dicomstore.archive.padding`) uses the same walk; its tests are there.
"""

from __future__ import annotations

import io
import os
import warnings

import pytest
from pydicom.filereader import data_element_generator
from tests.services.test_scu_support import TESTFILES

from dicomstore import framing, uids
from dicomstore.services import sources
from dicomstore.vr import LONG_VRS


def _boundaries(data: bytes, offset: int, implicit: bool, little: bool) -> set[int]:
    """Where pydicom's own reader finds each top-level element to start, and the end."""
    starts = {len(data)}
    fp = io.BytesIO(data)
    fp.seek(offset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for elem in data_element_generator(fp, implicit, little):
            if hasattr(elem, "value_tell"):
                value, vr = elem.value_tell, elem.VR
            else:  # an undefined-length sequence, parsed
                value, vr = elem.file_tell, "SQ"
            long = not implicit and str(vr).encode() in LONG_VRS
            starts.add(value - (12 if long else 8))
    return starts


@pytest.mark.parametrize(
    "name",
    [
        "JPEG2000.dcm",  # explicit VR, undefined-length SQs, encapsulated Pixel Data
        "reportsi.dcm",  # nested undefined-length SQs
        "nested_priv_SQ.dcm",  # implicit VR, nested private SQs
        "UN_sequence.dcm",  # an undefined-length UN: implicit VR inside (PS3.5 6.2.2)
        "rtplan.dcm",  # implicit VR, defined-length SQs
        "MR_small_bigendian.dcm",  # Explicit VR Big Endian
    ],
)
def test_every_cut_is_found_but_those_between_top_level_elements(name: str) -> None:
    """Cut anywhere, the data set is Truncated, unless the cut falls exactly where a
    top-level element starts (a shorter data set that frames: no walk can tell)."""
    path = TESTFILES / name
    data = path.read_bytes()
    parsed = sources.parse_file_meta(data[: sources.HEAD_SIZE])
    assert parsed is not None
    offset, meta = parsed
    ts = meta[0x0010].rstrip(b"\0 ").decode()
    implicit, little = uids.is_implicit_vr(ts), uids.is_little_endian(ts)
    boundaries = _boundaries(data, offset, implicit, little)
    assert len(boundaries) >= 2  # the start and the end at least (UN_sequence: one element)
    fd = os.open(path, os.O_RDONLY)
    try:
        for cut in range(offset, len(data) + 1):
            src = framing.FileSource(fd, cut)
            if cut in boundaries or cut == offset:
                assert framing.walk(src, offset, implicit, little).end == cut
            else:
                with pytest.raises(framing.Truncated):
                    framing.walk(src, offset, implicit, little)
    finally:
        os.close(fd)


def _walk_cut(name: str, cut: int) -> str:
    path = TESTFILES / name
    parsed = sources.parse_file_meta(path.read_bytes()[: sources.HEAD_SIZE])
    assert parsed is not None
    offset, meta = parsed
    implicit = meta[0x0010].rstrip(b"\0 ").decode() == uids.IMPLICIT_VR_LE
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(framing.Truncated) as caught:
            framing.walk(framing.FileSource(fd, cut), offset, implicit, True)
    finally:
        os.close(fd)
    return str(caught.value)


def test_messages_name_the_open_sequences_items_and_fragments() -> None:
    assert _walk_cut("JPEG2000.dcm", 3300) == (
        "the data set ends at offset 3300 inside (7FE0,0010) PixelData (undefined length,"
        " from offset 3022), before its Sequence Delimitation Item: at least 8 bytes missing"
    )
    assert _walk_cut("JPEG2000.dcm", 3050).startswith("fragment 1 of (7FE0,0010) PixelData")
    assert _walk_cut("reportsi.dcm", 2900) == (
        "the data set ends inside the header of (0008,0104) CodeMeaning at offset 2896 in"
        " item 1 of (0040,A043) ConceptNameCodeSequence in item 2 of (0040,A730)"
        " ContentSequence in item 5 of (0040,A730) ContentSequence: 4 of its 8 bytes missing"
    )
    assert _walk_cut("UN_sequence.dcm", 500).startswith(  # implicit VR inside the UN
        "(0008,1155) ReferencedSOPInstanceUID in item 1 of (0008,1199) ReferencedSOPSequence"
    )
