"""Where the framing walk reads its bytes (framing/sources.py)."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest

from dicomstore.framing import InflatedSource


def _deflated(*chunks: bytes) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = b"".join(z.compress(c) for c in chunks) + z.flush()
    return data + (b"\0" if len(data) % 2 else b"")  # (padded to even, as stored)


@pytest.mark.parametrize("first", [0, 1, 280, 65535, 70000])
def test_every_inflated_byte_is_there_wherever_the_reads_begin(tmp_path: Path, first) -> None:
    """A walk that began past 0 (the one from the Pixel Data) found a deflated data set
    12 bytes short: output zlib held back for a limit, its input all consumed, was
    never asked for (C000 'runs past the end' for a whole instance)."""
    head, pixels = b"head" * 70 + bytes(12), bytes(range(256)) * 4096  # (+ 4 MiB)
    data = head + pixels * 4
    path = tmp_path / "d"
    path.write_bytes(b"x" * 7 + _deflated(head, *[pixels] * 4))
    fd = os.open(path, os.O_RDONLY)
    try:
        src = InflatedSource(fd, 7, path.stat().st_size)
        assert src.read(first, 12) == data[first : first + 12]
        assert src.has(first + 12, len(data) - first - 12) == len(data) - first - 12
        src.finish()
        assert src.size == len(data) and src.crc32 == zlib.crc32(data)
    finally:
        os.close(fd)


def test_a_read_behind_gives_its_bytes_or_refuses(tmp_path: Path) -> None:
    """review82 F5: a walk that looked back (an item's end after an element that overran
    it) read other bytes of a deflated data set (``del buf[:negative]``), and took them
    for a tag. Within WINDOW bytes behind: the right bytes; further: Corrupt."""
    from dicomstore.framing import WINDOW, Corrupt

    data = bytes(range(256)) * (3 * WINDOW // 256)
    path = tmp_path / "d"
    path.write_bytes(_deflated(data))
    fd = os.open(path, os.O_RDONLY)
    try:
        src = InflatedSource(fd, 0, path.stat().st_size)
        assert src.read(5000, 4) == data[5000:5004]
        assert src.read(100, 4) == data[100:104]  # (behind, within the window)
        assert src.has(2 * WINDOW, 100) == 100
        with pytest.raises(Corrupt, match="behind"):
            src.read(100, 4)
    finally:
        os.close(fd)
