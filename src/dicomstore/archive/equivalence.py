"""Whether a duplicate sent in another transfer syntax is the data set stored.

A SOP Instance sent again is Success when it is the one stored, B000 when it is
another (``outcome.duplicate``: ``--on-duplicate keep``). Its digest decides when
both came in one transfer syntax. Sent in another (a modality's second try on
another presentation context, DCMTK ``storescu -xi`` after ``-xe``, a C-MOVE from a
PACS that stores Implicit VR), the bytes differ though nothing else does: the
second copy is re-encoded into the stored copy's transfer syntax
(``framing.reencode``, PS3.5 A.1-A.3) and hashed with its digest's algorithm; equal,
it is the same data set (review75 F1: it was B000, "different content").

Only between the native syntaxes (Implicit VR Little Endian, Explicit VR Little and
Big Endian): a deflated or encapsulated one is left to its digest. What the
re-encoding writes its own way (a group length left out, an odd value padded, a
private element's VR from Implicit) makes a copy that is the same data set B000 all
the same: never the other way. The data set is re-encoded under the index lock
(the duplicate is judged there): only up to :data:`MAX_SIZE` bytes.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from dicomstore import uids
from dicomstore.archive import digests
from dicomstore.archive.dicomfile import dataset_offset, encoding_of
from dicomstore.framing import FileSource, FramingError
from dicomstore.framing.reencoding import reencode

#: The largest data set re-encoded to be compared (bytes).
MAX_SIZE = 16 << 20
_CHUNK = 1 << 20


def same_reencoded(existing: dict[str, Any], member: dict[str, Any], temp: str) -> bool:
    """Whether the data set of the PS3.10 file ``temp`` (index row ``member``),
    re-encoded in the transfer syntax of the stored ``existing`` row, hashes to the
    digest ``existing`` records. ``False`` when they are in one syntax (the digests
    told), either is not native, it is over :data:`MAX_SIZE`, or it does not frame.
    ``OSError`` propagates."""
    stored, sent = str(existing["transfer_syntax_uid"]), str(member["transfer_syntax_uid"])
    if stored == sent or not (_native(stored) and _native(sent)):
        return False
    target, source = encoding_of(stored)[:2], encoding_of(sent)[:2]
    with open(temp, "rb") as fp:
        start, end = dataset_offset(fp), os.fstat(fp.fileno()).st_size
        if end - start > MAX_SIZE:
            return False
        with tempfile.TemporaryFile(dir=os.path.dirname(temp)) as out:
            try:
                reencode(FileSource(fp.fileno(), end), start, source, target, out)
            except FramingError:
                return False
            out.seek(0)
            hasher = digests.new(digests.algorithm_of(str(existing["digest"])))
            while block := out.read(_CHUNK):
                hasher.update(block)
    return digests.text(hasher) == str(existing["digest"])


def _native(transfer_syntax: str) -> bool:
    """Implicit VR Little Endian, Explicit VR Little or Big Endian (PS3.5 A.1-A.3)."""
    return not uids.is_deflated(transfer_syntax) and not uids.is_encapsulated(transfer_syntax)
