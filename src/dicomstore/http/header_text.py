"""The text of an instance's header on the browse page, bounded in depth and size.

pydicom's ``str(dataset)`` renders every level of nested sequences (PS3.5 7.5)
and re-indents each level's text in its parent's, so one stored instance with
a thousand levels of sequences takes minutes and gigabytes to print. This
renders at most ``max_depth`` levels and ``max_elements`` elements, saying so
where it stops, and touches no element below the last level it renders
(pydicom parses a defined-length sequence's items only when they are read).
"""

from __future__ import annotations

from pydicom.dataset import Dataset

#: A line's value beyond this many characters is cut.
MAX_LINE = 240


class _Budget:
    def __init__(self, elements: int) -> None:
        self.left = elements


def header_text(ds: Dataset, *, max_depth: int, max_elements: int) -> str:
    """``ds`` as one line per element, sequences' items indented under them."""
    lines: list[str] = []
    complete = _render(ds, 0, max_depth, _Budget(max_elements), lines)
    if not complete:
        lines.append(f"... more elements not shown (at most {max_elements} are)")
    return "\n".join(lines)


def _render(ds: Dataset, depth: int, max_depth: int, budget: _Budget, lines: list[str]) -> bool:
    """Append the lines of ``ds`` at ``depth``; False once the budget is spent."""
    indent = "  " * depth
    for elem in ds:
        if budget.left <= 0:
            return False
        budget.left -= 1
        if elem.VR != "SQ":
            text = str(elem)
            if len(text) > MAX_LINE:
                text = text[:MAX_LINE] + " ..."
            lines.append(indent + text)
            continue
        items = elem.value
        lines.append(f"{indent}{elem.tag} {elem.name}  SQ: {len(items)} item(s)")
        if depth + 1 >= max_depth:
            lines.append(f"{indent}  (deeper levels not shown: at most {max_depth} are)")
            continue
        for n, item in enumerate(items, 1):
            lines.append(f"{indent}  item {n}")
            if not _render(item, depth + 1, max_depth, budget, lines):
                return False
    return True
