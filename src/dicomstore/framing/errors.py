"""What a walk over element headers raises, and how it names an element."""

from __future__ import annotations

from dicomstore.errors import DicomstoreError


class FramingError(DicomstoreError):
    """The data set does not frame as the walk understands it (the reason is the message).

    ``tag`` is the element concerned, if known; ``offset`` where its header starts.
    """

    def __init__(self, message: str, tag: int | None = None, offset: int = 0) -> None:
        super().__init__(message)
        self.tag, self.offset = tag, offset


class Corrupt(FramingError):
    """The data set is broken for any reader (cut short, or not inflatable)."""


class Truncated(Corrupt):
    """The data set ends before an element, item or sequence it started is complete.

    ``missing`` is how many bytes are missing at least.
    """

    def __init__(self, message: str, tag: int | None, offset: int, missing: int) -> None:
        super().__init__(message, tag, offset)
        self.missing = missing


def value_cut(what: str, tag: int, pos: int, length: int, have: int) -> Truncated:
    """The element ``what`` (named) at ``pos``, whose value of ``length`` bytes has only
    ``have`` of them before the data set ends."""
    return Truncated(
        f"{what} at offset {pos}: its value of {length} bytes runs past the end of the data"
        f" set, {length - have} bytes missing",
        tag,
        pos,
        length - have,
    )


class TooDeep(FramingError):
    """Sequences nested deeper than ``walking.MAX_DEPTH`` (PS3.5 7.5): what no walk nor
    re-encoding of ours follows (the archive refuses such a data set, C000)."""


class ReadersDisagree(FramingError):
    """An element readers frame differently (pydicom, DCMTK and dcm4che each by its own
    rule): an explicit VR not in PS3.5 Table 6.2-1 (whose length has 2 bytes for one,
    4 for another, or which pydicom reads as Implicit VR), or an undefined length where
    PS3.5 7.1 allows none (only SQ, UN and the Pixel Data). Whatever follows it is
    another data set for each of them: the archive refuses it (C000, review80 F1, F2, F5)."""


class NotPart10(FramingError):
    """The bytes do not start with a preamble and ``DICM`` (PS3.10 7.1)."""


def tag_name(tag: int | None) -> str:
    """``(7FE0,0010) PixelData``: the tag and, when pydicom knows it, its keyword."""
    if tag is None:
        return "an element"
    text = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    if tag >> 16 == 0xFFFE:
        return text
    from pydicom.datadict import keyword_for_tag  # only when a message is made

    keyword = keyword_for_tag(tag)
    return f"{text} {keyword}" if keyword else text
