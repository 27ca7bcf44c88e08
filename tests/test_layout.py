"""The layout rule of issue 11: small modules, one concept each, none over 500 lines."""

from __future__ import annotations

from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "dicomstore"
MAX_LINES = 500


def too_long(root: Path, limit: int = MAX_LINES) -> list[str]:
    """The modules under ``root`` with more than ``limit`` lines, with their length."""
    found = []
    for path in sorted(root.rglob("*.py")):
        with path.open("rb") as f:
            lines = sum(1 for _ in f)
        if lines > limit:
            found.append(f"{path.relative_to(root)}: {lines} lines")
    return found


def test_no_module_is_over_500_lines() -> None:
    assert PACKAGE.is_dir()
    assert too_long(PACKAGE) == [], "split along a real seam (README: Layout)"


@pytest.mark.parametrize(("lines", "flagged"), [(MAX_LINES, False), (MAX_LINES + 1, True)])
def test_the_check_flags_a_module_one_line_over(tmp_path: Path, lines: int, flagged: bool) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "big.py").write_text("x = 1\n" * lines)
    (tmp_path / "small.py").write_text("x = 1\n")
    assert too_long(tmp_path) == ([f"sub/big.py: {lines} lines"] if flagged else [])
