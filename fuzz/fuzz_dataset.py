"""Coverage-guided fuzzing of the data set readers the SCP runs on received bytes.

    pip install atheris
    python fuzz/fuzz_dataset.py -max_total_time=600
    python fuzz/fuzz_dataset.py fuzz/corpus-dataset -max_total_time=600  # keep a corpus

Each input is read as a data set in the three uncompressed encodings (PS3.5
A.1-A.3) and as a deflated one (A.5), through what ingest and STOW-RS call on
bytes a peer chose: the encoding check (``archive.encoding``), the index scan
of the in-memory prefix (``archive.scan``), the header read with pydicom
(``archive.dicomfile.read_header``), the framing walk (``framing.walk``, also
over an inflating source) and the File Meta reader (``framing.file_meta``).
Only their documented errors may come out; anything else is a crash that
atheris reports with the input that caused it.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import tempfile

import atheris

with atheris.instrument_imports():
    from dicomstore import framing, uids
    from dicomstore.archive.dicomfile import HeaderError, read_header
    from dicomstore.archive.encoding import encoding_mismatch
    from dicomstore.archive.scan import scan_header

logging.disable(logging.CRITICAL)  # the readers log what they refuse

_SYNTAXES = (
    (uids.IMPLICIT_VR_LE, True, True),
    (uids.EXPLICIT_VR_LE, False, True),
    (uids.EXPLICIT_VR_BE, False, False),
)


class _Bytes:
    """A :class:`framing.Source` over bytes in memory."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, pos: int, size: int) -> bytes:
        return self.data[pos : pos + size]

    def has(self, pos: int, size: int) -> int:
        return max(0, min(size, len(self.data) - pos))


def _tmpfile(data: bytes) -> int:
    fd, path = tempfile.mkstemp()
    os.unlink(path)
    os.write(fd, data)
    return fd


def test_one_input(data: bytes) -> None:
    for ts, implicit, little in _SYNTAXES:
        encoding_mismatch(data, len(data), ts)
        if little:
            scan_header(data, len(data), implicit)
        try:
            framing.walk(_Bytes(data), 0, implicit, little)
        except framing.FramingError:
            pass
        try:
            read_header(io.BytesIO(data), 0, len(data), ts)
        except HeaderError:
            pass
    encoding_mismatch(data, len(data), uids.DEFLATED_EXPLICIT_VR_LE)
    fd = _tmpfile(data)
    try:
        try:
            framing.walk(framing.InflatedSource(fd, 0, len(data)), 0, False, True)
        except framing.FramingError:
            pass
        with os.fdopen(os.dup(fd), "rb") as fp:
            try:
                read_header(fp, 0, len(data), uids.DEFLATED_EXPLICIT_VR_LE)
            except HeaderError:
                pass
    finally:
        os.close(fd)
    try:
        framing.file_meta(data)
    except framing.FramingError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
