"""Reading the fields of a decoded command set for the message decoders (PS3.7 9.3, E.1).

A request's required field that is missing, mistyped or out of range raises
:class:`Invalid`, which ``decoding.decode_message`` turns into an
``InvalidRequest`` (answered 0212, PS3.7 C.5.9); a response's optional field
that is mistyped is dropped (:func:`lenient`).
"""

from __future__ import annotations

from typing import Literal, TypeVar, overload

from dicomstore.dimse.commands import BadValue, Value, tag_str


class Invalid(Exception):
    """A request's ``element`` is missing, mistyped or out of range: ``reason``."""

    def __init__(self, element: int, reason: str) -> None:
        super().__init__(reason)
        self.element = element
        self.reason = reason


def uid(fields: dict[int, Value], element: int) -> str:
    """A required, non-empty UID field."""
    value = fields.get(element)
    if isinstance(value, str) and value:
        return value
    if isinstance(value, BadValue):
        raise Invalid(element, f"{tag_str(element)}: {value.reason}")
    raise Invalid(element, f"{tag_str(element)} is missing or empty")


@overload
def us(fields: dict[int, Value], element: int, required: Literal[True]) -> int: ...
@overload
def us(fields: dict[int, Value], element: int, required: bool) -> int | None: ...
def us(fields: dict[int, Value], element: int, required: bool) -> int | None:
    """A US field; ``None`` when absent and not ``required``."""
    value = fields.get(element)
    if isinstance(value, int):
        return value
    if value is None and not required:
        return None
    reason = value.reason if isinstance(value, BadValue) else "missing"
    raise Invalid(element, f"{tag_str(element)}: {reason}")


_T = TypeVar("_T", int, str, tuple[int, ...])


def lenient(fields: dict[int, Value], element: int, kind: type[_T]) -> _T | None:
    """An optional field of a response: a mistyped value is dropped, not fatal."""
    value = fields.get(element)
    return value if isinstance(value, kind) and value != "" and value != () else None
