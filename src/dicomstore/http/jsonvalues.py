"""DICOM JSON values (PS3.18 F.2.3-F.2.7) made straight from an element's bytes.

:func:`value_json` gives the attribute object of one value exactly as pydicom's
``DataElement.to_json_dict`` gives it (the reference the tests hold us to), without
building a ``DataElement``: text split at backslashes and stripped as pydicom's
readers strip it, PN as Alphabetic/Ideographic/Phonetic groups, IS and DS as
numbers, AT as hex strings, binary values as InlineBinary (base64). Text in a
Specific Character Set (PS3.5 6.1.2.3) that is not plain ASCII is decoded by
pydicom's own readers. A value this module cannot encode exactly as pydicom
would (an IS or DS that is not a plain number, a UN or ambiguous VR, a length
that is not a multiple of the value size...) gives ``None``: the caller then
asks pydicom. Results are memoised by (VR, bytes, encoding): the instances of a
series repeat most of their values.
"""

from __future__ import annotations

import base64
import json
import math
import re
import struct
from collections.abc import Sequence
from typing import Any

from pydicom.valuerep import PersonName
from pydicom.values import convert_PN, convert_single_string, convert_text

#: VRs decoded with the default character repertoire and split at backslashes.
_STRINGS = frozenset({"AS", "CS", "DA", "DT", "TM"})
#: VRs whose text follows the Specific Character Set, multi-valued or single.
_TEXT_MULTI = frozenset({"LO", "SH", "UC"})
_TEXT_SINGLE = frozenset({"LT", "ST", "UT"})
_BINARY = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})
_NUMBERS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
_SIZES = {vr: struct.calcsize("<" + code) for vr, code in _NUMBERS.items()}
_FLOATS = frozenset({"FL", "FD"})
#: Bytes that decode the same in every character set pydicom knows: printable ASCII,
#: NUL padding and the text controls (no ESC, SO or SI of ISO 2022).
_PLAIN = bytes(range(0x20, 0x7F)) + b"\x00\t\n\r\x0c"
_IS = re.compile(r" *[+-]?[0-9]+ *")
_DS = re.compile(r" *[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)? *")

_MEMO: dict[tuple[str, bytes, bool, tuple[str, ...]], dict[str, Any] | None] = {}
#: Entries each memo keeps at most (cleared when full) ...
MEMO_LIMIT = 20_000
#: ... of values of at most this many bytes (longer ones rarely repeat: made each
#: time). So a memo holds at most ~40 MiB (values whose JSON text is six times
#: their bytes: ``\u`` escapes), a few MiB for the values of real series.
MEMO_MAX_VALUE = 256


def value_json(
    vr: str, raw: bytes, little: bool, encodings: tuple[str, ...]
) -> dict[str, Any] | None:
    """The DICOM JSON of a non-sequence value, or None when pydicom must make it.
    The object returned is shared: never modify it."""
    key = (vr, raw, little, encodings)
    try:
        return _MEMO[key]
    except KeyError:
        pass
    out = _make(vr, raw, little, encodings)
    _remember(_MEMO, key, out, raw)
    return out


#: :func:`attribute_text` by ``(tag, vr, raw, little, encodings)`` (a hot loop may
#: look it up itself first: a value found is the function's answer).
TEXT_MEMO: dict[tuple[int, str, bytes, bool, tuple[str, ...]], str | None] = {}


def attribute_text(
    tag: int, vr: str, raw: bytes, little: bool, encodings: tuple[str, ...]
) -> str | None:
    """``"key": `` and the JSON text of :func:`value_json`'s object, as ``json.dumps``
    writes it in an object (``ensure_ascii=False``); None when pydicom must make it.
    Memoised as :func:`value_json` (the text of a series' repeated values is made once)."""
    memo = (tag, vr, raw, little, encodings)
    try:
        return TEXT_MEMO[memo]
    except KeyError:
        pass
    value = _make(vr, raw, little, encodings)
    text = None if value is None else f'"{tag:08X}": {json.dumps(value, ensure_ascii=False)}'
    _remember(TEXT_MEMO, memo, text, raw)
    return text


def _remember(memo: dict[Any, Any], key: Any, value: Any, raw: bytes) -> None:
    """Keep ``value`` in ``memo`` when its ``raw`` bytes are short enough; a full
    memo is emptied first (:data:`MEMO_LIMIT`, :data:`MEMO_MAX_VALUE`)."""
    if len(raw) <= MEMO_MAX_VALUE:
        if len(memo) >= MEMO_LIMIT:
            memo.clear()
        memo[key] = value


def finite(attribute: dict[str, Any]) -> dict[str, Any]:
    """``attribute`` with each number that is NaN or infinite as ``null``: a value of FL,
    FD or DS may be (IEEE 754; "nan", "inf" or "1e999"), a JSON number cannot (RFC
    8259 6), and ``json.dumps`` writes ``NaN``, which no browser parses: one such
    value made the metadata of its whole study unreadable to a viewer (review76 F2).
    ``null`` is the value that is not there (PS3.18 F.2.5)."""
    values = attribute.get("Value")
    if values and any(v.__class__ is float and not math.isfinite(v) for v in values):
        fixed = [None if v.__class__ is float and not math.isfinite(v) else v for v in values]
        return {**attribute, "Value": fixed}
    return attribute


def _strings(vr: str, values: Sequence[str] | str) -> dict[str, Any]:
    """As to_json_dict gives a str or MultiValue: no Value when empty (VM 0)."""
    if isinstance(values, str):
        return {"vr": vr, "Value": [values]} if values else {"vr": vr}
    return {"vr": vr, "Value": list(values)}


def _split(text: str) -> list[str] | str:
    """pydicom's multi_string: trailing spaces and NULs off, split at backslashes."""
    items = text.rstrip(" \x00").split("\\")
    return items[0] if len(items) == 1 else items


def _numbers(vr: str, items: list[str] | str, pattern: re.Pattern[str]) -> dict[str, Any]:
    number = int if vr == "IS" else float
    if isinstance(items, str):
        if not items:
            return {"vr": vr}
        items = [items]
    if not all(pattern.fullmatch(v) for v in items):  # (review116 M1: pydicom gave IS
        # "1.5" as 1, nothing of a DS with an empty value amid others or "abc")
        return finite({"vr": vr, "Value": [_lenient(vr, v) for v in items]})
    return finite({"vr": vr, "Value": [number(v) for v in items]})  # ("1e999": inf)


def _lenient(vr: str, text: str) -> float | int | None:
    """A value of an IS or DS that is no plain number, as JSON: the number it reads as
    (an IS "1.5" is 1.5, not cut to 1; "+5" is 5), null when empty or no number
    (PS3.18 F.2.5: null is the value that is not there)."""
    try:
        value = float(text.strip())
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    return int(value) if vr == "IS" and value.is_integer() else value


def _names(vr: str, names: Sequence[PersonName] | PersonName) -> dict[str, Any]:
    if isinstance(names, PersonName):
        if not names:
            return {"vr": vr}
        names = [names]
    return {"vr": vr, "Value": [_groups(name.components) for name in names]}


def _groups(components: Sequence[str]) -> dict[str, str]:
    """A name's groups (F.2.2); an empty name among others (``é\\``) is an empty
    alphabetic group, as a plain ASCII one's (review124 F1: it raised IndexError, as
    pydicom's encoder does, and the metadata of its whole study was cut off)."""
    out = {"Alphabetic": components[0] if components else ""}
    if len(components) > 1:
        out["Ideographic"] = components[1]
    if len(components) > 2:
        out["Phonetic"] = components[2]
    return out


def _make(vr: str, raw: bytes, little: bool, encodings: tuple[str, ...]) -> dict[str, Any] | None:
    plain = not raw.translate(None, _PLAIN)
    if vr in _NUMBERS:
        size = _SIZES[vr]
        if len(raw) % size:
            return None
        if not raw:
            return {"vr": vr}
        order = "<" if little else ">"
        values = list(struct.unpack(f"{order}{len(raw) // size}{_NUMBERS[vr]}", raw))
        return finite({"vr": vr, "Value": values}) if vr in _FLOATS else {"vr": vr, "Value": values}
    if vr in _BINARY:
        return {"vr": vr, "InlineBinary": base64.b64encode(raw).decode()} if raw else {"vr": vr}
    if vr in _TEXT_MULTI or vr in _TEXT_SINGLE or vr == "PN":
        return _text(vr, raw, plain, encodings)
    if not plain:
        return None  # pydicom decodes these as ISO 8859-1, with its warnings
    text = raw.decode("ascii")
    if vr == "UI":
        return _strings(vr, _split(text.rstrip("\x00 ")))
    if vr in _STRINGS:
        return _strings(vr, _split(text))
    if vr == "IS":
        return _numbers(vr, _split(text), _IS)
    if vr == "DS":
        return _numbers(vr, _split(text), _DS)
    if vr == "AE":
        values = [v.strip() for v in text.split("\\")]
        return _strings(vr, values[0] if len(values) == 1 else values)
    if vr == "UR":
        return _strings(vr, text.rstrip())
    if vr == "AT":
        if len(raw) % 4:
            return None
        order = "<" if little else ">"
        pairs = struct.unpack(f"{order}{len(raw) // 2}H", raw)
        tags = [f"{pairs[i] << 16 | pairs[i + 1]:08X}" for i in range(0, len(pairs), 2)]
        return {"vr": vr, "Value": tags} if tags else {"vr": vr}
    return None  # UN, ambiguous VRs: pydicom's rules


def _text(vr: str, raw: bytes, plain: bool, encodings: tuple[str, ...]) -> dict[str, Any]:
    if vr == "PN":
        if not plain:
            return _names(vr, convert_PN(raw, list(encodings)))
        values = raw.rstrip(b"\x00 ").decode("ascii").split("\\")
        if len(values) == 1 and not values[0]:
            return {"vr": vr}
        return {"vr": vr, "Value": [_groups(v.split("=")) for v in values]}
    if vr in _TEXT_SINGLE:
        if not plain:
            return _strings(vr, convert_single_string(raw, list(encodings), vr))
        return _strings(vr, raw.decode("ascii").rstrip("\x00 "))
    if not plain:
        return _strings(vr, convert_text(raw, list(encodings), vr))
    values = [v.rstrip("\x00 ") for v in raw.decode("ascii").split("\\")]
    return _strings(vr, values[0] if len(values) == 1 else values)
