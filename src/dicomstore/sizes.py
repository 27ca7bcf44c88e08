"""Byte counts as people read them, in the powers of 1024 that size options take
(``--min-free 100G``, ``cli/options._size``)."""

from __future__ import annotations

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def binary_size(n: int) -> str:
    """``n`` bytes as B, KiB, MiB, GiB or TiB (one decimal, a trailing .0 dropped)."""
    value, unit = float(n), 0
    while abs(value) >= 1024 and unit < len(_UNITS) - 1:
        value, unit = value / 1024, unit + 1
    return f"{f'{value:.1f}'.removesuffix('.0')} {_UNITS[unit]}"
