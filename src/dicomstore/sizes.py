"""Byte counts as people read them: in the powers of 1000 the listings use, or in the
powers of 1024 that size options take (``--min-free 100G``, ``cli/options._size``)."""

from __future__ import annotations

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def binary_size(n: int) -> str:
    """``n`` bytes as B, KiB, MiB, GiB or TiB (one decimal, a trailing .0 dropped)."""
    value, unit = float(n), 0
    while abs(value) >= 1024 and unit < len(_UNITS) - 1:
        value, unit = value / 1024, unit + 1
    return f"{f'{value:.1f}'.removesuffix('.0')} {_UNITS[unit]}"


def human_size(n: int | None) -> str:
    """Bytes as B, KB, MB, GB, TB (powers of 1000)."""
    value = float(n or 0)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return ""
