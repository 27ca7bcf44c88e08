"""Byte counts as people read them (sizes.py)."""

from __future__ import annotations

import pytest

from dicomstore.sizes import binary_size


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1 KiB"), (1536, "1.5 KiB"), (100 << 40, "100 TiB")],
)
def test_powers_of_1024_as_the_size_options_take(n: int, text: str) -> None:
    assert binary_size(n) == text
