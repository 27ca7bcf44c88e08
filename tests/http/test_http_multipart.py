"""The streaming multipart/related parser and writer (RFC 2046 5.1, PS3.18 8.7.3.3)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicomstore.http.multipart import (
    MultipartError,
    MultipartLimitError,
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
    closing,
    new_boundary,
    parse_media_type,
    part_header,
)


def collect(parser: MultipartParser, chunks: list[bytes]) -> list[tuple[dict, bytes]]:
    parts: list[tuple[dict, bytes]] = []
    for chunk in chunks:
        for event in parser.feed(chunk):
            if isinstance(event, PartStart):
                parts.append((event.headers, b""))
            elif isinstance(event, PartData):
                headers, data = parts[-1]
                parts[-1] = (headers, data + event.data)
            else:
                assert isinstance(event, PartEnd)
    parser.close()
    return parts


def encode(bodies: list[bytes], boundary: str) -> bytes:
    out = b""
    for n, body in enumerate(bodies):
        out += part_header(boundary, "application/dicom", first=n == 0) + body
    return out + closing(boundary, empty=not bodies)


def test_round_trip_with_our_writer() -> None:
    boundary = new_boundary()
    bodies = [b"first\r\n--not-the-boundary", b"", b"\r\n" * 3]
    parts = collect(MultipartParser(boundary), [encode(bodies, boundary)])
    assert [data for _, data in parts] == bodies
    assert all(h["content-type"] == "application/dicom" for h, _ in parts)


def test_preamble_leading_crlf_epilogue_and_padding() -> None:
    body = (
        b"preamble text\r\n--B  \r\nContent-Type: application/dicom\r\nX-A: 1\r\n\r\nONE"
        b"\r\n--B\r\n\r\nTWO\r\n--B--\r\nepilogue ignored --B"
    )
    parts = collect(MultipartParser("B"), [body])
    assert parts == [({"content-type": "application/dicom", "x-a": "1"}, b"ONE"), ({}, b"TWO")]
    # dicomweb-client starts its bodies with CRLF before the first delimiter
    assert collect(MultipartParser("B"), [b"\r\n--B\r\n\r\nX\r\n--B--"]) == [({}, b"X")]


@settings(max_examples=200, deadline=None)
@given(
    bodies=st.lists(st.binary(max_size=300), max_size=5),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=20),
)
def test_any_chunking_gives_the_same_parts(bodies: list[bytes], cuts: list[int]) -> None:
    boundary = "dicomstore-0123456789abcdef"
    # a body must not contain the delimiter itself (the writer's random boundary ensures it)
    bodies = [b.replace(boundary.encode(), b"x") for b in bodies]
    data = encode(bodies, boundary)
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    chunks = [data[a:b] for a, b in zip(points, points[1:], strict=False)]
    assert [d for _, d in collect(MultipartParser(boundary), chunks)] == bodies


def test_body_bytes_are_emitted_before_the_part_ends() -> None:
    """Streaming: a large part is handed on as it arrives, not buffered."""
    parser = MultipartParser("B")
    parser.feed(b"--B\r\n\r\n")
    events = parser.feed(b"x" * 100_000)
    assert sum(len(e.data) for e in events if isinstance(e, PartData)) >= 100_000 - 10


@pytest.mark.parametrize(
    "body",
    [
        b"--B\r\n\r\nunterminated",
        b"--B\r\nno header end",
        b"nothing at all",
        b"--B\r\nbroken header line\r\n\r\nX\r\n--B--",
        b"--Bgarbage\r\n\r\nX\r\n--B--",
    ],
)
def test_malformed_bodies_are_refused(body: bytes) -> None:
    parser = MultipartParser("B")
    with pytest.raises(MultipartError):
        parser.feed(body)
        parser.close()


def test_media_type_parameters() -> None:
    assert parse_media_type('Multipart/Related; type="application/dicom"; boundary=abc') == (
        "multipart/related",
        {"type": "application/dicom", "boundary": "abc"},
    )
    assert parse_media_type('multipart/related; boundary="a;b \\"c\\""')[1] == {
        "boundary": 'a;b "c"'
    }


def test_a_limit_error_comes_after_the_events_before_it() -> None:
    """The part that ended before the limit was crossed is delivered, then the error."""
    parser = MultipartParser("B", max_parts=1)
    events = parser.feed(b"--B\r\n\r\nONE\r\n--B\r\n\r\nTWO")
    assert [type(e) for e in events] == [PartStart, PartData, PartEnd]
    with pytest.raises(MultipartLimitError, match="more than the limit of 1 parts"):
        parser.check()
    with pytest.raises(MultipartLimitError):
        parser.close()


@pytest.mark.parametrize("boundary", ["", "a\u00e9", "trailing ", "x" * 201, 'a"b'])
def test_invalid_boundaries_are_refused(boundary: str) -> None:
    with pytest.raises(MultipartError, match="boundary"):
        MultipartParser(boundary)
