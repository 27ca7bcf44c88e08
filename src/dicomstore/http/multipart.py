"""multipart/related (RFC 2387, RFC 2046 5.1) as PS3.18 8.7.3.3 uses it: streamed both ways.

:class:`MultipartParser` is a small push parser (sans-I/O): feed it the body
as it arrives and it yields :class:`PartStart` (headers), :class:`PartData`
(body bytes, never buffered beyond one delimiter's length) and
:class:`PartEnd`. :func:`part_header` and :func:`closing` frame the parts
of a response written chunk by chunk.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

CRLF = b"\r\n"
#: A part's headers larger than this are refused (they are a few lines).
MAX_HEADER_BYTES = 16 * 1024


class MultipartError(ValueError):
    """The body is not well-formed multipart."""


class MultipartLimitError(MultipartError):
    """The body is well-formed so far but outside a limit (too many parts, headers too large)."""


@dataclass(frozen=True, slots=True)
class PartStart:
    """A part begins; header names are lower-case."""

    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class PartData:
    """Some bytes of the current part's body."""

    data: bytes


@dataclass(frozen=True, slots=True)
class PartEnd:
    """The current part is complete."""


Event = PartStart | PartData | PartEnd

_PARAM = re.compile(r';\s*([^=;\s]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """``type/subtype`` (lower-case) and its parameters (names lower-case, unquoted)."""
    main, _, rest = value.partition(";")
    params = {}
    for name, raw in _PARAM.findall(";" + rest):
        raw = raw.strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[name.lower()] = raw
    return main.strip().lower(), params


def repeated_parameters(value: str) -> list[str]:
    """The parameter names a media type gives more than once (lower-case): RFC 2045
    5.1 allows each once, and which one wins is ambiguous (a proxy may take the other)."""
    names = [name.lower() for name, _ in _PARAM.findall(";" + value.partition(";")[2])]
    return sorted({name for name in names if names.count(name) > 1})


def new_boundary() -> str:
    """A boundary that does not occur in DICOM data in practice (random, 32 hex)."""
    return "dicomstore-" + secrets.token_hex(16)


def part_header(boundary: str, content_type: str, *, first: bool = False, **headers: str) -> bytes:
    """Delimiter and headers of a part (the previous part's CRLF included unless first)."""
    lines = [f"--{boundary}", f"Content-Type: {content_type}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return (b"" if first else CRLF) + "\r\n".join(lines).encode("latin-1") + CRLF + CRLF


def closing(boundary: str, *, empty: bool = False) -> bytes:
    """The close delimiter ending the body."""
    return (b"" if empty else CRLF) + f"--{boundary}--".encode("latin-1") + CRLF


#: RFC 2046 5.1.1: 1 to 70 characters of bchars, not ending with a space (up to 200
#: accepted here: some clients make them longer).
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,199}[0-9A-Za-z'()+_,\-./:=?]")


def boundary_problem(boundary: str) -> str | None:
    """Why ``boundary`` cannot delimit a multipart body (RFC 2046 5.1.1), or ``None``."""
    if not boundary:
        return "the multipart boundary is empty"
    if _BOUNDARY.fullmatch(boundary) is None:
        shown = boundary[:80].encode("ascii", "backslashreplace").decode("ascii")
        return (
            f"the multipart boundary {shown!r} is not 1 to 200 of the characters "
            "RFC 2046 5.1.1 allows (letters, digits, '()+_,-./:=? and inner spaces)"
        )
    return None


class MultipartParser:
    """Push parser for one multipart body with ``boundary``; at most ``max_parts``
    parts, each with at most ``max_header_bytes`` of header lines."""

    def __init__(
        self,
        boundary: str,
        *,
        max_parts: int = 0,
        max_header_bytes: int = MAX_HEADER_BYTES,
    ) -> None:
        problem = boundary_problem(boundary)
        if problem is not None:
            raise MultipartError(problem)
        self.max_parts = max_parts
        self.max_header_bytes = max_header_bytes
        self._delimiter = CRLF + b"--" + boundary.encode("ascii")
        # The body may start with the delimiter itself: parse as if a CRLF came first.
        self._buffer = bytearray(CRLF)
        self._state = "preamble"  # -> after_delimiter -> headers -> body -> ... -> epilogue
        self.parts = 0
        self._error: MultipartError | None = None

    @property
    def complete(self) -> bool:
        """True once the close delimiter was seen."""
        return self._state == "epilogue"

    def feed(self, data: bytes) -> list[Event]:
        """Parse more of the body; the events it completes. An error found after some
        events is raised by the next :meth:`check`, :meth:`feed` or :meth:`close`."""
        self.check()
        if self._state == "epilogue":
            return []
        self._buffer += data
        events: list[Event] = []
        try:
            while self._step(events):
                pass
        except MultipartError as exc:
            if not events:
                raise
            self._error = exc  # the events before it first (a part may have ended)
        return events

    def check(self) -> None:
        """Raise the error found after the events :meth:`feed` returned last, if any."""
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """The body ended: raise unless it was complete."""
        self.check()
        if self._state != "epilogue":
            raise MultipartError(f"the multipart body ended early (in {self._state})")

    def _step(self, events: list[Event]) -> bool:
        buf, delim = self._buffer, self._delimiter
        if self._state == "preamble":
            at = buf.find(delim)
            if at < 0:
                del buf[: max(0, len(buf) - len(delim) + 1)]
                return False
            del buf[: at + len(delim)]
            self._state = "after_delimiter"
            return True
        if self._state == "after_delimiter":
            if len(buf) < 2:
                return False
            if buf[:2] == b"--":
                self._state = "epilogue"
                buf.clear()
                return False
            end = buf.find(CRLF)
            if end < 0:
                if len(buf) > 256:
                    raise MultipartError("garbage after a boundary delimiter")
                return False
            if buf[:end].strip(b" \t"):
                raise MultipartError("garbage after a boundary delimiter")
            del buf[: end + 2]
            self._state = "headers"
            return True
        if self._state == "headers":
            if buf[:2] == CRLF:  # no headers at all
                end, skip = 0, 2
            else:
                end, skip = buf.find(CRLF + CRLF), 4
            if end < 0:
                if len(buf) > self.max_header_bytes:
                    raise MultipartLimitError(
                        f"part headers larger than the limit of {self.max_header_bytes} bytes"
                    )
                return False
            if end > self.max_header_bytes:
                raise MultipartLimitError(
                    f"part headers larger than the limit of {self.max_header_bytes} bytes"
                )
            if self.max_parts and self.parts >= self.max_parts:
                raise MultipartLimitError(f"more than the limit of {self.max_parts} parts")
            events.append(PartStart(_headers(bytes(buf[:end]))))
            self.parts += 1
            del buf[: end + skip]
            self._state = "body"
            return True
        if self._state == "body":
            at = buf.find(delim)
            if at < 0:
                keep = len(delim) - 1
                if len(buf) > keep:
                    events.append(PartData(bytes(buf[: len(buf) - keep])))
                    del buf[: len(buf) - keep]
                return False
            if at:
                events.append(PartData(bytes(buf[:at])))
            events.append(PartEnd())
            del buf[: at + len(delim)]
            self._state = "after_delimiter"
            return True
        return False


def _headers(raw: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in raw.decode("latin-1").split("\r\n"):
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise MultipartError(f"malformed part header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return headers
