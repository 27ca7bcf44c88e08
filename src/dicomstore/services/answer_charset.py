"""The character set a C-FIND response Identifier is written in (PS3.4 C.4.1.1.3.2,
PS3.5 6.1): values are held as Unicode; a response with a value outside ASCII says
its Specific Character Set (0008,0005). The SCP may answer in another than the
request's; the request's single-byte one is taken where every value fits it (as
DCMTK's dcmqrscp converts: a Latin-1 workstation shows UTF-8 as mojibake;
interop97 I7), else UTF-8 (ISO_IR 192)."""

from __future__ import annotations

from collections.abc import Iterable

UTF8 = "ISO_IR 192"

#: Single-byte character sets (PS3.3 C.12.1.1.2, Table C.12-2) and their codecs: a
#: request in one is answered in it when every value fits (as DCMTK's dcmqrscp does;
#: a Latin-1 workstation shows UTF-8 as mojibake), else in UTF-8.
SINGLE_BYTE = {
    "ISO_IR 100": "latin_1",
    "ISO_IR 101": "iso8859_2",
    "ISO_IR 109": "iso8859_3",
    "ISO_IR 110": "iso8859_4",
    "ISO_IR 144": "iso8859_5",
    "ISO_IR 127": "iso8859_6",
    "ISO_IR 126": "iso8859_7",
    "ISO_IR 138": "iso8859_8",
    "ISO_IR 148": "iso8859_9",
    "ISO_IR 203": "iso8859_15",
    "ISO_IR 166": "iso8859_11",
}


def answer_charset(request: str | None, texts: Iterable[str], other: object) -> tuple[str, str]:
    """(Specific Character Set, Python codec) of a response with a non-ASCII value:
    ``request``'s (one of :data:`SINGLE_BYTE`) when every one of ``texts`` fits it and
    there is no ``other`` value (elements encoded elsewhere, from a stored header),
    else UTF-8."""
    if request is None or request not in SINGLE_BYTE or other:
        return UTF8, "utf-8"
    try:
        for text in texts:
            text.encode(SINGLE_BYTE[request])
    except UnicodeEncodeError:
        return UTF8, "utf-8"
    return request, SINGLE_BYTE[request]
