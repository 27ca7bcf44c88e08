"""Aligned text tables on stdout (``ls``, ``stats``, ``find``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: Column positions (right-aligned ones).
Columns = set[int] | frozenset[int]


def cells(row: Sequence[Any]) -> list[str]:
    """A row's values as text (``None`` empty)."""
    return ["" if v is None else str(v) for v in row]


def widths(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[int]:
    """The width of each column: its widest cell or header."""
    return [max([len(h)] + [len(r[n]) for r in rows]) for n, h in enumerate(headers)]


def line(values: Sequence[str], sizes: Sequence[int], right: Columns = frozenset()) -> str:
    """One row padded to ``sizes`` (right-aligned in the ``right`` columns)."""
    out = [
        v.rjust(w) if n in right else v.ljust(w)
        for n, (v, w) in enumerate(zip(values, sizes, strict=True))
    ]
    return "  ".join(out).rstrip()


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    right: Columns = frozenset(),
) -> str:
    """An aligned text table (numbers right-aligned in the ``right`` columns)."""
    text = [cells(row) for row in rows]
    sizes = widths(headers, text)
    return "\n".join([line(headers, sizes, right)] + [line(r, sizes, right) for r in text])
