"""The text of an instance's header on the browse page, bounded in depth and size.

pydicom's ``str(dataset)`` renders every level of nested sequences (PS3.5 7.5)
and re-indents each level's text in its parent's, so one stored instance with
a thousand levels of sequences takes minutes and gigabytes to print. This
renders at most ``max_depth`` levels and ``max_elements`` elements, saying so
where it stops, and touches no element below the last level it renders
(pydicom parses a defined-length sequence's items only when they are read). A
value its reader left unread (longer than :data:`SHOWN_VALUE`) is shown by its
length, never read (review38mem D5: a 400 MiB UT took 917 MiB for a page of 3 KB).
"""

from __future__ import annotations

from pydicom.datadict import dictionary_description
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from dicomstore.http.dicomjson import dictionary_vr

#: A line's value beyond this many characters is cut.
MAX_LINE = 240
#: Values longer than this many bytes are not read (their length is shown), nor
#: sequences longer than :data:`SHOWN_SEQUENCE` (their items are read to show them).
SHOWN_VALUE = 8192
SHOWN_SEQUENCE = 16 << 20


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
    for tag in ds.keys():  # noqa: SIM118 - iterating a Dataset reads every value
        if budget.left <= 0:
            return False
        budget.left -= 1
        raw = ds.get_item(tag, keep_deferred=True)
        if _left_unread(raw):
            assert isinstance(raw, RawDataElement)
            name = _name(tag)
            vr, size = vr_of(raw), raw.length
            lines.append(f"{indent}{Tag(tag)} {name}  {vr}: ({size} bytes, not shown)")
            continue
        elem = ds[tag]
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


def _left_unread(raw: object) -> bool:
    """A value its reader left unread (long), to show by its length: any but a sequence
    up to :data:`SHOWN_SEQUENCE` bytes (whose items are read to show them; in Implicit
    VR the dictionary tells a sequence: review39 #6)."""
    if not isinstance(raw, RawDataElement) or raw.value is not None:
        return False
    return vr_of(raw) != "SQ" or raw.length > SHOWN_SEQUENCE


def vr_of(raw: RawDataElement) -> str:
    """A raw element's VR: as encoded, else (Implicit VR) the dictionary's first, else UN."""
    return str(raw.VR) if raw.VR else dictionary_vr(raw.tag)


def _name(tag: int) -> str:
    """The attribute's name as pydicom prints it beside its tag."""
    try:
        return str(dictionary_description(tag))
    except KeyError:
        return "Private tag data" if tag >> 16 & 1 else "Unknown"
