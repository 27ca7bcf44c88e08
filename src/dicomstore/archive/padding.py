"""The ``trailing_padding="discard"`` policy: Data Set Trailing Padding cut off.

Data Set Trailing Padding (FFFC,FFFC) may be the last element of a data set
"if padding of a Data Set is desired when a file is written"; its value "has
no significance and shall be ignored by all DICOM implementations reading
this Data Set" (PS3.10 7.2, which allows it at the end of data sets nested
in a sequence too). Digital signatures never cover it: PS3.3 C.12.1.1.3.1.1 (Data
Elements Signed, the MAC calculation that the Digital Signature Profiles of
PS3.15 Annex C use) excludes Data Set Trailing Padding (FFFC,FFFC) from the
MAC, so a file without it keeps every signature valid. Discarding it is no
coercion of a value (B000) and does not lower the conformance level (PS3.4
B.4.1: it is no Attribute of any IOD); it is reported with the Warning
"Elements Discarded" B006 (PS3.4 B.2.3) and (FFFC,FFFC) as Offending Element.

:func:`find_trailing_padding` walks the elements of the data set in the file
with the one header walk of :mod:`dicomstore.framing` (PS3.5 7.1, 7.5, A.4: a
2 GiB Pixel Data costs one comparison, never a read; only header bytes are
read, through a small window), the same the SCU uses to find files cut
short. Only a top-level (FFFC,FFFC)
counts: one inside a sequence item ends that item's data set, not the data
set received. Anything that does not frame (the header checks decided what
matters already) means "no padding found". Deflated data sets are kept as
received.

:func:`discard_trailing_padding` cuts the still open temporary file right
before the padding (``os.ftruncate``) and recomputes the digest (``digests``) of the kept
data set bytes by reading them back in chunks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from dicomstore.archive import digests
from dicomstore.archive.dicomfile import encoding_of
from dicomstore.archive.outcome import WARNING_ELEMENTS_DISCARDED
from dicomstore.framing import FileSource, FramingError, walk

__all__ = [
    "TRAILING_PADDING_TAG",
    "Discarded",
    "discard_trailing_padding",
    "find_trailing_padding",
    "merge_warning",
]

#: Data Set Trailing Padding (PS3.10 7.2, PS3.6 Table 6-1).
TRAILING_PADDING_TAG = 0xFFFCFFFC


def find_trailing_padding(fd: int, start: int, end: int, transfer_syntax_uid: str) -> int | None:
    """Where a top-level (FFFC,FFFC) that is the last element of the data set in
    ``fd[start:end]`` starts; ``None``: there is none, the data set does not
    frame (``framing.walk``), or it is deflated. ``fd`` must be readable (``os.pread``)."""
    implicit, little, deflated = encoding_of(transfer_syntax_uid)
    if deflated or end <= start:
        return None
    try:
        walked = walk(FileSource(fd, end), start, implicit, little)
    except FramingError:
        return None
    if walked.last_tag == TRAILING_PADDING_TAG:
        return walked.last_offset
    return None


@dataclass(frozen=True, slots=True)
class Discarded:
    """What :func:`discard_trailing_padding` cut: the new file size and data set digest."""

    removed: int  #: bytes cut (the whole (FFFC,FFFC) element, header and value)
    file_size: int  #: the file's size now
    digest: str  #: of the data set bytes kept (``digests``)

    @property
    def comment(self) -> str:
        """The Error Comment of the B006 answer."""
        return f"Data Set Trailing Padding (FFFC,FFFC), {self.removed} bytes, discarded"


def discard_trailing_padding(
    fd: int, path: str, start: int, end: int, transfer_syntax_uid: str
) -> Discarded | None:
    """Cut the file ``path`` (open for writing as ``fd``) right before the trailing
    padding of its data set ``[start:end]``; ``None``: nothing to cut.

    The data set is read back (header bytes only) to find the padding; when
    something is cut, the kept data set bytes are read again in chunks for
    their digest. ``OSError`` propagates (an I/O failure: A700).
    """
    with open(path, "rb", buffering=0) as fp:
        at = find_trailing_padding(fp.fileno(), start, end, transfer_syntax_uid)
        if at is None:
            return None
        os.ftruncate(fd, at)
        digest, kept = digests.of_data_set(fp, start)
    if start + kept != at:
        raise OSError(f"the data set changed while it was cut ({start + kept} != {at})")
    return Discarded(end - at, at, digest)


def merge_warning(
    warning: tuple[int, str, tuple[int, ...]] | None, discarded: Discarded
) -> tuple[int, str, tuple[int, ...]]:
    """The warning to answer once the padding is discarded (``Staged.warning``).

    Alone: B006 with :attr:`Discarded.comment`. With a warning already due (B007
    under the class-mismatch policy "tolerate") that warning stays, being about
    the meaning of the data set, and its comment and Offending Elements mention
    the padding too: a C-STORE response carries a single Status.
    """
    if warning is None:
        return WARNING_ELEMENTS_DISCARDED, discarded.comment, (TRAILING_PADDING_TAG,)
    status, comment, tags = warning
    return status, f"{comment}; {discarded.comment}", (*tags, TRAILING_PADDING_TAG)
