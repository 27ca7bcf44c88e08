"""Whether a duplicate sent in another transfer syntax is the data set stored.

A SOP Instance sent again is Success when it is the one stored, B000 when it is
another (``outcome.duplicate``: ``--on-duplicate keep``). Its digest decides when
both came in one transfer syntax. Sent in another (a modality's second try on
another presentation context, DCMTK ``storescu -xi`` after ``-xe``, a C-MOVE from a
PACS that stores Implicit VR), the bytes differ though nothing else does (review75
F1: it was B000, "different content"). Both ways, each copy is re-encoded into the
other's transfer syntax (``framing.reencode``, PS3.5 A.1-A.3) and hashed with the
other's digest algorithm: the same data set only if each maps onto the other
exactly. One way alone took what the re-encoding writes its own way for the same
(a group length left out, an odd value padded, a VR the dictionary gives in
Implicit VR: review86 F3); both ways, those differ.

Only between the native syntaxes (Implicit VR Little Endian, Explicit VR Little and
Big Endian): a deflated or encapsulated one is left to its digest, as is a data set
over :data:`MAX_SIZE` bytes. It is judged under the index lock (where duplicates
are): a re-encoding still under way after :data:`BUDGET` seconds (a data set of a
million empty elements takes seconds: review86 F1) gives up, and the copy is B000.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO, cast

from dicomstore.archive import digests
from dicomstore.archive.dicomfile import dataset_offset
from dicomstore.framing import FileSource, FramingError
from dicomstore.framing.headers import NATIVE
from dicomstore.framing.reencoding import reencode

#: The largest data set re-encoded to be compared (bytes).
MAX_SIZE = 16 << 20
#: The longest both re-encodings may take together (seconds, under the index lock).
BUDGET = 0.05
_CHUNK = 1 << 20


class _OverBudget(Exception):
    """The re-encoding took longer than :data:`BUDGET`."""


def same_reencoded(
    existing: dict[str, Any], stored: Path | None, member: dict[str, Any], temp: str
) -> bool:
    """Whether the PS3.10 file ``temp`` (index row ``member``) and the stored copy
    (row ``existing``, file ``stored``) hold one data set in two native transfer
    syntaxes: each re-encoded into the other's syntax hashes to the other's digest.
    ``False`` when they are in one syntax (the digests told), either is not native
    or not a local file, over :data:`MAX_SIZE`, does not frame, or the judging is
    over :data:`BUDGET`. ``OSError`` propagates."""
    ours, theirs = str(existing["transfer_syntax_uid"]), str(member["transfer_syntax_uid"])
    if stored is None or ours == theirs or ours not in NATIVE or theirs not in NATIVE:
        return False
    deadline = time.monotonic() + BUDGET
    try:
        return _maps(temp, theirs, ours, str(existing["digest"]), deadline) and _maps(
            str(stored), ours, theirs, str(member["digest"]), deadline
        )
    except (FramingError, _OverBudget):
        return False


def _maps(path: str, source: str, target: str, digest: str, deadline: float) -> bool:
    """Whether the data set of the file ``path``, in ``source``, re-encoded in ``target``
    hashes to ``digest`` (with its algorithm)."""
    with open(path, "rb") as fp:
        start, end = dataset_offset(fp), os.fstat(fp.fileno()).st_size
        if end - start > MAX_SIZE:
            return False
        with tempfile.TemporaryFile(dir=os.path.dirname(path)) as out:
            budgeted = cast(BinaryIO, _Budgeted(out, deadline))
            reencode(FileSource(fp.fileno(), end), start, NATIVE[source], NATIVE[target], budgeted)
            out.seek(0)
            hasher = digests.new(digests.algorithm_of(digest))
            while block := out.read(_CHUNK):
                hasher.update(block)
    return digests.text(hasher) == digest


class _Budgeted:
    """The re-encoding's output file, refusing writes past ``deadline`` (the output is
    written in blocks: a data set of many small elements is stopped within one)."""

    def __init__(self, f: BinaryIO, deadline: float) -> None:
        self.f, self.deadline = f, deadline

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if time.monotonic() > self.deadline:
            raise _OverBudget
        return self.f.write(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()
