"""Walking the element headers of a data set: does it frame, where does it end.

Each element header starts where the previous value ended (PS3.5 7.1). A
defined-length value is skipped by its length without being read (a 2 GiB
Pixel Data costs a comparison with the file size); an undefined-length one
(SQ, UN, encapsulated Pixel Data) by walking its items and their nested data
sets to the matching Sequence Delimitation Item (PS3.5 7.5, A.4), each item
or fragment again skipped by its length when it has one. Only header bytes
are read, through a window of :data:`WINDOW` bytes, and nothing of pydicom
is imported unless a tag has to be named in a message.

:func:`walk` raises :class:`Truncated` when the bytes end before a header is
complete, before the end of a value, or before the delimiter of an open
sequence or item: the data set is cut short, whatever else it holds (a
deflate stream that cannot be inflated raises its base :class:`Corrupt`). What
the walk does not understand (an explicit VR it does not know, an item where
an element goes) raises the base :class:`FramingError`: such a data set may still
be read by a lenient reader, and the caller decides. Sequences nested deeper than
:data:`MAX_DEPTH` (PS3.5 7.5), the one limit of nesting, raise :class:`TooDeep`.

The bytes come from a :class:`Source`: :class:`FileSource` reads a file with
``os.pread``; :class:`InflatedSource` inflates a Deflated Explicit VR Little
Endian data set (PS3.5 A.5) on the fly, keeping only the window in memory,
and then tells where the deflate stream ended.
"""

from dicomstore.framing.errors import (
    Corrupt,
    FramingError,
    NotPart10,
    ReadersDisagree,
    TooDeep,
    Truncated,
    tag_name,
)
from dicomstore.framing.headers import element_header
from dicomstore.framing.meta import file_meta
from dicomstore.framing.sources import (
    WINDOW,
    FileSource,
    InflatedSource,
    Pread,
    Source,
    file_pread,
    preader,
    stream_pread,
)
from dicomstore.framing.walking import DEEP_SIZE, MAX_DEPTH, Walked, walk, walk_element

__all__ = [
    "DEEP_SIZE",
    "MAX_DEPTH",
    "Pread",
    "WINDOW",
    "Corrupt",
    "FileSource",
    "FramingError",
    "InflatedSource",
    "NotPart10",
    "ReadersDisagree",
    "Source",
    "TooDeep",
    "Truncated",
    "Walked",
    "element_header",
    "file_meta",
    "file_pread",
    "tag_name",
    "preader",
    "stream_pread",
    "walk",
    "walk_element",
]
