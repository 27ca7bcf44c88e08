"""What a compressed frame's codestream says it decodes to, read before it is decoded.

A decoder allocates the image its codestream declares, whatever Rows and Columns say:
an 8 KB JPEG whose SOF claims 40000 x 40000 pixels took 9 GB to decode (review42 #1).
PS3.5 8.2 wants the Image Pixel attributes to describe the bit stream, so a frame
whose codestream declares other dimensions is refused before any decoder sees it
(:func:`check`). Read here, from the first bytes of a fragment: the SOFn (or
JPEG-LS's SOF55) of JPEG (ISO/IEC 10918-1 B.2.2, 14495-1 C.2.2) and the SIZ marker
of JPEG 2000 and HTJ2K (ISO/IEC 15444-1 A.5.1). RLE declares nothing: its decoder
makes what Rows and Columns say.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

#: ``read(offset, size)``: up to ``size`` bytes of the fragment at ``offset``.
Read = Callable[[int, int], bytes]

#: Start Of Frame markers (JPEG: C0-CF but DHT C4, JPG C8, DAC CC; JPEG-LS: F7).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}
#: Markers without a segment (TEM, RSTn).
_BARE = frozenset({0x01, *range(0xD0, 0xD8)})
#: Segments walked before the SOF at most (a hostile stream of empty ones ends here).
_MOST_SEGMENTS = 256
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  "


class CodestreamMismatch(ValueError):
    """The codestream declares other dimensions than the data set's Image Pixel module."""


def declared(read: Read, size: int) -> tuple[int, int, int] | None:
    """(rows, columns, components) the codestream at the start of a fragment of ``size``
    bytes declares; None when it starts no JPEG or JPEG 2000 codestream (a fragment
    continuing a frame, RLE) or ends before saying."""
    head = read(0, 16)
    if head.startswith(b"\xff\xd8"):
        return _jpeg(read, size)
    if head.startswith(b"\xff\x4f\xff\x51"):
        return _siz(read(4, 40))
    if head.startswith(_JP2_SIGNATURE):  # (a JP2 file, not the bare codestream A.4.4 wants)
        window = read(0, min(size, 1 << 16))
        at = window.find(b"\xff\x4f\xff\x51")
        return _siz(window[at + 4 : at + 44]) if at >= 0 else None
    return None


def check(read: Read, size: int, rows: int, columns: int, samples: int, what: str) -> None:
    """Raise :class:`CodestreamMismatch` when the codestream at the start of the fragment
    declares other rows, columns or components than the data set's (``what`` names
    the frame in the message)."""
    found = declared(read, size)
    if found is not None and found != (rows, columns, samples):
        raise CodestreamMismatch(
            f"{what}: its codestream declares {found[0]} x {found[1]} pixels of"
            f" {found[2]} component(s), the data set {rows} x {columns} of {samples}"
            " (PS3.5 8.2): not decoded"
        )


def _jpeg(read: Read, size: int) -> tuple[int, int, int] | None:
    pos = 2
    for _ in range(_MOST_SEGMENTS):
        head = read(pos, 4)
        if len(head) < 2 or head[0] != 0xFF:
            return None
        marker = head[1]
        if marker == 0xFF:  # (a fill byte)
            pos += 1
            continue
        if marker in _BARE:
            pos += 2
            continue
        if len(head) < 4 or marker in (0xD9, 0xDA):  # (EOI, SOS: no SOF before the scan)
            return None
        (length,) = struct.unpack(">H", head[2:4])
        if marker in _SOF:
            sof = read(pos + 4, 6)
            if len(sof) < 6:
                return None
            _precision, height, width, components = struct.unpack(">BHHB", sof)
            return height, width, components
        pos += 2 + length
        if pos >= size:
            return None
    return None


def _siz(siz: bytes) -> tuple[int, int, int] | None:
    """Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, XTsiz, YTsiz, XTOsiz, YTOsiz, Csiz."""
    if len(siz) < 38:
        return None
    _lsiz, _rsiz, x, y, x0, y0 = struct.unpack(">HHLLLL", siz[:20])
    (components,) = struct.unpack(">H", siz[36:38])
    return y - y0, x - x0, components
