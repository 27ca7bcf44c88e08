"""The character set of a C-FIND response Identifier (services/answer_charset.py)."""

from __future__ import annotations

import pytest

from dicomstore.services.answer_charset import SINGLE_BYTE, UTF8, answer_charset


@pytest.mark.parametrize(
    ("request_charset", "texts", "other", "expected"),
    [
        ("ISO_IR 100", ["Müller^Hans", "PID3"], None, ("ISO_IR 100", "latin_1")),
        ("ISO_IR 100", ["Müller^Hans", "Ελληνικά"], None, (UTF8, "utf-8")),  # does not fit
        ("ISO_IR 126", ["Ελληνικά"], None, ("ISO_IR 126", "iso8859_7")),
        ("ISO_IR 100", ["Müller^Hans"], [object()], (UTF8, "utf-8")),  # header elements
        ("ISO 2022 IR 87", ["山田"], None, (UTF8, "utf-8")),  # not single-byte
        (None, ["Müller"], None, (UTF8, "utf-8")),
    ],
)
def test_the_requests_single_byte_set_where_every_value_fits(
    request_charset, texts, other, expected
) -> None:
    assert answer_charset(request_charset, texts, other) == expected


def test_every_codec_is_known() -> None:
    for codec in SINGLE_BYTE.values():
        assert "é".encode(codec, errors="replace")
